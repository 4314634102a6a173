//! Socket buffers for UDP relays.
//!
//! A relay is one more process between a UDP client and its server; when it
//! is briefly descheduled, a burst of datagrams must wait in its socket's
//! receive buffer. The kernel's default (about 208 KiB: ninety 1400-byte
//! datagrams) overflows under bursts a direct path survives, so relays ask
//! for [`UDP_BUFFER`] each way: on Linux forced where the process may (root,
//! as the agent is), else as much as the system's maximum allows
//! (`net.core.rmem_max`/`wmem_max`; `kern.ipc.maxsockbuf` on macOS).

use std::os::fd::{AsFd, AsRawFd};

/// The receive and send buffer a UDP relay socket asks for.
pub const UDP_BUFFER: libc::c_int = 4 << 20;

/// Enlarges `socket`'s receive and send buffers; best effort.
pub fn enlarge(socket: &impl AsFd) {
    let fd = socket.as_fd().as_raw_fd();
    for which in [crate::sockopt::Buffer::Receive, crate::sockopt::Buffer::Send] {
        crate::sockopt::request(fd, which, UDP_BUFFER);
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
