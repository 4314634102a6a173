//! The portable conduit: a user-space buffer filled with read(2) and drained
//! with write(2), for systems without splice(2) (macOS) and for Linux in
//! portable mode ([`crate::platform`]).

use std::{
    io,
    os::fd::RawFd,
    sync::atomic::{AtomicUsize, Ordering},
};

use super::{os_result, Conduit};

/// A buffer's first size while few relays are live: as much as a default
/// Linux pipe holds, so both relays move the same batches.
pub const FIRST_BUFFER: usize = 64 * 1024;

/// A buffer's size while more than [`GROWING_UP_TO`] relays are live: many
/// busy streams with large buffers spill the CPU caches (measured: 100
/// streams moved 0.44x of socat's aggregate with 64 KiB each).
pub const CROWDED_BUFFER: usize = 16 * 1024;

/// The largest a buffer grows while its stream is a bulk transfer (a read
/// filled it): fewer, larger system calls per byte.
pub const MAX_BUFFER: usize = 256 * 1024;

/// Above this many live copy buffers none grows, so a thousand busy streams
/// hold `FIRST_BUFFER` each, not `MAX_BUFFER`.
pub const GROWING_UP_TO: usize = 64;

/// How many copy buffers exist in this process.
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// The bytes of one relay direction on their way from one socket to the
/// other: `buf[start..end]` is waiting to be written. The memory is taken
/// only when bytes arrive and given back whenever the buffer is empty and
/// waits for its source, so an idle connection holds none.
pub(super) struct CopyBuffer {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// The size of a buffer taken now: smaller while many relays are live.
fn next_size() -> usize {
    if LIVE.load(Ordering::Relaxed) > GROWING_UP_TO {
        CROWDED_BUFFER
    } else {
        FIRST_BUFFER
    }
}

impl Conduit for CopyBuffer {
    /// A read that would block means the socket is empty.
    const FULL_SHORT_OF_CAPACITY: bool = false;

    fn take() -> io::Result<Self> {
        LIVE.fetch_add(1, Ordering::Relaxed);
        Ok(Self { buf: Vec::new(), start: 0, end: 0 })
    }

    fn room(&self) -> usize {
        // A buffer whose memory was given back takes what the next one holds.
        let size = if self.buf.is_empty() { next_size() } else { self.buf.len() };
        size - self.held()
    }

    fn idle(&mut self) {
        if self.start == self.end {
            (self.buf, self.start, self.end) = (Vec::new(), 0, 0);
        }
    }

    fn held(&self) -> usize {
        self.end - self.start
    }

    fn fill(&mut self, src: RawFd) -> io::Result<usize> {
        if self.buf.is_empty() {
            self.buf = vec![0; next_size()];
        }
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        let free = &mut self.buf[self.end..];
        // SAFETY: `free` is valid writable memory of its length.
        let n = os_result(unsafe { libc::read(src, free.as_mut_ptr().cast(), free.len()) })?;
        let filled = n == free.len();
        self.end += n;
        if filled && self.buf.len() < MAX_BUFFER && LIVE.load(Ordering::Relaxed) <= GROWING_UP_TO {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        Ok(n)
    }

    fn drain(&mut self, dst: RawFd) -> io::Result<usize> {
        let waiting = &self.buf[self.start..self.end];
        // SAFETY: `waiting` is valid readable memory of its length.
        let n = os_result(unsafe { libc::write(dst, waiting.as_ptr().cast(), waiting.len()) })?;
        self.start += n;
        Ok(n)
    }

    fn give_back(self) {}
}

impl Drop for CopyBuffer {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    #[test]
    fn bytes_come_out_in_order_across_compaction_and_growth() {
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
        assert!(buf.buf.len() > FIRST_BUFFER, "a bulk stream's buffer grows");
        assert!(buf.buf.len() <= MAX_BUFFER);
        buf.idle();
        assert_eq!(buf.buf.capacity(), 0, "an empty buffer waiting for bytes holds no memory");
        drop(c);
        writer.join().unwrap();
        assert!(reader.join().unwrap() == data);
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
            assert_eq!(buf.room(), buf.buf.len() - buf.held());
        }
        assert_eq!(buf.held(), buf.buf.len());
        drop(b);
        let _ = writer.join();
    }

    #[test]
    fn a_full_tail_moves_the_waiting_bytes_to_the_front() {
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut buf = CopyBuffer::take().unwrap();
        buf.buf = vec![0; FIRST_BUFFER];
        let len = buf.buf.len();
        buf.buf[len - 3..].copy_from_slice(b"xyz");
        (buf.start, buf.end) = (len - 3, len);
        a.write_all(b"123").unwrap();
        assert_eq!(buf.fill(b.as_raw_fd()).unwrap(), 3);
        assert_eq!((buf.start, buf.end), (0, 6));
        assert_eq!(&buf.buf[..6], b"xyz123");
    }
}
