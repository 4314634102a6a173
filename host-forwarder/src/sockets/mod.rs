//! The sockets channel on the host side: guest Unix sockets (docker.sock,
//! containerd.sock ...) published as host Unix sockets, from Lima's socket
//! rules (`guestSocket` + `hostSocket`).
//!
//! The agent reports which guest sockets exist; a host socket exists
//! exactly while its guest socket does, so a client gets an immediate
//! "no such file" instead of a hang while the guest daemon is away.

pub mod host_socket;

use std::{path::PathBuf, sync::Arc};

use ferry_mux::{
    placement::{self, BulkHistory},
    LocalConn,
};
use ferry_protocol::{ControlMessage, Target};
use tokio::task::JoinHandle;

use crate::{
    routes::Routes,
    status::{
        board::{Row, Section},
        events::EventKind,
        ConnStats, EventSink, StatusBoard,
    },
};
use host_socket::HostSocket;

/// One socket rule: guest path -> host path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketForward {
    /// The guest socket.
    pub guest: String,
    /// The host socket ferry creates.
    pub host: PathBuf,
}

/// A host socket's state.
pub enum State {
    /// The guest side is absent.
    Waiting,
    /// Published.
    Active {
        /// The accept loop.
        task: JoinHandle<()>,
        /// Its connections' counters.
        stats: Arc<ConnStats>,
        /// The socket (removed when the last holder drops it).
        _socket: Arc<HostSocket>,
    },
    /// The host socket cannot be created.
    Failed(String),
}

impl State {
    /// The state's name, a reason and counters, for a status row.
    pub fn describe(&self, waiting: &str) -> (&'static str, Option<String>, Option<Arc<ConnStats>>) {
        match self {
            State::Waiting => ("waiting", Some(waiting.to_string()), None),
            State::Active { stats, .. } => ("forwarding", None, Some(stats.clone())),
            State::Failed(e) => ("failed", Some(e.clone()), None),
        }
    }
}

/// The socket forwards of one session; dropping it removes every host socket.
pub struct SocketForwarder {
    routes: Arc<Routes>,
    board: StatusBoard,
    events: EventSink,
    forwards: Vec<(SocketForward, State)>,
}

impl SocketForwarder {
    /// Announces the rules' guest paths to the agent; nothing is published
    /// until the agent reports them present.
    pub fn start(routes: Arc<Routes>, rules: &[SocketForward], board: StatusBoard, events: EventSink) -> Self {
        let wanted: Vec<String> = rules.iter().map(|r| r.guest.clone()).collect();
        if !wanted.is_empty() {
            let _ = routes.session.send_control(&ControlMessage::GuestSocketsWanted(wanted));
        }
        let forwards = rules.iter().map(|r| (r.clone(), State::Waiting)).collect();
        let s = Self { routes, board, events, forwards };
        s.publish();
        s
    }

    /// Applies the agent's list of present guest sockets.
    pub fn apply_present(&mut self, present: &[String]) {
        for (rule, state) in &mut self.forwards {
            let here = present.contains(&rule.guest);
            match (here, &*state) {
                (true, State::Active { .. }) | (false, State::Waiting) => {}
                (false, _) => {
                    if matches!(state, State::Active { .. }) {
                        tracing::info!("guest socket {} went away; removed {}", rule.guest, rule.host.display());
                        self.events.emit(
                            EventKind::NotForwarding,
                            "unix",
                            &rule.guest,
                            &rule.host.display().to_string(),
                            None,
                        );
                    }
                    *state = State::Waiting; // dropping Active removes the host socket
                }
                (true, _) => {
                    let target = Target::Unix(rule.guest.clone());
                    let next = open(&rule.host, "unix", &rule.guest, target, &self.routes, &self.events, state);
                    *state = next;
                }
            }
        }
        self.publish();
    }

    fn publish(&self) {
        let rows = self
            .forwards
            .iter()
            .map(|(rule, state)| {
                let (state, reason, stats) = state.describe("the guest socket does not exist");
                Row {
                    proto: "unix",
                    guest: rule.guest.clone(),
                    host: rule.host.display().to_string(),
                    state,
                    reason,
                    stats,
                }
            })
            .collect();
        self.board.set_rows(Section::Sockets, rows);
    }
}

/// Publishes the guest's `target` as the host socket `host`; `proto` and
/// `guest` name it in logs and events. `previous` keeps a repeated failure
/// from being reported again.
pub fn open(
    host: &std::path::Path,
    proto: &str,
    guest: &str,
    target: Target,
    routes: &Arc<Routes>,
    events: &EventSink,
    previous: &State,
) -> State {
    let host_name = host.display().to_string();
    match HostSocket::bind(host) {
        Ok(socket) => {
            tracing::info!("forwarding {host_name} -> guest {guest} ({proto})");
            events.emit(EventKind::Forwarding, proto, guest, &host_name, None);
            let socket = Arc::new(socket);
            let stats = Arc::new(ConnStats::default());
            let task = tokio::spawn(accept_loop(socket.clone(), routes.clone(), target, stats.clone()));
            State::Active { task, stats, _socket: socket }
        }
        Err(e) => {
            let e = format!("cannot create {host_name}: {e}");
            if !matches!(previous, State::Failed(old) if *old == e) {
                tracing::warn!("{e}");
                events.emit(EventKind::Failed, proto, guest, &host_name, Some(&e));
            }
            State::Failed(e)
        }
    }
}

/// Accepts on `socket` forever, forwarding each client to `target`: on
/// this thread, or on the bulk runtime once the socket's recent connections
/// carried bulk ([`ferry_mux::placement`]).
async fn accept_loop(socket: Arc<HostSocket>, routes: Arc<Routes>, target: Target, stats: Arc<ConnStats>) {
    let mut errors = ferry_mux::accept_errors::AcceptErrors::default();
    let history = Arc::new(BulkHistory::default());
    loop {
        match socket.listener.accept().await {
            Ok((unix, _)) => {
                let (routes, stats, target, h) = (routes.clone(), stats.clone(), target.clone(), history.clone());
                placement::spawn_served(history.expects_bulk(), unix, |unix| async move {
                    let _active = stats.open();
                    routes.forward(LocalConn::Unix(unix), target, &stats.traffic, &h).await;
                });
            }
            Err(e) => errors.pause_after(&socket.path.display().to_string(), &e).await,
        }
    }
}

impl Drop for State {
    fn drop(&mut self) {
        if let State::Active { task, .. } = self {
            task.abort();
        }
    }
}
