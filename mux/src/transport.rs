//! Connecting and listening on every transport kind, yielding a
//! [`Transport`]: a pair of byte-stream halves plus whatever must live as long
//! as they do (the child process of `exec:`).

use std::{
    io,
    os::unix::fs::FileTypeExt,
    path::{Path, PathBuf},
    process::Stdio,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UnixListener, UnixStream},
    process::{Child, Command},
};
#[cfg(target_os = "linux")]
use tokio_vsock::{VsockAddr, VsockListener, VsockStream};

#[cfg(target_os = "linux")]
use crate::vsock::VsockConn;

use crate::{unix_conn::UnixConn, Address};

pub use crate::halves::{BoxRead, BoxWrite};

/// One established byte stream between the two peers.
pub struct Transport {
    /// Bytes from the peer.
    pub reader: BoxRead,
    /// Bytes to the peer.
    pub writer: BoxWrite,
    /// A human-readable description of the peer, for logs.
    pub peer: String,
    /// For `exec:`: the command, killed when the transport is dropped.
    pub child: Option<Child>,
    /// The bytes cross a network that others may see or write to (TCP), so
    /// the session seals them ([`ferry_protocol::seal`]). Unix sockets,
    /// vsock, a command's pipes (ssh encrypts itself) and stdio are private
    /// to the two peers.
    pub exposed: bool,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport").field("peer", &self.peer).finish_non_exhaustive()
    }
}

impl Transport {
    /// A transport over a connected Unix stream socket.
    pub fn from_unix(s: UnixStream, peer: String) -> Self {
        let (r, w) = s.into_split();
        Self { reader: Box::pin(r), writer: Box::pin(w), peer, child: None, exposed: false }
    }

    fn from_tcp(s: TcpStream, peer: String) -> Self {
        let _ = s.set_nodelay(true);
        let (r, w) = s.into_split();
        Self { reader: Box::pin(r), writer: Box::pin(w), peer, child: None, exposed: true }
    }

    #[cfg(target_os = "linux")]
    fn from_vsock(s: VsockStream, peer: String) -> Self {
        let (r, w) = s.into_split();
        Self { reader: Box::pin(r), writer: Box::pin(w), peer, child: None, exposed: false }
    }

    /// This process's stdin and stdout (the agent's `--stdio` mode).
    /// Pipes and sockets are driven by the reactor (see [`crate::stdio`]).
    pub fn stdio() -> Self {
        let (reader, writer) = crate::stdio::halves();
        Self { reader, writer, peer: "stdio".into(), child: None, exposed: false }
    }

    /// Connects to `addr` (the host side's dial).
    pub async fn dial(addr: &Address) -> io::Result<Self> {
        let peer = addr.to_string();
        match addr {
            Address::Unix(path) => Ok(Self::from_unix(unix_buffers(UnixStream::connect(path).await?), peer)),
            Address::Tcp(a) => Ok(Self::from_tcp(TcpStream::connect(a.as_str()).await?, peer)),
            #[cfg(target_os = "linux")]
            Address::Vsock { cid, port } => {
                Ok(Self::from_vsock(VsockStream::connect(VsockAddr::new(*cid, *port)).await?, peer))
            }
            #[cfg(not(target_os = "linux"))]
            Address::Vsock { .. } => Err(no_vsock()),
            Address::HybridVsock { path, port } => {
                let s = hybrid_vsock_connect(path, *port).await?;
                Ok(Self::from_unix(unix_buffers(s), peer))
            }
            Address::Exec(cmd) => spawn_exec(cmd, peer),
            Address::Stdio => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "stdio cannot be dialled; it is the agent's --stdio mode",
            )),
        }
    }
}

/// The error for a `vsock:` address on a system without AF_VSOCK. A macOS
/// host reaches a Lima guest over `exec:ssh` or `tcp:` (its VM's vsock
/// device lives inside the VM's own process), or over `hvsock:` where the
/// hypervisor exposes a Unix socket.
#[cfg(not(target_os = "linux"))]
fn no_vsock() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "vsock: needs AF_VSOCK, which only Linux has; from a macOS host use exec:ssh, tcp: or hvsock:",
    )
}

