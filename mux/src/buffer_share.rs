//! Send buffers of dedicated data connections, sized by how many carry bulk.
//!
//! A Unix stream socket's send buffer bounds the bytes in flight to its
//! peer. With the kernel's default (about 208 KiB) one bulk stream makes
//! the relays wake far more often than with 4 MiB (measured: 0.61x of the
//! direct path's throughput against 0.7-0.87x, and 1.5x the CPU per GB),
//! but 4 MiB on each of a thousand connections would let them pin 4 GiB of
//! kernel memory, and every queued byte is latency. So the live data
//! connections of a process that carry bulk (that sent [`SIZED_AFTER`]
//! bytes) share [`BUDGET`]: each gets `BUDGET / bulk`, at most
//! [`MAX_SHARE`] and never less than the kernel's default, rounded down to
//! a power of two so that small changes in the count do not resize every
//! socket. The others keep the kernel's default and take no share: counted
//! too, a hundred idle keep-alive connections cut one transfer beside them
//! to the default buffer (docs/performance.md, "Idle connections beside a
//! transfer"). A connection applies a changed share the next time it sends
//! ([`BufferShare::refresh`]); shrinking a buffer drops nothing, it only
//! holds back further sends until the queue is below the new size.

use std::{
    os::fd::RawFd,
    sync::atomic::{AtomicU64, AtomicUsize, Ordering},
};

/// The send-buffer bytes (as the kernel counts them: see
/// [`BufferShare::refresh`]) shared by the live data connections of a process
/// that carry bulk.
pub const BUDGET: usize = 16 << 20;

/// The largest send buffer one data connection asks for.
pub const MAX_SHARE: usize = 4 << 20;

/// How many live data connections of this process hold a share (have sent
/// [`SIZED_AFTER`] bytes).
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// The kernel's default send buffer for this process's data connections,
/// read off the first one sized (before it was resized), 0 until then. One
/// value for all: a connection that moved to another runtime joins again
/// with a buffer its first share already grew, which is no default.
static FLOOR: AtomicUsize = AtomicUsize::new(0);

/// Bytes a connection sends before its buffer is sized at all: short
/// connections (most of them) then cost no extra system call.
pub const SIZED_AFTER: u64 = 256 << 10;

/// One data connection's share of [`BUDGET`], held while it relays from
/// its first [`SIZED_AFTER`] bytes on.
pub struct BufferShare {
    fd: RawFd,
    /// Bytes sent so far (counted up to [`SIZED_AFTER`]).
    sent: AtomicU64,
    /// The size last asked for (what the socket held until then); 0 until
    /// the buffer is first sized, when the connection takes its share.
    applied: AtomicUsize,
}

impl BufferShare {
    /// The share of the socket `fd`, taken and applied once it has sent
    /// [`SIZED_AFTER`] bytes.
    pub fn join(fd: RawFd) -> Self {
        Self { fd, sent: AtomicU64::new(0), applied: AtomicUsize::new(0) }
    }

    /// Counts `sent` bytes; once past [`SIZED_AFTER`], resizes the send
    /// buffer if the number of bulk connections changed this connection's
    /// share since it was last sized. Costs two atomic loads when nothing
    /// changed.
    pub fn refresh(&self, sent: usize) {
        let so_far = self.sent.load(Ordering::Relaxed);
        if so_far < SIZED_AFTER {
            self.sent.store(so_far + sent as u64, Ordering::Relaxed);
            return;
        }
        if self.applied.load(Ordering::Relaxed) == 0 {
            // The connection carries bulk: it takes a share from now on.
            LIVE.fetch_add(1, Ordering::Relaxed);
            // What the socket holds now: the default, unless an earlier
            // share (before a move) resized it.
            let now = crate::sockopt::send_buffer(self.fd).unwrap_or(1);
            if FLOOR.load(Ordering::Relaxed) == 0 {
                FLOOR.store(now, Ordering::Relaxed);
            }
            self.applied.store(now, Ordering::Relaxed);
        }
        let want = share_of(LIVE.load(Ordering::Relaxed), FLOOR.load(Ordering::Relaxed));
        if want != self.applied.load(Ordering::Relaxed) {
            self.applied.store(want, Ordering::Relaxed);
            // Linux doubles what it is asked for (bookkeeping overhead) and
            // reports the doubled size, so there ask for half.
            let ask = if crate::sockopt::KERNEL_DOUBLES { want / 2 } else { want };
            let ask = ask.min(libc::c_int::MAX as usize) as libc::c_int;
            crate::sockopt::request(self.fd, crate::sockopt::Buffer::Send, ask);
        }
    }

