//! `start`: install the agent if needed, switch Lima's forwarding off in
//! lima.yaml, start `ferry run` in the background and wait until it is
//! connected. Shared by `limactl ferry start` and whatever else brings
//! ferry up for an instance.

use std::{
    fs::DirBuilder,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Serialize;

use super::{
    agent_service,
    cli::StartArgs,
    forwarder,
    install::{self, AgentInstall},
    lima_yaml, limactl, ssh_control,
    state_dir::{state_dir, CONTROL_SOCKET, LOG, SECRET, START_REPORT, YAML_EDITED},
    transport, yaml_file,
};

/// What `start` did (printed with `--json`, kept in the state dir for `status`).
#[derive(Debug, Serialize)]
pub struct StartReport {
    /// The instance.
    pub instance: String,
    /// The pid of the background `ferry run`.
    pub pid: u32,
    /// The agent's transport address.
    pub agent: String,
    /// "tcp", "ssh" or "given" (--agent).
    pub transport: &'static str,
    /// The agent in the guest (this ferry's version once installed).
    pub agent_version: String,
    /// Where ferry goes when `agent` cannot be reached.
    pub fallback_agent: Option<String>,
    /// Whether the agent or the secret was (re)installed in the guest.
    pub agent_installed: bool,
    /// The ControlMaster connections go through, if any.
    pub ssh_master: Option<PathBuf>,
    /// The forwarder's control socket.
    pub control_socket: PathBuf,
    /// The forwarder's log.
    pub log: PathBuf,
}

/// Brings ferry up for the running instance `a.target.instance`: installs
/// the agent and the secret in the guest when missing or outdated, edits
/// lima.yaml (see [`lima_yaml::disable_lima_forwarding`]), chooses the
/// transport and starts the background forwarder, waiting until it is
/// connected. Fails if ferry already runs for the instance; a start that
/// fails after changing anything takes its changes back (lima.yaml, the
/// agent service, the forwarder).
pub fn start(a: &StartArgs) -> anyhow::Result<StartReport> {
    let name = &a.target.instance;
    let inst = limactl::instance(name)?;
    if inst.status != "Running" {
        anyhow::bail!("instance {name} is {}; start it with `limactl start {name}` first", inst.status);
    }
    let dir = state_dir(&inst.dir);
    DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
    if let Some(pid) = forwarder::running_pid(&dir) {
        anyhow::bail!("ferry already runs for {name} (pid {pid}); `limactl ferry stop {name}` first");
    }
    // lima.yaml is checked before anything changes: a form ferry does not
    // edit stops the start with what to change.
    let lima_yaml = inst.dir.join("lima.yaml");
    if let Some(text) = std::fs::read_to_string(&lima_yaml).ok().filter(|_| !a.keep_lima_yaml) {
        lima_yaml::disable_lima_forwarding(&text)
            .map_err(|e| anyhow::anyhow!("{} cannot be edited: {e}", lima_yaml.display()))?;
    }
    let tcp_ip = transport::plan_tcp(a, name)?;
    let secret = dir.join(SECRET);
    ferry_process::secret_file::load_or_create(&secret)?;
    let (agent_bin, guest_secret) = guest_paths(a);
    let installed = install::install_agent(
        name,
        &AgentInstall {
            agent_bin: &agent_bin,
            guest_secret: &guest_secret,
            secret: &secret,
            agent_binary: a.agent_binary.as_deref(),
        },
    )?;
    // Nothing of an earlier start may stay: a service it left (even when
    // this start is given its own --agent) is stopped first.
    agent_service::stop_recorded(name, &dir)?;
    let mut changed = Changes::default();
    let launched = bring_up(a, &inst, &dir, tcp_ip, &mut changed);
    let (chosen, ssh_master, pid) = match launched {
        Ok(up) => up,
        Err(e) => {
            // A failed start leaves the instance as it found it.
            if let Err(undo) = changed.undo(name, &dir, &lima_yaml) {
                tracing::warn!("undoing the failed start of {name}: {undo}");
            }
            return Err(e);
        }
    };
    let report = StartReport {
        instance: name.clone(),
        pid,
        agent: chosen.agent,
        transport: chosen.transport,
        agent_version: format!("ferry-agent {}", env!("CARGO_PKG_VERSION")),
        fallback_agent: chosen.fallback,
        agent_installed: installed,
        ssh_master,
        control_socket: dir.join(CONTROL_SOCKET),
        log: dir.join(LOG),
    };
    std::fs::write(dir.join(START_REPORT), serde_json::to_string(&report)?)?;
    Ok(report)
}

/// What a start changed so far, to be undone if it fails.
#[derive(Default)]
struct Changes {
    /// ferry's edit is in lima.yaml.
    lima_yaml: bool,
}

impl Changes {
    /// Takes lima.yaml's edit back (keeping what the user changed) and
    /// stops the agent service and the forwarder a failed start may have left.
    fn undo(&self, name: &str, dir: &Path, lima_yaml: &Path) -> anyhow::Result<()> {
        forwarder::stop(dir);
        let service = agent_service::stop_recorded(name, dir);
        if self.lima_yaml {
            yaml_file::update(lima_yaml, |t| lima_yaml::restore_checked(t).map_err(anyhow::Error::msg))?;
            let _ = std::fs::remove_file(dir.join(YAML_EDITED));
        }
        service.map(drop)
    }
}

/// The part of a start that changes the instance: lima.yaml's edit (made
/// from the file as it is now, see [`yaml_file::update`]), the agent
/// service, the forwarder. Records in `changed` what it did.
fn bring_up(
    a: &StartArgs,
    inst: &limactl::Instance,
    dir: &Path,
    tcp_ip: Option<std::net::Ipv4Addr>,
    changed: &mut Changes,
) -> anyhow::Result<(transport::Chosen, Option<PathBuf>, u32)> {
    let (agent_bin, guest_secret) = guest_paths(a);
    let lima_yaml = &inst.dir.join("lima.yaml");
    let name = &inst.name;
    let edit = |t: &str| {
        lima_yaml::disable_lima_forwarding(t)
            .map_err(|e| anyhow::anyhow!("{} cannot be edited: {e}", lima_yaml.display()))
    };
    // A daemon's start leaves lima.yaml alone: `limactl ferry enable` made
    // the edit (for Colima in override.yaml, as Colima rewrites lima.yaml).
    if !a.keep_lima_yaml && yaml_file::update(lima_yaml, edit)?.is_some() {
        changed.lima_yaml = true;
        // When Lima reads it decides whether its own forwarding is off yet (see `status`).
        std::fs::write(dir.join(YAML_EDITED), b"")?;
    }
    let ssh_master = match (&a.agent, &inst.ssh_config_file, a.no_ssh_master) {
        (None, Some(cfg), false) if cfg.exists() => {
            let host = format!("lima-{}", inst.name);
            // The session no longer starts the master (it has an ssh
            // connection of its own), so it is brought up here if absent.
            ssh_control::control_path(cfg, &host).inspect(|_| ssh_control::ensure_master(cfg, &host))
        }
        _ => None,
    };
    let chosen = match &a.agent {
        Some(addr) => transport::Chosen { agent: addr.to_string(), fallback: None, transport: "given" },
        None => transport::choose(a, inst, dir, tcp_ip, &agent_bin, &guest_secret, ssh_master.is_some())?,
    };
    let pid = forwarder::launch(&forwarder::Launch {
        instance: name,
        dir,
        agent: &chosen.agent,
        fallback: chosen.fallback.as_deref(),
        rules: lima_yaml,
        ssh_local_port: inst.ssh_local_port,
        ssh_master: ssh_master.as_deref(),
        ssh_config: inst.ssh_config_file.as_deref(),
        timeout: Duration::from_secs(a.timeout),
    })?;
    Ok((chosen, ssh_master, pid))
}

/// Where the agent and the secret go in the guest.
fn guest_paths(a: &StartArgs) -> (String, String) {
    (format!("{}/ferry-agent", a.guest_bin), format!("{}/secret", a.guest_etc))
}
