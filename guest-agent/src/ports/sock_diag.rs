//! Listing listening sockets with netlink sock_diag: TCP in LISTEN and UDP
//! bound but unconnected (state CLOSE), IPv4 and IPv6. The kernel filters by
//! state, so a scan costs a few system calls however many connections exist.

use std::{collections::BTreeSet, io};

use ferry_protocol::{Listener, Proto};
use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
    SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

/// A netlink socket for sock_diag dumps, reused across scans.
pub struct SockDiag {
    socket: Socket,
    buf: Vec<u8>,
}

impl SockDiag {
    /// Opens the netlink socket.
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self { socket, buf: vec![0; 64 * 1024] })
    }

    /// Every TCP socket in LISTEN state and every bound, unconnected UDP
    /// socket, IPv4 and IPv6.
    #[cfg(test)]
    pub fn listeners(&mut self) -> io::Result<BTreeSet<Listener>> {
        let mut out = self.listeners_of(Proto::Tcp)?;
        out.append(&mut self.listeners_of(Proto::Udp)?);
        Ok(out)
    }

    /// The listeners of one protocol, IPv4 and IPv6.
    pub fn listeners_of(&mut self, proto: Proto) -> io::Result<BTreeSet<Listener>> {
        let mut out = BTreeSet::new();
        for family in [AF_INET, AF_INET6] {
            self.dump(family, proto, &mut out)?;
        }
        Ok(out)
    }

    fn dump(&mut self, family: u8, proto: Proto, out: &mut BTreeSet<Listener>) -> io::Result<()> {
        // An unconnected UDP socket is in TCP_CLOSE, the state numbering the
        // kernel shares between the two.
        let (protocol, states) = match proto {
            Proto::Tcp => (IPPROTO_TCP, StateFlags::LISTEN),
            Proto::Udp => (IPPROTO_UDP, StateFlags::CLOSE),
        };
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let socket_id = if family == AF_INET { SocketId::new_v4() } else { SocketId::new_v6() };
        let mut packet = NetlinkMessage::new(
            header,
            SockDiagMessage::InetRequest(InetRequest {
                family,
                protocol,
                extensions: ExtensionFlags::empty(),
                states,
                socket_id,
            })
            .into(),
        );
        packet.finalize();
        let mut req = vec![0; packet.buffer_len()];
        packet.serialize(&mut req);
        self.socket.send(&req, 0)?;
        loop {
            let size = self.socket.recv(&mut &mut self.buf[..], 0)?;
            let mut offset = 0;
            while offset < size {
                let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&self.buf[offset..size])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("sock_diag: {e}")))?;
                let len = msg.header.length as usize;
                match msg.payload {
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                        let id = &r.header.socket_id;
                        // Port 0: a UDP socket that was never bound.
                        if id.source_port != 0 && id.destination_port == 0 {
                            out.insert(Listener {
                                proto,
                                addr: std::net::SocketAddr::new(id.source_address, id.source_port),
                            });
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(e) => {
                        return Err(io::Error::other(format!("sock_diag error: {e:?}")));
                    }
                    _ => {}
                }
                if len == 0 {
                    break;
                }
                offset += len;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_listener_and_forgets_it() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut diag = SockDiag::open().unwrap();
        let want = Listener { proto: Proto::Tcp, addr };
        assert!(diag.listeners().unwrap().contains(&want));
        drop(l);
        assert!(!diag.listeners().unwrap().contains(&want));
    }

    #[test]
    fn finds_bound_udp_but_not_connected_udp() {
        let bound = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let connected = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        connected.connect(bound.local_addr().unwrap()).unwrap();
        let found = SockDiag::open().unwrap().listeners().unwrap();
        assert!(found.contains(&Listener { proto: Proto::Udp, addr: bound.local_addr().unwrap() }));
        assert!(!found.iter().any(|l| l.addr == connected.local_addr().unwrap()));
    }

    #[test]
    fn sees_ipv6_listeners() {
        let Ok(l) = std::net::TcpListener::bind("[::1]:0") else { return };
        let addr = l.local_addr().unwrap();
        let found = SockDiag::open().unwrap().listeners().unwrap();
        assert!(found.contains(&Listener { proto: Proto::Tcp, addr }));
    }
}
