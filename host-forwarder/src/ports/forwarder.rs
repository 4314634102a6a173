//! Keeps the host listeners in step with the guest's port set.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use ferry_mux::Session;
use ferry_protocol::{ControlMessage, Listener};
use tokio::{
    net::{TcpListener, TcpSocket},
    task::JoinHandle,
};

use super::{
    dedicated::DataPath,
    listener::{accept_loop, Routes},
    mapping,
};

struct Active {
    target: Arc<Mutex<SocketAddr>>,
    task: JoinHandle<()>,
}

/// The host listeners of one session. Dropping it closes them all.
pub struct PortForwarder {
    routes: Arc<Routes>,
    guest: BTreeSet<Listener>,
    active: BTreeMap<SocketAddr, Active>,
    /// Host addresses we want but could not bind yet, with the logged error.
    busy: BTreeMap<SocketAddr, String>,
}

impl PortForwarder {
    /// A forwarder with no ports yet.
    pub fn new(session: Session) -> Self {
        Self {
            routes: Arc::new(Routes { session, data: None }),
            guest: BTreeSet::new(),
            active: BTreeMap::new(),
            busy: BTreeMap::new(),
        }
    }

    /// Lets listeners opened from now on use dedicated data connections.
    pub fn set_data_path(&mut self, data: DataPath) {
        let session = self.routes.session.clone();
        self.routes = Arc::new(Routes { session, data: Some(Arc::new(data)) });
    }

    /// Applies a port message from the agent.
    pub fn apply(&mut self, msg: ControlMessage) {
        match msg {
            ControlMessage::PortSnapshot(all) => self.guest = all.into_iter().collect(),
            ControlMessage::PortsChanged { added, removed } => {
                for l in removed {
                    self.guest.remove(&l);
                }
                self.guest.extend(added);
            }
            ControlMessage::DataToken(_) => return,
        }
        self.reconcile();
    }

    /// Tries again to bind host ports that were busy.
    pub fn retry_busy(&mut self) {
        if !self.busy.is_empty() {
            self.reconcile();
        }
    }

    fn reconcile(&mut self) {
        let want = mapping::bindings(&self.guest);
        self.active.retain(|host, a| {
            if want.contains_key(host) {
                return true;
            }
            a.task.abort();
            tracing::info!("released {host}");
            false
        });
        self.busy.retain(|host, _| want.contains_key(host));
        for (host, guest) in want {
            if let Some(a) = self.active.get(&host) {
                *a.target.lock().unwrap() = guest;
                continue;
            }
            match bind(host) {
                Ok(l) => {
                    if self.busy.remove(&host).is_some() {
                        tracing::info!("host port {host} is free now");
                    }
                    tracing::info!("forwarding {host} -> guest {guest}");
                    let target = Arc::new(Mutex::new(guest));
                    let task = tokio::spawn(accept_loop(l, self.routes.clone(), target.clone()));
                    self.active.insert(host, Active { target, task });
                }
                Err(e) => {
                    let e = e.to_string();
                    if self.busy.get(&host) != Some(&e) {
                        tracing::warn!(
                            "cannot forward guest {guest}: host port {host} is unavailable ({e}); will retry"
                        );
                    }
                    self.busy.insert(host, e);
                }
            }
        }
    }
}

/// Binds a host listener; SO_REUSEADDR lets a port be re-bound at once
/// after its guest server restarts, despite old connections in TIME_WAIT.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

impl Drop for PortForwarder {
    fn drop(&mut self) {
        for (host, a) in std::mem::take(&mut self.active) {
            a.task.abort();
            tracing::info!("released {host}");
        }
    }
}
