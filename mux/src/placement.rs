//! Where each forwarded connection runs: on the process's own thread, or
//! on a pool of threads once its target is known to carry bulk.
//!
//! `ferry run` and `ferry-agent` run on one thread where their connections
//! travel on dedicated data connections ([`main_runtime`]).
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
//! relayed ([`spawn_served`]). Data connections the history did not
//! foresee move while they run, once two or more of the process have
//! carried bulk ([`bulk_crowd`]), at a moment when the relay holds no byte
//! ([`DataRelay`], `relay::handover`).

use crate::{
    data_end::EndTicket,
    pump::reset_on_close,
    relay::{Answer, Duties, Relayed, Resume},
    LocalConn, RawConn, Traffic,
};
use std::{
    collections::HashMap,
    future::Future,
    hash::Hash,
    sync::{
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, OnceLock,
    },
};

/// A connection that moved at least this many bytes (both ways) carried
/// bulk.
pub const BULK_BYTES: u64 = 1 << 20;

/// What one bulk connection adds to a [`BulkHistory`]'s score (a small one
/// takes one away), the score's cap, and the score from which a target
/// counts as bulk: one bulk connection makes it so (four streams opened
/// after one test transfer all get a core); each small request takes a
/// quarter of a bulk one back, so one small request turns a single bulk
/// one back, and thirteen a run of four or more.
const BULK_WEIGHT: u32 = 4;
const SCORE_MAX: u32 = 16;
const BULK_FROM: u32 = 4;

/// Targets remembered per process; past this, the histories start over.
pub const MAX_HISTORIES: usize = 4096;

/// The process's own runtime, with I/O and timers (blocking work goes to
/// tokio's blocking pool). A process whose connections travel on dedicated
/// data connections (`dedicated`) runs on one thread, as above. One whose
/// session carries every connection as frames (an `exec:` or sealed TCP
/// transport, `ferry-agent --stdio`) keeps tokio's multi-thread scheduler:
/// its session reader and writer, which seal and open every frame there,
/// and its streams' pumps then use a core each.
pub fn main_runtime(dedicated: bool) -> std::io::Result<tokio::runtime::Runtime> {
    if dedicated {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Runtime::new()
    }
}

/// The runtime that bulk connections run on: one worker per CPU (two at
/// least), started the first time it is needed; `None` if it could not be
/// (no thread could be made), and bulk then stays where it is.
pub fn parallel() -> Option<&'static tokio::runtime::Handle> {
    static PARALLEL: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
    let made = PARALLEL.get_or_init(|| {
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
        let build = || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .thread_name("ferry-bulk")
                .on_thread_start(|| ON_PARALLEL.with(|on| on.set(true)))
                .enable_all()
                .build()
        };
        // tokio panics, rather than fail, when it cannot start a worker
        // thread at all (a process or pid limit reached).
        let built = std::panic::catch_unwind(build).unwrap_or_else(|_| Err(std::io::Error::other("no thread")));
        built.map_err(|e| tracing::warn!("no runtime for bulk connections ({e}); they run on the main one")).ok()
    });
    made.as_ref().map(|r| r.handle())
}

thread_local! {
    static ON_PARALLEL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the calling thread is one of [`parallel`]'s (a socket made
/// here is driven by its I/O driver, not by the process's own thread's).
pub fn on_parallel() -> bool {
    ON_PARALLEL.with(|on| on.get())
}

/// A socket that can leave one runtime's I/O driver and join another's.
pub trait Movable: Sized {
    /// The socket between the two runtimes.
    type Detached: Send + 'static;
    /// Takes the socket out of the runtime it is registered with.
    fn detach(self) -> std::io::Result<Self::Detached>;
    /// Takes it up in the runtime this is called in.
    fn attach(detached: Self::Detached) -> std::io::Result<Self>;
}

impl Movable for tokio::net::TcpStream {
    type Detached = std::net::TcpStream;
    fn detach(self) -> std::io::Result<Self::Detached> {
        self.into_std()
    }
    fn attach(detached: Self::Detached) -> std::io::Result<Self> {
        Self::from_std(detached)
    }
}

impl Movable for tokio::net::UnixStream {
    type Detached = std::os::unix::net::UnixStream;
    fn detach(self) -> std::io::Result<Self::Detached> {
        self.into_std()
    }
    fn attach(detached: Self::Detached) -> std::io::Result<Self> {
        Self::from_std(detached)
    }
}

impl Movable for crate::RawConn {
    type Detached = crate::transport::DetachedConn;
    fn detach(self) -> std::io::Result<Self::Detached> {
        crate::RawConn::detach(self)
    }
    fn attach(detached: Self::Detached) -> std::io::Result<Self> {
        detached.attach()
    }
}

/// A [`LocalConn`] between two runtimes.
pub enum DetachedLocal {
    /// A TCP connection.
    Tcp(std::net::TcpStream),
    /// A Unix stream connection.
    Unix(std::os::unix::net::UnixStream),
}

impl std::os::fd::AsFd for DetachedLocal {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            DetachedLocal::Tcp(s) => s.as_fd(),
            DetachedLocal::Unix(s) => s.as_fd(),
        }
    }
}

