//! How `start` reaches the agent: the agent service on the guest's lima0
//! address over TCP (with ssh behind it), or the agent per session over ssh
//! (`exec:` with the instance's ssh.config, else `limactl shell`).

use std::{net::Ipv4Addr, path::Path, time::Duration};

use super::{
    agent_service,
    cli::{StartArgs, TransportChoice},
    limactl::{self, quote},
    state_dir::SECRET,
};

/// Where the agent will listen on TCP (the guest's lima0 address), if the
/// transport `a` asks for allows and the guest has one; decided before
/// anything changes, so that `--transport tcp` without such an address
/// fails first.
pub fn plan_tcp(a: &StartArgs, name: &str) -> anyhow::Result<Option<Ipv4Addr>> {
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

/// The agent address `start` chose, with its fallback.
pub struct Chosen {
    /// The agent's transport address.
    pub agent: String,
    /// Where ferry goes when `agent` cannot be reached.
    pub fallback: Option<String>,
    /// "tcp" or "ssh".
    pub transport: &'static str,
}

/// The agent address (and fallback): the agent service on `tcp_ip` with
/// ssh behind it, or ssh alone. The service is recorded in `dir` before it
/// starts, so that `stop` (or a failed start) can end it. With
/// `own_ssh_connection` (connections go through the ControlMaster), the
/// session over ssh gets an ssh connection of its own.
pub fn choose(
    a: &StartArgs,
    inst: &limactl::Instance,
    dir: &Path,
    tcp_ip: Option<Ipv4Addr>,
    agent_bin: &str,
    guest_secret: &str,
    own_ssh_connection: bool,
) -> anyhow::Result<Chosen> {
    let name = &inst.name;
    let over_ssh = exec_agent(inst, agent_bin, guest_secret, own_ssh_connection);
    let record = agent_service::record_path(dir);
    let ssh = |over_ssh| Chosen { agent: over_ssh, fallback: None, transport: "ssh" };
    let Some(ip) = tcp_ip else { return Ok(ssh(over_ssh)) };
    let svc = agent_service::Service {
        addr: std::net::SocketAddr::from((ip, a.agent_port)),
        guest_state: a.guest_state.clone(),
    };
    std::fs::write(&record, serde_json::to_string(&svc)?)?;
    let secret = dir.join(SECRET);
    match agent_service::start(name, agent_bin, guest_secret, &secret, &svc, Duration::from_secs(10)) {
        Ok(()) => Ok(Chosen { agent: format!("tcp:{}", svc.addr), fallback: Some(over_ssh), transport: "tcp" }),
        Err(e) if a.transport == TransportChoice::Auto => {
            tracing::warn!("{e}; using ssh");
            let _ = agent_service::stop(name, &svc);
            let _ = std::fs::remove_file(&record);
            Ok(ssh(over_ssh))
        }
        Err(e) => Err(e),
    }
}

/// The `exec:` transport that runs the agent for one session over ssh.
///
/// With `own_connection`, the ssh does not share the instance's
/// ControlMaster (Lima's ssh.config says `ControlMaster auto`): the master
/// then carries the connections ferry hands it while the session encrypts
/// on an ssh connection, a process and a core of its own, on the host and
/// in the guest (sharing, every byte of both went through the master's
/// single cipher).
pub fn exec_agent(inst: &limactl::Instance, agent_bin: &str, guest_secret: &str, own_connection: bool) -> String {
    // `exec:` runs a local shell, so every word is quoted once for it. ssh
    // joins the remote words into one line for the guest's shell, so those
    // are quoted twice; `limactl shell` quotes each word itself.
    let remote =
        |q: &dyn Fn(&str) -> String| format!("sudo {} --stdio --secret-file {}", q(agent_bin), q(guest_secret));
    match &inst.ssh_config_file {
        Some(cfg) if cfg.exists() => format!(
            "exec:ssh -F {} -o BatchMode=yes {}{} {}",
            quote(&cfg.display().to_string()),
            if own_connection { "-o ControlMaster=no -o ControlPath=none " } else { "" },
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
