//! The async runtime each long-running ferry process runs on.
//!
//! One thread: every task of the process (listeners, relays, the session's
//! reader and writer) runs on the thread that waits in epoll. Per forwarded
//! connection, tokio's multi-thread scheduler woke a second worker (a futex
//! wake and a context switch) for work the first would have done in
//! microseconds; with two vCPUs shared with the peers of the connection,
//! that cost more than the parallelism gave. Measured A/B on the bench
//! (docs/performance.md): about a quarter less CPU per new connection, bulk
//! rows unchanged, since spliced bytes are copied in the kernel either way.

/// A single-threaded runtime with I/O and timers enabled (blocking work
/// still goes to tokio's blocking pool).
pub fn build() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}
