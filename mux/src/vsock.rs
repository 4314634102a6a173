//! AF_VSOCK connections that can carry dedicated data streams (Linux only).
//!
//! tokio-vsock's stream offers AsyncRead/AsyncWrite but no readiness API,
//! which the relay needs ([`crate::relay::RelaySocket`]), so a data
//! connection over vsock is the socket's descriptor wrapped in tokio's
//! `AsyncFd`. The agent tells data connections from sessions on its vsock
//! listener by their first bytes, as on Unix and TCP; the host dials one per
//! forwarded connection over `vsock:` (or `hvsock:`, one CONNECT each).

use std::{
    io,
    os::fd::{AsRawFd, OwnedFd, RawFd},
};

use tokio::io::{unix::AsyncFd, Interest};
use tokio_vsock::{VsockAddr, VsockStream};

use crate::relay::RelaySocket;

/// The send and receive buffer a vsock data connection asks for: the
/// virtio transport's default is 256 KiB, which caps one stream's bytes in
/// flight (the largest the guest allows is set first, then the size).
pub const VSOCK_BUFFER: u64 = 2 << 20;

/// `setsockopt` level and options of AF_VSOCK (linux/vm_sockets.h).
const SO_VM_SOCKETS_BUFFER_SIZE: libc::c_int = 0;
const SO_VM_SOCKETS_BUFFER_MAX_SIZE: libc::c_int = 2;

/// A connected AF_VSOCK stream socket with readiness, for data connections.
pub struct VsockConn(AsyncFd<OwnedFd>);

impl VsockConn {
    /// Takes over a connected tokio-vsock stream and sizes its buffers.
    pub fn from_stream(stream: VsockStream) -> io::Result<Self> {
        let conn = Self::from_fd(OwnedFd::from(stream))?;
        conn.size_buffers();
        Ok(conn)
    }

    /// Dials `cid:port`.
    pub async fn connect(cid: u32, port: u32) -> io::Result<Self> {
        Self::from_stream(VsockStream::connect(VsockAddr::new(cid, port)).await?)
    }

    /// Gives the socket back as a tokio-vsock stream (a session's transport).
    pub fn into_stream(self) -> VsockStream {
        VsockStream::from(self.into_fd())
    }

    /// Takes the socket out of the runtime it is registered with.
    pub fn into_fd(self) -> OwnedFd {
        self.0.into_inner()
    }

    /// Takes up a socket given by [`Self::into_fd`] (in the runtime it is
    /// called in); its buffers are sized already.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        // SAFETY: the descriptor is owned by the AsyncFd and neither
        // replaced nor closed while registered.
        Ok(Self(unsafe { AsyncFd::register(fd)? }))
    }

    /// Asks for [`VSOCK_BUFFER`] each way: the ceiling first, then the
    /// size. Best effort (an older kernel may cap it).
    fn size_buffers(&self) {
        let value: u64 = VSOCK_BUFFER;
        for option in [SO_VM_SOCKETS_BUFFER_MAX_SIZE, SO_VM_SOCKETS_BUFFER_SIZE] {
            // SAFETY: a descriptor we own and a u64 option value with its size.
            unsafe {
                libc::setsockopt(
                    self.as_raw_fd(),
                    libc::AF_VSOCK,
                    option,
                    std::ptr::addr_of!(value).cast(),
                    std::mem::size_of::<u64>() as libc::socklen_t,
                );
            }
        }
    }
}

impl AsRawFd for VsockConn {
    fn as_raw_fd(&self) -> RawFd {
        self.0.get_ref().as_raw_fd()
    }
}

impl RelaySocket for VsockConn {
    fn try_op<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        self.0.try_io(interest, |_| f())
    }

    async fn wait_ready(&self, interest: Interest) -> io::Result<()> {
        // Dropping the guard keeps the readiness for the next `try_op`.
        self.0.ready(interest).await.map(drop)
    }
}
