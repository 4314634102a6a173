//! The frames a connection has to send, in two bounded queues.
//!
//! - The **urgent** queue carries what may overtake stream data: WINDOW,
//!   RESET, OPEN_REFUSED, PING/PONG, control messages and GOAWAY. It is
//!   bounded in bytes; a peer that reads nothing while it keeps making us
//!   answer would otherwise grow it without end.
//! - The **ordered** queue carries what must stay in order with the data of
//!   its stream: OPEN, OPEN_OK, DATA, FIN, and the RESET of an unanswered
//!   OPEN. DATA frames of byte streams are bounded in number (a sender
//!   waits for room); datagrams have a bound of their own, in number and in
//!   bytes (a datagram that finds no room is dropped, never waits, and
//!   never takes room from byte streams); the others are at most three per
//!   stream (with the WINDOW of a widened window, which must not overtake
//!   its OPEN_OK), so the stream limit bounds them.
//!
//! A batch for the transport takes urgent frames first.

use std::collections::VecDeque;

use crate::{frame::HEADER_LEN, Frame};

/// What a frame counts against the urgent queue's bound: header and payload.
pub fn queued_size(f: &Frame) -> usize {
    let payload = match f {
        Frame::Data { payload, .. } => payload.len(),
        Frame::Open { target, .. } => target.len(),
        Frame::Control { message } => message.len(),
        Frame::OpenRefused { reason, .. } | Frame::Reset { reason, .. } | Frame::GoAway { reason } => reason.len(),
        Frame::Window { .. } => 4,
        Frame::Ping { .. } | Frame::Pong { .. } => 8,
        Frame::OpenOk { .. } | Frame::Fin { .. } => 0,
    };
    HEADER_LEN + payload
}

/// The urgent frame would take the urgent queue past its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UrgentFull {
    /// Bytes that would have been queued.
    pub queued: usize,
}

/// The bounds of the queues.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Bytes on the urgent queue.
    pub urgent_bytes: usize,
    /// DATA frames of byte streams on the ordered queue.
    pub data_frames: usize,
    /// Datagrams on the ordered queue.
    pub datagrams: usize,
    /// Bytes of datagrams (payloads and headers) on the ordered queue.
    pub datagram_bytes: usize,
}

/// What an ordered frame counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// OPEN, OPEN_OK, FIN, RESET: bounded by the stream limit.
    Other,
    /// DATA of a byte stream.
    Data,
    /// DATA holding one datagram.
    Datagram,
}

/// The two outgoing queues.
#[derive(Debug)]
pub struct Outbox {
    bounds: Bounds,
    urgent: VecDeque<Frame>,
    urgent_bytes: usize,
    ordered: VecDeque<(Frame, Kind)>,
    ordered_data: usize,
    datagrams: usize,
    datagram_bytes: usize,
}

/// What [`Outbox::take_batch`] took.
#[derive(Debug, Default)]
pub struct Taken {
    /// Bytes of the frames taken (headers and payloads).
    pub bytes: usize,
    /// Whether the ordered queue had no room for DATA before and has now.
    pub made_room: bool,
    /// The reason of a GOAWAY among the frames taken: the batch is the
    /// last, and the connection ends once it is written.
    pub goaway: Option<String>,
}

impl Outbox {
    /// Empty queues with the given bounds.
    pub fn new(bounds: Bounds) -> Self {
        Self {
            bounds,
            urgent: VecDeque::new(),
            urgent_bytes: 0,
            ordered: VecDeque::new(),
            ordered_data: 0,
            datagrams: 0,
            datagram_bytes: 0,
        }
    }

    /// Queues an urgent frame, unless that would pass the byte bound.
    pub fn push_urgent(&mut self, f: Frame) -> Result<(), UrgentFull> {
        let size = queued_size(&f);
        let queued = self.urgent_bytes + size;
        if queued > self.bounds.urgent_bytes {
            return Err(UrgentFull { queued });
        }
        self.urgent_bytes = queued;
        self.urgent.push_back(f);
        Ok(())
    }

    /// Queues an OPEN, OPEN_OK, FIN or an unanswered OPEN's RESET (bounded
    /// by the stream limit).
    pub fn push_ordered(&mut self, f: Frame) {
        debug_assert!(!matches!(f, Frame::Data { .. }), "DATA goes through push_data");
        self.ordered.push_back((f, Kind::Other));
    }

    /// DATA frames of byte streams that may still be queued.
    pub fn data_room(&self) -> usize {
        self.bounds.data_frames.saturating_sub(self.ordered_data)
    }

    /// Queues a DATA frame of a byte stream; the caller checked
    /// [`Outbox::data_room`].
    pub fn push_data(&mut self, f: Frame) {
        debug_assert!(matches!(f, Frame::Data { .. }));
        self.ordered_data += 1;
        self.ordered.push_back((f, Kind::Data));
    }

    /// Whether a datagram of `len` bytes would find room now.
    pub fn datagram_room(&self, len: usize) -> bool {
        self.datagrams < self.bounds.datagrams && self.datagram_bytes + HEADER_LEN + len <= self.bounds.datagram_bytes
    }

    /// Queues a DATA frame holding one datagram; the caller checked
    /// [`Outbox::datagram_room`].
    pub fn push_datagram(&mut self, f: Frame) {
        debug_assert!(matches!(f, Frame::Data { .. }));
        self.datagrams += 1;
        self.datagram_bytes += queued_size(&f);
        self.ordered.push_back((f, Kind::Datagram));
    }

