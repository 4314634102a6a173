//! The reverse channel on the host side: host services (a database on
//! 127.0.0.1:5432, the SSH agent's socket) reachable inside the guest. The
//! agent listens in the guest and opens a `Reverse(id)` stream per
//! connection; the host connects it to the endpoint it configured under
//! that id, and to nothing else.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use ferry_mux::{IncomingOpen, LocalConn};
use ferry_protocol::{ControlMessage, GuestEndpoint, ReverseListener, Target};
use tokio::net::{TcpStream, UnixStream};

use crate::status::{
    board::{Row, Section},
    ConnStats, StatusBoard,
};

/// How long the host tries to reach a host endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A host endpoint of a reverse forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEndpoint {
    /// A TCP address on the host.
    Tcp(SocketAddr),
    /// A Unix socket on the host.
    Unix(PathBuf),
    /// A UDP address on the host (for a [`GuestEndpoint::Udp`] listener).
    Udp(SocketAddr),
}

impl std::fmt::Display for HostEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(a) => write!(f, "{a}"),
            Self::Unix(p) => write!(f, "{}", p.display()),
            Self::Udp(a) => write!(f, "udp:{a}"),
        }
    }
}

/// One reverse forward: listen at `guest`, connect to `host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReverseForward {
    /// Where the agent listens in the guest.
    pub guest: GuestEndpoint,
    /// Where connections go on the host.
    pub host: HostEndpoint,
}

/// Parses `GUEST=HOST` (each a TCP address or an absolute socket path),
/// or a bare port `P` for 127.0.0.1:P on both sides; with a `udp:` prefix,
/// a UDP forward (`udp:P` or `udp:GUEST=HOST`, both IP:PORT).
pub fn parse_reverse(s: &str) -> Result<ReverseForward, String> {
    if let Some(udp) = s.strip_prefix("udp:") {
        if let Ok(port) = udp.parse::<u16>() {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            return Ok(ReverseForward { guest: GuestEndpoint::Udp(addr), host: HostEndpoint::Udp(addr) });
        }
        let (guest, host) = udp.split_once('=').ok_or_else(|| format!("{s:?}: expected udp:GUEST=HOST or udp:PORT"))?;
        return forward(&format!("udp:{guest}"), host);
    }
    if let Ok(port) = s.parse::<u16>() {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        return Ok(ReverseForward { guest: GuestEndpoint::Tcp(addr), host: HostEndpoint::Tcp(addr) });
    }
    let (guest, host) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected GUEST=HOST or a port"))?;
    forward(guest, host)
}

/// A reverse forward from its two ends as written (`reverseForwards:` in a
/// config file): a `udp:` guest makes the host end a UDP address too.
pub fn forward(guest: &str, host: &str) -> Result<ReverseForward, String> {
    let guest = guest_endpoint(guest)?;
    let host = match guest {
        GuestEndpoint::Udp(_) => {
            let h = host.strip_prefix("udp:").unwrap_or(host);
            HostEndpoint::Udp(h.parse().map_err(|_| format!("{host:?}: a UDP forward's host end is IP:PORT"))?)
        }
        _ => host_endpoint(host)?,
    };
    Ok(ReverseForward { guest, host })
}

/// A guest endpoint: an absolute path, a TCP address, or `udp:` and a UDP address.
pub fn guest_endpoint(s: &str) -> Result<GuestEndpoint, String> {
    if let Some(udp) = s.strip_prefix("udp:") {
        return udp.parse().map(GuestEndpoint::Udp).map_err(|_| format!("{s:?}: expected udp:IP:PORT"));
    }
    if s.starts_with('/') {
        return Ok(GuestEndpoint::Unix(s.to_string()));
    }
    s.parse().map(GuestEndpoint::Tcp).map_err(|_| format!("{s:?} is neither an absolute socket path nor IP:PORT"))
}

/// A host endpoint: an absolute path or a TCP address.
pub fn host_endpoint(s: &str) -> Result<HostEndpoint, String> {
    if s.starts_with('/') {
        return Ok(HostEndpoint::Unix(s.into()));
    }
    s.parse().map(HostEndpoint::Tcp).map_err(|_| format!("{s:?} is neither an absolute socket path nor IP:PORT"))
}

/// The reverse forwards of one session.
pub struct ReverseForwarder {
    forwards: Vec<(ReverseForward, Arc<ConnStats>, Option<String>)>,
    board: StatusBoard,
}

impl ReverseForwarder {
    /// Asks the agent to open the listeners (ids are 1-based positions).
    pub fn start(session: &ferry_mux::Session, forwards: &[ReverseForward], board: StatusBoard) -> Self {
        if !forwards.is_empty() {
            let listeners = forwards
                .iter()
                .enumerate()
                .map(|(i, f)| ReverseListener { id: i as u32 + 1, guest: f.guest.clone() })
                .collect();
            let _ = session.send_control(&ControlMessage::ReverseListeners(listeners));
        }
        let forwards = forwards
            .iter()
            .map(|f| (f.clone(), Arc::new(ConnStats::default()), Some("waiting for the agent".to_string())))
            .collect();
        let s = Self { forwards, board };
        s.publish();
        s
    }

