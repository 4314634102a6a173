//! UDP flows on the guest side: each flow the host opens gets a UDP socket
//! of its own, connected to the guest target, so the target's replies come
//! back to this socket and thus to the right host client.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::Bytes;
use ferry_mux::{udp_batch, IncomingOpen};
use tokio::{io::Interest, net::UdpSocket};

/// Relays one flow until the host ends it (idle expiry) or the session dies.
pub async fn serve_flow(open: IncomingOpen, target: SocketAddr) {
    let socket = match connect(target).await {
        Ok(s) => s,
        Err(e) => return open.refuse(&format!("UDP socket for {target} in the guest: {e}")),
    };
    let Ok(stream) = open.accept().await else { return };
    let (mut from_host, mut to_host) = stream.into_split();
    // Datagrams move in batches: what has queued up goes in one system call.
    let mut up: Vec<Bytes> = Vec::with_capacity(udp_batch::BATCH);
    let mut down = Vec::with_capacity(udp_batch::BATCH);
    let mut dropped = 0u64;
    loop {
        tokio::select! {
            d = from_host.recv() => match d {
                Ok(Some(datagram)) => {
                    up.push(datagram);
                    let ended = udp_batch::take_ready(&mut from_host, &mut up);
                    send_all(&socket, &up).await;
                    up.clear();
                    if ended {
                        break;
                    }
                }
                Ok(None) | Err(_) => break,
            },
            r = socket.async_io(Interest::READABLE, || udp_batch::recv(&socket, &mut down)) => match r {
                Ok(_) => {
                    for (reply, _) in down.drain(..) {
                        match to_host.try_send_datagram(reply) {
                            Ok(true) => {}
                            Ok(false) => dropped += 1,
                            // The stream is gone: the next receive ends the flow.
                            Err(_) => break,
                        }
                    }
                }
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

/// Sends `datagrams` to the target, waiting while the socket is full.
async fn send_all(socket: &UdpSocket, datagrams: &[Bytes]) {
    let mut sent = 0;
    while sent < datagrams.len() {
        match socket.async_io(Interest::WRITABLE, || udp_batch::send(socket, &datagrams[sent..], None)).await {
            Ok(n) => sent += n,
            // The target's error (an ICMP port unreachable from an earlier
            // send, say) costs this datagram, as it would a plain send; UDP
            // just moves on.
            Err(_) => sent += 1,
        }
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
