//! Per-stream credit flow control (sans-I/O arithmetic).
//!
//! Each side of a stream may have at most `window` bytes in flight that the
//! receiver has not yet handed on. The receiver returns credit with WINDOW
//! frames as its consumer drains the data, so a slow reader stalls only its
//! own stream, and the memory a stream can pin is bounded by its window.

/// Initial (and maximum outstanding) credit of every stream, in bytes.
pub const DEFAULT_WINDOW: u32 = 1 << 20;

/// The receive window a UDP flow asks for (by widening its stream's
/// window: `connection::Connection::widen`). Datagrams never wait, so the
/// window is what a flow may have in flight while a side cannot run: at
/// 50,000 datagrams of 1,400 bytes a second, 1 MiB lasts 15 ms, 4 MiB 60 ms.
pub const DATAGRAM_WINDOW: u32 = 4 << 20;

/// Largest credit a sender may accumulate; more is a protocol error.
pub const MAX_CREDIT: u64 = (1 << 31) - 1;

/// Flow-control violations by the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    /// The peer sent more data than the credit it was given.
    #[error("peer sent {received} bytes with only {allowed} bytes of credit")]
    WindowExceeded { received: u64, allowed: u64 },
    /// The peer granted credit beyond [`MAX_CREDIT`].
    #[error("peer granted credit beyond the {MAX_CREDIT}-byte limit")]
    CreditOverflow,
}

/// The sender's view: how many bytes it may still send.
#[derive(Debug, Clone)]
pub struct SendWindow {
    credit: u64,
}

impl SendWindow {
    /// A send window starting with `initial` bytes of credit.
    pub fn new(initial: u32) -> Self {
        Self { credit: initial as u64 }
    }

    /// Bytes that may be sent right now.
    pub fn available(&self) -> u64 {
        self.credit
    }

    /// Reserves up to `want` bytes of credit and returns how many were taken.
    pub fn take(&mut self, want: usize) -> usize {
        let n = (want as u64).min(self.credit);
        self.credit -= n;
        n as usize
    }

    /// Adds credit granted by a WINDOW frame.
    pub fn grant(&mut self, increment: u32) -> Result<(), FlowError> {
        let next = self.credit + increment as u64;
        if next > MAX_CREDIT {
            return Err(FlowError::CreditOverflow);
        }
        self.credit = next;
        Ok(())
    }
}

/// The receiver's view: bytes buffered and credit still to be returned.
#[derive(Debug, Clone)]
pub struct RecvWindow {
    window: u32,
    /// Bytes received and not yet consumed by the application.
    buffered: u64,
    /// Bytes the peer may still send before it must wait.
    peer_credit: u64,
    /// Bytes consumed whose credit has not been returned yet.
    unreturned: u64,
}

impl RecvWindow {
    /// A receive window of `window` bytes (the peer starts with that credit).
    pub fn new(window: u32) -> Self {
        Self { window, buffered: 0, peer_credit: window as u64, unreturned: 0 }
    }

    /// The window: the most bytes received and not yet consumed.
    pub fn window(&self) -> u32 {
        self.window
    }

    /// Grows the window by `extra`, all of it credit for the peer (to be
    /// sent in a WINDOW frame).
    pub fn widen(&mut self, extra: u32) {
        self.window += extra;
        self.peer_credit += extra as u64;
    }

    /// Bytes received but not yet consumed.
    pub fn buffered(&self) -> u64 {
        self.buffered
    }

    /// Bytes the peer may still send before it must wait.
    pub fn peer_credit(&self) -> u64 {
        self.peer_credit
    }

    /// Bytes consumed whose credit has not been returned yet.
    pub fn unreturned(&self) -> u64 {
        self.unreturned
    }

    /// Accounts for `len` bytes of DATA from the peer.
    pub fn on_data(&mut self, len: usize) -> Result<(), FlowError> {
        let len = len as u64;
        if len > self.peer_credit {
            return Err(FlowError::WindowExceeded { received: len, allowed: self.peer_credit });
        }
        self.peer_credit -= len;
        self.buffered += len;
        Ok(())
    }

    /// Accounts for `len` bytes handed on by the application. Returns the
    /// increment to send in a WINDOW frame once a quarter of the window has
    /// been consumed (batching credit keeps WINDOW frames rare).
    pub fn on_consumed(&mut self, len: usize) -> Option<u32> {
        let len = (len as u64).min(self.buffered);
        self.buffered -= len;
        self.unreturned += len;
        if self.unreturned >= (self.window as u64 / 4).max(1) {
            let inc = self.unreturned as u32;
            self.peer_credit += self.unreturned;
            self.unreturned = 0;
            Some(inc)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_never_exceeds_credit() {
        let mut s = SendWindow::new(100);
        assert_eq!(s.take(60), 60);
        assert_eq!(s.take(60), 40);
        assert_eq!(s.take(1), 0);
        s.grant(10).unwrap();
        assert_eq!(s.take(100), 10);
        assert_eq!(s.grant(u32::MAX), Err(FlowError::CreditOverflow));
    }

    #[test]
    fn receiver_rejects_overrun_and_returns_credit_in_batches() {
        let mut r = RecvWindow::new(100);
        r.on_data(100).unwrap();
        assert!(matches!(r.on_data(1), Err(FlowError::WindowExceeded { .. })));
        assert_eq!(r.on_consumed(10), None);
        assert_eq!(r.on_consumed(15), Some(25));
        assert_eq!(r.buffered(), 75);
        r.on_data(25).unwrap();
        assert!(r.on_data(1).is_err());
    }

    #[test]
    fn sender_and_receiver_agree_under_any_schedule() {
        // Drive both ends with a deterministic pseudo-random schedule: the
        // receiver must never see an overrun, and all data must get through.
        let mut s = SendWindow::new(1000);
        let mut r = RecvWindow::new(1000);
        let mut in_flight = std::collections::VecDeque::new();
        let (mut sent, mut consumed) = (0u64, 0u64);
        let mut x: u64 = 12345;
        while consumed < 1_000_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            let n = s.take((x >> 40) as usize % 700);
            if n > 0 {
                r.on_data(n).unwrap();
                in_flight.push_back(n);
                sent += n as u64;
            }
            if (x >> 20).is_multiple_of(3) {
                if let Some(n) = in_flight.pop_front() {
                    consumed += n as u64;
                    if let Some(inc) = r.on_consumed(n) {
                        s.grant(inc).unwrap();
                    }
                }
            }
        }
        assert!(sent >= consumed);
    }
}
