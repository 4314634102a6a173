//! Guest TCP ports published as host Unix sockets (a port rule with a
//! `hostSocket`, e.g. a guest's Docker API on TCP 2375 as `docker.sock`).
//! The socket exists while the guest port listens, like a host port.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc};

use ferry_protocol::{Listener, Proto, Target};

use super::{mapping::dial_addr, rules::Decision};
use crate::{
    routes::Routes,
    sockets::{self, State},
    status::{board::Row, events::EventKind, EventSink},
};

/// The host sockets of guest ports, keyed by host path.
#[derive(Default)]
pub struct PortSockets {
    sockets: BTreeMap<PathBuf, (Listener, State)>,
}

impl PortSockets {
    /// Opens a socket for each TCP listener decided to a `hostSocket`
    /// (the first listener wins a path) and removes the others.
    pub fn reconcile(&mut self, decided: &[(Listener, Decision)], routes: &Arc<Routes>, events: &EventSink) {
        let mut wanted: BTreeMap<PathBuf, Listener> = BTreeMap::new();
        for (l, d) in decided {
            if let (Proto::Tcp, Decision::HostSocket { path, .. }) = (l.proto, d) {
                wanted.entry(path.clone()).or_insert(*l);
            }
        }
        self.sockets.retain(|path, (l, state)| {
            let keep = wanted.get(path) == Some(l);
            if !keep && matches!(state, State::Active { .. }) {
                tracing::info!("released {} (guest {} closed)", path.display(), l.addr);
                events.emit(EventKind::NotForwarding, "tcp", &l.addr.to_string(), &path.display().to_string(), None);
            }
            keep // dropping an Active state removes the host socket
        });
        for (path, l) in wanted {
            let entry = self.sockets.entry(path.clone()).or_insert((l, State::Waiting));
            if matches!(entry.1, State::Active { .. }) {
                continue;
            }
            let target = Target::Tcp(dial_addr(l.addr));
            entry.1 = sockets::open(&path, "tcp", &l.addr.to_string(), target, routes, events, &entry.1);
        }
    }

    /// Whether `l` is published here (so it is not "not forwarded").
    pub fn serves(&self, l: &Listener) -> bool {
        self.sockets.values().any(|(ours, _)| ours == l)
    }

    /// One status row per host socket.
    pub fn rows(&self) -> Vec<Row> {
        self.sockets
            .iter()
            .map(|(path, (l, state))| {
                let (state, reason, stats) = state.describe("");
                Row { proto: "tcp", guest: l.addr.to_string(), host: path.display().to_string(), state, reason, stats }
            })
            .collect()
    }
}
