//! A Unix stream socket carrying a dedicated data connection, watched by
//! the runtime for reading only, and for writing only once a write would
//! block.
//!
//! A Unix socket signals "writable" every time its peer reads (the kernel's
//! `unix_write_space`), not only after a write found its buffer full as TCP
//! does. A socket registered for both (as tokio's `UnixStream` is) therefore
//! woke its process once more for every message the far side read: a
//! context switch for nothing on every small request and on every new
//! connection. Small messages never fill the buffer, so the write side is
//! registered lazily, at the first write that would block (a bulk stream),
//! and stays registered from then on (a second descriptor, a duplicate of
//! the first, with a watch of its own). A process out of descriptors then
//! polls for room instead of failing the connection.

use std::{
    io,
    os::fd::{AsRawFd, OwnedFd, RawFd},
    path::Path,
    sync::OnceLock,
};

use tokio::io::{unix::AsyncFd, Interest};

use crate::relay::RelaySocket;

/// A connected Unix stream socket for a data connection (see the module doc).
pub struct UnixConn {
    /// The socket, registered for reading.
    read: AsyncFd<OwnedFd>,
    /// A duplicate of its descriptor registered for writing, once a write
    /// has blocked.
    write: OnceLock<AsyncFd<OwnedFd>>,
}

/// Connects a non-blocking Unix stream socket to `path` without waiting: a
/// Unix connect completes at once, or fails (when the listener's backlog is
/// full: `WouldBlock` on Linux, `ECONNREFUSED` on macOS).
pub fn connect_now(path: &Path) -> io::Result<std::os::unix::net::UnixStream> {
    let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    socket.connect(&socket2::SockAddr::unix(path)?)?;
    Ok(socket.into())
}

impl UnixConn {
    /// Takes over a connected socket.
    pub fn from_std(s: std::os::unix::net::UnixStream) -> io::Result<Self> {
        s.set_nonblocking(true)?;
        Self::register(s.into())
    }

    /// Takes over a connected tokio socket (already non-blocking).
    pub fn from_tokio(s: tokio::net::UnixStream) -> io::Result<Self> {
        Self::register(s.into_std()?.into())
    }

    /// Connects to the socket at `path` without waiting (see
    /// [`connect_now`]).
    pub fn connect(path: &Path) -> io::Result<Self> {
        Self::register(connect_now(path)?.into())
    }

    /// Registers a connected, non-blocking socket for reading.
    fn register(fd: OwnedFd) -> io::Result<Self> {
        // SAFETY: the descriptor is owned by the AsyncFd and neither
        // replaced nor closed while registered.
        let read = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE)? };
        Ok(Self { read, write: OnceLock::new() })
    }

    /// Gives the socket back as a tokio stream (a session's transport).
    pub fn into_tokio(self) -> io::Result<tokio::net::UnixStream> {
        tokio::net::UnixStream::from_std(std::os::unix::net::UnixStream::from(self.into_fd()))
    }

    /// Takes the socket out of the runtime it is registered with.
    pub fn into_fd(self) -> OwnedFd {
        drop(self.write);
        self.read.into_inner()
    }

    /// Takes up a connected, non-blocking socket given by [`Self::into_fd`]
    /// (in the runtime it is called in).
    pub fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        Self::register(fd)
    }

    /// The registration for writing, made on first use.
    fn writer(&self) -> io::Result<&AsyncFd<OwnedFd>> {
        if let Some(w) = self.write.get() {
            return Ok(w);
        }
        let dup = self.read.get_ref().try_clone()?;
        // SAFETY: the duplicate is owned by the AsyncFd and neither
        // replaced nor closed while registered.
        let w = unsafe { AsyncFd::register_with_interest(dup, Interest::WRITABLE)? };
        // Set once: were it set meanwhile, the spare registration just drops.
        let _ = self.write.set(w);
        Ok(self.write.get().expect("set above"))
    }
}

impl AsRawFd for UnixConn {
    fn as_raw_fd(&self) -> RawFd {
        self.read.get_ref().as_raw_fd()
    }
}

impl RelaySocket for UnixConn {
    fn try_op<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        if interest.is_writable() {
            return match self.write.get() {
                Some(w) => w.try_io(Interest::WRITABLE, |_| f()),
                // Until a write has blocked, the socket is taken to be
                // writable: the write itself says when it is not.
                None => f(),
            };
        }
        self.read.try_io(interest, |_| f())
    }

    async fn wait_ready(&self, interest: Interest) -> io::Result<()> {
        // Dropping the guard keeps the readiness for the next `try_op`.
        debug_assert!(!(interest.is_readable() && interest.is_writable()), "one direction at a time");
        if interest.is_writable() {
            // Registering reports the socket's present state, so a buffer
            // drained between the blocked write and now is not missed.
            return match self.writer() {
                Ok(w) => w.ready(Interest::WRITABLE).await.map(drop),
                // No descriptor (or watch) to spare for the registration:
                // look again shortly (until a write has blocked with one,
                // the next write says whether there is room).
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    Ok(())
                }
            };
        }
        self.read.ready(interest).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that fills the buffer registers for writing then and is
    /// woken when the reader drains it; every byte arrives in order.
    #[tokio::test]
    async fn a_blocked_write_waits_for_room_and_small_ones_never_register() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (a, b) = (UnixConn::from_std(a).unwrap(), UnixConn::from_std(b).unwrap());
        crate::relay::write_all(&a, b"ping").await.unwrap();
        let mut got = [0u8; 4];
        crate::relay::read_exact(&b, &mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        assert!(a.write.get().is_none(), "a small write registers nothing for writing");
        let data: Vec<u8> = (0..8_000_000u32).map(|i| (i % 251) as u8).collect();
        let reader = async {
            let mut back = vec![0u8; data.len()];
            crate::relay::read_exact(&b, &mut back).await.unwrap();
            back
        };
        let (wrote, back) = tokio::join!(crate::relay::write_all(&a, &data), reader);
        wrote.unwrap();
        assert!(back == data, "bytes in order");
        assert!(a.write.get().is_some(), "a write that blocked registered for writing");
    }
}