impl DetachedLocal {
    /// Closes the socket so that its peer sees an abort where it can (TCP: RST).
    pub fn abort(self) {
        reset_on_close(&self);
    }

    /// Takes the socket up in the runtime this is called in, or aborts it
    /// if it cannot be (a failed registration closes the socket it was
    /// given, so a duplicate of its descriptor carries the abort).
    pub fn attach_or_abort(self) -> std::io::Result<LocalConn> {
        let spare = std::os::fd::AsFd::as_fd(&self).try_clone_to_owned();
        LocalConn::attach(self).inspect_err(|_| {
            if let Ok(spare) = spare {
                reset_on_close(&spare);
            }
        })
    }
}

impl Movable for LocalConn {
    type Detached = DetachedLocal;
    fn detach(self) -> std::io::Result<Self::Detached> {
        Ok(match self {
            LocalConn::Tcp(s) => DetachedLocal::Tcp(s.detach()?),
            LocalConn::Unix(s) => DetachedLocal::Unix(s.detach()?),
        })
    }
    fn attach(detached: Self::Detached) -> std::io::Result<Self> {
        Ok(match detached {
            DetachedLocal::Tcp(s) => LocalConn::Tcp(Movable::attach(s)?),
            DetachedLocal::Unix(s) => LocalConn::Unix(Movable::attach(s)?),
        })
    }
}

/// A data connection's relay (see [`crate::relay`]), with what it needs
/// owned so that it can go on on [`parallel`]: a connection relayed on the
/// process's own thread (see [`main_runtime`]) that turns out to carry bulk
/// while another connection does too ([`bulk_crowd`]) stops at a moment when
/// its relay holds no byte either way, its two sockets move, and the relay
/// goes on there. So bulk connections get a core each even when their
/// target's history did not foresee them (a hundred streams opened at once
/// on a fresh port), while a lone one keeps the one thread and a small
/// request never leaves it.
pub struct DataRelay {
    /// Counts the bytes (up: the local socket -> the data connection).
    pub traffic: Arc<Traffic>,
    /// The agent's answer, as this side handles it.
    pub answer: Answer,
    /// Confirms each side's clean end on the session.
    pub end: EndTicket,
    /// The target's history, which the bytes count towards.
    pub history: Arc<BulkHistory>,
}

impl DataRelay {
    /// Relays `local` with `conn` until both directions end, moving to
    /// [`parallel`] as above. Returns the reason of an abort (or of a
    /// refusal, with [`Answer::Read`]), after aborting `local`.
    pub async fn run(self, local: LocalConn, conn: RawConn) -> Option<String> {
        use tokio::runtime::{Handle, RuntimeFlavor};
        let movable = !on_parallel() && Handle::current().runtime_flavor() == RuntimeFlavor::CurrentThread;
        let (from, moved) = {
            let meter = Metered::new(&self.history);
            match self.relay(&local, &conn, &meter, Resume::start(self.answer), movable).await {
                Ok(Relayed::Ended(..)) => return None,
                Ok(Relayed::Stopped(from)) => (from, meter.moved()),
                Err(e) => return abort(local, e),
            }
        };
        let Some(parallel) = parallel() else {
            // No bulk runtime: go on here.
            return self.go_on(local, &conn, from, moved).await;
        };
        // A move that fails aborts the client, so that a cut transfer never
        // looks complete. The data connection moves first, while the local
        // socket can still be aborted whole.
        let could_not = |e| Some(format!("a bulk connection could not move: {e}"));
        let conn = match conn.detach() {
            Ok(conn) => conn,
            Err(e) => return abort(local, e),
        };
        // (tokio closes a socket it cannot deregister: nothing is left to abort.)
        let local = match local.detach() {
            Ok(local) => local,
            Err(e) => return could_not(e),
        };
        let moved_on = parallel.spawn(async move {
            let conn = match RawConn::attach(conn) {
                Ok(conn) => conn,
                Err(e) => {
                    local.abort();
                    return could_not(e);
                }
            };
            let local = match local.attach_or_abort() {
                Ok(local) => local,
                Err(e) => return could_not(e),
            };
            self.go_on(local, &conn, from, moved).await
        });
        moved_on.await.unwrap_or_else(|e| Some(format!("the moved relay failed: {e}")))
    }

