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
        crate::sockopt::request(fd, force, plain, UDP_BUFFER);
    }
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
