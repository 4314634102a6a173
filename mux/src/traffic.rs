//! Byte counters of forwarded connections, updated while bytes move so that
//! a status query sees long-lived connections too.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

/// Bytes moved each way through one forward (all its connections).
#[derive(Debug, Default)]
pub struct Traffic {
    /// Bytes from the accepting side's client towards the far side.
    pub up: AtomicU64,
    /// Bytes from the far side back to the client.
    pub down: AtomicU64,
    /// Datagrams dropped because the path could not take them at once (UDP).
    pub dropped: AtomicU64,
}

impl Traffic {
    /// Adds `n` bytes sent upstream.
    pub fn add_up(&self, n: usize) {
        self.up.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Adds `n` bytes sent downstream.
    pub fn add_down(&self, n: usize) {
        self.down.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts one dropped datagram.
    pub fn add_dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Datagrams dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// (up, down) at this moment.
    pub fn snapshot(&self) -> (u64, u64) {
        (self.up.load(Ordering::Relaxed), self.down.load(Ordering::Relaxed))
    }
}

/// Connection counters of one forward (a host binding, a reverse listener),
/// shared with its accept loop.
#[derive(Debug, Default)]
pub struct ConnStats {
    /// Connections (UDP: flows) open now.
    pub active: AtomicU64,
    /// Connections (UDP: flows) in all.
    pub total: AtomicU64,
    /// Bytes each way (up: the accepting side's client -> the far side), and
    /// dropped datagrams (shared with relays that move to another runtime).
    pub traffic: Arc<Traffic>,
}

impl ConnStats {
    /// Counts a new connection; the guard uncounts it when dropped.
    pub fn open(self: &Arc<Self>) -> ConnGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        ConnGuard(self.clone())
    }
}

/// Marks one connection as active while it lives.
pub struct ConnGuard(Arc<ConnStats>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}
