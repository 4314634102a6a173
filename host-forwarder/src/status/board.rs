//! The forwarder's live state: the session and one row per guest listener
//! or host binding.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc, Mutex,
};

use serde::{Deserialize, Serialize};

pub use ferry_mux::traffic::ConnStats;

/// One row of the status table.
#[derive(Debug, Clone)]
pub struct Row {
    /// "tcp" or "udp".
    pub proto: &'static str,
    /// The guest listener.
    pub guest: String,
    /// The host address, or "-" when there is none.
    pub host: String,
    /// forwarding, retrying, failed, ignored, not-forwarded.
    pub state: &'static str,
    /// Why the row is not forwarding, if it is not.
    pub reason: Option<String>,
    /// Counters of a forwarding row.
    pub stats: Option<Arc<ConnStats>>,
}

/// The JSON form of a row (what `ferry status --json` prints).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RowReport {
    /// "tcp" or "udp".
    pub proto: String,
    /// The guest listener.
    pub guest: String,
    /// The host address.
    pub host: String,
    /// The row's state.
    pub state: String,
    /// Why it is not forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Connections open now.
    pub active_connections: u64,
    /// Connections accepted in all.
    pub total_connections: u64,
    /// Bytes host -> guest.
    pub bytes_to_guest: u64,
    /// Bytes guest -> host.
    pub bytes_from_guest: u64,
    /// UDP datagrams dropped under load (either way) or beyond the flow limit.
    #[serde(default)]
    pub dropped_datagrams: u64,
}

/// The whole status report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusReport {
    /// The agent's transport address.
    pub agent: String,
    /// Whether a session with the agent is up.
    pub connected: bool,
    /// The transport address of the current session (the agent's, or the
    /// fallback's); "-" offline.
    #[serde(default)]
    pub transport: String,
    /// How connections travel: "ssh-master" (through the guest's ssh
    /// ControlMaster), "dedicated", "multiplexed", "sealed" (multiplexed in a
    /// sealed session) or "-" offline.
    pub data_path: String,
    /// One row per guest listener and host binding.
    pub ports: Vec<RowReport>,
    /// How many connections each route has carried since ferry started.
    #[serde(default)]
    pub connections_by_route: RouteCountsReport,
}

/// Connections carried per route (see [`RouteCounts`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RouteCountsReport {
    /// Through the guest's ssh ControlMaster.
    pub ssh_master: u64,
    /// Over dedicated data connections.
    pub dedicated: u64,
    /// As streams of the session.
    pub multiplexed: u64,
}

/// Counts the connections each route carries.
#[derive(Debug, Default)]
pub struct RouteCounts {
    ssh_master: AtomicU64,
    dedicated: AtomicU64,
    multiplexed: AtomicU64,
}

/// A route a connection took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Through the guest's ssh ControlMaster.
    SshMaster,
    /// Over a dedicated data connection.
    Dedicated,
    /// As a stream of the session.
    Multiplexed,
}

impl RouteCounts {
    /// Counts one connection carried by `route`.
    pub fn count(&self, route: Route) {
        let counter = match route {
            Route::SshMaster => &self.ssh_master,
            Route::Dedicated => &self.dedicated,
            Route::Multiplexed => &self.multiplexed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn report(&self) -> RouteCountsReport {
        RouteCountsReport {
            ssh_master: self.ssh_master.load(Ordering::Relaxed),
            dedicated: self.dedicated.load(Ordering::Relaxed),
            multiplexed: self.multiplexed.load(Ordering::Relaxed),
        }
    }
}

/// Which channel a group of rows belongs to; each channel replaces its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Section {
    /// TCP and UDP ports.
    Ports,
    /// Guest Unix sockets published on the host.
    Sockets,
    /// Host services reachable from the guest.
    Reverse,
    /// Shared folders whose events go to the guest.
    Files,
}

#[derive(Default)]
struct State {
    connected: bool,
    transport: String,
    data_path: String,
    rows: std::collections::BTreeMap<Section, Vec<Row>>,
}

/// Shared between the forwarder (which writes) and the control socket (which reads).
#[derive(Clone)]
pub struct StatusBoard {
    agent: String,
    state: Arc<Mutex<State>>,
    routes: Arc<RouteCounts>,
}

impl StatusBoard {
    /// A board for the agent at `agent`, offline.
    pub fn new(agent: String) -> Self {
        Self { agent, state: Arc::default(), routes: Arc::default() }
    }

    /// The per-route connection counters, shared with every session's routes.
    pub fn route_counts(&self) -> Arc<RouteCounts> {
        self.routes.clone()
    }

    /// Records the session state.
    pub fn set_session(&self, connected: bool, data_path: &str) {
        let mut s = self.state.lock().unwrap();
        s.connected = connected;
        s.data_path = data_path.to_string();
        if !connected {
            s.rows.clear();
        }
    }

    /// Records the transport address of the session being set up.
    pub fn set_transport(&self, transport: &str) {
        self.state.lock().unwrap().transport = transport.to_string();
    }

    /// Replaces the rows of one channel.
    pub fn set_rows(&self, section: Section, rows: Vec<Row>) {
        self.state.lock().unwrap().rows.insert(section, rows);
    }

    /// The report as of now.
    pub fn report(&self) -> StatusReport {
        let s = self.state.lock().unwrap();
        let ports = s
            .rows
            .values()
            .flatten()
            .map(|r| {
                let (active, total, (up, down), dropped) = r.stats.as_ref().map_or((0, 0, (0, 0), 0), |c| {
                    (
                        c.active.load(Ordering::Relaxed),
                        c.total.load(Ordering::Relaxed),
                        c.traffic.snapshot(),
                        c.traffic.dropped(),
                    )
                });
                RowReport {
                    proto: r.proto.into(),
                    guest: r.guest.clone(),
                    host: r.host.clone(),
                    state: r.state.into(),
                    reason: r.reason.clone(),
                    active_connections: active,
                    total_connections: total,
                    bytes_to_guest: up,
                    bytes_from_guest: down,
                    dropped_datagrams: dropped,
                }
            })
            .collect();
        StatusReport {
            agent: self.agent.clone(),
            connected: s.connected,
            transport: if s.connected { s.transport.clone() } else { "-".into() },
            data_path: if s.connected { s.data_path.clone() } else { "-".into() },
            ports,
            connections_by_route: self.routes.report(),
        }
    }
}
