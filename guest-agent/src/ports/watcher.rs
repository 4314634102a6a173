//! Discovery sources merged into one watch channel of the current port set.
//!
//! Each [`Source`] runs on a thread of its own and publishes its complete
//! set whenever it changes; the watcher publishes the union. Sessions
//! subscribe and turn changes into diffs.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
};

use ferry_protocol::Listener;
use tokio::sync::watch;

/// The set of guest listeners at one moment.
pub type PortSet = BTreeSet<Listener>;

/// A way of finding guest listeners (the kernel's socket table, Kubernetes
/// services ...).
pub trait Source: Send + 'static {
    /// A short name for logs.
    fn name(&self) -> &'static str;
    /// Publishes the source's port set through `sink` until the sink closes.
    fn run(self: Box<Self>, sink: SourceSink);
}

/// Where one source publishes its set.
pub struct SourceSink {
    index: usize,
    shared: Arc<Shared>,
}

struct Shared {
    per_source: Mutex<Vec<PortSet>>,
    tx: watch::Sender<PortSet>,
}

impl SourceSink {
    /// Replaces this source's set; subscribers hear of it if the union changed.
    pub fn publish(&self, set: PortSet) {
        let mut sets = self.shared.per_source.lock().unwrap();
        if sets[self.index] == set {
            return;
        }
        sets[self.index] = set;
        let union: PortSet = sets.iter().flatten().copied().collect();
        self.shared.tx.send_if_modified(|cur| {
            if *cur != union {
                *cur = union;
                true
            } else {
                false
            }
        });
    }

    /// Whether the watcher is gone (the source should stop).
    pub fn is_closed(&self) -> bool {
        self.shared.tx.is_closed()
    }
}

/// Owns the discovery sources; sessions subscribe to their merged results.
pub struct PortWatcher {
    rx: watch::Receiver<PortSet>,
}

impl PortWatcher {
    /// Starts every source on a thread of its own.
    pub fn start(sources: Vec<Box<dyn Source>>) -> std::io::Result<Self> {
        let (tx, rx) = watch::channel(PortSet::new());
        let shared = Arc::new(Shared { per_source: Mutex::new(vec![PortSet::new(); sources.len()]), tx });
        for (index, source) in sources.into_iter().enumerate() {
            let sink = SourceSink { index, shared: shared.clone() };
            std::thread::Builder::new().name(format!("ports-{}", source.name())).spawn(move || source.run(sink))?;
        }
        Ok(Self { rx })
    }

    /// A receiver of port-set updates.
    pub fn subscribe(&self) -> watch::Receiver<PortSet> {
        self.rx.clone()
    }
}

/// What changed between two port sets.
pub fn diff(old: &PortSet, new: &PortSet) -> (Vec<Listener>, Vec<Listener>) {
    (new.difference(old).copied().collect(), old.difference(new).copied().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::Proto;

    struct Fixed(Vec<u16>);

    impl Source for Fixed {
        fn name(&self) -> &'static str {
            "fixed"
        }
        fn run(self: Box<Self>, sink: SourceSink) {
            let set = self.0.iter().map(|&p| Listener { proto: Proto::Tcp, addr: ([0, 0, 0, 0], p).into() }).collect();
            sink.publish(set);
        }
    }

    #[tokio::test]
    async fn publishes_the_union_of_all_sources() {
        let w = PortWatcher::start(vec![Box::new(Fixed(vec![1, 2])), Box::new(Fixed(vec![2, 3]))]).unwrap();
        let mut rx = w.subscribe();
        let ports = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            loop {
                let ports: Vec<u16> = rx.borrow_and_update().iter().map(|l| l.addr.port()).collect();
                if ports.len() == 3 {
                    return ports;
                }
                rx.changed().await.unwrap();
            }
        })
        .await
        .unwrap();
        assert_eq!(ports, vec![1, 2, 3]);
    }
}
