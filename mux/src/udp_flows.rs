//! UDP over the session, both sides of it. The listening side
//! ([`serve_clients`]) makes each client address a flow of its own: a
//! stream whose DATA frames are single datagrams. The connecting side
//! ([`serve_flow`]) sends each flow from a UDP socket of its own, connected
//! to the target, so replies find their client. Host ports (host clients,
//! guest targets) and reverse UDP forwards (guest clients, host targets) are
//! the same two halves, swapped.
//!
//! UDP never waits: a datagram that the flow's queue, credit or the
//! session's write queue cannot take at once is dropped and counted. So
//! that a flow rides out a side that cannot run for a moment, each side
//! widens its stream's receive window to [`DATAGRAM_WINDOW`] (within the
//! session's budget for that). Flows end after an idle timeout; their
//! number is bounded.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use ferry_protocol::{flow::DATAGRAM_WINDOW, Target};
use tokio::{io::Interest, net::UdpSocket, sync::mpsc, task::JoinHandle};

use crate::{
    traffic::{ConnStats, Traffic},
    udp_batch, IncomingOpen, Session, StreamError, StreamWriter,
};

/// Datagrams a flow may have waiting while its stream opens or its credit is short.
const FLOW_QUEUE: usize = 256;

/// Limits of the UDP flows of one listening socket.
#[derive(Debug, Clone, Copy)]
pub struct UdpLimits {
    /// A flow with no datagram either way for this long ends.
    pub idle_timeout: Duration,
    /// At most this many flows at once; datagrams of further clients are dropped.
    pub max_flows: usize,
}

impl Default for UdpLimits {
    fn default() -> Self {
        Self { idle_timeout: Duration::from_secs(60), max_flows: 1024 }
    }
}

