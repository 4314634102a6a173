//! The portable conduit: a user-space buffer filled with read(2) and drained
//! with write(2), for systems without splice(2) (macOS) and for Linux in
//! portable mode ([`crate::platform`]).

use std::{
    io,
    os::fd::RawFd,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        OnceLock,
    },
    time::Instant,
};

use super::{os_result, Conduit};

/// A buffer's first size while there is no crowd: as much as a default
/// Linux pipe holds, so both relays move the same batches.
pub const FIRST_BUFFER: usize = 64 * 1024;

/// A buffer's size while more than [`GROWING_UP_TO`] buffers of the
/// process moved bytes lately (a crowd, see [`Crowd`]), so that a crowd's
/// memory stays bounded (32 KiB per busy direction: about 64 MiB
/// for a thousand streams busy both ways) and its streams stay fair. The
/// size trades some fairness for throughput: with 100 busy streams on the
/// bulk runtime, 16 and 24 KiB moved 0.97-1.00x socat's aggregate (median of
/// 15 rounds each) at Jain 0.99, 32 KiB 1.18x at Jain 0.97 (0.92 at worst),
/// 64 KiB 1.12x at Jain down to 0.90 (docs/performance.md, "A crowd's copy
/// buffers"). An older figure, 0.44x socat with 64 KiB, predates bulk
/// connections moving to their own runtime.
pub const CROWDED_BUFFER: usize = 32 * 1024;

/// The largest a buffer grows while its stream is a bulk transfer (a read
/// filled it): fewer, larger system calls per byte.
pub const MAX_BUFFER: usize = 256 * 1024;

/// Above this many copy buffers that moved bytes lately none grows, and
/// each that empties goes back to [`CROWDED_BUFFER`], so a thousand busy
/// streams hold that each, not `MAX_BUFFER`. Also the most buffers that
/// hold more than [`CROWDED_BUFFER`] at once ([`LARGE`]), busy or stalled.
pub const GROWING_UP_TO: usize = 64;

/// Copy buffers holding more than [`CROWDED_BUFFER`] of memory: at most
/// about [`GROWING_UP_TO`], whatever their streams do, so the process's
/// copy buffers hold at most that many times [`MAX_BUFFER`] plus
/// [`CROWDED_BUFFER`] per busy direction (a stream whose far side stops
/// reading keeps its buffer full, moves nothing and leaves the crowd, but
/// not this count).
static LARGE: AtomicUsize = AtomicUsize::new(0);

/// The copy buffers of the process that moved bytes lately: each counts
/// once in every one-second window in which it moved some, and the crowd
/// is the larger count of the present window and the one before, so it
/// holds steady while busy streams take turns and is gone within two
/// seconds of their last bytes. Open connections that stay idle (a
/// browser's or a database pool's keep-alive connections) are no crowd
/// (docs/performance.md, "Idle connections beside a transfer"). A count
/// made in a window that ended meanwhile may be lost: a crowd of a
/// thousand does not notice.
struct Crowd {
    /// The even and the odd windows: each the window's number (high 32
    /// bits) and the buffers counted in it (low 32 bits).
    slots: [AtomicU64; 2],
}

static CROWD: Crowd = Crowd::new();

/// The number of the one-second window it is now (from 1).
fn window_now() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    1 + START.get_or_init(Instant::now).elapsed().as_secs()
}

impl Crowd {
    const fn new() -> Self {
        Self { slots: [AtomicU64::new(0), AtomicU64::new(0)] }
    }

    /// Counts a buffer that moved bytes in window `now`.
    fn count(&self, now: u64) {
        let window = now & 0xffff_ffff;
        let slot = &self.slots[(now % 2) as usize];
        let _ = slot.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(if v >> 32 == window { v + 1 } else { window << 32 | 1 })
        });
    }

    /// Whether more than [`GROWING_UP_TO`] buffers moved bytes in window
    /// `now` or the one before.
    fn is_on_at(&self, now: u64) -> bool {
        let counted = |slot: &AtomicU64, window: u64| {
            let v = slot.load(Ordering::Relaxed);
            if v >> 32 == window & 0xffff_ffff {
                (v & 0xffff_ffff) as usize
            } else {
                0
            }
        };
        let here = counted(&self.slots[(now % 2) as usize], now);
        let before = counted(&self.slots[((now + 1) % 2) as usize], now.saturating_sub(1));
        here.max(before) > GROWING_UP_TO
    }

    /// Whether there is a crowd now.
    fn is_on(&self) -> bool {
        self.is_on_at(window_now())
    }

    /// Forgets every count (for tests that need a process with no crowd).
    #[cfg(test)]
    fn forget(&self) {
        self.slots.iter().for_each(|s| s.store(0, Ordering::Relaxed));
    }
}

