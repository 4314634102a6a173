//! The reverse channel on the guest side: listeners the host asks for
//! (a TCP address such as 127.0.0.1:5432, or a Unix socket such as the
//! host's SSH agent) whose connections travel back to the host as streams.
//!
//! The agent names only the listener's id; the host alone decides where the
//! connection goes, so a guest cannot make the host dial anything else.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    os::unix::fs::{DirBuilderExt, MetadataExt},
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use ferry_mux::{
    accept_errors::AcceptErrors,
    traffic::ConnStats,
    udp_flows::{self, UdpLimits},
    LocalConn, Session, Traffic,
};
use ferry_protocol::{ControlMessage, GuestEndpoint, Proto, ReverseListener, Target};
use tokio::{
    net::{TcpListener, UnixListener},
    task::JoinHandle,
};

/// Guest TCP and UDP addresses of reverse listeners; discovery leaves them
/// out so they are not forwarded back to the host. A watch, so that the port
/// report is recomputed when the set changes, not only when the ports do.
pub type ReverseAddrs = tokio::sync::watch::Sender<BTreeSet<(Proto, SocketAddr)>>;

struct Running {
    spec: ReverseListener,
    task: JoinHandle<()>,
    /// A Unix listener's bind, shared with the blocking pool.
    unix: Option<Arc<UnixBind>>,
}

/// Where a Unix listener's bind stands.
#[derive(Default)]
struct UnixBind {
    /// Set once its socket is bound: only a socket this listener made is
    /// removed when it closes.
    bound: AtomicBool,
    /// Set when the listener closes: a bind still waiting (on a hung mount)
    /// then makes no socket when it goes on, which nobody would listen on
    /// or remove.
    closed: AtomicBool,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(unix) = &self.unix {
            unix.closed.store(true, Ordering::Release);
        }
        self.task.abort();
        // Only a socket this listener bound is removed, and at once, so that
        // a listener started next at the same path (which `apply` does right
        // after) never loses its new socket to this removal.
        let bound = self.unix.as_ref().is_some_and(|u| u.bound.load(Ordering::Relaxed));
        if let (GuestEndpoint::Unix(path), true) = (&self.spec.guest, bound) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The reverse listeners of one session; dropping it closes them all.
pub struct ReverseListeners {
    session: Session,
    addrs: ReverseAddrs,
    running: BTreeMap<u32, Running>,
}

impl ReverseListeners {
    /// No listeners yet.
    pub fn new(session: Session, addrs: ReverseAddrs) -> Self {
        Self { session, addrs, running: BTreeMap::new() }
    }

    /// Makes the running listeners match `wanted`, reporting each new one's state.
    pub fn apply(&mut self, wanted: Vec<ReverseListener>) {
        // A listener whose task ended (a Unix socket that could not be
        // bound) is started again.
        self.running.retain(|id, r| wanted.iter().any(|w| w.id == *id && *w == r.spec) && !r.task.is_finished());
        // Left out before they listen: a scan may see a new listener before
        // this call ends, and must not report it to the host.
        self.addrs.send_modify(|own| own.extend(wanted.iter().filter_map(inet_addr)));
        for spec in wanted {
            if self.running.contains_key(&spec.id) {
                continue;
            }
            let error = match self.start(&spec) {
                // A Unix listener reports its state itself, once bound.
                Ok((task, Some(unix))) => {
                    self.running.insert(spec.id, Running { spec: spec.clone(), task, unix: Some(unix) });
                    continue;
                }
                Ok((task, None)) => {
                    tracing::info!("reverse listener {:?} -> host (id {})", spec.guest, spec.id);
                    self.running.insert(spec.id, Running { spec: spec.clone(), task, unix: None });
                    None
                }
                Err(e) => {
                    tracing::warn!("reverse listener {:?}: {e}", spec.guest);
                    Some(e)
                }
            };
            let _ = self.session.send_control(&ControlMessage::ReverseState { id: spec.id, error });
        }
        self.addrs.send_replace(self.running.values().filter_map(|r| inet_addr(&r.spec)).collect());
    }

