//! Instant release: the kernel's sock_diag "socket destroyed" broadcasts
//! (the multicast groups `ss -E` uses) wake the scanner the moment a
//! listening socket is closed. The scanner polls the subscription itself.
//!
//! Only sockets with no peer (a listener, an unconnected UDP socket) count.
//! The many connected sockets that close on a busy guest (thousands a
//! second on a web server) are dropped by a classic BPF filter on the
//! subscription, in the kernel: they never wake the agent.

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
    attach_peerless_filter(&socket)?;
    socket.set_non_blocking(true)?;
    Ok(socket)
}

/// Where a broadcast's destination port lies: the netlink header (16
/// bytes), then `inet_diag_msg`'s family, state, timer and retrans (4),
/// then `inet_diag_sockid`'s source port (2).
const DPORT_OFFSET: u32 = 16 + 4 + 2;

/// Keeps only broadcasts whose socket has no peer (destination port 0).
/// A classic BPF socket filter: no privilege needed, nothing to load.
fn attach_peerless_filter(socket: &Socket) -> io::Result<()> {
    const LD_H_ABS: u16 = (libc::BPF_LD | libc::BPF_H | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let program = [
        libc::sock_filter { code: LD_H_ABS, jt: 0, jf: 0, k: DPORT_OFFSET },
        libc::sock_filter { code: JEQ_K, jt: 0, jf: 1, k: 0 },
        libc::sock_filter { code: RET_K, jt: 0, jf: 0, k: u32::MAX },
        libc::sock_filter { code: RET_K, jt: 0, jf: 0, k: 0 },
    ];
    let prog = libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr().cast_mut() };
    // SAFETY: `prog` points at `program`, both alive for the call; the
    // kernel copies the program.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            std::ptr::addr_of!(prog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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
    use std::time::{Duration, Instant};

    /// Runs `f` on a thread of its own in a fresh network namespace with
    /// loopback up, so that no other test's sockets are broadcast to it.
    fn in_private_netns(f: impl FnOnce() + Send + 'static) {
        std::thread::spawn(move || {
            // SAFETY: unshare affects this thread only; the tests run as root.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "{}", io::Error::last_os_error());
            loopback_up();
            f();
        })
        .join()
        .unwrap();
    }

    fn loopback_up() {
        // SAFETY: an ifreq for "lo", read then written back with IFF_UP.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
            assert!(fd >= 0);
            let mut req: libc::ifreq = std::mem::zeroed();
            for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
                *d = *s as libc::c_char;
            }
            assert_eq!(libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req), 0);
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            assert_eq!(libc::ioctl(fd, libc::SIOCSIFFLAGS, &req), 0);
            libc::close(fd);
        }
    }

    /// Waits up to 5 s for a drain that reports something.
    fn next(events: &mut DestroyEvents) -> Destroyed {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut fds: Vec<libc::pollfd> =
            events.fds().iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
        loop {
            // SAFETY: valid pollfds.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
            let d = events.drain();
            if d != Destroyed::default() || Instant::now() > deadline {
                return d;
            }
        }
    }

    #[test]
    fn listeners_closing_are_seen_at_once_and_connections_closing_never_wake() {
        in_private_netns(|| {
            let mut events = DestroyEvents::open().expect("destroy broadcasts");
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            // 50 connections and a connected UDP socket come and go.
            for _ in 0..50 {
                let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
                let (a, _) = l.accept().unwrap();
                drop((c, a));
            }
            let cu = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            cu.connect(u.local_addr().unwrap()).unwrap();
            drop(cu);
            std::thread::sleep(Duration::from_millis(200));
            let mut fds: Vec<libc::pollfd> =
                events.fds().iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
            // SAFETY: valid pollfds.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
            assert_eq!(ready, 0, "closed connections woke the subscription");
            // The kernel sends broadcasts from a work queue, a moment later.
            drop(l);
            assert_eq!(next(&mut events), Destroyed { tcp: true, udp: false });
            drop(u);
            assert_eq!(next(&mut events), Destroyed { tcp: false, udp: true });
        });
    }
}
