//! Socket-buffer options, shared by the UDP relays ([`crate::udp_buffers`])
//! and the dedicated data connections ([`crate::buffer_share`]).

use std::os::fd::RawFd;

/// Asks for a buffer of `value` bytes: with the `force` option where the
/// process may (CAP_NET_ADMIN, as the agent has), else with `plain` (capped
/// by `net.core.rmem_max`/`wmem_max`). Best effort.
pub(crate) fn request(fd: RawFd, force: libc::c_int, plain: libc::c_int, value: libc::c_int) {
    if set(fd, force, value).is_err() {
        let _ = set(fd, plain, value);
    }
}

/// The socket's send buffer as the kernel reports it (twice what was asked:
/// the kernel counts its bookkeeping too).
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