/// The bytes of one relay direction on their way from one socket to the
/// other: `buf[start..]` is waiting to be written, and `buf`'s capacity is
/// the buffer's size (its spare capacity is read into without zeroing it
/// first). The memory is taken only when bytes arrive and given back
/// whenever the buffer is empty and waits for its source, so an idle
/// connection holds none.
pub(super) struct CopyBuffer {
    buf: Vec<u8>,
    start: usize,
    /// The last read took less than it had room for: the source was empty then.
    drained: bool,
    /// A read has filled all the room it had: the stream carries bulk.
    bulk: bool,
    /// The [`Crowd`] window in which the buffer was last counted (0: never).
    counted_in: u64,
    /// Counted in [`LARGE`].
    large: bool,
}

/// The size of a buffer taken now: smaller in a crowd, or while
/// [`GROWING_UP_TO`] buffers are large.
fn next_size() -> usize {
    if CROWD.is_on() || LARGE.load(Ordering::Relaxed) >= GROWING_UP_TO {
        CROWDED_BUFFER
    } else {
        FIRST_BUFFER
    }
}

impl CopyBuffer {
    /// Takes the buffer's memory again if it was given back.
    fn take_memory(&mut self) {
        if self.buf.capacity() == 0 {
            self.buf = Vec::with_capacity(next_size());
            self.recount();
        }
    }

