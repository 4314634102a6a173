//! Sans-I/O frame decoder: feed it the bytes read from a transport, take
//! complete frames out.
//!
//! Errors are detected as early as possible: an unknown frame type or an
//! oversized length is reported from the 10-byte header alone, before any of
//! the payload has arrived, so a peer can never make the decoder buffer more
//! than [`MAX_PAYLOAD`] bytes.

use bytes::{Buf, BytesMut};

use crate::frame::{Frame, FrameType, StreamId, HEADER_LEN, MAX_PAYLOAD};

/// Why a byte stream is not a valid sequence of frames. Every variant is
/// fatal for the session: the decoder cannot resynchronise after it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The header announces a payload larger than the limit.
    #[error("frame payload of {len} bytes exceeds the limit of {max} bytes")]
    Oversized { len: u32, max: u32 },
    /// The header's type byte names no known frame type.
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    /// A session-level frame names a stream, or a stream frame names stream 0.
    #[error("{kind:?} frame on stream {stream} is not allowed")]
    WrongStream { kind: FrameType, stream: u32 },
    /// The header's flags byte has bits set; version 1 defines none, so a
    /// peer that sets one speaks something this build does not.
    #[error("frame flags {0:#04x}: version 1 defines none")]
    UnknownFlags(u8),
    /// A fixed-size payload has the wrong length or value.
    #[error("malformed {kind:?} frame: {reason}")]
    Malformed { kind: FrameType, reason: &'static str },
}

/// Incremental decoder of a frame stream.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_payload: u32,
    /// DATA payloads longer than this may be passed on in pieces.
    fragment_above: Option<u32>,
    /// The stream and the payload bytes still to come of a DATA frame
    /// being passed on in pieces.
    data_left: Option<(StreamId, u32)>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(MAX_PAYLOAD)
    }
}

impl FrameDecoder {
    /// A decoder that rejects payloads longer than `max_payload` bytes.
    pub fn new(max_payload: u32) -> Self {
        Self { max_payload, fragment_above: None, data_left: None }
    }

    /// Passes a DATA frame with a payload longer than `larger_than` bytes
    /// that has only partly arrived on in pieces, each a [`Frame::Data`] of
    /// the same stream, as its bytes arrive. A byte stream's bytes are the
    /// same either way, but the receive buffer then never has to grow (and
    /// copy) to hold a whole large frame: every payload byte stays where it
    /// was read. Frames up to `larger_than` stay whole, for streams whose
    /// frames are messages (datagrams).
    pub fn with_data_fragments(mut self, larger_than: u32) -> Self {
        self.fragment_above = Some(larger_than);
        self
    }

