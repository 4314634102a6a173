//! Frame layout: a fixed 10-byte header followed by the payload.
//!
//! ```text
//!  0       4      5       6              10
//!  +-------+------+-------+---------------+---------------
//!  |stream | type | flags | payload length| payload ...
//!  | u32 BE|  u8  |  u8   |    u32 BE     |
//!  +-------+------+-------+---------------+---------------
//! ```
//!
//! The flags byte is 0 in version 1; a frame with any flag set is a
//! protocol error (a later version that defines flags negotiates them).
//!
//! Stream 0 carries session-level frames (control messages, keepalive,
//! go-away); every other stream id names one forwarded connection.

use bytes::{BufMut, Bytes, BytesMut};

/// Size of the fixed frame header in bytes.
pub const HEADER_LEN: usize = 10;

/// Largest payload a peer may send in one frame; anything larger is a
/// protocol error detected from the header alone.
pub const MAX_PAYLOAD: u32 = 1 << 20;

/// Identifier of a stream inside a session; 0 is the session itself.
pub type StreamId = u32;

/// The frame kinds of protocol version 1, as carried in the header's type byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    /// Raw stream bytes.
    Data = 0,
    /// Flow-control credit for a stream (u32 BE increment).
    Window = 1,
    /// Request to open a stream to a target (postcard [`crate::Target`]).
    Open = 2,
    /// The target was reached; the stream is established.
    OpenOk = 3,
    /// The target could not be reached (UTF-8 reason).
    OpenRefused = 4,
    /// The sender will send no more data on this stream (half-close).
    Fin = 5,
    /// The stream is aborted in both directions (UTF-8 reason).
    Reset = 6,
    /// A session-level control message (postcard [`crate::ControlMessage`]).
    Control = 7,
    /// Keepalive probe (u64 BE nonce).
    Ping = 8,
    /// Keepalive answer echoing the probe's nonce.
    Pong = 9,
    /// The sender is closing the session (UTF-8 reason).
    GoAway = 10,
}

impl FrameType {
    /// Maps the header's type byte to a frame type, `None` for unknown kinds.
    pub fn from_u8(v: u8) -> Option<Self> {
        use FrameType::*;
        Some(match v {
            0 => Data,
            1 => Window,
            2 => Open,
            3 => OpenOk,
            4 => OpenRefused,
            5 => Fin,
            6 => Reset,
            7 => Control,
            8 => Ping,
            9 => Pong,
            10 => GoAway,
            _ => return None,
        })
    }

    /// Whether frames of this kind belong to stream 0 (the session).
    pub fn is_session_level(self) -> bool {
        matches!(self, FrameType::Control | FrameType::Ping | FrameType::Pong | FrameType::GoAway)
    }
}

/// One decoded frame. Variable payloads stay as [`Bytes`] slices of the
/// receive buffer: data is never copied or re-serialised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Stream bytes.
    Data { stream: StreamId, payload: Bytes },
    /// Grant `increment` more bytes of send credit on `stream`.
    Window { stream: StreamId, increment: u32 },
    /// Open `stream` towards the postcard-encoded target in `target`.
    Open { stream: StreamId, target: Bytes },
    /// `stream` is established.
    OpenOk { stream: StreamId },
    /// `stream` could not be opened.
    OpenRefused { stream: StreamId, reason: String },
    /// No more data from the sender on `stream`.
    Fin { stream: StreamId },
    /// `stream` is aborted.
    Reset { stream: StreamId, reason: String },
    /// A postcard-encoded control message.
    Control { message: Bytes },
    /// Keepalive probe.
    Ping { nonce: u64 },
    /// Keepalive answer.
    Pong { nonce: u64 },
    /// The peer closes the session.
    GoAway { reason: String },
}

impl Frame {
    /// The frame's kind.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Frame::Data { .. } => FrameType::Data,
            Frame::Window { .. } => FrameType::Window,
            Frame::Open { .. } => FrameType::Open,
            Frame::OpenOk { .. } => FrameType::OpenOk,
            Frame::OpenRefused { .. } => FrameType::OpenRefused,
            Frame::Fin { .. } => FrameType::Fin,
            Frame::Reset { .. } => FrameType::Reset,
            Frame::Control { .. } => FrameType::Control,
            Frame::Ping { .. } => FrameType::Ping,
            Frame::Pong { .. } => FrameType::Pong,
            Frame::GoAway { .. } => FrameType::GoAway,
        }
    }

    /// The stream the frame belongs to (0 for session-level frames).
    pub fn stream(&self) -> StreamId {
        match self {
            Frame::Data { stream, .. }
            | Frame::Window { stream, .. }
            | Frame::Open { stream, .. }
            | Frame::OpenOk { stream }
            | Frame::OpenRefused { stream, .. }
            | Frame::Fin { stream }
            | Frame::Reset { stream, .. } => *stream,
            Frame::Control { .. } | Frame::Ping { .. } | Frame::Pong { .. } | Frame::GoAway { .. } => 0,
        }
    }

    /// Splits the frame into its encoded header and its payload, so that a
    /// writer can send both with one vectored write and no copy of the data.
    pub fn into_parts(self) -> ([u8; HEADER_LEN], Bytes) {
        let kind = self.frame_type();
        let stream = self.stream();
        let payload = match self {
            Frame::Data { payload, .. } => payload,
            Frame::Open { target, .. } => target,
            Frame::Control { message } => message,
            Frame::Window { increment, .. } => Bytes::copy_from_slice(&increment.to_be_bytes()),
            Frame::Ping { nonce } | Frame::Pong { nonce } => Bytes::copy_from_slice(&nonce.to_be_bytes()),
            Frame::OpenRefused { reason, .. } | Frame::Reset { reason, .. } | Frame::GoAway { reason } => {
                Bytes::from(truncate_reason(reason).into_bytes())
            }
            Frame::OpenOk { .. } | Frame::Fin { .. } => Bytes::new(),
        };
        (header(stream, kind, payload.len() as u32), payload)
    }

    /// Appends the encoded frame to `out` (a copy; writers that care about
    /// copies use [`Frame::into_parts`]).
    pub fn encode(self, out: &mut BytesMut) {
        let (head, payload) = self.into_parts();
        out.reserve(HEADER_LEN + payload.len());
        out.put_slice(&head);
        out.put_slice(&payload);
    }
}

/// Longest reason string carried in a frame; longer ones are cut at a
/// character boundary so that a reason can never exceed the frame limit.
pub const MAX_REASON_LEN: usize = 1024;

fn truncate_reason(mut reason: String) -> String {
    if reason.len() > MAX_REASON_LEN {
        let mut cut = MAX_REASON_LEN;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    reason
}

/// Encodes a frame header.
pub fn header(stream: StreamId, kind: FrameType, len: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&stream.to_be_bytes());
    h[4] = kind as u8;
    h[5] = 0;
    h[6..10].copy_from_slice(&len.to_be_bytes());
    h
}