    /// The rest of a stopped relay (`moved` bytes metered so far), where it
    /// is; the reason of an abort, as [`DataRelay::run`].
    async fn go_on(&self, local: LocalConn, conn: &RawConn, from: Resume, moved: u64) -> Option<String> {
        let meter = Metered::resumed(&self.history, moved);
        match self.relay(&local, conn, &meter, from, false).await {
            Ok(_) => None,
            Err(e) => abort(local, e),
        }
    }

    async fn relay(
        &self,
        local: &LocalConn,
        conn: &RawConn,
        meter: &Metered<'_>,
        from: Resume,
        movable: bool,
    ) -> std::io::Result<Relayed> {
        // The answer still to handle comes with `from`.
        let duties = Duties { end: Some(&self.end), meter: Some(meter), ..Duties::default() };
        local.relay(conn, &self.traffic, duties, from, movable).await
    }
}

/// Aborts `local` after the relay failed with `e`; the reason.
fn abort(local: LocalConn, e: std::io::Error) -> Option<String> {
    local.abort();
    Some(e.to_string())
}

/// Serves `socket` with `serve`: on this thread, or, when `bulk`, on
/// [`parallel`], where the socket is taken up before `serve` sees it. A
/// socket that cannot move is dropped (logged), which its peer sees as a
/// closed connection.
pub fn spawn_served<S, F>(bulk: bool, socket: S, serve: impl FnOnce(S) -> F + Send + 'static)
where
    S: Movable + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    // Only a bulk connection starts the bulk runtime.
    let Some(parallel) = bulk.then(parallel).flatten() else {
        tokio::spawn(serve(socket));
        return;
    };
    let detached = match socket.detach() {
        Ok(d) => d,
        Err(e) => return tracing::debug!("a bulk connection could not move: {e}"),
    };
    drop(parallel.spawn(async move {
        match S::attach(detached) {
            Ok(socket) => serve(socket).await,
            Err(e) => tracing::debug!("a bulk connection could not move: {e}"),
        }
    }));
}

/// Runs `task` on this thread, or, when `bulk`, on [`parallel`] (where the
/// sockets it opens are registered): for a connection whose sockets are
/// all made inside `task`.
pub fn spawn<F>(bulk: bool, task: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    match bulk.then(parallel).flatten() {
        Some(parallel) => drop(parallel.spawn(task)),
        None => drop(tokio::spawn(task)),
    }
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

    /// Counts one connection, bulk or not.
    fn record(&self, bulk: bool) {
        let _ = self.score.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
            Some(if bulk { (s + BULK_WEIGHT).min(SCORE_MAX) } else { s.saturating_sub(1) })
        });
    }
}

/// One connection's bytes as its target's [`BulkHistory`] sees them: it
/// counts as bulk the moment it has moved [`BULK_BYTES`] (so connections
/// opened meanwhile are placed by it, and however it ends), and as small
/// when it is dropped short of that.
#[derive(Debug)]
pub struct Metered<'a> {
    history: &'a BulkHistory,
    moved: AtomicU64,
}

impl<'a> Metered<'a> {
    /// Meters one connection to the target of `history`.
    pub fn new(history: &'a BulkHistory) -> Self {
        Self::resumed(history, 0)
    }

    /// Meters a connection that has moved `moved` bytes already (metered
    /// before it moved to another runtime).
    pub fn resumed(history: &'a BulkHistory, moved: u64) -> Self {
        if moved >= BULK_BYTES {
            BULK_LIVE.fetch_add(1, Ordering::Relaxed);
        }
        Self { history, moved: AtomicU64::new(moved) }
    }