    /// Takes one frame from the front of `buf`: a complete one, or, with
    /// [`FrameDecoder::with_data_fragments`], the part of a DATA payload
    /// that has arrived.
    ///
    /// Returns `Ok(None)` when `buf` holds only part of a frame (nothing is
    /// consumed but, in fragment mode, a DATA header; more capacity is
    /// reserved for the rest), and an error as soon as the header shows the
    /// stream is invalid.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        if let Some((stream, left)) = self.data_left {
            if buf.is_empty() {
                return Ok(None);
            }
            let n = (left as usize).min(buf.len());
            let payload = buf.split_to(n).freeze();
            let left = left - n as u32;
            self.data_left = (left > 0).then_some((stream, left));
            return Ok(Some(Frame::Data { stream, payload }));
        }
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let stream = u32::from_be_bytes(buf[0..4].try_into().expect("4 bytes"));
        let type_byte = buf[4];
        let len = u32::from_be_bytes(buf[6..10].try_into().expect("4 bytes"));
        let kind = FrameType::from_u8(type_byte).ok_or(DecodeError::UnknownType(type_byte))?;
        if buf[5] != 0 {
            return Err(DecodeError::UnknownFlags(buf[5]));
        }
        if len > self.max_payload {
            return Err(DecodeError::Oversized { len, max: self.max_payload });
        }
        if kind.is_session_level() != (stream == 0) {
            return Err(DecodeError::WrongStream { kind, stream });
        }
        let total = HEADER_LEN + len as usize;
        if buf.len() < total {
            if kind == FrameType::Data && self.fragment_above.is_some_and(|above| len > above) {
                buf.advance(HEADER_LEN);
                self.data_left = Some((stream, len));
                return self.decode(buf);
            }
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        buf.advance(HEADER_LEN);
        let payload = buf.split_to(len as usize).freeze();
        let text = |p: &[u8]| String::from_utf8_lossy(p).into_owned();
        let frame = match kind {
            FrameType::Data => Frame::Data { stream, payload },
            FrameType::Window => {
                let increment = fixed_u32(&payload, kind)?;
                if increment == 0 {
                    return Err(DecodeError::Malformed { kind, reason: "zero increment" });
                }
                Frame::Window { stream, increment }
            }
            FrameType::Open => Frame::Open { stream, target: payload },
            FrameType::OpenOk => {
                expect_empty(&payload, kind)?;
                Frame::OpenOk { stream }
            }
            FrameType::OpenRefused => Frame::OpenRefused { stream, reason: text(&payload) },
            FrameType::Fin => {
                expect_empty(&payload, kind)?;
                Frame::Fin { stream }
            }
            FrameType::Reset => Frame::Reset { stream, reason: text(&payload) },
            FrameType::Control => Frame::Control { message: payload },
            FrameType::Ping => Frame::Ping { nonce: fixed_u64(&payload, kind)? },
            FrameType::Pong => Frame::Pong { nonce: fixed_u64(&payload, kind)? },
            FrameType::GoAway => Frame::GoAway { reason: text(&payload) },
        };
        Ok(Some(frame))
    }
}

fn fixed_u32(p: &[u8], kind: FrameType) -> Result<u32, DecodeError> {
    let arr: [u8; 4] = p.try_into().map_err(|_| DecodeError::Malformed { kind, reason: "payload must be 4 bytes" })?;
    Ok(u32::from_be_bytes(arr))
}

fn fixed_u64(p: &[u8], kind: FrameType) -> Result<u64, DecodeError> {
    let arr: [u8; 8] = p.try_into().map_err(|_| DecodeError::Malformed { kind, reason: "payload must be 8 bytes" })?;
    Ok(u64::from_be_bytes(arr))
}

