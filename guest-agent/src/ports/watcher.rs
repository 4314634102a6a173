//! Periodic rescans published as a watch channel of the current port set.

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use ferry_protocol::Listener;
use tokio::sync::watch;

use super::sock_diag::SockDiag;

/// The set of guest listeners at one moment.
pub type PortSet = BTreeSet<Listener>;

/// Owns the scanning thread; sessions subscribe to its results.
pub struct PortWatcher {
    rx: watch::Receiver<PortSet>,
}

impl PortWatcher {
    /// Starts scanning every `interval`, leaving out the agent's own
    /// transport listeners in `exclude`.
    pub fn start(interval: Duration, exclude: Vec<SocketAddr>) -> std::io::Result<Self> {
        let mut diag = SockDiag::open()?;
        let first = scan(&mut diag, &exclude)?;
        let (tx, rx) = watch::channel(first);
        std::thread::Builder::new().name("port-scan".into()).spawn(move || loop {
            std::thread::sleep(interval);
            match scan(&mut diag, &exclude) {
                Ok(set) => {
                    tx.send_if_modified(|cur| {
                        if *cur != set {
                            *cur = set;
                            true
                        } else {
                            false
                        }
                    });
                }
                Err(e) => tracing::warn!("port scan failed: {e}"),
            }
            if tx.is_closed() {
                return;
            }
        })?;
        Ok(Self { rx })
    }

    /// A receiver of port-set updates.
    pub fn subscribe(&self) -> watch::Receiver<PortSet> {
        self.rx.clone()
    }
}

fn scan(diag: &mut SockDiag, exclude: &[SocketAddr]) -> std::io::Result<PortSet> {
    let mut set = diag.tcp_listeners()?;
    set.retain(|l| !exclude.contains(&l.addr));
    Ok(set)
}

/// What changed between two port sets.
pub fn diff(old: &PortSet, new: &PortSet) -> (Vec<Listener>, Vec<Listener>) {
    (new.difference(old).copied().collect(), old.difference(new).copied().collect())
}