/// Performs the hybrid-vsock handshake: `CONNECT <port>\n` answered by `OK <n>\n`.
pub async fn hybrid_vsock_connect(path: &Path, port: u32) -> io::Result<UnixStream> {
    let mut s = UnixStream::connect(path).await?;
    s.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
    // Read the answer byte by byte so that no session byte is consumed.
    let mut line = Vec::with_capacity(32);
    loop {
        let b = s.read_u8().await.map_err(|e| {
            io::Error::new(e.kind(), format!("hybrid vsock {}: no answer to CONNECT {port}: {e}", path.display()))
        })?;
        if b == b'\n' {
            break;
        }
        line.push(b);
        if line.len() > 64 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "hybrid vsock answer too long"));
        }
    }
    let text = String::from_utf8_lossy(&line);
    if !text.starts_with("OK ") {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("hybrid vsock {} refused CONNECT {port}: {text:?}", path.display()),
        ));
    }
    Ok(s)
}

fn spawn_exec(cmd: &str, peer: String) -> io::Result<Transport> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let stdin = child.stdin.take().expect("piped stdin");
    let stdout = child.stdout.take().expect("piped stdout");
    crate::stdio::enlarge_pipe(&stdin);
    crate::stdio::enlarge_pipe(&stdout);
    Ok(Transport { reader: Box::pin(stdout), writer: Box::pin(stdin), peer, child: Some(child), exposed: false })
}

/// A raw transport connection that can carry a dedicated data stream (see
/// [`crate::relay`]): a Unix, TCP or AF_VSOCK socket.
pub enum RawConn {
    /// A Unix stream socket (also hybrid vsock after its handshake).
    Unix(UnixConn),
    /// A TCP socket.
    Tcp(TcpStream),
    /// An AF_VSOCK socket (Linux).
    #[cfg(target_os = "linux")]
    Vsock(VsockConn),
}

impl RawConn {
    /// Dials a new connection for a dedicated data stream; `Unsupported` for
    /// transports that cannot be dialled again (exec:, stdio) and for vsock
    /// where the OS has none.
    pub async fn dial(addr: &Address) -> io::Result<Self> {
        match addr {
            Address::Unix(path) => Ok(Self::Unix(UnixConn::connect(path)?)),
            Address::HybridVsock { path, port } => {
                Ok(Self::Unix(UnixConn::from_tokio(hybrid_vsock_connect(path, *port).await?)?))
            }
            Address::Tcp(a) => {
                let s = TcpStream::connect(a.as_str()).await?;
                s.set_nodelay(true)?;
                Ok(Self::Tcp(s))
            }
            #[cfg(target_os = "linux")]
            Address::Vsock { cid, port } => Ok(Self::Vsock(VsockConn::connect(*cid, *port).await?)),
            other => Err(io::Error::new(io::ErrorKind::Unsupported, format!("{other} carries no data connections"))),
        }
    }

    /// Whether [`RawConn::dial`] works for `addr`.
    pub fn dialable(addr: &Address) -> bool {
        match addr {
            Address::Unix(_) | Address::HybridVsock { .. } | Address::Tcp(_) => true,
            Address::Vsock { .. } => cfg!(target_os = "linux"),
            Address::Exec(_) | Address::Stdio => false,
        }
    }

    /// Whether a data connection over `addr` carries a half-close as a
    /// half-close. Kernel transports do (Unix, TCP, AF_VSOCK: virtio-vsock
    /// has SHUTDOWN with separate send and receive flags). Hybrid vsock is a
    /// user-space backend's Unix socket, and the one checked here
    /// (vhost-device-vsock 0.3) ends the whole guest connection when the
    /// host half-closes: a response after a half-closed upload would be
    /// lost, so such a transport keeps connections on the session unless
    /// the user vouches for the backend.
    pub fn keeps_half_close(addr: &Address) -> bool {
        !matches!(addr, Address::HybridVsock { .. })
    }

