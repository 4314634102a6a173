//! One session with the host: report ports, serve open requests.

use std::{sync::Arc, time::Duration};

use ferry_mux::{pump::pump, IncomingOpen, Session, SessionConfig, SessionEvent, Transport};
use ferry_protocol::{ControlMessage, Role, Target};
use tokio::net::TcpStream;

use crate::{
    dedicated::Tokens,
    ports::{watcher::diff, PortWatcher},
};

/// How long the agent tries to reach a guest target before refusing.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves one host session until it ends.
/// With `tokens`, the host may also open dedicated data connections.
pub async fn serve(transport: Transport, watcher: Arc<PortWatcher>, cfg: SessionConfig, tokens: Option<Tokens>) {
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
    let reporter = tokio::spawn(report_ports(session.clone(), watcher));
    while let Some(event) = events.recv().await {
        match event {
            SessionEvent::Open(open) => {
                tokio::spawn(serve_open(open));
            }
            SessionEvent::Control(msg) => tracing::debug!("ignoring control message from host: {msg:?}"),
        }
    }
    reporter.abort();
    tracing::info!("host session via {peer} ended: {}", session.closed().await);
}

/// Sends the full port set, then every change, for as long as the session lives.
async fn report_ports(session: Session, watcher: Arc<PortWatcher>) {
    let mut rx = watcher.subscribe();
    let mut sent = rx.borrow_and_update().clone();
    if session.send_control(&ControlMessage::PortSnapshot(sent.iter().copied().collect())).is_err() {
        return;
    }
    while rx.changed().await.is_ok() {
        let now = rx.borrow_and_update().clone();
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

/// Connects to the requested target inside the guest and splices it.
async fn serve_open(open: IncomingOpen) {
    let Target::Tcp(addr) = open.target;
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return open.refuse(&format!("connect to {addr} in the guest: {e}")),
        Err(_) => return open.refuse(&format!("connect to {addr} in the guest: timed out")),
    };
    let _ = tcp.set_nodelay(true);
    let Ok(stream) = open.accept().await else { return };
    let mut tcp = tcp;
    let (r, w) = tcp.split();
    if let ferry_mux::pump::PumpEnd::Reset(reason) = pump(r, w, stream).await {
        tracing::debug!("connection to {addr} reset: {reason}");
        ferry_mux::pump::reset_tcp(tcp);
    }
}
