//! Socket buffers for UDP relays.
//!
//! A relay is one more process between a UDP client and its server; when it
//! is briefly descheduled, a burst of datagrams must wait in its socket's
//! receive buffer. The kernel's default (about 208 KiB: ninety 1400-byte
//! datagrams) overflows under bursts a direct path survives, so relays ask
//! for [`UDP_BUFFER`] each way: forced where the process may (root, as the
//! agent is), else as much as `net.core.rmem_max`/`wmem_max` allow.

use std::os::fd::{AsFd, AsRawFd};

/// The receive and send buffer a UDP relay socket asks for.
pub const UDP_BUFFER: libc::c_int = 4 << 20;

/// Enlarges `socket`'s receive and send buffers; best effort.
pub fn enlarge(socket: &impl AsFd) {
    let fd = socket.as_fd().as_raw_fd();
    for (force, plain) in [(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF), (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)] {
        request(fd, force, plain, UDP_BUFFER);
    }
}

/// Asks for a buffer of `value` bytes: with the `force` option where the
/// process may (CAP_NET_ADMIN), else with `plain` (capped by the sysctl
/// maximum). Best effort.
pub(crate) fn request(fd: libc::c_int, force: libc::c_int, plain: libc::c_int, value: libc::c_int) {
    if set(fd, force, value).is_err() {
        let _ = set(fd, plain, value);
    }
}

fn set(fd: libc::c_int, option: libc::c_int, value: libc::c_int) -> std::io::Result<()> {
    // SAFETY: a valid descriptor and an int option value.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_grow_beyond_the_default() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let before = socket2::SockRef::from(&s).recv_buffer_size().unwrap();
        enlarge(&s);
        let after = socket2::SockRef::from(&s).recv_buffer_size().unwrap();
        assert!(after > before, "{before} -> {after}");
    }
}