    /// Reads exactly `buf.len()` bytes.
    pub async fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        match self {
            Self::Unix(s) => crate::relay::read_exact(s, buf).await,
            Self::Tcp(s) => s.read_exact(buf).await.map(|_| ()),
            #[cfg(target_os = "linux")]
            Self::Vsock(s) => crate::relay::read_exact(s, buf).await,
        }
    }

    /// Reads what is there (at least one byte, or 0 at EOF).
    pub async fn read_some(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Unix(s) => crate::relay::read_some(s, buf).await,
            Self::Tcp(s) => s.read(buf).await,
            #[cfg(target_os = "linux")]
            Self::Vsock(s) => crate::relay::read_some(s, buf).await,
        }
    }

    /// Writes all of `buf`.
    pub async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Self::Unix(s) => crate::relay::write_all(s, buf).await,
            Self::Tcp(s) => s.write_all(buf).await,
            #[cfg(target_os = "linux")]
            Self::Vsock(s) => crate::relay::write_all(s, buf).await,
        }
    }

    /// Relays between `local` and this connection until both directions are
    /// finished, counting bytes in `traffic` (up: local -> this), from
    /// `from` on (see [`crate::relay::relay_from`], also for `movable`).
    /// A Unix connection's send buffer takes its share of the process's
    /// budget meanwhile ([`crate::buffer_share`]).
    /// `duties` say what else the relay does (see [`crate::relay::Duties`];
    /// the share of a Unix connection's send buffer is set here).
    pub async fn relay_with<S: crate::relay::RelaySocket>(
        &self,
        local: &S,
        traffic: &crate::Traffic,
        duties: crate::relay::Duties<'_>,
        from: crate::relay::Resume,
        movable: bool,
    ) -> io::Result<crate::relay::Relayed> {
        use crate::relay::{relay_from, RelayKind};
        match self {
            Self::Unix(s) => {
                let share = crate::buffer_share::BufferShare::join(std::os::fd::AsRawFd::as_raw_fd(s));
                let duties = crate::relay::Duties { share: Some(&share), ..duties };
                relay_from(RelayKind::current(), local, s, traffic, duties, from, movable).await
            }
            // TCP sizes its buffers itself (autotuning), which a fixed size would end.
            Self::Tcp(s) => relay_from(RelayKind::current(), local, s, traffic, duties, from, movable).await,
            // Sized once at connect ([`crate::vsock::VSOCK_BUFFER`]). AF_VSOCK
            // has no splice support of its own; the kernel's generic path
            // stalled the agent in a 6.1 guest, so vsock takes the copy relay.
            #[cfg(target_os = "linux")]
            Self::Vsock(s) => relay_from(RelayKind::Copy, local, s, traffic, duties, from, movable).await,
        }
    }
}

/// A [`RawConn`] taken out of its runtime, to be taken up by another (see
/// [`crate::placement`]); nothing is buffered in user space, so no byte is
/// lost on the way.
pub struct DetachedConn(DetachedKind, std::os::fd::OwnedFd);

enum DetachedKind {
    Unix,
    Tcp,
    #[cfg(target_os = "linux")]
    Vsock,
}

impl RawConn {
    /// Takes the connection out of the runtime it is registered with.
    pub fn detach(self) -> io::Result<DetachedConn> {
        Ok(match self {
            Self::Unix(s) => DetachedConn(DetachedKind::Unix, s.into_fd()),
            Self::Tcp(s) => DetachedConn(DetachedKind::Tcp, s.into_std()?.into()),
            #[cfg(target_os = "linux")]
            Self::Vsock(s) => DetachedConn(DetachedKind::Vsock, s.into_fd()),
        })
    }
}

