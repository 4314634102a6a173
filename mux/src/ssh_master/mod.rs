//! Connections carried by an OpenSSH ControlMaster as stdio forwards: the
//! route that makes ferry over ssh as fast as `ssh -L`.
//!
//! Every Lima VM has an ssh ControlMaster (`<instance>/ssh.sock`). For each
//! forwarded connection ferry asks it for a stdio forward (`ssh -W` without
//! the extra process, see [`messages`]) and passes it two descriptors over
//! the control socket: the client's socket itself as stdin, so the master
//! reads the client directly (the path and cost of `ssh -L`), and the write
//! end of a pipe as stdout, whose read end ferry relays to the client
//! (splice(2) on Linux: pipe pages move, nothing is copied). The second
//! descriptor is what keeps half-close: the master ends its stdout by
//! closing it, and only a descriptor of its own makes that an EOF ferry can
//! turn into `shutdown(SHUT_WR)` on the client (closing a duplicate of the
//! client's socket would not).
//!
//! The master reads nothing from the client before the server side has
//! connected, so a refused forward hands the client back untouched (see
//! [`Outcome::NotTaken`]) and the caller can carry it another way. Masters
//! before OpenSSH 9.4 cannot forward to a Unix socket path and refuse. The
//! master holds the forward only while the control connection stays open:
//! closing it aborts the forward.

pub mod messages;

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
    time::Duration,
};

use tokio::io::{unix::AsyncFd, Interest};

use crate::{relay, relay::RelaySocket, unix_conn::UnixConn, LocalConn, Traffic};
pub use messages::Destination;
use messages::Reply;

/// How long the master may take to say whether a forward is open.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// A ControlMaster, known by its control socket.
#[derive(Debug)]
pub struct SshMaster {
    control: PathBuf,
    next_request: AtomicU32,
    open_timeout: Duration,
}

/// How a forward through the master ended.
pub enum Outcome {
    /// The master carried the connection until both directions ended
    /// (`None`) or one failed (the reason; the client was aborted).
    Carried(Option<String>),
    /// The master did not take the connection; nothing was read from the
    /// client, which is handed back with the reason.
    NotTaken(LocalConn, NotTaken),
    /// The master misbehaved before the forward opened (no answer in time,
    /// a message out of protocol): it may hold the client, which was
    /// aborted. A master in that state is best left alone for a while.
    Failed(String),
}

/// Why the master did not take a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotTaken {
    /// No master answered on the control socket (or it spoke no version 4).
    Unreachable(String),
    /// The master refused the forward: the server side could not connect,
    /// its policy forbids it, or (a Unix socket, OpenSSH before 9.4) the
    /// master cannot ask for it.
    Refused(String),
}

impl std::fmt::Display for NotTaken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unreachable(why) | Self::Refused(why) => f.write_str(why),
        }
    }
}

impl SshMaster {
    /// The master listening on `control`.
    pub fn new(control: &Path) -> Self {
        Self::with_open_timeout(control, OPEN_TIMEOUT)
    }

    /// [`SshMaster::new`] with another limit on the master's answer.
    pub fn with_open_timeout(control: &Path, open_timeout: Duration) -> Self {
        Self { control: control.to_path_buf(), next_request: AtomicU32::new(1), open_timeout }
    }

