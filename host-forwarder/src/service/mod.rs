//! `ferry service install | uninstall | status`: the per-user service that
//! runs `ferry daemon` from login on. One small interface ([`Manager`]) with
//! two implementations, both compiled and tested on every platform: a
//! launchd agent on macOS ([`launchd`]) and a systemd user unit elsewhere
//! ([`systemd`]). Install and uninstall are idempotent; uninstall leaves
//! nothing behind.

pub mod launchd;
pub mod systemd;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// What the service runs: the program, its arguments and the environment
/// it needs (a login service starts with almost none: `limactl` must be
/// found on the PATH the user had when installing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// The `ferry` binary (absolute).
    pub program: PathBuf,
    /// Its arguments (`daemon`).
    pub args: Vec<String>,
    /// Environment variables, in order.
    pub env: Vec<(String, String)>,
}

/// The variables a daemon started by the service manager needs from the
/// installing user's environment, when set.
pub const CARRIED_ENV: &[&str] = &["PATH", "LIMA_HOME", "LIMACTL", "FERRY_STATE_DIR", "COLIMA_HOME"];

impl Spec {
    /// `ferry daemon` with the carried part of the current environment.
    pub fn current() -> anyhow::Result<Self> {
        let program = std::env::current_exe()?;
        let env =
            CARRIED_ENV.iter().filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v))).collect::<Vec<_>>();
        Ok(Self { program, args: vec!["daemon".into()], env })
    }
}

/// What `status` found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct State {
    /// The service definition file, if installed.
    pub definition: Option<PathBuf>,
    /// Whether the manager runs the daemon now, and its pid if it says.
    pub running: bool,
    /// The daemon's pid, if the manager reports one.
    pub pid: Option<u32>,
    /// Where the daemon's output goes (a file, or a command that shows it).
    pub logs: String,
}

/// A service manager: where the definition lives, what it says, and the
/// commands that load, unload and query it.
pub trait Manager {
    /// "launchd" or "systemd".
    fn name(&self) -> &'static str;
    /// The definition file's path.
    fn definition_path(&self) -> PathBuf;
    /// The definition's text for `spec`.
    fn render(&self, spec: &Spec) -> String;
    /// Commands that (re)load and start the service after the file is written.
    fn load_commands(&self) -> Vec<Command>;
    /// Commands that stop and unload it (before the file is removed).
    fn unload_commands(&self) -> Vec<Command>;
    /// Asks the manager whether it runs; (running, pid).
    fn query(&self) -> (bool, Option<u32>);
    /// Where the logs are, as the user should read them.
    fn logs(&self) -> String;
    /// Directories to create (mode 0700) before loading (log directories).
    fn prepare_dirs(&self) -> Vec<PathBuf> {
        Vec::new()
    }
}

/// The manager for this platform (`which` overrides, for tests and for
/// trying the other one's output).
pub fn manager(which: Option<Kind>, home: &Path) -> Box<dyn Manager> {
    let kind = which.unwrap_or(if cfg!(target_os = "macos") { Kind::Launchd } else { Kind::Systemd });
    match kind {
        Kind::Launchd => Box::new(launchd::Launchd::new(home)),
        Kind::Systemd => Box::new(systemd::Systemd::new(home)),
    }
}

/// Which service manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// macOS: a launchd agent in ~/Library/LaunchAgents.
    Launchd,
    /// Linux: a systemd user unit in ~/.config/systemd/user.
    Systemd,
}

/// What `install` did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Installed {
    /// The definition file.
    pub definition: PathBuf,
    /// Whether the file's text changed (false: it was installed as is already).
    pub changed: bool,
}

/// Writes the definition (only if its text differs) and (re)loads it.
pub fn install(m: &dyn Manager, spec: &Spec) -> anyhow::Result<Installed> {
    let path = m.definition_path();
    let text = m.render(spec);
    let changed = std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    for dir in m.prepare_dirs() {
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700).create(&dir)?;
    }
    if changed {
        crate::lifecycle::write_atomically(&path, &text)?;
    }
    for mut cmd in m.load_commands() {
        run_command(&mut cmd)?;
    }
    Ok(Installed { definition: path, changed })
}

