//! The Linux conduit: a connection starts on a user-space copy buffer and
//! moves to a spliced pipe once it carries bulk.
//!
//! A small message costs splice(2) two pipe hops for nothing: the copy
//! buffer moves it with one read and one write, and its short read says the
//! socket is empty, so no read that would block follows. Once a read fills
//! the buffer the stream is a bulk transfer, and from the next moment the
//! buffer is empty the bytes go through a pipe and never enter user space.

use std::{io, os::fd::RawFd};

use super::{copy::CopyBuffer, splice::Pipe, Conduit};

/// One relay direction's conduit: copying until bulk, then splicing.
pub(super) enum Adaptive {
    /// Small messages so far.
    Copy(CopyBuffer),
    /// Bulk: socket -> pipe -> socket.
    Pipe(Pipe),
}

impl Adaptive {
    /// Whether this direction moves its bytes through a pipe now.
    #[cfg(test)]
    pub(super) fn spliced(&self) -> bool {
        matches!(self, Self::Pipe(_))
    }
}

// `crowded` keeps its default (never): a Linux relay moves to splice once
// it carries bulk, and spliced streams stay fair in a crowd of a thousand
// with tokio's own turns (Jain 0.91-0.97 in the same runs).
impl Conduit for Adaptive {
    fn full_short_of_capacity(&self) -> bool {
        match self {
            Self::Copy(c) => c.full_short_of_capacity(),
            Self::Pipe(p) => p.full_short_of_capacity(),
        }
    }

    fn take() -> io::Result<Self> {
        Ok(Self::Copy(CopyBuffer::take()?))
    }

    fn room(&self) -> usize {
        match self {
            Self::Copy(c) => c.room(),
            Self::Pipe(p) => p.room(),
        }
    }

    fn held(&self) -> usize {
        match self {
            Self::Copy(c) => c.held(),
            Self::Pipe(p) => p.held(),
        }
    }

    fn fill(&mut self, src: RawFd) -> io::Result<usize> {
        if let Self::Copy(c) = self {
            // Switch only when empty, so the bytes stay in order.
            if c.carried_bulk() && c.held() == 0 {
                *self = Self::Pipe(Pipe::take()?);
            }
        }
        match self {
            Self::Copy(c) => c.fill(src),
            Self::Pipe(p) => p.fill(src),
        }
    }

    fn drain(&mut self, dst: RawFd) -> io::Result<usize> {
        match self {
            Self::Copy(c) => c.drain(dst),
            Self::Pipe(p) => p.drain(dst),
        }
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Self::Copy(c) => c.put(bytes),
            Self::Pipe(p) => p.put(bytes),
        }
    }

    fn give_back(self) {
        match self {
            Self::Copy(c) => c.give_back(),
            Self::Pipe(p) => p.give_back(),
        }
    }

    fn idle(&mut self) {
        match self {
            Self::Copy(c) => c.idle(),
            Self::Pipe(p) => p.idle(),
        }
    }

    fn drained_source(&self) -> bool {
        match self {
            Self::Copy(c) => c.drained_source(),
            Self::Pipe(p) => p.drained_source(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{io::Write, os::fd::AsRawFd};

    #[test]
    fn small_messages_are_copied_and_bulk_moves_to_a_pipe_in_order() {
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (c, mut d) = std::os::unix::net::UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let mut conduit = Adaptive::take().unwrap();
        a.write_all(b"ping").unwrap();
        assert_eq!(conduit.fill(b.as_raw_fd()).unwrap(), 4);
        assert_eq!(conduit.drain(c.as_raw_fd()).unwrap(), 4);
        assert!(!conduit.spliced(), "a small message is copied");
        let data: Vec<u8> = (0..2_000_000u32).map(|i| (i % 249) as u8).collect();
        let writer = std::thread::spawn({
            let data = data.clone();
            move || a.write_all(&data).unwrap()
        });
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            std::io::Read::read_to_end(&mut d, &mut got).unwrap();
            got
        });
        let mut moved = 0;
        while moved < data.len() {
            match conduit.fill(b.as_raw_fd()) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                Err(e) => panic!("{e}"),
            }
            while conduit.held() > 0 {
                moved += conduit.drain(c.as_raw_fd()).unwrap();
            }
        }
        assert!(conduit.spliced(), "a bulk stream moves to a pipe");
        drop(c);
        writer.join().unwrap();
        let got = reader.join().unwrap();
        assert_eq!(&got[..4], b"ping");
        assert!(got[4..] == data[..], "bytes in order across the switch");
    }
}
