//! `limactl ferry start|stop|status|logs INSTANCE`: ferry as Lima's port
//! forwarder, as a Lima CLI plugin (`limactl-ferry` on PATH or next to
//! limactl; `ferry lima ...` is the same). VM lifecycle stays with limactl.
//!
//! `start` installs `ferry-agent` and the instance secret in the guest (over
//! `limactl copy` and `limactl shell`, only when missing or outdated), adds
//! Lima's "ignore everything" rules to lima.yaml ([`lima_yaml`]), starts
//! `ferry run` in the background with its pid file, log and control socket
//! in `<instance dir>/ferry/`, and waits until it is connected. The agent
//! runs per session over ssh (`exec:` transport with the instance's
//! ssh.config, or `limactl shell` without one), unless `--agent` names a
//! transport such as a vsock address of an agent running as a service.
//! Over ssh, connections go through the instance's ssh ControlMaster
//! ([`ssh_control`]; `ferry run --ssh-control-path`) as `ssh -L` would
//! carry them, with the session as the fallback.

pub mod agent_binary;
pub mod agent_service;
pub mod lima_yaml;
pub mod limactl;
pub mod ssh_control;

use std::{
    fs::DirBuilder,
    os::unix::{fs::DirBuilderExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use clap::Subcommand;
use ferry_mux::Address;
use serde::Serialize;
use sha2::Digest;

use crate::status::client;

/// The plugin's commands.
#[derive(Debug, Subcommand)]
pub enum LimaCommand {
    /// Install the agent if needed, switch Lima's forwarding off and start ferry for INSTANCE.
    Start(StartArgs),
    /// Stop ferry for INSTANCE and give Lima its forwarding back.
    Stop(InstanceArgs),
    /// What ferry forwards for INSTANCE.
    Status(InstanceArgs),
    /// ferry's log for INSTANCE.
    Logs(InstanceArgs),
    /// Let ferry forward INSTANCE (or --all) from now on, whenever it runs.
    ///
    /// Switches Lima's own forwarding off for the instance's next start (in
    /// lima.yaml; for Colima in the Lima home's _config/override.yaml, which
    /// survives `colima start`), and records the instance for the ferry
    /// daemon (`ferry service install`), which starts forwarding within a
    /// second of the instance reaching Running and stops it when it stops.
    /// On a running instance Lima keeps its own forwards until a restart;
    /// --restart restarts it now.
    ///
    /// Example: limactl ferry enable default --restart
    Enable(crate::lifecycle::EnableArgs),
    /// Stop ferry for INSTANCE (or --all) for good and give back every file it changed.
    ///
    /// Stops the forwarder and restores lima.yaml (and, when no other
    /// instance of the same Lima home is enabled, override.yaml) byte for
    /// byte; Lima forwards again from the instance's next start.
    ///
    /// Example: limactl ferry disable default
    Disable(crate::lifecycle::DisableArgs),
}

/// An instance, and the output format.
#[derive(Debug, clap::Args)]
pub struct InstanceArgs {
    /// The Lima instance.
    pub instance: String,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// Options of `start`.
#[derive(Debug, clap::Args)]
pub struct StartArgs {
    #[command(flatten)]
    pub target: InstanceArgs,
    /// Reach an agent at this transport address instead of running one over ssh.
    #[arg(long, value_name = "ADDR")]
    pub agent: Option<Address>,
    /// The ferry-agent binary to install (a Linux ELF for the guest's
    /// architecture) [default: ../share/ferry/ferry-agent.Linux-ARCH beside
    /// this ferry, else a ferry-agent next to it built for that architecture].
    #[arg(long, value_name = "PATH")]
    pub agent_binary: Option<PathBuf>,
    /// Where the agent is installed in the guest.
    #[arg(long, value_name = "DIR", default_value = "/usr/local/bin")]
    pub guest_bin: String,
    /// Where the secret is installed in the guest.
    #[arg(long, value_name = "DIR", default_value = "/etc/ferry")]
    pub guest_etc: String,
    /// Carry every connection in the agent's session, never through the
    /// instance's ssh ControlMaster.
    #[arg(long)]
    pub no_ssh_master: bool,
    /// How ferry reaches the agent: `tcp` runs it as a service on the
    /// guest's vzNAT/shared address (lima0) and dials it there, with ssh as
    /// the fallback; `ssh` runs it per session over ssh; `auto` takes tcp
    /// where the guest has such an address, else ssh.
    #[arg(long, value_enum, default_value_t = TransportChoice::Auto)]
    pub transport: TransportChoice,
    /// The TCP port of the agent service (with the tcp transport).
    #[arg(long, value_name = "PORT", default_value_t = 7072)]
    pub agent_port: u16,
    /// Where the agent service keeps its pid file and log in the guest.
    #[arg(long, value_name = "DIR", default_value = "/run/ferry")]
    pub guest_state: String,
    /// How long to wait for ferry to connect, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub timeout: u64,
    /// Leave lima.yaml alone (the daemon: `limactl ferry enable` made the
    /// edits, in override.yaml for Colima, which rewrites lima.yaml at every start).
    #[arg(long, hide = true)]
    pub keep_lima_yaml: bool,
}

/// How `start` reaches the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportChoice {
    /// tcp where the guest has a lima0 address, else ssh.
    Auto,
    /// The agent as a service on the guest's lima0 address, over TCP.
    Tcp,
    /// The agent per session over ssh.
    Ssh,
}

/// Runs a plugin command.
pub fn run(cmd: LimaCommand) -> anyhow::Result<()> {
    match cmd {
        LimaCommand::Start(a) => start(&a),
        LimaCommand::Stop(a) => stop(&a),
        LimaCommand::Status(a) => status(&a),
        LimaCommand::Enable(a) => crate::lifecycle::enable(&a),
        LimaCommand::Disable(a) => crate::lifecycle::disable(&a),
        LimaCommand::Logs(a) => {
            let inst = limactl::instance(&a.instance)?;
            let log = state_dir(&inst.dir).join("ferry.log");
            let text = std::fs::read_to_string(&log).map_err(|e| anyhow::anyhow!("{}: {e}", log.display()))?;
            print!("{text}");
            Ok(())
        }
    }
}

/// `<instance dir>/ferry`.
pub(crate) fn state_dir(inst_dir: &Path) -> PathBuf {
    inst_dir.join("ferry")
}

#[derive(Serialize)]
struct StartReport<'a> {
    instance: &'a str,
    pid: u32,
    agent: String,
    /// "tcp", "ssh" or "given" (--agent).
    transport: &'static str,
    /// The agent in the guest (this ferry's version once installed).
    agent_version: String,
    /// Where ferry goes when `agent` cannot be reached.
    fallback_agent: Option<String>,
    agent_installed: bool,
    /// The ControlMaster connections go through, if any.
    ssh_master: Option<PathBuf>,
    control_socket: PathBuf,
    log: PathBuf,
}

fn start(a: &StartArgs) -> anyhow::Result<()> {
    let name = &a.target.instance;
    let inst = limactl::instance(name)?;
    if inst.status != "Running" {
        anyhow::bail!("instance {name} is {}; start it with `limactl start {name}` first", inst.status);
    }
    let dir = state_dir(&inst.dir);
    DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
    if let Some(pid) = running_pid(&dir) {
        anyhow::bail!("ferry already runs for {name} (pid {pid}); `limactl ferry stop {name}` first");
    }
    // lima.yaml is checked before anything changes: a form ferry does not
    // edit stops the start with what to change.
    let lima_yaml = inst.dir.join("lima.yaml");
    let yaml_edit = match std::fs::read_to_string(&lima_yaml) {
        Ok(text) if !a.keep_lima_yaml => {
            let edited = lima_yaml::disable_lima_forwarding(&text)
                .map_err(|e| anyhow::anyhow!("{} cannot be edited: {e}", lima_yaml.display()))?;
            (edited != text).then_some(edited)
        }
        _ => None,
    };
    let tcp_ip = plan_tcp(a, name)?;
    let secret = dir.join("secret");
    ferry_process::secret_file::load_or_create(&secret)?;
    let agent_bin = format!("{}/ferry-agent", a.guest_bin);
    let guest_secret = format!("{}/secret", a.guest_etc);
    let installed = install_agent(name, a, &agent_bin, &secret, &guest_secret)?;
    if let Some(edited) = yaml_edit {
        write_atomically(&lima_yaml, &edited)?;
        // When Lima reads it decides whether its own forwarding is off yet (see `lima_state`).
        std::fs::write(dir.join(YAML_EDITED), b"")?;
    }
    let ssh_master = match (&a.agent, &inst.ssh_config_file, a.no_ssh_master) {
        (None, Some(cfg), false) if cfg.exists() => ssh_control::control_path(cfg, &format!("lima-{}", inst.name)),
        _ => None,
    };
    let (agent, fallback, transport) = match &a.agent {
        Some(addr) => (addr.to_string(), None, "given"),
        None => choose_transport(a, &inst, &dir, tcp_ip, &agent_bin, &guest_secret)?,
    };
    let control = dir.join("ferry.sock");
    let log = dir.join("ferry.log");
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["run", "--agent", &agent, "--rules"])
        .arg(&lima_yaml)
        .arg("--control-socket")
        .arg(&control)
        .arg("--secret-file")
        .arg(&secret)
        .arg("--pid-file")
        .arg(dir.join(PID_FILE));
    if inst.ssh_local_port != 0 {
        cmd.args(["--ssh-local-port", &inst.ssh_local_port.to_string()]);
    }
    if let Some(path) = &ssh_master {
        cmd.arg("--ssh-control-path").arg(path);
    }
    if let Some(fallback) = &fallback {
        cmd.args(["--fallback-agent", fallback]);
    }
    let out = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
    // Its own session: the forwarder outlives this command and its terminal.
    // SAFETY: setsid(2) is async-signal-safe, as a pre_exec hook must be.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out).spawn()?;
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    loop {
        if client::query(&control).is_ok_and(|r| r.connected) {
            break;
        }
        if child.try_wait()?.is_some() || Instant::now() > deadline {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(15).collect();
            let _ = stop_process(&dir);
            anyhow::bail!(
                "ferry did not connect to the agent of {name}; last log lines:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let report = StartReport {
        instance: name,
        pid,
        agent,
        transport,
        agent_version: format!("ferry-agent {}", env!("CARGO_PKG_VERSION")),
        fallback_agent: fallback,
        agent_installed: installed,
        ssh_master,
        control_socket: control,
        log,
    };
    std::fs::write(dir.join(START_REPORT), serde_json::to_string(&report)?)?;
    if a.target.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("ferry forwards {name} over {transport} (pid {pid}); `limactl ferry status {name}` shows what");
    }
    Ok(())
}

/// Where the agent will listen on TCP (the guest's lima0 address), if the
/// transport `a` asks for allows and the guest has one; decided before
/// anything changes, so that `--transport tcp` without such an address
/// fails first.
fn plan_tcp(a: &StartArgs, name: &str) -> anyhow::Result<Option<std::net::Ipv4Addr>> {
    if a.agent.is_some() || a.transport == TransportChoice::Ssh {
        return Ok(None);
    }
    match agent_service::guest_address(name)? {
        Some(ip) => Ok(Some(ip)),
        None if a.transport == TransportChoice::Tcp => anyhow::bail!(
            "instance {name} has no {} address (a vzNAT or shared network: `networks: [{{vzNAT: true}}]` in \
             lima.yaml); use --transport ssh",
            agent_service::INTERFACE
        ),
        None => Ok(None),
    }
}

/// The agent address (and fallback): the agent service on `tcp_ip` with
/// ssh behind it, or ssh alone.
fn choose_transport(
    a: &StartArgs,
    inst: &limactl::Instance,
    dir: &Path,
    tcp_ip: Option<std::net::Ipv4Addr>,
    agent_bin: &str,
    guest_secret: &str,
) -> anyhow::Result<(String, Option<String>, &'static str)> {
    let name = &inst.name;
    let over_ssh = exec_agent(inst, agent_bin, guest_secret);
    let record = agent_service::record_path(dir);
    if let Ok(text) = std::fs::read_to_string(&record) {
        // A service a previous start left (ferry stopped without `stop`).
        if let Ok(old) = serde_json::from_str::<agent_service::Service>(&text) {
            let _ = agent_service::stop(name, &old);
        }
        let _ = std::fs::remove_file(&record);
    }
    let Some(ip) = tcp_ip else { return Ok((over_ssh, None, "ssh")) };
    let svc = agent_service::Service {
        addr: std::net::SocketAddr::from((ip, a.agent_port)),
        guest_state: a.guest_state.clone(),
    };
    std::fs::write(&record, serde_json::to_string(&svc)?)?;
    match agent_service::start(name, agent_bin, guest_secret, &svc, Duration::from_secs(10)) {
        Ok(()) => Ok((format!("tcp:{}", svc.addr), Some(over_ssh), "tcp")),
        Err(e) if a.transport == TransportChoice::Auto => {
            tracing::warn!("{e}; using ssh");
            let _ = agent_service::stop(name, &svc);
            let _ = std::fs::remove_file(&record);
            Ok((over_ssh, None, "ssh"))
        }
        Err(e) => Err(e),
    }
}

/// Installs the agent and the secret unless the guest has this version
/// already; returns whether it installed anything.
fn install_agent(
    name: &str,
    a: &StartArgs,
    agent_bin: &str,
    secret: &Path,
    guest_secret: &str,
) -> anyhow::Result<bool> {
    let want = format!("ferry-agent {}", env!("CARGO_PKG_VERSION"));
    let have = limactl::shell(name, &format!("sudo {} --version 2>/dev/null || true", quote(agent_bin)))?;
    let current = String::from_utf8_lossy(&have.stdout).trim() == want;
    // The guest's copy must be the host's secret, not merely present: a
    // secret rotated on the host reaches the guest on the next start.
    let host_digest: String = sha2::Sha256::digest(std::fs::read(secret)?).iter().map(|b| format!("{b:02x}")).collect();
    let guest_digest = limactl::shell(name, &format!("sudo sha256sum {} 2>/dev/null || true", quote(guest_secret)))?;
    let secret_ok = String::from_utf8_lossy(&guest_digest.stdout).split_whitespace().next() == Some(&host_digest);
    if current && secret_ok {
        return Ok(false);
    }
    // Files travel through a fresh private directory (mktemp -d: 0700, a
    // new name), never a fixed /tmp path another guest user could claim.
    let staging = limactl::shell(name, "mktemp -d /tmp/ferry.XXXXXXXX")?;
    let staging = String::from_utf8_lossy(&staging.stdout).trim().to_string();
    if !staging.starts_with("/tmp/ferry.") {
        anyhow::bail!("instance {name}: mktemp -d printed {staging:?}");
    }
    let result = install_files(name, a, agent_bin, secret, guest_secret, current, &staging);
    let _ = limactl::shell(name, &format!("rm -rf {}", quote(&staging)));
    result.map(|()| true)
}

/// Copies what is missing through `staging` in the guest and installs it.
fn install_files(
    name: &str,
    a: &StartArgs,
    agent_bin: &str,
    secret: &Path,
    guest_secret: &str,
    current: bool,
    staging: &str,
) -> anyhow::Result<()> {
    if !current {
        let machine = limactl::shell(name, "uname -m")?;
        let arch = agent_binary::GuestArch::from_uname(&String::from_utf8_lossy(&machine.stdout))
            .map_err(|e| anyhow::anyhow!("instance {name}: {e}"))?;
        let local = agent_binary::find(a.agent_binary.as_deref(), &std::env::current_exe()?, arch)
            .map_err(|e| anyhow::anyhow!("instance {name}: {e}"))?;
        tracing::info!("installing {} into {name} ({} guest)", local.display(), arch.name());
        let tmp = format!("{staging}/ferry-agent");
        limactl::copy_in(name, &local, &tmp)?;
        limactl::shell(name, &format!("sudo install -D -m 0755 {} {}", quote(&tmp), quote(agent_bin)))?;
    }
    // The secret always goes with a (re)install: the host's file is the truth.
    let tmp = format!("{staging}/secret");
    limactl::copy_in(name, secret, &tmp)?;
    limactl::shell(name, &format!("sudo install -D -m 0600 {} {}", quote(&tmp), quote(guest_secret)))?;
    Ok(())
}

/// `s` quoted for a POSIX shell: in single quotes, each `'` written as `'\''`.
pub(crate) fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Replaces `path` with `text` atomically: a temporary file beside it with
/// the same permissions, synced, then renamed over it, so Lima never reads a
/// half-written lima.yaml.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, text.as_bytes())?;
    tmp.as_file().sync_all()?;
    if let Ok(meta) = std::fs::metadata(path) {
        tmp.as_file().set_permissions(meta.permissions())?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The `exec:` transport that runs the agent for one session over ssh.
fn exec_agent(inst: &limactl::Instance, agent_bin: &str, guest_secret: &str) -> String {
    // `exec:` runs a local shell, so every word is quoted once for it. ssh
    // joins the remote words into one line for the guest's shell, so those
    // are quoted twice; `limactl shell` quotes each word itself.
    let remote =
        |q: &dyn Fn(&str) -> String| format!("sudo {} --stdio --secret-file {}", q(agent_bin), q(guest_secret));
    match &inst.ssh_config_file {
        Some(cfg) if cfg.exists() => format!(
            "exec:ssh -F {} -o BatchMode=yes {} {}",
            quote(&cfg.display().to_string()),
            quote(&format!("lima-{}", inst.name)),
            remote(&|w| quote(&quote(w)))
        ),
        _ => format!(
            "exec:{} shell --workdir / {} {}",
            quote(&limactl::program().display().to_string()),
            quote(&inst.name),
            remote(&quote)
        ),
    }
}

/// The file in the state dir whose mtime is when ferry last edited lima.yaml.
const YAML_EDITED: &str = "lima-yaml-edited";
/// The file in the state dir that keeps `start`'s report for `status`.
const START_REPORT: &str = "start.json";

/// What `status` says of Lima's side of the instance.
#[derive(Serialize)]
struct LimaState {
    /// Whether Lima's own port and socket forwarding is off: ferry's block
    /// is in lima.yaml and Lima's host agent started after it was written.
    /// Lima reads lima.yaml only when the instance starts.
    lima_forwarding_off: bool,
    /// Socket rules (docker.sock ...) ferry took over from Lima.
    socket_rules_moved: usize,
    /// How `start` reached the agent ("tcp", "ssh" or "given").
    transport: Option<String>,
    /// The agent `start` installed or found in the guest.
    agent_version: Option<String>,
}

fn lima_state(inst: &limactl::Instance, dir: &Path) -> LimaState {
    let text = std::fs::read_to_string(inst.dir.join("lima.yaml")).unwrap_or_default();
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    // Lima's host agent writes ha.pid when it starts.
    let restarted = match (mtime(&inst.dir.join("ha.pid")), mtime(&dir.join(YAML_EDITED))) {
        (Some(started), Some(edited)) => started > edited,
        (Some(_), None) => true,
        _ => false,
    };
    let start: serde_json::Value = std::fs::read_to_string(dir.join(START_REPORT))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    LimaState {
        lima_forwarding_off: lima_yaml::has_ferry_block(&text) && restarted,
        socket_rules_moved: lima_yaml::moved_socket_rules(&text),
        transport: start["transport"].as_str().map(String::from),
        agent_version: start["agent_version"].as_str().map(String::from),
    }
}

/// The name of the pid file `ferry run` holds in the instance's state dir.
const PID_FILE: &str = "ferry.pid";

/// The pid of the instance's running `ferry run`, from the pid file it
/// holds locked (see [`crate::pid_file`]; no /proc needed).
fn running_pid(dir: &Path) -> Option<u32> {
    crate::pid_file::running(&dir.join(PID_FILE))
}

/// Stops the forwarder of `dir` (SIGTERM, then SIGKILL after 10 s).
pub(crate) fn stop_process(dir: &Path) -> bool {
    let Some(pid) = running_pid(dir) else {
        let _ = std::fs::remove_file(dir.join(PID_FILE));
        return false;
    };
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: kill(2) of the pid that holds the pid file's lock.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while running_pid(dir).is_some() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if running_pid(dir).is_some() {
        // SAFETY: as above; it still holds the lock, so it is still that process.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        while running_pid(dir).is_some() && Instant::now() < deadline + Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let _ = std::fs::remove_file(dir.join(PID_FILE));
    true
}

fn stop(a: &InstanceArgs) -> anyhow::Result<()> {
    let inst = limactl::instance(&a.instance)?;
    let stopped = stop_process(&state_dir(&inst.dir));
    let record = agent_service::record_path(&state_dir(&inst.dir));
    if let Ok(text) = std::fs::read_to_string(&record) {
        let svc: agent_service::Service = serde_json::from_str(&text)?;
        match agent_service::stop(&a.instance, &svc) {
            Ok(_) => {
                let _ = std::fs::remove_file(&record);
            }
            // A stopped VM took its agent with it; keep the record for the next start.
            Err(e) => tracing::warn!("could not stop the agent service in {}: {e}", a.instance),
        }
    }
    let lima_yaml = inst.dir.join("lima.yaml");
    let mut restored = false;
    if let Ok(text) = std::fs::read_to_string(&lima_yaml) {
        let back = lima_yaml::restore(&text);
        if back != text {
            write_atomically(&lima_yaml, &back)?;
            restored = true;
        }
    }
    if a.json {
        println!("{}", serde_json::json!({"instance": a.instance, "stopped": stopped, "lima_yaml_restored": restored}));
    } else {
        println!(
            "{}; {}",
            if stopped { "ferry stopped" } else { "ferry was not running" },
            if restored { "Lima forwards again after the next `limactl start`" } else { "lima.yaml unchanged" }
        );
    }
    Ok(())
}

fn status(a: &InstanceArgs) -> anyhow::Result<()> {
    let inst = limactl::instance(&a.instance)?;
    let dir = state_dir(&inst.dir);
    let report = running_pid(&dir).and_then(|_| client::query(&dir.join("ferry.sock")).ok());
    let lima = lima_state(&inst, &dir);
    match (report, a.json) {
        (Some(r), true) => {
            let mut v = serde_json::to_value(&r)?;
            v["lima"] = serde_json::to_value(&lima)?;
            println!("{v}");
        }
        (Some(r), false) => {
            print!("{}", client::render(&r));
            println!(
                "lima: own forwarding {}; {} socket rule(s) served by ferry; agent {} over {}",
                if lima.lima_forwarding_off { "off" } else { "still on until the next `limactl start`" },
                lima.socket_rules_moved,
                lima.agent_version.as_deref().unwrap_or("?"),
                lima.transport.as_deref().unwrap_or("?"),
            );
        }
        (None, true) => println!("{}", serde_json::json!({"instance": a.instance, "running": false})),
        (None, false) => println!("ferry is not running for {}", a.instance),
    }
    Ok(())
}
