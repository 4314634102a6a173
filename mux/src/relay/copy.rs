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
    time::{Duration, Instant},
};

use super::{os_result, Conduit};

/// A buffer's first size while few buffers are live: as much as a default
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
/// streams hold that each, not `MAX_BUFFER`.
pub const GROWING_UP_TO: usize = 64;

/// The span in which a buffer that moved bytes counts in the crowd (and
/// the one after it).
const CROWD_WINDOW: Duration = Duration::from_secs(1);

/// The copy buffers of the process that moved bytes lately: each counts
/// once in every [`CROWD_WINDOW`] in which it moved some, and the crowd is
/// the larger count of the present window and the one before, so it holds
/// steady while busy streams take turns and is gone two windows after they
/// stopped. Open connections that stay idle (a browser's or a database
/// pool's keep-alive connections) are no crowd: a hundred of them, counted
/// here and in the send buffers' share ([`crate::buffer_share`]), cost one
/// transfer beside them 24-30% of its throughput, and 7-14% counted in
/// neither (docs/performance.md, "Idle connections beside a transfer").
/// The counts are approximate (a count made as a window begins may be
/// lost): a crowd of a thousand does not notice.
struct Crowd {
    /// The present window's number, from the process's first copy.
    window: AtomicU64,
    /// Buffers counted in the even and the odd windows.
    counts: [AtomicUsize; 2],
}

static CROWD: Crowd = Crowd { window: AtomicU64::new(0), counts: [AtomicUsize::new(0), AtomicUsize::new(0)] };

/// The number of the window it is now (from 1).
fn window_now() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    1 + (START.get_or_init(Instant::now).elapsed().as_millis() / CROWD_WINDOW.as_millis()) as u64
}

impl Crowd {
    /// Moves on to window `now`, if it is later: its count starts at zero,
    /// and so does the one before it if that one passed with no count.
    fn roll(&self, now: u64) {
        let mut seen = self.window.load(Ordering::Acquire);
        while seen < now {
            match self.window.compare_exchange(seen, now, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    self.counts[(now % 2) as usize].store(0, Ordering::Relaxed);
                    if now > seen + 1 {
                        self.counts[((now + 1) % 2) as usize].store(0, Ordering::Relaxed);
                    }
                    return;
                }
                Err(later) => seen = later,
            }
        }
    }

    /// Counts a buffer that moved bytes in window `now`.
    fn count(&self, now: u64) {
        self.roll(now);
        self.counts[(now % 2) as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Whether more than [`GROWING_UP_TO`] buffers moved bytes in this
    /// window or the one before.
    fn is_on(&self) -> bool {
        self.roll(window_now());
        let [a, b] = &self.counts;
        a.load(Ordering::Relaxed).max(b.load(Ordering::Relaxed)) > GROWING_UP_TO
    }

    /// Forgets every count (for tests that need a process with no crowd).
    #[cfg(test)]
    fn forget(&self) {
        self.counts.iter().for_each(|c| c.store(0, Ordering::Relaxed));
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
}

/// The size of a buffer taken now: smaller while many buffers are live.
fn next_size() -> usize {
    if CROWD.is_on() {
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
        Ok(Self { buf: Vec::new(), start: 0, drained: false, bulk: false, counted_in: 0 })
    }

    fn room(&self) -> usize {
        // A buffer whose memory was given back takes what the next one holds.
        let size = if self.buf.capacity() == 0 { next_size() } else { self.buf.capacity() };
        size - self.held()
    }

    fn idle(&mut self) {
        if self.held() == 0 {
            (self.buf, self.start) = (Vec::new(), 0);
        }
    }

    fn held(&self) -> usize {
        self.buf.len() - self.start
    }

    fn fill(&mut self, src: RawFd) -> io::Result<usize> {
        self.take_memory();
        if self.held() == 0 {
            // A buffer taken or grown while few buffers were live goes back
            // to the size a crowd gets once there is one: equal buffers keep
            // many busy streams fair (a relay that moved to another
            // runtime takes a new buffer, and would otherwise keep a
            // bigger one than those that did not).
            if self.buf.capacity() > CROWDED_BUFFER && CROWD.is_on() {
                self.buf = Vec::with_capacity(CROWDED_BUFFER);
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
        if n > 0 {
            let now = window_now();
            if self.counted_in != now {
                self.counted_in = now;
                CROWD.count(now);
            }
        }
        // A stream socket's read returns less than asked only when it has
        // handed over all it held.
        self.drained = n < want;
        if n == want {
            self.bulk = true;
            let size = self.buf.capacity();
            if size < MAX_BUFFER && !CROWD.is_on() {
                self.buf.reserve_exact(2 * size - self.buf.len());
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

    /// `n` buffers that each moved a byte just now (a crowd's busy streams).
    fn busy_buffers(n: usize) -> Vec<CopyBuffer> {
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let busy = |_| {
            a.write_all(&[1]).unwrap();
            let mut buf = CopyBuffer::take().unwrap();
            assert_eq!(buf.fill(b.as_raw_fd()).unwrap(), 1);
            buf
        };
        (0..n).map(busy).collect()
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
    fn idle_connections_are_no_crowd_and_a_crowd_ends_two_windows_after_its_last_bytes() {
        let _serial = crowd_tests();
        CROWD.forget();
        // A hundred open connections, a buffer each way, moving nothing
        // (keep-alive connections beside a transfer).
        let idle: Vec<CopyBuffer> = (0..200).map(|_| CopyBuffer::take().unwrap()).collect();
        let buf = CopyBuffer::take().unwrap();
        assert!(!buf.crowded(), "200 idle buffers made a crowd");
        assert_eq!(buf.room(), FIRST_BUFFER);
        // Busy ones make one, which holds while they are quiet for less
        // than a window, and is gone two windows after their last bytes.
        let busy = busy_buffers(GROWING_UP_TO + 1);
        assert!(buf.crowded());
        std::thread::sleep(CROWD_WINDOW / 2);
        assert!(buf.crowded(), "a crowd quiet for half a window");
        std::thread::sleep(2 * CROWD_WINDOW);
        assert!(!buf.crowded(), "a crowd whose last bytes moved two windows ago");
        assert_eq!(buf.room(), FIRST_BUFFER);
        drop((idle, busy, buf));
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
