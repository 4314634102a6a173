//! Instant release: the kernel's sock_diag "socket destroyed" broadcasts
//! (the multicast groups `ss -E` uses) wake the scanner the moment a
//! listening socket is closed, instead of at the next poll.
//!
//! Only sockets with no peer (a listener, an unconnected UDP socket) count;
//! the many connected sockets that close on a busy guest are ignored here.

use std::{io, sync::mpsc::SyncSender};

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

/// SKNLGRP_INET_TCP_DESTROY, _INET_UDP_, _INET6_TCP_, _INET6_UDP_DESTROY.
const DESTROY_GROUPS: [u32; 4] = [1, 2, 3, 4];

/// Subscribes to destroy broadcasts and, from a thread of its own, sends a
/// wake-up on `wake` for each peerless socket that goes away. Fails where
/// the kernel or the agent's privileges do not allow the subscription.
pub fn spawn(wake: SyncSender<()>) -> io::Result<()> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind(&SocketAddr::new(0, 0))?;
    for group in DESTROY_GROUPS {
        socket.add_membership(group)?;
    }
    std::thread::Builder::new().name("socket-destroy".into()).spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match socket.recv(&mut &mut buf[..], 0) {
                Ok(n) => {
                    if has_peerless_socket(&buf[..n]) && wake_scanner(&wake).is_err() {
                        return;
                    }
                }
                // ENOBUFS: broadcasts were lost; a rescan catches up.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    if wake_scanner(&wake).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!("socket-destroy events stopped ({e}); relying on polling");
                    return;
                }
            }
        }
    })?;
    Ok(())
}

/// A full channel already holds a wake-up; only a closed one is an error.
fn wake_scanner(wake: &SyncSender<()>) -> Result<(), ()> {
    match wake.try_send(()) {
        Ok(()) | Err(std::sync::mpsc::TrySendError::Full(())) => Ok(()),
        Err(std::sync::mpsc::TrySendError::Disconnected(())) => Err(()),
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
    use std::time::Duration;

    #[test]
    fn closing_a_listener_wakes_the_scanner_at_once() {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        if let Err(e) = spawn(tx) {
            eprintln!("skipped: no destroy broadcasts here ({e})");
            return;
        }
        // Drain wake-ups caused by other tests' sockets, then close ours.
        while rx.recv_timeout(Duration::from_millis(50)).is_ok() {}
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        drop(l);
        rx.recv_timeout(Duration::from_secs(5)).expect("a wake-up for the closed listener");
    }
}