impl DetachedConn {
    /// Takes the connection up in the runtime this is called in.
    pub fn attach(self) -> io::Result<RawConn> {
        let DetachedConn(kind, fd) = self;
        Ok(match kind {
            DetachedKind::Unix => RawConn::Unix(UnixConn::from_fd(fd)?),
            DetachedKind::Tcp => RawConn::Tcp(TcpStream::from_std(std::net::TcpStream::from(fd))?),
            #[cfg(target_os = "linux")]
            DetachedKind::Vsock => RawConn::Vsock(VsockConn::from_fd(fd)?),
        })
    }
}

/// What arrived on an agent listener.
pub enum Incoming {
    /// A session (hello first).
    Session(Transport),
    /// A dedicated data connection; its 6-byte magic has been read already.
    Data(RawConn),
}

impl Incoming {
    /// A session whose first bytes, `magic`, were read to classify it: they
    /// are put back in front of its reader.
    fn session_after(magic: [u8; 6], mut t: Transport) -> Self {
        t.reader = Box::pin(std::io::Cursor::new(magic.to_vec()).chain(t.reader));
        Self::Session(t)
    }
}

/// A bound transport address that accepts sessions (the agent's side).
pub enum TransportListener {
    /// A Unix socket, removed again when the listener is dropped.
    Unix(UnixListener, PathBuf),
    /// TCP.
    Tcp(TcpListener),
    /// AF_VSOCK.
    #[cfg(target_os = "linux")]
    Vsock(VsockListener),
}

impl TransportListener {
    /// Binds `addr`. A Unix socket file is created with mode 0600; a stale
    /// socket file at the path is replaced, but never a file of another kind.
    pub fn bind(addr: &Address) -> io::Result<Self> {
        match addr {
            Address::Unix(path) => {
                remove_stale_socket(path)?;
                let l = crate::private_socket::bind(Path::new(path), None)?;
                l.set_nonblocking(true)?;
                Ok(Self::Unix(UnixListener::from_std(l)?, path.clone()))
            }
            Address::Tcp(a) => {
                let std = std::net::TcpListener::bind(a.as_str())?;
                std.set_nonblocking(true)?;
                Ok(Self::Tcp(TcpListener::from_std(std)?))
            }
            #[cfg(target_os = "linux")]
            Address::Vsock { cid, port } => Ok(Self::Vsock(VsockListener::bind(VsockAddr::new(*cid, *port))?)),
            #[cfg(not(target_os = "linux"))]
            Address::Vsock { .. } => Err(no_vsock()),
            other => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cannot listen on {other}: use vsock:, unix: or tcp:"),
            )),
        }
    }

    /// Waits for the next peer connection (not yet classified: see [`Pending::classify`]).
    pub async fn accept(&self) -> io::Result<Pending> {
        match self {
            Self::Unix(l, path) => {
                let (s, _) = l.accept().await?;
                Ok(Pending::Unix(s, format!("unix:{}", path.display())))
            }
            Self::Tcp(l) => {
                let (s, a) = l.accept().await?;
                Ok(Pending::Tcp(s, format!("tcp:{a}")))
            }
            #[cfg(target_os = "linux")]
            Self::Vsock(l) => {
                let (s, a) = l.accept().await?;
                Ok(Pending::Vsock(s, format!("vsock:{}:{}", a.cid(), a.port())))
            }
        }
    }
}

/// An accepted connection whose first bytes have not been read yet.
pub enum Pending {
    /// From a Unix listener.
    Unix(UnixStream, String),
    /// From a TCP listener.
    Tcp(TcpStream, String),
    /// From a vsock listener.
    #[cfg(target_os = "linux")]
    Vsock(VsockStream, String),
}

