//! A command's stdio as a session transport: the agent's `--stdio` mode
//! (its stdin and stdout, under `ssh` or `limactl shell`) and the host's
//! `exec:` child's pipes.
//!
//! tokio's own `stdin()`/`stdout()` hand every read and write to a blocking
//! thread, which a session moving bulk data cannot afford; where stdin and
//! stdout are pipes or sockets (as under sshd) they are driven by the
//! reactor instead (tokio's `pipe` and `UnixStream`), and on Linux the pipes
//! are enlarged so a burst of frames costs fewer wake-ups on both sides.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use crate::halves::{BoxRead, BoxWrite};

/// The pipe capacity asked for (Linux allows this much without privilege:
/// `fs.pipe-max-size` defaults to 1 MiB).
pub const PIPE_CAPACITY: libc::c_int = 1 << 20;

/// Enlarges the pipe behind `fd` to [`PIPE_CAPACITY`] (Linux; best effort,
/// nothing elsewhere or for a descriptor that is no pipe).
pub fn enlarge_pipe(fd: &impl AsFd) {
    #[cfg(target_os = "linux")]
    // SAFETY: F_SETPIPE_SZ on a borrowed descriptor; fails harmlessly on non-pipes.
    unsafe {
        libc::fcntl(fd.as_fd().as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_CAPACITY);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = fd;
}

/// What kind of file a descriptor is.
fn is_socket(fd: &OwnedFd) -> bool {
    // SAFETY: an all-zero stat is a valid out value; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on a descriptor we own.
    let rc = unsafe { libc::fstat(fd.as_raw_fd(), &mut st) };
    rc == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFSOCK
}

/// A reactor-driven reader of `fd` if it is a pipe or a socket; `None`
/// for anything else (a terminal, a file), which takes tokio's blocking stdin.
fn reactor_reader(fd: OwnedFd) -> Option<BoxRead> {
    if is_socket(&fd) {
        return Some(Box::pin(unix_stream(fd)?));
    }
    enlarge_pipe(&fd);
    Some(Box::pin(tokio::net::unix::pipe::Receiver::from_owned_fd(fd).ok()?))
}

/// A reactor-driven writer of `fd`, as [`reactor_reader`].
fn reactor_writer(fd: OwnedFd) -> Option<BoxWrite> {
    if is_socket(&fd) {
        return Some(Box::pin(unix_stream(fd)?));
    }
    enlarge_pipe(&fd);
    Some(Box::pin(tokio::net::unix::pipe::Sender::from_owned_fd(fd).ok()?))
}

/// A socket descriptor as a non-blocking tokio stream.
fn unix_stream(fd: OwnedFd) -> Option<tokio::net::UnixStream> {
    let std = std::os::unix::net::UnixStream::from(fd);
    std.set_nonblocking(true).ok()?;
    tokio::net::UnixStream::from_std(std).ok()
}

/// This process's stdin and stdout as the two halves of a transport.
pub fn halves() -> (BoxRead, BoxWrite) {
    let stdin = std::io::stdin().as_fd().try_clone_to_owned().ok();
    let stdout = std::io::stdout().as_fd().try_clone_to_owned().ok();
    let reader = stdin.and_then(reactor_reader).unwrap_or_else(|| Box::pin(tokio::io::stdin()));
    let writer = stdout.and_then(reactor_writer).unwrap_or_else(|| Box::pin(tokio::io::stdout()));
    (reader, writer)
}
