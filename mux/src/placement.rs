//! Where each forwarded connection runs: on the process's own thread, or
//! on a pool of threads once its target is known to carry bulk.
//!
//! `ferry run` and `ferry-agent` run on one thread ([`main_runtime`]).
//! A small request then costs no wake-up of a second thread: with tokio's
//! multi-thread scheduler, every new connection woke a parked worker (a
//! futex and a context switch or two) for work the first would have done in
//! microseconds. Measured with a serial client: 15 context switches and
//! about 230 µs of CPU per connection across both processes with two
//! workers, 10 and 160 µs with one (docs/performance.md).
//!
//! Bulk is the opposite case: several streams, each moving bytes as fast
//! as the kernel takes them, want a core each. So each target keeps a
//! [`BulkHistory`] of its recent connections, and a connection to a target
//! whose connections have been carrying bulk runs on [`parallel`], a
//! multi-thread runtime shared by the process, instead. Its sockets are
//! detached from one runtime and taken up by the other before anything is
//! relayed, so nothing is in flight when it moves.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Mutex, OnceLock,
    },
};

/// A connection that moved at least this many bytes (both ways) carried
/// bulk.
pub const BULK_BYTES: u64 = 1 << 20;

/// What one bulk connection adds to a [`BulkHistory`]'s score (a small one
/// takes one away), the score's cap, and the score from which a target
/// counts as bulk: one bulk connection makes it so (four streams opened
/// after one test transfer all get a core), and it takes as many small
/// requests as the bulk ones before them to turn it back.
const BULK_WEIGHT: u32 = 4;
const SCORE_MAX: u32 = 16;
const BULK_FROM: u32 = 4;

/// Targets remembered per process; past this, the histories start over.
pub const MAX_HISTORIES: usize = 4096;

/// The process's own runtime: one thread, with I/O and timers (blocking
/// work still goes to tokio's blocking pool).
pub fn main_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}

/// The runtime that bulk connections run on: one worker per CPU (two at
/// least), started the first time it is needed.
pub fn parallel() -> &'static tokio::runtime::Handle {
    static PARALLEL: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    PARALLEL
        .get_or_init(|| {
            let workers = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .thread_name("ferry-bulk")
                .enable_all()
                .build()
                .expect("a tokio runtime for bulk connections")
        })
        .handle()
}

/// Whether a target's recent connections carried bulk.
#[derive(Debug, Default)]
pub struct BulkHistory {
    score: AtomicU32,
}

impl BulkHistory {
    /// Whether the next connection to this target should run on
    /// [`parallel`].
    pub fn expects_bulk(&self) -> bool {
        self.score.load(Ordering::Relaxed) >= BULK_FROM
    }

    /// Records a finished connection that moved `bytes` (both ways).
    pub fn record(&self, bytes: u64) {
        let bulk = bytes >= BULK_BYTES;
        let _ = self.score.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
            Some(if bulk { (s + BULK_WEIGHT).min(SCORE_MAX) } else { s.saturating_sub(1) })
        });
    }
}

/// The [`BulkHistory`] of each target, for a side that reaches many (the
/// agent); bounded by [`MAX_HISTORIES`].
#[derive(Debug)]
pub struct BulkHistories<K> {
    targets: Mutex<HashMap<K, Arc<BulkHistory>>>,
}

impl<K> Default for BulkHistories<K> {
    fn default() -> Self {
        Self { targets: Mutex::new(HashMap::new()) }
    }
}

impl<K: Hash + Eq + Clone> BulkHistories<K> {
    /// The history of `target`.
    pub fn of(&self, target: &K) -> Arc<BulkHistory> {
        let mut targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = targets.get(target) {
            return h.clone();
        }
        if targets.len() >= MAX_HISTORIES {
            targets.clear();
        }
        targets.entry(target.clone()).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_turns_bulk_after_bulk_connections_and_back_after_small_ones() {
        let h = BulkHistory::default();
        assert!(!h.expects_bulk(), "a new target is taken for small requests");
        h.record(BULK_BYTES - 1);
        assert!(!h.expects_bulk());
        h.record(BULK_BYTES);
        assert!(h.expects_bulk(), "one bulk connection makes a target bulk");
        h.record(100);
        assert!(!h.expects_bulk(), "a small request after a single bulk one turns it back");
        for _ in 0..10 {
            h.record(10 * BULK_BYTES);
        }
        for _ in 0..3 {
            h.record(100);
        }
        assert!(h.expects_bulk(), "a few small requests do not undo a run of bulk ones");
        for _ in 0..20 {
            h.record(100);
        }
        assert!(!h.expects_bulk());
    }

    #[test]
    fn histories_are_per_target_and_bounded() {
        let all = BulkHistories::default();
        all.of(&1u32).record(BULK_BYTES);
        assert!(all.of(&1).expects_bulk());
        assert!(!all.of(&2).expects_bulk());
        for t in 0..MAX_HISTORIES as u32 + 10 {
            all.of(&(t + 100));
        }
        assert!(all.targets.lock().unwrap().len() <= MAX_HISTORIES);
    }

    #[test]
    fn bulk_connections_get_a_multi_thread_runtime() {
        let flavor = parallel().block_on(async { tokio::runtime::Handle::current().runtime_flavor() });
        assert_eq!(flavor, tokio::runtime::RuntimeFlavor::MultiThread);
    }
}
