//! UDP flows on the guest side: each flow the host opens gets a UDP socket
//! of its own, connected to the guest target, so the target's replies come
//! back to this socket and thus to the right host client.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::Bytes;
use ferry_mux::IncomingOpen;
use tokio::net::UdpSocket;

// Largest UDP payload (IPv6 jumbograms aside): one DATA frame each.
use ferry_mux::stream::MAX_DATAGRAM;

/// Relays one flow until the host ends it (idle expiry) or the session dies.
pub async fn serve_flow(open: IncomingOpen, target: SocketAddr) {
    let socket = match connect(target).await {
        Ok(s) => s,
        Err(e) => return open.refuse(&format!("UDP socket for {target} in the guest: {e}")),
    };
    let Ok(stream) = open.accept().await else { return };
    let (mut from_host, mut to_host) = stream.into_split();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut dropped = 0u64;
    loop {
        tokio::select! {
            d = from_host.recv() => match d {
                Ok(Some(datagram)) => {
                    // Errors here are the target's (an ICMP port unreachable
                    // from a previous send, say); UDP just moves on.
                    let _ = socket.send(&datagram).await;
                }
                Ok(None) | Err(_) => break,
            },
            r = socket.recv(&mut buf) => match r {
                Ok(n) => match to_host.try_send_datagram(Bytes::copy_from_slice(&buf[..n])) {
                    Ok(true) => {}
                    Ok(false) => dropped += 1,
                    Err(_) => break,
                },
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                Err(e) => {
                    tracing::debug!("UDP flow to {target}: {e}");
                    break;
                }
            },
        }
    }
    if dropped > 0 {
        tracing::debug!("UDP flow to {target} ended; {dropped} replies dropped under load");
    }
}

async fn connect(target: SocketAddr) -> std::io::Result<UdpSocket> {
    let any: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(any).await?;
    ferry_mux::udp_buffers::enlarge(&socket);
    socket.connect(target).await?;
    Ok(socket)
}