    /// The send buffer this connection holds now, as the kernel reports it.
    #[cfg(test)]
    fn current(&self) -> Option<usize> {
        crate::sockopt::send_buffer(self.fd)
    }
}

impl Drop for BufferShare {
    fn drop(&mut self) {
        if self.applied.load(Ordering::Relaxed) != 0 {
            LIVE.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The send buffer (as the kernel reports it) for one of `live`
/// connections whose default is `floor`.
fn share_of(live: usize, floor: usize) -> usize {
    let even = (BUDGET / live.max(1)).min(MAX_SHARE);
    if even <= floor {
        return floor;
    }
    let rounded = 1usize << (usize::BITS - 1 - even.leading_zeros());
    rounded.max(floor)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests that hold shares ([`LIVE`] is the process's).
    static SHARE_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn shares_shrink_as_connections_grow_and_never_below_the_default() {
        let floor = 212_992;
        assert_eq!(share_of(1, floor), MAX_SHARE);
        assert_eq!(share_of(4, floor), MAX_SHARE);
        assert_eq!(share_of(5, floor), 2 << 20);
        assert_eq!(share_of(16, floor), 1 << 20);
        assert_eq!(share_of(64, floor), 256 << 10);
        assert_eq!(share_of(77, floor), floor);
        assert_eq!(share_of(1000, floor), floor);
        assert_eq!(share_of(0, floor), MAX_SHARE);
    }

    #[test]
    fn a_live_socket_follows_its_share_once_it_carries_bulk() {
        let _serial = SHARE_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        use std::os::fd::AsRawFd;
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let default = crate::sockopt::send_buffer(a.as_raw_fd()).unwrap();
        let share = BufferShare::join(a.as_raw_fd());
        share.refresh(1000);
        assert_eq!(share.current().unwrap(), default, "a short connection keeps the default");
        share.refresh(SIZED_AFTER as usize);
        share.refresh(1);
        let first = share.current().unwrap();
        // Other tests of this process may hold shares too, so the live
        // count is at least one: the share is above the default unless
        // the sysctl cap forbids it (as a non-root process may find).
        assert!(first >= default, "{default} -> {first}");
        // Idle connections (never past SIZED_AFTER) take no share.
        let idle: Vec<_> = (0..200).map(|_| BufferShare::join(a.as_raw_fd())).collect();
        share.refresh(1);
        assert_eq!(share.current().unwrap(), first, "200 idle connections took the share");
        let crowd = bulk_shares(a.as_raw_fd(), 200);
        share.refresh(1);
        assert_eq!(share.current().unwrap(), default, "with 201 bulk connections the share is the default");
        drop(crowd);
        share.refresh(1);
        assert_eq!(share.current().unwrap(), first, "the share grows back once they are gone");
        drop(idle);
    }

    /// `n` shares of `fd` whose connections carried bulk.
    fn bulk_shares(fd: RawFd, n: usize) -> Vec<BufferShare> {
        let bulk = |_| {
            let s = BufferShare::join(fd);
            s.refresh(SIZED_AFTER as usize);
            s.refresh(1);
            s
        };
        (0..n).map(bulk).collect()
    }

    #[test]
    fn a_socket_that_joins_again_after_a_move_still_shrinks_to_its_share() {
        let _serial = SHARE_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        use std::os::fd::AsRawFd;
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let default = crate::sockopt::send_buffer(a.as_raw_fd()).unwrap();
        // Its first share grows the buffer (as far as the sysctl cap lets it).
        let first = BufferShare::join(a.as_raw_fd());
        first.refresh(SIZED_AFTER as usize);
        first.refresh(1);
        drop(first);
        // After the move, a crowd makes the share the default again: the
        // grown buffer is not taken for the default.
        let again = BufferShare::join(a.as_raw_fd());
        let crowd = bulk_shares(a.as_raw_fd(), 200);
        again.refresh(SIZED_AFTER as usize);
        again.refresh(1);
        assert_eq!(again.current().unwrap(), default, "with 201 bulk connections the share is the default");
        drop(crowd);
    }
}