    /// Records the agent's report on listener `id`.
    pub fn set_state(&mut self, id: u32, error: Option<String>) {
        if let Some((f, _, state)) = self.forwards.get_mut(id.wrapping_sub(1) as usize) {
            match &error {
                None => tracing::info!("reverse: guest {:?} -> host {}", f.guest, f.host),
                Some(e) => tracing::warn!("reverse forward to host {} failed in the guest: {e}", f.host),
            }
            *state = error;
        }
        self.publish();
    }

    /// Serves a stream the agent opened: a connection to a reverse listener.
    pub fn serve(&self, open: IncomingOpen) {
        let Target::Reverse(id) = open.target else {
            return open.refuse("the host accepts only reverse streams");
        };
        let Some((f, stats, _)) = self.forwards.get(id.wrapping_sub(1) as usize) else {
            return open.refuse(&format!("no reverse forward with id {id}"));
        };
        let (host, stats) = (f.host.clone(), stats.clone());
        if let HostEndpoint::Udp(addr) = host {
            // One flow: a guest client of the UDP listener.
            tokio::spawn(async move {
                let _active = stats.open();
                ferry_mux::udp_flows::serve_flow(open, addr, &stats.traffic).await;
            });
            return;
        }
        tokio::spawn(async move {
            let _active = stats.open();
            let local = match connect(&host).await {
                Ok(l) => l,
                Err(e) => return open.refuse(&format!("connect to {host} on the host: {e}")),
            };
            let Ok(stream) = open.accept().await else { return local.abort() };
            if let Some(reason) = local.pump(stream, &stats.traffic).await {
                tracing::debug!("reverse connection to {host} reset: {reason}");
            }
        });
    }

    fn publish(&self) {
        let rows = self
            .forwards
            .iter()
            .map(|(f, stats, error)| {
                let (proto, guest) = match &f.guest {
                    GuestEndpoint::Tcp(a) => ("reverse-tcp", a.to_string()),
                    GuestEndpoint::Unix(p) => ("reverse-unix", p.clone()),
                    GuestEndpoint::Udp(a) => ("reverse-udp", a.to_string()),
                };
                Row {
                    proto,
                    guest,
                    host: f.host.to_string(),
                    state: if error.is_none() { "listening" } else { "failed" },
                    reason: error.clone(),
                    stats: Some(stats.clone()),
                }
            })
            .collect();
        self.board.set_rows(Section::Reverse, rows);
    }
}

async fn connect(host: &HostEndpoint) -> std::io::Result<LocalConn> {
    let conn = async {
        Ok(match host {
            HostEndpoint::Tcp(a) => {
                let tcp = TcpStream::connect(a).await?;
                let _ = tcp.set_nodelay(true);
                LocalConn::Tcp(tcp)
            }
            HostEndpoint::Unix(p) => LocalConn::Unix(UnixStream::connect(p).await?),
            HostEndpoint::Udp(_) => return Err(std::io::Error::other("a UDP endpoint has no connection")),
        })
    };
    tokio::time::timeout(CONNECT_TIMEOUT, conn)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_reverse_specs() {
        let r = parse_reverse("5432").unwrap();
        assert_eq!(r.guest, GuestEndpoint::Tcp("127.0.0.1:5432".parse().unwrap()));
        assert_eq!(r.host, HostEndpoint::Tcp("127.0.0.1:5432".parse().unwrap()));
        let r = parse_reverse("127.0.0.1:15432=127.0.0.1:5432").unwrap();
        assert_eq!(r.guest, GuestEndpoint::Tcp("127.0.0.1:15432".parse().unwrap()));
        let r = parse_reverse("/run/host-ssh.sock=/tmp/ssh-x/agent.1").unwrap();
        assert_eq!(r.guest, GuestEndpoint::Unix("/run/host-ssh.sock".into()));
        assert_eq!(r.host, HostEndpoint::Unix("/tmp/ssh-x/agent.1".into()));
        let r = parse_reverse("udp:5353").unwrap();
        assert_eq!(r.guest, GuestEndpoint::Udp("127.0.0.1:5353".parse().unwrap()));
        assert_eq!(r.host, HostEndpoint::Udp("127.0.0.1:5353".parse().unwrap()));
        let r = parse_reverse("udp:127.0.0.1:53=127.0.0.1:5300").unwrap();
        assert_eq!(r.guest, GuestEndpoint::Udp("127.0.0.1:53".parse().unwrap()));
        assert_eq!(r.host, HostEndpoint::Udp("127.0.0.1:5300".parse().unwrap()));
        assert!(parse_reverse("udp:127.0.0.1:53=/tmp/x.sock").is_err(), "no UDP to a Unix socket");
        assert!(parse_reverse("nonsense").is_err());
        assert!(parse_reverse("relative.sock=/x").is_err());
    }
}
