//! `start`: install the agent if needed, switch Lima's forwarding off in
//! lima.yaml, start `ferry run` in the background and wait until it is
//! connected. Shared by `limactl ferry start` and whatever else brings
//! ferry up for an instance.

use std::{fs::DirBuilder, os::unix::fs::DirBuilderExt, path::PathBuf, time::Duration};

use serde::Serialize;

use super::{
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
/// connected. Fails if ferry already runs for the instance.
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
    let yaml_edit = match std::fs::read_to_string(&lima_yaml) {
        Ok(text) => {
            let edited = lima_yaml::disable_lima_forwarding(&text)
                .map_err(|e| anyhow::anyhow!("{} cannot be edited: {e}", lima_yaml.display()))?;
            (edited != text).then_some(edited)
        }
        Err(_) => None,
    };
    let tcp_ip = transport::plan_tcp(a, name)?;
    let secret = dir.join(SECRET);
    ferry_process::secret_file::load_or_create(&secret)?;
    let agent_bin = format!("{}/ferry-agent", a.guest_bin);
    let guest_secret = format!("{}/secret", a.guest_etc);
    let installed = install::install_agent(
        name,
        &AgentInstall {
            agent_bin: &agent_bin,
            guest_secret: &guest_secret,
            secret: &secret,
            agent_binary: a.agent_binary.as_deref(),
        },
    )?;
    if let Some(edited) = yaml_edit {
        yaml_file::write_atomically(&lima_yaml, &edited)?;
        // When Lima reads it decides whether its own forwarding is off yet (see `status`).
        std::fs::write(dir.join(YAML_EDITED), b"")?;
    }
    let ssh_master = match (&a.agent, &inst.ssh_config_file, a.no_ssh_master) {
        (None, Some(cfg), false) if cfg.exists() => ssh_control::control_path(cfg, &format!("lima-{}", inst.name)),
        _ => None,
    };
    let chosen = match &a.agent {
        Some(addr) => transport::Chosen { agent: addr.to_string(), fallback: None, transport: "given" },
        None => transport::choose(a, &inst, &dir, tcp_ip, &agent_bin, &guest_secret)?,
    };
    let pid = forwarder::launch(&forwarder::Launch {
        instance: name,
        dir: &dir,
        agent: &chosen.agent,
        fallback: chosen.fallback.as_deref(),
        rules: &lima_yaml,
        ssh_local_port: inst.ssh_local_port,
        ssh_master: ssh_master.as_deref(),
        timeout: Duration::from_secs(a.timeout),
    })?;
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