    /// Starts a listener's task; a Unix listener's comes with its bind's
    /// state, and binds and reports its state from the task.
    fn start(&self, spec: &ReverseListener) -> Result<(JoinHandle<()>, Option<Arc<UnixBind>>), String> {
        let (session, id) = (self.session.clone(), spec.id);
        match &spec.guest {
            GuestEndpoint::Tcp(addr) => {
                let std = std::net::TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
                std.set_nonblocking(true).map_err(|e| e.to_string())?;
                let l = TcpListener::from_std(std).map_err(|e| e.to_string())?;
                let name = addr.to_string();
                Ok((
                    tokio::spawn(async move {
                        let mut errors = AcceptErrors::default();
                        loop {
                            match l.accept().await {
                                Ok((tcp, _)) => {
                                    let _ = tcp.set_nodelay(true);
                                    tokio::spawn(to_host(session.clone(), id, LocalConn::Tcp(tcp)));
                                }
                                Err(e) => errors.pause_after(&name, &e).await,
                            }
                        }
                    }),
                    None,
                ))
            }
            GuestEndpoint::Udp(addr) => {
                let std = std::net::UdpSocket::bind(addr).map_err(|e| format!("cannot listen on udp {addr}: {e}"))?;
                std.set_nonblocking(true).map_err(|e| e.to_string())?;
                let socket = tokio::net::UdpSocket::from_std(std).map_err(|e| e.to_string())?;
                ferry_mux::udp_buffers::enlarge(&socket);
                // Each guest client is a flow back to the host, within the same
                // bounds as host clients of a forwarded UDP port.
                let stats = Arc::new(ConnStats::default());
                let target = move || Target::Reverse(id);
                Ok((tokio::spawn(udp_flows::serve_clients(socket, session, target, stats, UdpLimits::default())), None))
            }
            GuestEndpoint::Unix(path) => {
                // Binding resolves the path, which may sit under a hung
                // mount: on the blocking pool, its state reported from there.
                let name = path.clone();
                let unix = Arc::new(UnixBind::default());
                let state = unix.clone();
                let task = tokio::spawn(async move {
                    tracing::debug!("reverse listener {name}: binding");
                    let binding = {
                        let (path, state) = (name.clone(), state.clone());
                        tokio::task::spawn_blocking(move || bind_unix(Path::new(&path), &state.closed))
                    };
                    let l = match binding.await.map_err(std::io::Error::other).and_then(|r| r) {
                        Ok(l) => l,
                        Err(e) => {
                            let error = format!("cannot listen on {name}: {e}");
                            tracing::warn!("reverse listener {name}: {error}");
                            let _ = session.send_control(&ControlMessage::ReverseState { id, error: Some(error) });
                            return;
                        }
                    };
                    state.bound.store(true, Ordering::Relaxed);
                    tracing::info!("reverse listener {name} -> host (id {id})");
                    let _ = session.send_control(&ControlMessage::ReverseState { id, error: None });
                    let mut errors = AcceptErrors::default();
                    loop {
                        match l.accept().await {
                            Ok((unix, _)) => {
                                tokio::spawn(to_host(session.clone(), id, LocalConn::Unix(unix)));
                            }
                            Err(e) => errors.pause_after(&name, &e).await,
                        }
                    }
                });
                Ok((task, Some(unix)))
            }
        }
    }
}

/// The guest TCP or UDP address a reverse listener takes, if it has one.
fn inet_addr(spec: &ReverseListener) -> Option<(Proto, SocketAddr)> {
    match spec.guest {
        GuestEndpoint::Tcp(a) => Some((Proto::Tcp, a)),
        GuestEndpoint::Udp(a) => Some((Proto::Udp, a)),
        GuestEndpoint::Unix(_) => None,
    }
}

/// Opens a stream to the host for one accepted guest connection.
async fn to_host(session: Session, id: u32, conn: LocalConn) {
    match session.open(&Target::Reverse(id)).await {
        Ok(stream) => {
            if let Some(reason) = conn.pump(stream, &Traffic::default()).await {
                tracing::debug!("reverse connection (id {id}) reset: {reason}");
            }
        }
        Err(e) => {
            tracing::debug!("reverse connection (id {id}) refused by the host: {e}");
            conn.abort();
        }
    }
}

/// Binds a Unix socket at `path`: a missing directory is created 0700, a
/// stale socket replaced only if it belongs to the directory's owner or to
/// root (never another user's, never another kind of file), and the socket
/// exists only as 0600 and owned by the owner of its directory (so that
/// /run/user/1000/x.sock belongs to user 1000). Once `closed` is set
/// (the listener closed while this waited on the file system), it makes
/// nothing and touches no existing socket.
fn bind_unix(path: &Path, closed: &AtomicBool) -> std::io::Result<UnixListener> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    let owner = std::fs::metadata(dir)?;
    if let Ok(old) = std::fs::symlink_metadata(path) {
        if old.uid() != owner.uid() && old.uid() != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "{} belongs to uid {}, not to its directory's owner; refusing to replace it",
                    path.display(),
                    old.uid()
                ),
            ));
        }
    }
    if closed.load(Ordering::Acquire) {
        tracing::debug!("reverse listener {}: closed before it was bound; not binding", path.display());
        return Err(std::io::Error::other("the listener closed before its socket was bound"));
    }
    ferry_mux::transport::remove_stale_socket(path)?;
    let l = ferry_mux::private_socket::bind(path, Some((owner.uid(), owner.gid())))?;
    l.set_nonblocking(true)?;
    UnixListener::from_std(l)
}