    /// Whether the connection has carried bulk.
    pub fn carried_bulk(&self) -> bool {
        self.moved() >= BULK_BYTES
    }

    /// The bytes moved so far.
    pub fn moved(&self) -> u64 {
        self.moved.load(Ordering::Relaxed)
    }

    /// Counts `n` more bytes moved (either way).
    pub fn add(&self, n: usize) {
        let before = self.moved.fetch_add(n as u64, Ordering::Relaxed);
        if before < BULK_BYTES && before + n as u64 >= BULK_BYTES {
            self.history.record(true);
            BULK_LIVE.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Metered<'_> {
    fn drop(&mut self) {
        if *self.moved.get_mut() < BULK_BYTES {
            self.history.record(false);
        } else {
            BULK_LIVE.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Metered connections of this process that are open and have moved
/// [`BULK_BYTES`], wherever they run.
static BULK_LIVE: AtomicUsize = AtomicUsize::new(0);

/// Held by the unit tests that make or count bulk connections ([`BULK_LIVE`]
/// is the process's, and `cargo test` runs tests on threads of one process).
#[cfg(test)]
pub(crate) static BULK_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes [`BULK_TESTS`] (a failed test's poison is no matter).
#[cfg(test)]
pub(crate) fn bulk_tests() -> std::sync::MutexGuard<'static, ()> {
    BULK_TESTS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether more than one open connection of this process has moved
/// [`BULK_BYTES`] (an idle one that did counts too): a lone bulk stream
/// keeps the one thread to itself (measured: one
/// stream moves 5-15% more there than on the multi-thread runtime, which
/// wakes its other worker), while several want a core each.
pub fn bulk_crowd() -> bool {
    BULK_LIVE.load(Ordering::Relaxed) >= 2
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
        let _serial = bulk_tests();
        let h = BulkHistory::default();
        let connection = |bytes: u64| {
            let m = Metered::new(&h);
            // In batches, as a relay counts them.
            for _ in 0..bytes / 65_536 {
                m.add(65_536);
            }
            m.add((bytes % 65_536) as usize);
        };
        assert!(!h.expects_bulk(), "a new target is taken for small requests");
        connection(BULK_BYTES - 1);
        assert!(!h.expects_bulk());
        connection(BULK_BYTES);
        assert!(h.expects_bulk(), "one bulk connection makes a target bulk");
        connection(100);
        assert!(!h.expects_bulk(), "a small request after a single bulk one turns it back");
        for _ in 0..10 {
            connection(10 * BULK_BYTES);
        }
        for _ in 0..3 {
            connection(100);
        }
        assert!(h.expects_bulk(), "a few small requests do not undo a run of bulk ones");
        for _ in 0..20 {
            connection(100);
        }
        assert!(!h.expects_bulk());
    }

    #[test]
    fn a_connection_counts_as_bulk_while_it_is_still_moving_bytes() {
        let _serial = bulk_tests();
        let h = BulkHistory::default();
        let m = Metered::new(&h);
        m.add(BULK_BYTES as usize / 2);
        assert!(!h.expects_bulk());
        m.add(BULK_BYTES as usize / 2);
        assert!(h.expects_bulk(), "bulk from the moment it crossed, before it ends");
        m.add(BULK_BYTES as usize);
        drop(m);
        assert!(h.expects_bulk(), "counted once, and not as small when it ends");
    }

    #[test]
    fn histories_are_per_target_and_bounded() {
        let _serial = bulk_tests();
        let all = BulkHistories::default();
        Metered::new(&all.of(&1u32)).add(BULK_BYTES as usize);
        assert!(all.of(&1).expects_bulk());
        assert!(!all.of(&2).expects_bulk());
        for t in 0..MAX_HISTORIES as u32 + 10 {
            all.of(&(t + 100));
        }
        assert!(all.targets.lock().unwrap().len() <= MAX_HISTORIES);
    }

    #[test]
    fn bulk_connections_get_a_multi_thread_runtime() {
        let flavor = parallel().unwrap().block_on(async { tokio::runtime::Handle::current().runtime_flavor() });
        assert_eq!(flavor, tokio::runtime::RuntimeFlavor::MultiThread);
        assert!(!on_parallel(), "the test's own thread");
        let there = parallel().unwrap().block_on(async { tokio::spawn(async { on_parallel() }).await.unwrap() });
        assert!(there, "a task of the bulk runtime knows where it runs");
    }
}