    /// Forwards `local` to `to` through the master until it ends, counting
    /// the bytes that come back in `traffic` and in `returned` (those that
    /// go out the master reads from the client itself, unseen). `taken`
    /// runs as soon as the master has accepted the forward.
    pub async fn forward(
        &self,
        local: LocalConn,
        to: Destination<'_>,
        traffic: &Traffic,
        returned: &AtomicU64,
        taken: impl FnOnce(),
    ) -> Outcome {
        let request_id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (control, back) = match self.open(&local, to, request_id).await {
            Ok(opened) => {
                taken();
                opened
            }
            Err(Refusal::Untouched(why)) => return Outcome::NotTaken(local, why),
            Err(Refusal::Unknown(why)) => {
                // The master may hold a copy of the client's socket (passed,
                // perhaps never read), so closing ours would not end it:
                // shut it down both ways first.
                // SAFETY: shutdown(2) on the client's socket, which `local` owns.
                unsafe { libc::shutdown(local.as_raw_fd(), libc::SHUT_RDWR) };
                local.abort();
                return Outcome::Failed(why);
            }
        };
        let count = |n| {
            traffic.add_down(n);
            returned.fetch_add(n as u64, Ordering::Relaxed);
        };
        let down = async {
            match &local {
                LocalConn::Tcp(s) => relay::relay_one_way(&back, s, count).await,
                LocalConn::Unix(s) => relay::relay_one_way(&back, s, count).await,
            }
        };
        // The master closes the control connection once the forward has
        // ended both ways; until then it may still be reading the client.
        let mut rest = [0u8; 256];
        let ended = async {
            loop {
                match relay::read_some(&control, &mut rest).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        let result = async {
            down.await?;
            ended.await;
            Ok::<_, io::Error>(())
        };
        match result.await {
            Ok(()) => Outcome::Carried(None),
            Err(e) => {
                // Dropping the control connection makes the master end the
                // forward too.
                local.abort();
                Outcome::Carried(Some(format!("returning bytes to the client failed: {e}")))
            }
        }
    }

    /// Asks for the forward and waits for the master's answer; returns the
    /// control connection and the read end of the master's stdout.
    async fn open(
        &self,
        local: &LocalConn,
        to: Destination<'_>,
        request_id: u32,
    ) -> Result<(UnixConn, PipeReader), Refusal> {
        let untouched =
            |what: &str, e: &dyn std::fmt::Display| Refusal::Untouched(NotTaken::Unreachable(format!("{what}: {e}")));
        // Watched for reading only, and connected without a wait (see
        // [`UnixConn`]): the master reads the request and both descriptors
        // as separate messages, and each read would otherwise wake ferry
        // once more for nothing, on every new connection.
        let control = UnixConn::connect(&self.control)
            .map_err(|e| untouched(&format!("ControlMaster {}", self.control.display()), &e))?;
        let mut request = messages::hello();
        request.extend_from_slice(&messages::stdio_forward(request_id, to));
        relay::write_all(&control, &request).await.map_err(|e| untouched("ControlMaster request", &e))?;
        let (ours, theirs) = pipe().map_err(|e| untouched("pipe", &e))?;
        // SAFETY: `ours` is a pipe this function owns; AsyncFd takes it over
        // and it is neither closed nor registered elsewhere while it lives.
        let ours = unsafe { AsyncFd::register_with_interest(ours, Interest::READABLE) };
        let ours = PipeReader(ours.map_err(|e| untouched("pipe", &e))?);
        for fd in [local.as_raw_fd(), theirs.as_raw_fd()] {
            send_fd(&control, fd).await.map_err(|e| untouched("passing a descriptor to the ControlMaster", &e))?;
        }
        // The master holds its own copy now.
        drop(theirs);
        let limit = self.open_timeout;
        let answer = tokio::time::timeout(limit, read_answer(&control, request_id)).await;
        match answer {
            Ok(Ok(())) => Ok((control, ours)),
            Ok(Err(refusal)) => Err(refusal),
            Err(_) => Err(Refusal::Unknown(format!("the ControlMaster did not answer within {limit:?}"))),
        }
    }
}

/// The read end of a pipe, driven by the reactor.
struct PipeReader(AsyncFd<OwnedFd>);

impl AsRawFd for PipeReader {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl RelaySocket for PipeReader {
    fn try_op<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        self.0.try_io(interest, |_| f())
    }

    async fn wait_ready(&self, interest: Interest) -> io::Result<()> {
        // Dropping the guard keeps the readiness for the next `try_op`.
        self.0.ready(interest).await.map(drop)
    }

    fn shutdown_write(&self) -> io::Result<()> {
        Ok(()) // only ever a source
    }
}

/// A non-blocking, close-on-exec pipe: (read end, write end).
#[cfg(target_os = "linux")]
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2(2) fills the two-element array.
    relay::os_result(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } as isize)?;
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A non-blocking, close-on-exec pipe: (read end, write end). (macOS has
/// no pipe2.)
#[cfg(not(target_os = "linux"))]
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills the two-element array.
    relay::os_result(unsafe { libc::pipe(fds.as_mut_ptr()) } as isize)?;
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    for fd in [&r, &w] {
        // SAFETY: fcntl(2) on a descriptor this function owns.
        unsafe {
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC);
            let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            relay::os_result(libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) as isize)?;
        }
    }
    Ok((r, w))
}

/// Why a forward did not open.
enum Refusal {
    /// The master will not touch the client: carry it another way.
    Untouched(NotTaken),
    /// The master may have the client: it must be aborted.
    Unknown(String),
}

