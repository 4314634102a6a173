//! One session with the host: report ports, serve open requests.

use std::{sync::Arc, time::Duration};

use ferry_mux::{pump::pump, IncomingOpen, Session, SessionConfig, SessionEvent, Transport};
use ferry_protocol::{ControlMessage, Role, Target};
use tokio::net::TcpStream;

use crate::{
    dedicated::Tokens,
    ports::{
        filter::UdpFilter,
        watcher::{diff, PortSet},
        PortWatcher,
    },
};

/// What a session reports: the discovered ports, through the agent's filter.
#[derive(Clone)]
pub struct Ports {
    /// The merged discovery sources.
    pub watcher: Arc<PortWatcher>,
    /// The agent's UDP policy; each session adds the ports its host wants.
    pub filter: UdpFilter,
}

/// How long the agent tries to reach a guest target before refusing.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves one host session until it ends.
/// With `tokens`, the host may also open dedicated data connections.
pub async fn serve(transport: Transport, ports: Ports, cfg: SessionConfig, tokens: Option<Tokens>) {
    let peer = transport.peer.clone();
    let (session, mut events) = match Session::start(transport, Role::Agent, cfg).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("{e}");
            return;
        }
    };
    tracing::info!("host connected via {peer}");
    // Issued before the port snapshot, so the host has it before any port.
    let _token = match tokens.map(|t| t.issue()).transpose() {
        Ok(guard) => {
            if let Some(g) = &guard {
                let _ = session.send_control(&ControlMessage::DataToken(g.token));
            }
            guard
        }
        Err(e) => {
            tracing::warn!("no data connections for this session: {e}");
            None
        }
    };
    let (filter_tx, filter_rx) = tokio::sync::watch::channel(ports.filter.clone());
    let reporter = tokio::spawn(report_ports(session.clone(), ports.watcher, filter_rx));
    while let Some(event) = events.recv().await {
        match event {
            SessionEvent::Open(open) => {
                tokio::spawn(serve_open(open));
            }
            SessionEvent::Control(ControlMessage::UdpPortsWanted(wanted)) => {
                filter_tx.send_modify(|f| f.set_wanted(wanted));
            }
            SessionEvent::Control(msg) => tracing::debug!("ignoring control message from host: {msg:?}"),
        }
    }
    reporter.abort();
    tracing::info!("host session via {peer} ended: {}", session.closed().await);
}

/// Sends the full port set, then every change, for as long as the session
/// lives; both a new scan and a new filter from the host count as a change.
async fn report_ports(
    session: Session,
    watcher: Arc<PortWatcher>,
    mut filter: tokio::sync::watch::Receiver<UdpFilter>,
) {
    let mut rx = watcher.subscribe();
    let visible = |set: &PortSet, f: &UdpFilter| -> PortSet { set.iter().filter(|l| f.keep(l)).copied().collect() };
    let mut sent = visible(&rx.borrow_and_update(), &filter.borrow_and_update());
    if session.send_control(&ControlMessage::PortSnapshot(sent.iter().copied().collect())).is_err() {
        return;
    }
    loop {
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            r = filter.changed() => if r.is_err() { return },
        }
        let now = visible(&rx.borrow_and_update(), &filter.borrow_and_update());
        if now == sent {
            continue;
        }
        let (added, removed) = diff(&sent, &now);
        for l in &added {
            tracing::debug!("port opened: {:?} {}", l.proto, l.addr);
        }
        for l in &removed {
            tracing::debug!("port closed: {:?} {}", l.proto, l.addr);
        }
        if session.send_control(&ControlMessage::PortsChanged { added, removed }).is_err() {
            return;
        }
        sent = now;
    }
}

/// Serves an open request from the host: a TCP connection or a UDP flow.
async fn serve_open(open: IncomingOpen) {
    match open.target {
        Target::Tcp(addr) => serve_tcp(open, addr).await,
        Target::Udp(addr) => crate::udp::serve_flow(open, addr).await,
    }
}

/// Connects to the requested target inside the guest and pumps it.
async fn serve_tcp(open: IncomingOpen, addr: std::net::SocketAddr) {
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return open.refuse(&format!("connect to {addr} in the guest: {e}")),
        Err(_) => return open.refuse(&format!("connect to {addr} in the guest: timed out")),
    };
    let _ = tcp.set_nodelay(true);
    let Ok(stream) = open.accept().await else { return };
    let mut tcp = tcp;
    let (r, w) = tcp.split();
    if let ferry_mux::pump::PumpEnd::Reset(reason) = pump(r, w, stream, &ferry_mux::Traffic::default()).await {
        tracing::debug!("connection to {addr} reset: {reason}");
        ferry_mux::pump::reset_tcp(tcp);
    }
}