    /// Keeps [`LARGE`] in step with the buffer's size.
    fn recount(&mut self) {
        let large = self.buf.capacity() > CROWDED_BUFFER;
        if large != self.large {
            self.large = large;
            if large {
                LARGE.fetch_add(1, Ordering::Relaxed);
            } else {
                LARGE.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Whether a read has filled all the room it had (a bulk transfer).
    #[cfg(any(target_os = "linux", test))]
    pub(super) fn carried_bulk(&self) -> bool {
        self.bulk
    }
}

impl Conduit for CopyBuffer {
    fn full_short_of_capacity(&self) -> bool {
        // A read that would block means the socket is empty.
        false
    }

    fn take() -> io::Result<Self> {
        Ok(Self { buf: Vec::new(), start: 0, drained: false, bulk: false, counted_in: 0, large: false })
    }

    fn room(&self) -> usize {
        // A buffer whose memory was given back takes what the next one holds.
        let size = if self.buf.capacity() == 0 { next_size() } else { self.buf.capacity() };
        size - self.held()
    }

    fn idle(&mut self) {
        if self.held() == 0 {
            (self.buf, self.start) = (Vec::new(), 0);
            self.recount();
        }
    }

    fn held(&self) -> usize {
        self.buf.len() - self.start
    }

    fn fill(&mut self, src: RawFd) -> io::Result<usize> {
        self.take_memory();
        let now = window_now();
        let crowd = CROWD.is_on_at(now);
        if self.held() == 0 {
            // A buffer taken or grown with no crowd goes back to the size a
            // crowd gets once there is one: equal buffers keep many busy
            // streams fair (a relay that moved to another runtime takes a
            // new buffer, and would otherwise keep a bigger one than those
            // that did not).
            if self.buf.capacity() > CROWDED_BUFFER && crowd {
                self.buf = Vec::with_capacity(CROWDED_BUFFER);
                self.recount();
            }
            self.buf.clear();
            self.start = 0;
        } else if self.buf.len() == self.buf.capacity() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let free = self.buf.spare_capacity_mut();
        let want = free.len();
        // SAFETY: `free` is valid writable memory of `want` bytes.
        let n = os_result(unsafe { libc::read(src, free.as_mut_ptr().cast(), want) })?;
        // SAFETY: read(2) initialised the first `n` bytes of the spare capacity.
        unsafe { self.buf.set_len(self.buf.len() + n) };
        if n > 0 && self.counted_in != now {
            self.counted_in = now;
            CROWD.count(now);
        }
        // A stream socket's read returns less than asked only when it has
        // handed over all it held.
        self.drained = n < want;
        if n == want {
            self.bulk = true;
            let size = self.buf.capacity();
            let may_grow = self.large || LARGE.load(Ordering::Relaxed) < GROWING_UP_TO;
            if size < MAX_BUFFER && !crowd && may_grow {
                self.buf.reserve_exact(2 * size - self.buf.len());
                self.recount();
            }
        }
        Ok(n)
    }

    fn drained_source(&self) -> bool {
        // Trusted only until the stream carries bulk: a bulk source refills
        // while its last batch is written, and reading again at once then
        // costs less than a wake-up (measured: CPU per GB of one stream).
        self.drained && !self.bulk
    }

    fn drain(&mut self, dst: RawFd) -> io::Result<usize> {
        let waiting = &self.buf[self.start..];
        // SAFETY: `waiting` is valid readable memory of its length.
        let n = os_result(unsafe { libc::write(dst, waiting.as_ptr().cast(), waiting.len()) })?;
        self.start += n;
        Ok(n)
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.take_memory();
        self.buf.extend_from_slice(bytes);
        self.recount();
        Ok(())
    }

    fn give_back(self) {}

    fn crowded(&self) -> bool {
        // The crowd that takes `CROWDED_BUFFER`s: buffers that moved bytes
        // in the last window or two. (Counting only those that held bytes
        // at the moment, or only those that had carried bulk, was measured:
        // with a thousand busy streams either crowd came and went, and
        // fairness went with it. Counting every open buffer made idle
        // connections a crowd.)
        CROWD.is_on()
    }
}

impl Drop for CopyBuffer {
    fn drop(&mut self) {
        if self.large {
            LARGE.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    #[test]
    fn bytes_come_out_in_order_across_compaction_and_growth() {
        let _serial = crowd_tests();
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (c, mut d) = std::os::unix::net::UnixStream::pair().unwrap();
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        let writer = std::thread::spawn({
            let data = data.clone();
            move || {
                a.write_all(&data).unwrap();
            }
        });
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            std::io::Read::read_to_end(&mut d, &mut got).unwrap();
            got
        });
        let mut buf = CopyBuffer::take().unwrap();
        let mut moved = 0;
        while moved < data.len() {
            buf.fill(b.as_raw_fd()).unwrap();
            let n = buf.drain(c.as_raw_fd()).unwrap();
            moved += n;
        }
        assert_eq!(buf.held(), 0);
        assert!(buf.buf.capacity() > FIRST_BUFFER, "a bulk stream's buffer grows");
        assert!(buf.buf.capacity() <= MAX_BUFFER);
        assert!(buf.carried_bulk());
        buf.idle();
        assert_eq!(buf.buf.capacity(), 0, "an empty buffer waiting for bytes holds no memory");
        drop(c);
        writer.join().unwrap();
        assert!(reader.join().unwrap() == data);
    }

    /// Held by the tests whose buffers' sizes depend on how many buffers
    /// the process holds (tests run on threads of one process).
    static CROWD_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn crowd_tests() -> std::sync::MutexGuard<'static, ()> {
        CROWD_TESTS.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `n` buffers that each moved a byte in one and the same window (a
    /// crowd's busy streams).
    fn busy_buffers(n: usize) -> Vec<CopyBuffer> {
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        loop {
            let window = window_now();
            let busy = |_| {
                a.write_all(&[1]).unwrap();
                let mut buf = CopyBuffer::take().unwrap();
                assert_eq!(buf.fill(b.as_raw_fd()).unwrap(), 1);
                buf
            };
            let buffers: Vec<CopyBuffer> = (0..n).map(busy).collect();
            if window_now() == window {
                return buffers;
            }
        }
    }

    #[test]
    fn a_crowd_takes_crowded_buffers_and_says_so() {
        let _serial = crowd_tests();
        CROWD.forget();
        let crowd = busy_buffers(GROWING_UP_TO + 1);
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.write_all(&[1u8; 100]).unwrap();
        let mut buf = CopyBuffer::take().unwrap();
        assert!(buf.crowded(), "more than GROWING_UP_TO buffers that moved bytes make a crowd");
        assert_eq!(buf.room(), CROWDED_BUFFER);
        assert_eq!(buf.fill(b.as_raw_fd()).unwrap(), 100);
        assert_eq!(buf.buf.capacity(), CROWDED_BUFFER);
        drop((crowd, buf));
        CROWD.forget();
    }

    #[test]
    fn idle_connections_are_no_crowd() {
        let _serial = crowd_tests();
        CROWD.forget();
        // A hundred open connections, a buffer each way, moving nothing
        // (keep-alive connections beside a transfer).
        let idle: Vec<CopyBuffer> = (0..200).map(|_| CopyBuffer::take().unwrap()).collect();
        let buf = CopyBuffer::take().unwrap();
        assert!(!buf.crowded(), "200 idle buffers made a crowd");
        assert_eq!(buf.room(), FIRST_BUFFER);
        drop((idle, buf));
    }

    #[test]
    fn a_crowd_is_the_buffers_that_moved_bytes_in_this_window_or_the_one_before() {
        let crowd = Crowd::new();
        (0..=GROWING_UP_TO).for_each(|_| crowd.count(7));
        assert!(!crowd.is_on_at(6), "before its bytes");
        assert!(crowd.is_on_at(7) && crowd.is_on_at(8), "in its window and the next");
        assert!(!crowd.is_on_at(9) && !crowd.is_on_at(100), "two windows on, it is gone");
        // A window's count starts over, even in a slot used before.
        (0..10).for_each(|_| crowd.count(9));
        assert!(!crowd.is_on_at(9) && !crowd.is_on_at(10));
        // Each window counts on its own: busy streams whose bytes fall
        // either side of a window's end are a crowd in the window that
        // holds most of them, or in none (counts are per window).
        let split = Crowd::new();
        (0..40).for_each(|_| split.count(3));
        (0..GROWING_UP_TO + 1).for_each(|_| split.count(4));
        assert!(!split.is_on_at(3) && split.is_on_at(4) && split.is_on_at(5) && !split.is_on_at(6));
    }

    #[test]
    fn no_more_than_growing_up_to_buffers_are_large_whatever_their_streams_do() {
        let _serial = crowd_tests();
        CROWD.forget();
        // Buffers holding bytes their far side does not take: they move
        // nothing, so they make no crowd, but they hold their memory.
        let stalled: Vec<CopyBuffer> = (0..GROWING_UP_TO)
            .map(|_| {
                let mut buf = CopyBuffer::take().unwrap();
                buf.put(b"waiting").unwrap();
                buf
            })
            .collect();
        assert!(stalled.iter().all(|b| b.buf.capacity() == FIRST_BUFFER));
        assert!(LARGE.load(Ordering::Relaxed) >= GROWING_UP_TO);
        // The next buffer takes a crowd's size and does not grow.
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.write_all(&vec![3u8; 2 * CROWDED_BUFFER]).unwrap();
        let mut buf = CopyBuffer::take().unwrap();
        assert!(!buf.crowded());
        assert_eq!(buf.room(), CROWDED_BUFFER);
        assert_eq!(buf.fill(b.as_raw_fd()).unwrap(), CROWDED_BUFFER, "a full read");
        assert_eq!(buf.buf.capacity(), CROWDED_BUFFER, "grew past the bound on large buffers");
        drop(stalled);
        buf.start = buf.buf.len(); // as if written out
        buf.idle();
        assert_eq!(buf.room(), FIRST_BUFFER, "with the stalled ones gone, buffers are large again");
    }

    #[test]
    fn room_never_promises_more_than_the_buffer_holds() {
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let writer = std::thread::spawn(move || a.write_all(&vec![7u8; 3 * MAX_BUFFER]));
        let mut buf = CopyBuffer::take().unwrap();
        // Fill until full: every read moves bytes (a read of 0 bytes would
        // look like EOF), and room is what the buffer really has left.
        while buf.room() > 0 {
            assert!(buf.fill(b.as_raw_fd()).unwrap() > 0);
            assert_eq!(buf.room(), buf.buf.capacity() - buf.held());
        }
        assert_eq!(buf.held(), buf.buf.capacity());
        drop(b);
        let _ = writer.join();
    }

    #[test]
    fn a_full_tail_moves_the_waiting_bytes_to_the_front() {
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut buf = CopyBuffer::take().unwrap();
        buf.buf = Vec::with_capacity(FIRST_BUFFER);
        let len = buf.buf.capacity();
        buf.buf.resize(len - 3, 0);
        buf.buf.extend_from_slice(b"xyz");
        buf.start = len - 3;
        a.write_all(b"123").unwrap();
        assert_eq!(buf.fill(b.as_raw_fd()).unwrap(), 3);
        assert_eq!((buf.start, buf.buf.len()), (0, 6));
        assert_eq!(&buf.buf[..6], b"xyz123");
    }

    #[test]
    fn a_short_read_says_the_source_was_drained_until_bulk() {
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut buf = CopyBuffer::take().unwrap();
        a.write_all(&[1u8; 64]).unwrap();
        assert_eq!(buf.fill(b.as_raw_fd()).unwrap(), 64);
        assert!(buf.drained_source() && !buf.carried_bulk());
        buf.start = buf.buf.len(); // as if written out
        b.set_nonblocking(true).unwrap();
        let writer = std::thread::spawn(move || a.write_all(&vec![2u8; 4 * MAX_BUFFER]));
        while !buf.carried_bulk() {
            let room = buf.room();
            match buf.fill(b.as_raw_fd()) {
                Ok(n) => assert_eq!(buf.drained_source(), n < room && !buf.carried_bulk()),
                // Let the writer fill the socket.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                Err(e) => panic!("{e}"),
            }
            buf.start = buf.buf.len(); // as if written out
        }
        assert!(!buf.drained_source(), "a bulk stream's short reads are not trusted");
        drop(b);
        let _ = writer.join();
    }
}