/// Reads the master's hello, then its answer to `request_id`.
async fn read_answer(control: &UnixConn, request_id: u32) -> Result<(), Refusal> {
    let mut buf = Vec::new();
    let mut hello_seen = false;
    loop {
        let reply = next_reply(control, &mut buf).await?;
        match reply {
            Reply::Hello { version } if !hello_seen => {
                if version != messages::PROTOCOL_VERSION {
                    let why = format!("ControlMaster speaks mux protocol {version}, not 4");
                    return Err(Refusal::Untouched(NotTaken::Unreachable(why)));
                }
                hello_seen = true;
            }
            Reply::Opened { request_id: id } if hello_seen && id == request_id => return Ok(()),
            Reply::Refused { request_id: id, denied, reason } if hello_seen && id == request_id => {
                // Before the open is confirmed the master reads nothing
                // from the descriptors and closes its copies.
                let how = if denied { "denied" } else { "failed" };
                return Err(Refusal::Untouched(NotTaken::Refused(format!(
                    "the ControlMaster's forward {how}: {reason}"
                ))));
            }
            other => return Err(Refusal::Unknown(format!("unexpected ControlMaster message {other:?}"))),
        }
    }
}

/// The next whole message from the master.
async fn next_reply(control: &UnixConn, buf: &mut Vec<u8>) -> Result<Reply, Refusal> {
    loop {
        match messages::message_len(buf) {
            Ok(Some(len)) => {
                let reply = messages::parse(&buf[..len]).map_err(|e| Refusal::Unknown(e.to_string()));
                buf.drain(..len);
                return reply;
            }
            Ok(None) => {}
            Err(e) => return Err(Refusal::Unknown(e.to_string())),
        }
        let mut chunk = [0u8; 512];
        match relay::read_some(control, &mut chunk).await {
            Ok(0) => return Err(Refusal::Unknown("the ControlMaster closed the control connection".into())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(Refusal::Unknown(format!("reading from the ControlMaster: {e}"))),
        }
    }
}

/// Sends the descriptor `fd` over `sock` (one byte with SCM_RIGHTS, as
/// OpenSSH's mm_receive_fd expects).
async fn send_fd(sock: &UnixConn, fd: RawFd) -> io::Result<()> {
    loop {
        match sock.try_op(Interest::WRITABLE, || sendmsg_fd(sock.as_raw_fd(), fd)) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => sock.wait_ready(Interest::WRITABLE).await?,
            other => return other,
        }
    }
}

fn sendmsg_fd(sock: RawFd, fd: RawFd) -> io::Result<()> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    let fd_size = std::mem::size_of::<RawFd>() as u32;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_size) } as usize;
    // u64 words keep the control buffer aligned for a cmsghdr.
    let mut control = vec![0u64; space.div_ceil(8)];
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `msg` points at a control buffer of `space` bytes, room for
    // one header with one descriptor, so CMSG_FIRSTHDR is non-null and its
    // data area holds a RawFd (written unaligned to be safe).
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(fd_size) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
    }
    // SAFETY: `msg` and everything it points at live across the call.
    let sent = unsafe { libc::sendmsg(sock, &msg, 0) };
    match relay::os_result(sent)? {
        1 => Ok(()),
        _ => Err(io::ErrorKind::WriteZero.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    /// Receives one descriptor as OpenSSH's mm_receive_fd does.
    fn recv_fd(sock: RawFd) -> RawFd {
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
        let mut control = vec![0u64; 8];
        // SAFETY: test code; buffers outlive the call, sizes are exact.
        unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = 64 as _;
            assert_eq!(libc::recvmsg(sock, &mut msg, 0), 1);
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            assert!(!cmsg.is_null());
            assert_eq!((*cmsg).cmsg_type, libc::SCM_RIGHTS);
            std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>())
        }
    }

    #[tokio::test]
    async fn a_passed_descriptor_arrives_as_the_same_socket() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let a = UnixConn::from_std(a).unwrap();
        let (mut here, there) = std::os::unix::net::UnixStream::pair().unwrap();
        send_fd(&a, there.as_raw_fd()).await.unwrap();
        drop(there);
        let got = recv_fd(b.as_raw_fd());
        // SAFETY: the descriptor was just received and is owned by nobody else.
        let mut got = unsafe { std::os::unix::net::UnixStream::from_raw_fd(got) };
        use std::io::{Read, Write};
        got.write_all(b"through").unwrap();
        let mut buf = [0u8; 7];
        here.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"through");
    }
}
