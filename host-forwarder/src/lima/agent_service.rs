//! The agent as a service in the guest, listening on TCP at the guest's
//! address on a vzNAT or shared network (Lima's `lima0`), for the fastest
//! transport such an instance allows: plain TCP from the host, with a
//! dedicated data connection per client. Started by `limactl ferry start`
//! (setsid, pid and log in a 0700 state directory in the guest), stopped by
//! `limactl ferry stop`. Who can reach it: the host and whatever else shares
//! that network (other VMs on it); every session and data connection must
//! prove the instance secret.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use ferry_mux::{Address, Session, SessionConfig, Transport};
use ferry_process::secret_file;
use ferry_protocol::Role;
use serde::{Deserialize, Serialize};

use super::limactl::{self, quote};

/// The guest interface Lima gives the first `networks:` entry (vzNAT,
/// socket_vmnet shared or bridged).
pub const INTERFACE: &str = "lima0";

/// What `start` left running, for `stop` (kept in the host's state dir).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Service {
    /// Where the agent listens.
    pub addr: SocketAddr,
    /// The guest directory holding its pid file and log.
    pub guest_state: String,
}

/// The IPv4 address of `lima0` in the guest, if it has one.
pub fn guest_address(instance: &str) -> anyhow::Result<Option<Ipv4Addr>> {
    let out = limactl::shell(instance, &format!("ip -4 addr show dev {INTERFACE} 2>/dev/null || true"))?;
    Ok(parse_inet(&String::from_utf8_lossy(&out.stdout)))
}

/// The first `inet A.B.C.D/N` address in `ip -4 addr show` output
/// (iproute2's and busybox's print the same line).
pub fn parse_inet(ip_output: &str) -> Option<Ipv4Addr> {
    ip_output.lines().find_map(|l| {
        let rest = l.trim_start().strip_prefix("inet ")?;
        rest.split(['/', ' ']).next()?.parse().ok()
    })
}

/// (Re)starts the agent in `instance` listening at `svc.addr`, and waits
/// (at most `wait`) until it answers there with an authenticated hello
/// (ferry's handshake, proving the host's `secret`): a bare connect would
/// take any process on that port for the agent.
pub fn start(
    instance: &str,
    agent_bin: &str,
    guest_secret: &str,
    secret: &Path,
    svc: &Service,
    wait: Duration,
) -> anyhow::Result<()> {
    let d = quote(&svc.guest_state);
    let listen = quote(&format!("tcp:{}", svc.addr));
    let script = format!(
        "umask 077; mkdir -p {d} && chmod 700 {d} || exit 1; {stop} \
         setsid {agent} --listen {listen} --secret-file {secret} --log-file {d}/agent.log \
         </dev/null >>{d}/agent.stderr 2>&1 & \
         echo $! > {d}/agent.pid",
        stop = stop_script(&svc.guest_state),
        agent = quote(agent_bin),
        secret = quote(guest_secret),
    );
    limactl::shell(instance, &format!("sudo sh -c {}", quote(&script)))?;
    let deadline = Instant::now() + wait;
    loop {
        match hello(svc.addr, secret, deadline) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => anyhow::bail!(
                "the agent in {instance} does not answer at {} ({e}; see {}/agent.log there)",
                svc.addr,
                svc.guest_state
            ),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// One session with the agent at `addr`, authenticated with `secret`,
/// closed again; given up at `deadline` (a handshake takes 2 s at most).
fn hello(addr: SocketAddr, secret: &Path, deadline: Instant) -> anyhow::Result<()> {
    let secret = secret_file::session_secret(Some(secret), false, false)?;
    let cfg = SessionConfig { secret, handshake_timeout: Duration::from_secs(2), ..SessionConfig::default() };
    let limit = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(500));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let attempt = async {
            let transport = Transport::dial(&Address::Tcp(addr.to_string())).await?;
            let (session, _events) = Session::start(transport, Role::Host, cfg).await?;
            session.close("ready").await;
            anyhow::Ok(())
        };
        tokio::time::timeout(limit, attempt).await.map_err(|_| anyhow::anyhow!("no hello within {limit:?}"))?
    })
}

/// Stops the agent service `svc` started; true if one ran.
pub fn stop(instance: &str, svc: &Service) -> anyhow::Result<bool> {
    let script = format!("{} [ -n \"$p\" ]", stop_script(&svc.guest_state));
    let out = limactl::shell(instance, &format!("sudo sh -c {} && echo stopped || true", quote(&script)))?;
    Ok(String::from_utf8_lossy(&out.stdout).contains("stopped"))
}

/// Stops the service whose record a previous start left in `state_dir`
/// (ferry stopped without `stop`, or a start failed) and forgets it; true
/// if one ran. A record kept because the guest could not be reached stays.
pub fn stop_recorded(instance: &str, state_dir: &Path) -> anyhow::Result<bool> {
    let record = record_path(state_dir);
    let Ok(text) = std::fs::read_to_string(&record) else { return Ok(false) };
    let stopped = match serde_json::from_str::<Service>(&text) {
        Ok(old) => stop(instance, &old)?,
        Err(_) => false,
    };
    let _ = std::fs::remove_file(&record);
    Ok(stopped)
}

/// Shell that ends the agent whose pid file is in `guest_state` (only if
/// that pid is still a ferry-agent): SIGTERM, up to 5 s to go, then
/// SIGKILL; leaves its pid in `$p` (empty if none ran).
fn stop_script(guest_state: &str) -> String {
    let pid_file = quote(&format!("{guest_state}/agent.pid"));
    format!(
        "p=$(cat {pid_file} 2>/dev/null); \
         if [ -n \"$p\" ] && grep -q ferry-agent /proc/$p/cmdline 2>/dev/null; then \
           kill $p; i=0; while kill -0 $p 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; \
           if kill -0 $p 2>/dev/null; then kill -9 $p; i=0; \
             while kill -0 $p 2>/dev/null && [ $i -lt 20 ]; do sleep 0.1; i=$((i+1)); done; fi; \
         else p=; fi; rm -f {pid_file};"
    )
}

/// The service record's path in the host state dir.
pub fn record_path(state_dir: &Path) -> std::path::PathBuf {
    state_dir.join("agent-service.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_address_of_iproute2_and_busybox_output() {
        let iproute2 = "3: lima0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc fq_codel state UP group default qlen 1000\n    inet 192.168.64.3/24 metric 100 brd 192.168.64.255 scope global dynamic lima0\n       valid_lft 3000sec preferred_lft 3000sec\n";
        assert_eq!(parse_inet(iproute2), Some(Ipv4Addr::new(192, 168, 64, 3)));
        let busybox = "3: lima0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500\n    inet 192.168.105.2/24 brd 192.168.105.255 scope global lima0\n";
        assert_eq!(parse_inet(busybox), Some(Ipv4Addr::new(192, 168, 105, 2)));
        assert_eq!(parse_inet(""), None);
        assert_eq!(parse_inet("    inet6 fe80::1/64 scope link\n"), None);
    }
}