impl Pending {
    /// Reads the first 6 bytes to tell a session (`FERRY\0`) from a data
    /// connection (`FERRYD`); a session gets those bytes back in front of
    /// its reader. Call this off the accept loop: it waits for the peer.
    pub async fn classify(self) -> io::Result<Incoming> {
        let mut magic = [0u8; 6];
        match self {
            #[cfg(target_os = "linux")]
            Pending::Vsock(s, peer) => {
                let conn = VsockConn::from_stream(s)?;
                crate::relay::read_exact(&conn, &mut magic).await?;
                if magic == ferry_protocol::data_conn::DATA_MAGIC {
                    return Ok(Incoming::Data(RawConn::Vsock(conn)));
                }
                Ok(Incoming::session_after(magic, Transport::from_vsock(conn.into_stream(), peer)))
            }
            Pending::Unix(s, peer) => {
                let conn = UnixConn::from_tokio(s)?;
                crate::relay::read_exact(&conn, &mut magic).await?;
                if magic == ferry_protocol::data_conn::DATA_MAGIC {
                    return Ok(Incoming::Data(RawConn::Unix(conn)));
                }
                let s = conn.into_tokio()?;
                Ok(Incoming::session_after(magic, Transport::from_unix(unix_buffers(s), peer)))
            }
            Pending::Tcp(mut s, peer) => {
                s.read_exact(&mut magic).await?;
                if magic == ferry_protocol::data_conn::DATA_MAGIC {
                    let _ = s.set_nodelay(true);
                    return Ok(Incoming::Data(RawConn::Tcp(s)));
                }
                Ok(Incoming::session_after(magic, Transport::from_tcp(s, peer)))
            }
        }
    }
}

impl Drop for TransportListener {
    fn drop(&mut self) {
        if let Self::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Bytes a Unix session connection may have in flight each way. One
/// session carries every multiplexed stream, which ferry schedules fairly
/// itself, so a larger buffer only means fewer stalls (multiplexed route,
/// 100 streams: 9 -> 13 Gbit/s). Dedicated data connections share a budget
/// instead ([`crate::buffer_share`]).
const UNIX_BUFFER: usize = 2 << 20;

/// Enlarges a Unix session connection's buffers (best effort; the kernel
/// caps them at `net.core.wmem_max`), so that bulk streams block less often.
fn unix_buffers(s: UnixStream) -> UnixStream {
    let sock = socket2::SockRef::from(&s);
    let _ = sock.set_send_buffer_size(UNIX_BUFFER);
    let _ = sock.set_recv_buffer_size(UNIX_BUFFER);
    s
}

/// Removes `path` if it is a stale socket file (nobody accepts on it);
/// refuses to touch a live socket or anything that is not a socket.
pub fn remove_stale_socket(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is served by another running program; refusing to replace it", path.display()),
                ));
            }
            std::fs::remove_file(path)
        }
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket; refusing to replace it", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_stale_sockets_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let err = remove_stale_socket(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        assert!(path.exists());
        drop(live); // the file stays, stale
        remove_stale_socket(&path).unwrap();
        assert!(!path.exists());
        std::fs::write(&path, b"data").unwrap();
        assert_eq!(remove_stale_socket(&path).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
    }

    #[tokio::test]
    async fn hybrid_vsock_handshake_then_raw_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let l = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 13];
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"CONNECT 1024\n");
            s.write_all(b"OK 1073741824\nhello").await.unwrap();
        });
        let mut s = hybrid_vsock_connect(&path, 1024).await.unwrap();
        let mut rest = [0u8; 5];
        s.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"hello");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn hybrid_vsock_refusal_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let l = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 10];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(b"FAILURE\n").await.unwrap();
        });
        let e = hybrid_vsock_connect(&path, 5).await.unwrap_err();
        assert!(e.to_string().contains("refused"), "{e}");
    }

    #[tokio::test]
    async fn unix_listener_is_private_and_never_replaces_regular_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        let l = TransportListener::bind(&Address::Unix(path.clone())).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions()) & 0o777;
        assert_eq!(mode, 0o600);
        drop(l);
        assert!(!path.exists(), "socket file is removed with the listener");
        std::fs::write(&path, b"precious").unwrap();
        assert!(TransportListener::bind(&Address::Unix(path.clone())).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    }
}