/// Unloads the service and removes its definition; false if none was installed.
pub fn uninstall(m: &dyn Manager) -> anyhow::Result<bool> {
    let path = m.definition_path();
    let existed = path.exists();
    for mut cmd in m.unload_commands() {
        // Unloading what is not loaded fails; that is the state we want.
        if let Err(e) = run_command(&mut cmd) {
            tracing::debug!("{e}");
        }
    }
    if existed {
        std::fs::remove_file(&path)?;
    }
    Ok(existed)
}

/// The service's state.
pub fn status(m: &dyn Manager) -> State {
    let path = m.definition_path();
    let (running, pid) = m.query();
    State { definition: path.exists().then_some(path), running, pid, logs: m.logs() }
}

fn run_command(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().map_err(|e| anyhow::anyhow!("cannot run {:?}: {e}", cmd.get_program()))?;
    if !out.status.success() {
        anyhow::bail!(
            "{:?} {:?} failed ({}): {}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The output of a query command, or `None` if it failed.
fn query_output(mut cmd: Command) -> Option<String> {
    run_command(&mut cmd).ok()
}

/// Options of `ferry service`.
#[derive(Debug, clap::Args)]
pub struct ServiceArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ServiceCommand,
    /// The service manager [default: launchd on macOS, systemd elsewhere].
    #[arg(long, value_enum, global = true, hide = true)]
    pub manager: Option<Kind>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `ferry service` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ServiceCommand {
    /// Install the service and start it (again, if it ran); idempotent.
    ///
    /// Writes the launchd agent (macOS) or the systemd user unit (Linux) that
    /// runs `ferry daemon` from login on, with this shell's PATH, LIMA_HOME,
    /// LIMACTL, COLIMA_HOME and FERRY_STATE_DIR, and (re)loads it.
    #[command(after_help = "Examples:\n  ferry service install")]
    Install,
    /// Stop the service and remove it; idempotent.
    ///
    /// Unloads the service and deletes its definition. Forwarders of running
    /// instances keep running until their instance stops; `limactl ferry
    /// disable --all` first stops them too.
    #[command(after_help = "Examples:\n  ferry service uninstall")]
    Uninstall,
    /// Whether the service is installed and runs, and where its logs are.
    ///
    /// Prints the definition's path, whether the manager runs it, and the log
    /// to read (the launchd log file, or `journalctl --user -u ferry`).
    #[command(after_help = "Examples:\n  ferry service status\n  ferry service status --json")]
    Status,
}

/// Runs `ferry service ...`.
pub fn run(a: &ServiceArgs) -> anyhow::Result<()> {
    let home = std::env::var_os("HOME").map(PathBuf::from).ok_or_else(|| anyhow::anyhow!("$HOME is not set"))?;
    let m = manager(a.manager, &home);
    match a.command {
        ServiceCommand::Install => {
            let done = install(m.as_ref(), &Spec::current()?)?;
            if a.json {
                println!("{}", serde_json::to_string(&done)?);
            } else {
                println!(
                    "ferry service {} ({}: {}); logs: {}",
                    if done.changed { "installed" } else { "was installed already; restarted" },
                    m.name(),
                    done.definition.display(),
                    m.logs()
                );
            }
        }
        ServiceCommand::Uninstall => {
            let existed = uninstall(m.as_ref())?;
            if a.json {
                println!("{}", serde_json::json!({"removed": existed}));
            } else if existed {
                println!("ferry service removed ({})", m.name());
            } else {
                println!("ferry service was not installed");
            }
        }
        ServiceCommand::Status => {
            let s = status(m.as_ref());
            if a.json {
                println!("{}", serde_json::to_string(&s)?);
            } else {
                match &s.definition {
                    None => println!("ferry service: not installed (`ferry service install`)"),
                    Some(p) => println!(
                        "ferry service: installed ({}: {}), {}; logs: {}",
                        m.name(),
                        p.display(),
                        match (s.running, s.pid) {
                            (true, Some(pid)) => format!("running (pid {pid})"),
                            (true, None) => "running".into(),
                            _ => "not running".into(),
                        },
                        s.logs
                    ),
                }
            }
        }
    }
    Ok(())
}