fn expect_empty(p: &[u8], kind: FrameType) -> Result<(), DecodeError> {
    if p.is_empty() {
        Ok(())
    } else {
        Err(DecodeError::Malformed { kind, reason: "payload must be empty" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::header;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn arb_frame() -> impl Strategy<Value = Frame> {
        let stream = 1u32..=u32::MAX;
        let bytes = proptest::collection::vec(any::<u8>(), 0..2048).prop_map(Bytes::from);
        let reason = "[a-zA-Z0-9 éß]{0,64}";
        prop_oneof![
            (stream.clone(), bytes.clone()).prop_map(|(stream, payload)| Frame::Data { stream, payload }),
            (stream.clone(), 1u32..).prop_map(|(stream, increment)| Frame::Window { stream, increment }),
            (stream.clone(), bytes.clone()).prop_map(|(stream, target)| Frame::Open { stream, target }),
            stream.clone().prop_map(|stream| Frame::OpenOk { stream }),
            (stream.clone(), reason).prop_map(|(stream, r)| Frame::OpenRefused { stream, reason: r }),
            stream.clone().prop_map(|stream| Frame::Fin { stream }),
            (stream, reason).prop_map(|(stream, r)| Frame::Reset { stream, reason: r }),
            bytes.prop_map(|message| Frame::Control { message }),
            any::<u64>().prop_map(|nonce| Frame::Ping { nonce }),
            any::<u64>().prop_map(|nonce| Frame::Pong { nonce }),
            reason.prop_map(|r| Frame::GoAway { reason: r }),
        ]
    }

    fn encode_all(frames: &[Frame]) -> BytesMut {
        let mut out = BytesMut::new();
        for f in frames {
            f.clone().encode(&mut out);
        }
        out
    }

    proptest! {
        #[test]
        fn round_trip(frames in proptest::collection::vec(arb_frame(), 1..16)) {
            let mut buf = encode_all(&frames);
            let mut dec = FrameDecoder::default();
            for f in &frames {
                prop_assert_eq!(dec.decode(&mut buf).unwrap(), Some(f.clone()));
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(dec.decode(&mut buf).unwrap(), None);
        }

        #[test]
        fn every_truncation_point_waits_for_more(frame in arb_frame()) {
            let full = encode_all(std::slice::from_ref(&frame));
            for cut in 0..full.len() {
                let mut part = BytesMut::from(&full[..cut]);
                let mut dec = FrameDecoder::default();
                prop_assert_eq!(dec.decode(&mut part).unwrap(), None);
                prop_assert_eq!(part.len(), cut, "a partial frame must not be consumed");
            }
        }

        #[test]
        fn data_fragments_carry_the_same_bytes_in_any_chunking(
            frames in proptest::collection::vec(arb_frame(), 1..8),
            chunk in 1usize..3000,
        ) {
            let full = encode_all(&frames);
            let mut dec = FrameDecoder::default().with_data_fragments(0);
            let (mut buf, mut got) = (BytesMut::new(), Vec::new());
            for piece in full.chunks(chunk) {
                buf.extend_from_slice(piece);
                while let Some(f) = dec.decode(&mut buf).unwrap() {
                    got.push(f);
                }
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(stream_events(&got), stream_events(&frames));
        }

        #[test]
        fn byte_by_byte_feeding_yields_same_frames(frames in proptest::collection::vec(arb_frame(), 1..6)) {
            let full = encode_all(&frames);
            let mut buf = BytesMut::new();
            let mut dec = FrameDecoder::default();
            let mut got = Vec::new();
            for b in full.iter() {
                buf.extend_from_slice(&[*b]);
                while let Some(f) = dec.decode(&mut buf).unwrap() {
                    got.push(f);
                }
            }
            prop_assert_eq!(got, frames);
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let mut buf = BytesMut::from(&data[..]);
            let mut dec = FrameDecoder::default();
            // Either frames, a clean "need more", or an error: never a panic or a loop.
            for _ in 0..data.len() + 1 {
                match dec.decode(&mut buf) {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
        }

        #[test]
        fn oversized_length_is_rejected_from_header(len in (MAX_PAYLOAD + 1)..=u32::MAX, stream in 1u32..) {
            let mut buf = BytesMut::from(&header(stream, FrameType::Data, len)[..]);
            prop_assert_eq!(
                FrameDecoder::default().decode(&mut buf),
                Err(DecodeError::Oversized { len, max: MAX_PAYLOAD })
            );
        }

        #[test]
        fn set_flags_are_rejected(flags in 1u8.., stream in 1u32..) {
            let mut buf = encode_all(&[Frame::Fin { stream }]);
            buf[5] = flags;
            prop_assert_eq!(FrameDecoder::default().decode(&mut buf), Err(DecodeError::UnknownFlags(flags)));
        }

        #[test]
        fn unknown_type_is_rejected(t in 11u8.., stream in any::<u32>()) {
            let mut h = header(stream, FrameType::Data, 0);
            h[4] = t;
            let mut buf = BytesMut::from(&h[..]);
            prop_assert_eq!(FrameDecoder::default().decode(&mut buf), Err(DecodeError::UnknownType(t)));
        }
    }

    /// The frames as a receiver's streams see them: consecutive DATA of one
    /// stream joined into one payload.
    fn stream_events(frames: &[Frame]) -> Vec<Frame> {
        let mut out: Vec<Frame> = Vec::new();
        for f in frames {
            if let (Some(Frame::Data { stream: last, payload: joined }), Frame::Data { stream, payload }) =
                (out.last_mut(), f)
            {
                if last == stream {
                    let mut both = BytesMut::from(&joined[..]);
                    both.extend_from_slice(payload);
                    *joined = both.freeze();
                    continue;
                }
            }
            out.push(f.clone());
        }
        out
    }

    #[test]
    fn a_partial_data_frame_is_passed_on_without_growing_the_buffer() {
        let payload = Bytes::from(vec![9u8; 100_000]);
        let wire = encode_all(&[Frame::Data { stream: 3, payload }, Frame::Fin { stream: 3 }]);
        let mut buf = BytesMut::with_capacity(64 * 1024);
        buf.extend_from_slice(&wire[..60_000]);
        let mut dec = FrameDecoder::default().with_data_fragments(65_535);
        let Some(Frame::Data { stream: 3, payload: first }) = dec.decode(&mut buf).unwrap() else { panic!() };
        assert_eq!(first.len(), 60_000 - HEADER_LEN);
        assert_eq!(buf.capacity(), 64 * 1024 - 60_000, "nothing was reserved");
        assert_eq!(dec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&wire[60_000..]);
        let Some(Frame::Data { stream: 3, payload: rest }) = dec.decode(&mut buf).unwrap() else { panic!() };
        assert_eq!(first.len() + rest.len(), 100_000);
        assert_eq!(dec.decode(&mut buf).unwrap(), Some(Frame::Fin { stream: 3 }));
    }

    #[test]
    fn data_frames_up_to_the_limit_stay_whole() {
        let payload = Bytes::from(vec![5u8; 65_535]);
        let wire = encode_all(&[Frame::Data { stream: 3, payload: payload.clone() }]);
        let mut dec = FrameDecoder::default().with_data_fragments(65_535);
        let mut buf = BytesMut::from(&wire[..40_000]);
        assert_eq!(dec.decode(&mut buf).unwrap(), None, "a datagram-sized frame waits to be whole");
        buf.extend_from_slice(&wire[40_000..]);
        assert_eq!(dec.decode(&mut buf).unwrap(), Some(Frame::Data { stream: 3, payload }));
    }

    #[test]
    fn session_frames_must_use_stream_zero() {
        let mut buf = BytesMut::from(&header(5, FrameType::Ping, 8)[..]);
        assert!(matches!(FrameDecoder::default().decode(&mut buf), Err(DecodeError::WrongStream { .. })));
        let mut buf = BytesMut::from(&header(0, FrameType::Data, 0)[..]);
        assert!(matches!(FrameDecoder::default().decode(&mut buf), Err(DecodeError::WrongStream { .. })));
    }

    #[test]
    fn malformed_fixed_payloads_are_rejected() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&header(3, FrameType::Window, 3));
        buf.extend_from_slice(&[0, 0, 1]);
        assert!(matches!(FrameDecoder::default().decode(&mut buf), Err(DecodeError::Malformed { .. })));
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&header(3, FrameType::Window, 4));
        buf.extend_from_slice(&[0, 0, 0, 0]);
        assert!(matches!(FrameDecoder::default().decode(&mut buf), Err(DecodeError::Malformed { .. })));
    }

    #[test]
    fn data_payload_is_a_slice_of_the_receive_buffer() {
        let mut buf = encode_all(&[Frame::Data { stream: 1, payload: Bytes::from(vec![7u8; 4096]) }]);
        let start = buf.as_ptr() as usize;
        let Some(Frame::Data { payload, .. }) = FrameDecoder::default().decode(&mut buf).unwrap() else {
            panic!("expected data frame");
        };
        assert_eq!(payload.as_ptr() as usize, start + HEADER_LEN, "payload must not be copied");
    }

    #[test]
    fn long_reasons_are_truncated_to_the_limit() {
        let mut buf = encode_all(&[Frame::GoAway { reason: "é".repeat(4000) }]);
        let Some(Frame::GoAway { reason }) = FrameDecoder::default().decode(&mut buf).unwrap() else {
            panic!("expected goaway");
        };
        assert!(reason.len() <= crate::frame::MAX_REASON_LEN && reason.chars().all(|c| c == 'é'));
    }
}