struct Flow {
    /// The flow's stream once open: datagrams go straight to the session's
    /// write queue from the receive loop, with no task hop.
    writer: Arc<Mutex<Option<StreamWriter>>>,
    /// Datagrams that arrive while the stream opens.
    queue: mpsc::Sender<Bytes>,
    /// Milliseconds since `epoch` of the last datagram either way.
    last: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Relays datagrams between the clients of `socket` and the peer, one flow
/// (a stream opened to what `target` names at that moment) per client
/// address, forever (the caller aborts the task to stop).
pub async fn serve_clients(
    socket: UdpSocket,
    session: Session,
    target: impl Fn() -> Target + Send + 'static,
    stats: Arc<ConnStats>,
    limits: UdpLimits,
) {
    let socket = Arc::new(socket);
    let epoch = Instant::now();
    let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
    // Datagrams arrive in batches: what has queued up comes in one system call.
    let mut received = Vec::with_capacity(udp_batch::BATCH);
    let mut sweep =
        tokio::time::interval((limits.idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(5)));
    loop {
        tokio::select! {
            r = socket.async_io(Interest::READABLE, || udp_batch::recv(&*socket, &mut received)) => {
                match r {
                    Ok(_) => {}
                    // An ICMP error for an earlier reply to some client.
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                    Err(e) => {
                        tracing::warn!("UDP receive failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                for (datagram, client) in received.drain(..) {
                    if flows.get(&client).is_some_and(|f| f.task.is_finished()) {
                        flows.remove(&client);
                    }
                    if !flows.contains_key(&client) {
                        flows.retain(|_, f| !f.task.is_finished());
                        if flows.len() >= limits.max_flows {
                            stats.traffic.add_dropped();
                            continue;
                        }
                        let flow = open_flow(&socket, &session, client, target(), &stats, epoch);
                        flows.insert(client, flow);
                        stats.total.fetch_add(1, Ordering::Relaxed);
                    }
                    let flow = &flows[&client];
                    flow.last.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                    let mut writer = flow.writer.lock().unwrap();
                    match writer.as_mut() {
                        Some(w) => {
                            if send_up(w, datagram, &stats).is_err() {
                                *writer = None; // the stream is gone; the flow task ends
                            }
                        }
                        None => {
                            if flow.queue.try_send(datagram).is_err() {
                                stats.traffic.add_dropped();
                            }
                        }
                    }
                }
            }
            _ = sweep.tick() => {
                let now = epoch.elapsed().as_millis() as u64;
                let idle = limits.idle_timeout.as_millis() as u64;
                flows.retain(|client, f| {
                    let keep = !f.task.is_finished() && now.saturating_sub(f.last.load(Ordering::Relaxed)) < idle;
                    if !keep {
                        tracing::debug!("UDP flow of {client} ended");
                    }
                    keep
                });
            }
        }
        stats.active.store(flows.len() as u64, Ordering::Relaxed);
    }
}

/// Starts one flow: opens its stream, then moves datagrams both ways.
fn open_flow(
    socket: &Arc<UdpSocket>,
    session: &Session,
    client: SocketAddr,
    target: Target,
    stats: &Arc<ConnStats>,
    epoch: Instant,
) -> Flow {
    let (queue, mut datagrams) = mpsc::channel::<Bytes>(FLOW_QUEUE);
    let last = Arc::new(AtomicU64::new(epoch.elapsed().as_millis() as u64));
    let writer: Arc<Mutex<Option<StreamWriter>>> = Arc::default();
    let (socket, session, stats, last2, slot) =
        (socket.clone(), session.clone(), stats.clone(), last.clone(), writer.clone());
    let task = tokio::spawn(async move {
        let stream = match session.open(&target).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("UDP flow {client} -> {target:?}: {e}");
                return;
            }
        };
        let (mut from_guest, mut to_guest) = stream.into_split();
        from_guest.widen_window_to(DATAGRAM_WINDOW);
        // What queued while the stream opened goes first; from now on the
        // receive loop sends directly (a datagram it queued meanwhile is
        // still sent below: UDP may reorder).
        while let Ok(d) = datagrams.try_recv() {
            if send_up(&mut to_guest, d, &stats).is_err() {
                return;
            }
        }
        *slot.lock().unwrap() = Some(to_guest);
        let mut down: Vec<Bytes> = Vec::with_capacity(udp_batch::BATCH);
        loop {
            tokio::select! {
                d = datagrams.recv() => {
                    let Some(d) = d else { return };
                    let mut writer = slot.lock().unwrap();
                    let Some(w) = writer.as_mut() else { return };
                    if send_up(w, d, &stats).is_err() {
                        return;
                    }
                }
                r = from_guest.recv() => match r {
                    Ok(Some(d)) => {
                        last2.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                        down.push(d);
                        let ended = udp_batch::take_ready(&mut from_guest, &mut down);
                        send_down(&socket, &down, client, &stats);
                        down.clear();
                        if ended {
                            return;
                        }
                    }
                    Ok(None) | Err(_) => return,
                },
            }
        }
    });
    Flow { writer, queue, last, task }
}

/// Sends replies to `client`, as many per system call as have queued up;
/// what a full socket buffer refuses is dropped and counted, as UDP does.
fn send_down(socket: &UdpSocket, datagrams: &[Bytes], client: SocketAddr, stats: &ConnStats) {
    let mut sent = 0;
    while sent < datagrams.len() {
        match udp_batch::send(socket, &datagrams[sent..], Some(client)) {
            Ok(n) => {
                datagrams[sent..sent + n].iter().for_each(|d| stats.traffic.add_down(d.len()));
                sent += n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                (sent..datagrams.len()).for_each(|_| stats.traffic.add_dropped());
                return;
            }
            // This datagram's error (the client is gone, say): drop it, go on.
            Err(_) => {
                stats.traffic.add_dropped();
                sent += 1;
            }
        }
    }
}

/// Sends one datagram up the flow's stream, or counts it dropped when the
/// stream has no room; fails only when the stream is gone.
fn send_up(w: &mut StreamWriter, d: Bytes, stats: &ConnStats) -> Result<(), StreamError> {
    let len = d.len();
    if w.try_send_datagram(d)? {
        stats.traffic.add_up(len);
    } else {
        stats.traffic.add_dropped();
    }
    Ok(())
}

/// The connecting side of one flow: relays the stream `open` and a UDP
/// socket of its own connected to `target`, until the other side ends the
/// flow (idle expiry) or the session dies.
/// `traffic` counts the datagrams' bytes (up: towards `target`) and the
/// replies dropped.
pub async fn serve_flow(open: IncomingOpen, target: SocketAddr, traffic: &Traffic) {
    let socket = match connect(target).await {
        Ok(s) => s,
        Err(e) => return open.refuse(&format!("UDP socket for {target}: {e}")),
    };
    let Ok(stream) = open.accept().await else { return };
    let (mut from_host, mut to_host) = stream.into_split();
    from_host.widen_window_to(DATAGRAM_WINDOW);
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
                    up.iter().for_each(|d| traffic.add_up(d.len()));
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
                        let len = reply.len();
                        match to_host.try_send_datagram(reply) {
                            Ok(true) => traffic.add_down(len),
                            Ok(false) => {
                                dropped += 1;
                                traffic.add_dropped();
                            }
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
    crate::udp_buffers::enlarge(&socket);
    socket.connect(target).await?;
    Ok(socket)
}