    /// Bytes waiting on the urgent queue.
    pub fn urgent_bytes(&self) -> usize {
        self.urgent_bytes
    }

    /// DATA frames of byte streams waiting on the ordered queue.
    pub fn queued_data(&self) -> usize {
        self.ordered_data
    }

    /// Datagrams waiting on the ordered queue, and their bytes.
    pub fn queued_datagrams(&self) -> (usize, usize) {
        (self.datagrams, self.datagram_bytes)
    }

    /// Whether nothing waits to be sent.
    pub fn is_empty(&self) -> bool {
        self.urgent.is_empty() && self.ordered.is_empty()
    }

    /// Moves up to `max_frames` frames and about `max_bytes` bytes into
    /// `out`, urgent ones first; stops after a GOAWAY.
    pub fn take_batch(&mut self, out: &mut Vec<Frame>, max_frames: usize, max_bytes: usize) -> Taken {
        let full_before = self.data_room() == 0;
        let mut taken = Taken::default();
        while out.len() < max_frames && taken.bytes < max_bytes && taken.goaway.is_none() {
            let f = if let Some(f) = self.urgent.pop_front() {
                self.urgent_bytes -= queued_size(&f);
                f
            } else if let Some((f, kind)) = self.ordered.pop_front() {
                match kind {
                    Kind::Data => self.ordered_data -= 1,
                    Kind::Datagram => {
                        self.datagrams -= 1;
                        self.datagram_bytes -= queued_size(&f);
                    }
                    Kind::Other => {}
                }
                f
            } else {
                break;
            };
            taken.bytes += queued_size(&f);
            if let Frame::GoAway { reason } = &f {
                taken.goaway = Some(reason.clone());
            }
            out.push(f);
        }
        taken.made_room = full_before && self.data_room() > 0;
        taken
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn bounds(urgent_bytes: usize, data_frames: usize) -> Bounds {
        Bounds { urgent_bytes, data_frames, datagrams: 4, datagram_bytes: 1 << 20 }
    }

    #[test]
    fn urgent_frames_overtake_ordered_ones_and_the_bound_holds() {
        let mut o = Outbox::new(bounds(3 * (HEADER_LEN + 8), 2));
        o.push_data(Frame::Data { stream: 1, payload: Bytes::from_static(b"abc") });
        o.push_ordered(Frame::Fin { stream: 1 });
        for nonce in 0..3 {
            o.push_urgent(Frame::Ping { nonce }).unwrap();
        }
        assert!(o.push_urgent(Frame::Ping { nonce: 9 }).is_err());
        let mut out = Vec::new();
        let taken = o.take_batch(&mut out, 10, 1 << 20);
        assert!(matches!(out[0], Frame::Ping { nonce: 0 }));
        assert!(matches!(out[3], Frame::Data { .. }));
        assert!(matches!(out[4], Frame::Fin { .. }));
        assert_eq!(o.urgent_bytes(), 0);
        assert!(!taken.made_room && o.is_empty());
    }

    #[test]
    fn taking_from_a_full_data_queue_reports_room() {
        let mut o = Outbox::new(bounds(1 << 20, 1));
        o.push_data(Frame::Data { stream: 1, payload: Bytes::from_static(b"x") });
        assert_eq!(o.data_room(), 0);
        let mut out = Vec::new();
        assert!(o.take_batch(&mut out, 10, 1 << 20).made_room);
    }

    #[test]
    fn a_batch_ends_at_goaway() {
        let mut o = Outbox::new(bounds(1 << 20, 8));
        o.push_urgent(Frame::GoAway { reason: "bye".into() }).unwrap();
        o.push_urgent(Frame::Ping { nonce: 1 }).unwrap();
        let mut out = Vec::new();
        assert_eq!(o.take_batch(&mut out, 10, 1 << 20).goaway.as_deref(), Some("bye"));
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn datagrams_have_their_own_bounds_in_number_and_bytes() {
        let dgram = |n: usize| Frame::Data { stream: 2, payload: Bytes::from(vec![0u8; n]) };
        let mut o = Outbox::new(Bounds { urgent_bytes: 1 << 20, data_frames: 1, datagrams: 3, datagram_bytes: 300 });
        // Byte streams' room is untouched by datagrams, and the reverse.
        o.push_data(Frame::Data { stream: 1, payload: Bytes::from_static(b"x") });
        assert_eq!(o.data_room(), 0);
        assert!(o.datagram_room(100));
        o.push_datagram(dgram(100));
        // Bytes bound: a second 100-byte datagram fits, a third does not.
        o.push_datagram(dgram(100));
        assert!(!o.datagram_room(100));
        assert!(o.datagram_room(300 - 2 * (HEADER_LEN + 100) - HEADER_LEN));
        o.push_datagram(dgram(1));
        // Number bound.
        assert!(!o.datagram_room(0));
        assert_eq!(o.queued_datagrams(), (3, 3 * HEADER_LEN + 201));
        let mut out = Vec::new();
        let taken = o.take_batch(&mut out, 10, 1 << 20);
        assert_eq!(out.len(), 4);
        assert!(taken.made_room, "the byte stream's DATA left");
        assert_eq!(o.queued_datagrams(), (0, 0));
        assert!(o.is_empty());
    }
}
