//! Socket-buffer options, shared by the UDP relays ([`crate::udp_buffers`])
//! and the dedicated data connections ([`crate::buffer_share`]).
//!
//! Linux has FORCE variants that a process with CAP_NET_ADMIN (the agent)
//! may use past `net.core.rmem_max`/`wmem_max`; elsewhere, and in portable
//! mode ([`crate::platform`]), only the plain options are tried. Linux also
//! doubles the size it is given (it counts its bookkeeping) and reports the
//! doubled size; other systems keep and report what they were given.

use std::os::fd::RawFd;

/// Which of a socket's buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Buffer {
    /// The receive buffer.
    Receive,
    /// The send buffer.
    Send,
}

impl Buffer {
    fn plain(self) -> libc::c_int {
        match self {
            Self::Receive => libc::SO_RCVBUF,
            Self::Send => libc::SO_SNDBUF,
        }
    }

    #[cfg(target_os = "linux")]
    fn force(self) -> libc::c_int {
        match self {
            Self::Receive => libc::SO_RCVBUFFORCE,
            Self::Send => libc::SO_SNDBUFFORCE,
        }
    }
}

/// Whether the kernel doubles a buffer size it is given (and reports it so).
pub(crate) const KERNEL_DOUBLES: bool = cfg!(target_os = "linux");

/// Asks for `which` buffer of `value` bytes (the value handed to the
/// kernel: see [`KERNEL_DOUBLES`]): with the FORCE option where the process
/// may and the fast paths are on, else with the plain option (capped by the
/// system's maximum). Best effort.
pub(crate) fn request(fd: RawFd, which: Buffer, value: libc::c_int) {
    #[cfg(target_os = "linux")]
    if crate::platform::linux_fast_paths() && set(fd, which.force(), value).is_ok() {
        return;
    }
    let _ = set(fd, which.plain(), value);
}

/// The socket's send buffer as the kernel reports it.
pub(crate) fn send_buffer(fd: RawFd) -> Option<usize> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a descriptor and an int-sized out value with its length.
    let rc = unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, std::ptr::addr_of_mut!(value).cast(), &mut len)
    };
    (rc == 0 && value > 0).then_some(value as usize)
}

fn set(fd: RawFd, option: libc::c_int, value: libc::c_int) -> std::io::Result<()> {
    // SAFETY: a descriptor and an int option value.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            std::ptr::addr_of!(value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
