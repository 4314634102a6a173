//! One session with the host: report ports, sockets and watch targets,
//! serve open requests, run the host's reverse listeners, replay file events.

use std::{collections::BTreeSet, net::SocketAddr, sync::Arc};

use ferry_mux::{
    placement::{self, BulkHistory, Metered},
    refusals::Refusals,
    IncomingOpen, Session, SessionConfig, SessionEvent, Traffic, Transport,
};
use ferry_protocol::{ControlMessage, Proto, Role, Target};
use tokio::sync::watch;

use crate::{
    dedicated::DataSessions,
    files::Files,
    ports::{
        filter::UdpFilter,
        watcher::{diff, PortSet},
        PortWatcher,
    },
    reverse::{ReverseAddrs, ReverseListeners},
    sockets,
    targets::{self, Grants},
};

/// What a session reports: the discovered ports, through the agent's filter.
#[derive(Clone)]
pub struct Ports {
    /// The merged discovery sources.
    pub watcher: Arc<PortWatcher>,
    /// The agent's UDP policy; each session adds the ports its host wants.
    pub filter: UdpFilter,
}

/// Serves one host session until it ends.
/// With `data`, the host may also open dedicated data connections.
/// A handshake that fails before the host proved the secret is counted in
/// `refusals` (a peer without the secret costs a counter, not a log line).
pub async fn serve(
    transport: Transport,
    ports: Ports,
    cfg: SessionConfig,
    data: Option<DataSessions>,
    ticket: Option<crate::pre_auth::Ticket>,
    refusals: Refusals,
) {
    let peer = transport.peer.clone();
    let (session, mut events) = match Session::start(transport, Role::Agent, cfg).await {
        Ok(s) => s,
        // The first refusal of a quiet period is logged in full (a version
        // or secret mismatch of the owner's own is said plainly), a flood
        // is summarised.
        Err(e) => return refusals.record("session", &e.to_string()),
    };
    // Authenticated: no longer among the connections that may be closed to make room.
    drop(ticket);
    tracing::info!("host connected via {peer}{}", if session.is_sealed() { " (sealed)" } else { "" });
    let grants = Grants::default();
    let histories = data.as_ref().map(DataSessions::histories).unwrap_or_default();
    // Announced before the port snapshot, so the host knows before any port.
    let _registration = data.map(|d| {
        let _ = session.send_control(&ControlMessage::DataConnsAccepted);
        d.register(grants.clone(), &session)
    });
    let reverse_addrs: ReverseAddrs = watch::channel(Default::default()).0;
    let own_addrs = reverse_addrs.subscribe();
    let mut reverse = ReverseListeners::new(session.clone(), reverse_addrs);
    let mut files = Files::start(session.clone());
    let (filter_tx, filter_rx) = watch::channel(ports.filter.clone());
    let (sockets_tx, sockets_rx) = watch::channel(Vec::new());
    let tasks = [
        tokio::spawn(report_ports(session.clone(), ports.watcher, filter_rx, own_addrs)),
        tokio::spawn(sockets::report_presence(session.clone(), sockets_rx)),
    ];
    while let Some(event) = events.recv().await {
        match event {
            SessionEvent::Open(open) => {
                // A stream to a target whose streams carry bulk pumps on the
                // bulk runtime (`ferry_mux::placement`); the session's own
                // reader and writer stay here.
                let history = histories.of(&open.target);
                placement::spawn(history.expects_bulk(), serve_open(open, grants.clone(), history));
            }
            SessionEvent::Control(ControlMessage::UdpPortsWanted(wanted)) => {
                filter_tx.send_modify(|f| f.set_wanted(wanted));
            }
            SessionEvent::Control(ControlMessage::GuestSocketsWanted(paths)) => {
                grants.set(paths.iter().cloned());
                let _ = sockets_tx.send(paths);
            }
            SessionEvent::Control(ControlMessage::ReverseListeners(wanted)) => reverse.apply(wanted),
            SessionEvent::Control(ControlMessage::FileRoots(roots)) => files.set_roots(roots),
            SessionEvent::Control(ControlMessage::FileEvents(batch)) => files.replay(batch),
            SessionEvent::Control(msg) => tracing::debug!("ignoring control message from host: {msg:?}"),
        }
    }
    for t in tasks {
        t.abort();
    }
    drop((reverse, files));
    tracing::info!("host session via {peer} ended: {}", session.closed().await);
}

/// Sends the full port set, then every change, for as long as the session
/// lives; a new scan, a new filter from the host and a new reverse listener
/// all count as a change. The agent's own reverse listeners are left out.
async fn report_ports(
    session: Session,
    watcher: Arc<PortWatcher>,
    mut filter: watch::Receiver<UdpFilter>,
    mut own: watch::Receiver<BTreeSet<(Proto, SocketAddr)>>,
) {
    let mut rx = watcher.subscribe();
    let visible = |set: &PortSet, f: &UdpFilter, own: &BTreeSet<(Proto, SocketAddr)>| -> PortSet {
        set.iter().filter(|l| f.keep(l) && !own.contains(&(l.proto, l.addr))).copied().collect()
    };
    let mut sent = visible(&rx.borrow_and_update(), &filter.borrow_and_update(), &own.borrow_and_update());
    if session.send_control(&ControlMessage::PortSnapshot(sent.iter().copied().collect())).is_err() {
        return;
    }
    loop {
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            r = filter.changed() => if r.is_err() { return },
            r = own.changed() => if r.is_err() { return },
        }
        let now = visible(&rx.borrow_and_update(), &filter.borrow_and_update(), &own.borrow_and_update());
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

/// Serves an open request from the host: a UDP flow, or a TCP or Unix
/// connection pumped as a stream of the session, whose bytes then count
/// towards its target's `history` (UDP flows stay small: they are never
/// placed).
async fn serve_open(open: IncomingOpen, grants: Grants, history: Arc<BulkHistory>) {
    if let Target::Udp(addr) = open.target {
        return ferry_mux::udp_flows::serve_flow(open, addr, &Traffic::default()).await;
    }
    let target = open.target.clone();
    let local = match targets::connect(&target, &grants).await {
        Ok(l) => l,
        Err(reason) => return open.refuse(&reason),
    };
    let Ok(stream) = open.accept().await else { return local.abort() };
    let traffic = Traffic::default();
    if let Some(reason) = local.pump(stream, &traffic).await {
        tracing::debug!("connection to {target:?} reset: {reason}");
    }
    let (up, down) = traffic.snapshot();
    Metered::new(&history).add((up + down) as usize);
}
