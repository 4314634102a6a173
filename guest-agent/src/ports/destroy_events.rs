//! Instant release: the kernel's sock_diag "socket destroyed" broadcasts
//! (the multicast groups `ss -E` uses) wake the scanner the moment a
//! listening socket is closed. The scanner polls the subscription itself.
//!
//! Only sockets with no peer (a listener, an unconnected UDP socket) count;
//! the many connected sockets that close on a busy guest are ignored here.

use std::{
    io,
    os::fd::{AsRawFd, RawFd},
};

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

/// SKNLGRP_INET_TCP_DESTROY and SKNLGRP_INET6_TCP_DESTROY.
const TCP_GROUPS: [u32; 2] = [1, 3];
/// SKNLGRP_INET_UDP_DESTROY and SKNLGRP_INET6_UDP_DESTROY.
const UDP_GROUPS: [u32; 2] = [2, 4];

/// Subscriptions to the kernel's socket-destroy broadcasts, one per
/// protocol (a broadcast does not say its protocol, its group does).
pub struct DestroyEvents {
    tcp: Socket,
    udp: Socket,
    buf: Vec<u8>,
}

/// Which protocols lost a listener since the last drain.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Destroyed {
    /// A TCP listener went away.
    pub tcp: bool,
    /// A bound, unconnected UDP socket went away.
    pub udp: bool,
}

impl DestroyEvents {
    /// Subscribes. Fails where the kernel or the agent's privileges do not
    /// allow it.
    pub fn open() -> io::Result<Self> {
        Ok(Self { tcp: subscribe(TCP_GROUPS)?, udp: subscribe(UDP_GROUPS)?, buf: vec![0u8; 64 * 1024] })
    }

    /// The descriptors to poll for reading.
    pub fn fds(&self) -> [RawFd; 2] {
        [self.tcp.as_raw_fd(), self.udp.as_raw_fd()]
    }

    /// Reads every pending broadcast and says which protocols lost a
    /// peerless socket (lost broadcasts count as such: a rescan catches up).
    pub fn drain(&mut self) -> Destroyed {
        Destroyed { tcp: drain(&self.tcp, &mut self.buf), udp: drain(&self.udp, &mut self.buf) }
    }
}

fn subscribe(groups: [u32; 2]) -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind(&SocketAddr::new(0, 0))?;
    for group in groups {
        socket.add_membership(group)?;
    }
    socket.set_non_blocking(true)?;
    Ok(socket)
}

fn drain(socket: &Socket, buf: &mut [u8]) -> bool {
    let mut seen = false;
    loop {
        match socket.recv(&mut &mut buf[..], 0) {
            Ok(n) => seen |= has_peerless_socket(&buf[..n]),
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => seen = true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return seen,
        }
    }
}

/// Whether a datagram of broadcasts names a bound socket with no peer.
fn has_peerless_socket(mut buf: &[u8]) -> bool {
    while !buf.is_empty() {
        let Ok(msg) = NetlinkMessage::<SockDiagMessage>::deserialize(buf) else { return true };
        if let NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) = &msg.payload {
            let id = &r.header.socket_id;
            if id.source_port != 0 && id.destination_port == 0 {
                return true;
            }
        }
        let len = msg.header.length as usize;
        if len == 0 || len > buf.len() {
            return false;
        }
        buf = &buf[len..];
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closing_a_listener_is_seen_at_once() {
        let mut events = DestroyEvents::open().expect("destroy broadcasts");
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        events.drain();
        drop(l);
        // The kernel sends the broadcast from a work queue, a moment later.
        let mut pfd = libc::pollfd { fd: events.fds()[0], events: libc::POLLIN, revents: 0 };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, 100) };
            if events.drain().tcp {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no broadcast for the closed listener");
        }
    }
}
