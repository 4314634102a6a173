//! The behaviour of one session, sans-I/O: bytes, commands and the time go
//! in; frames to send, events for the application and the next deadline
//! come out. No sockets, no tasks, no locks: `ferry-mux` drives it.
//!
//! # The protocol in brief
//!
//! - **Handshake** (before this machine runs; see [`crate::handshake`] and
//!   [`crate::auth`]): both sides send a `Hello`, agree on a version and
//!   features, and prove the shared secret. What follows are frames
//!   ([`crate::frame`]).
//! - **Open.** Either side opens a stream by sending `OPEN(id, target)`; the
//!   host uses odd ids, the agent even ones, each strictly increasing. The
//!   opener's stream is [`StreamState::Opening`], the peer's
//!   [`StreamState::Accepting`]. The peer answers `OPEN_OK` (both `Open`)
//!   or `OPEN_REFUSED(reason)` (the stream ends). An opener that stops
//!   waiting (its open was cancelled or timed out) sends `RESET`; an
//!   `OPEN_OK` that arrives for a stream it no longer has is answered with
//!   `RESET`, so that the peer never keeps an orphan.
//! - **Data and credit.** Each direction of a stream starts with `window`
//!   bytes of credit. A sender never sends more DATA than its credit; the
//!   receiver returns credit with `WINDOW(increment)` once its application
//!   has consumed a quarter of the window. A slow consumer thus stalls its
//!   own stream only, and the bytes one stream can make this side hold
//!   are its window (copies of small payloads; see
//!   [`COPY_PAYLOADS_BELOW`] for larger pieces).
//!   A receiver may widen one stream's window once, granting credit beyond
//!   it ([`Connection::widen`], within a session budget): UDP flows do, as
//!   their DATA never waits (a datagram without credit or queue room is
//!   dropped, as UDP would), so a wider window is what lets them ride out
//!   a side that cannot run for a moment.
//! - **Half-close.** `FIN` ends one direction (`SentFin` / `ReceivedFin`);
//!   the other direction goes on, with its credit, until its own `FIN`.
//!   After both FINs the stream has ended cleanly.
//! - **Reset.** `RESET(reason)` aborts both directions at once, from any
//!   state. Frames that arrive for a stream that has ended are late
//!   arrivals and are ignored.
//! - **Ordering.** OPEN, OPEN_OK, DATA and FIN travel in order (the ordered
//!   queue), and so does the RESET of an unanswered OPEN; WINDOW, RESET,
//!   OPEN_REFUSED, PING/PONG, control messages and
//!   GOAWAY may overtake them (the urgent queue), and so may WINDOW,
//!   except the one that widens a window, which travels behind its
//!   stream's OPEN_OK. See [`outbox`].
//! - **Keepalive.** With the KEEPALIVE feature, each side PINGs every
//!   interval and answers PINGs with PONGs; silence past the timeout ends
//!   the session. See [`keepalive`].
//! - **Go-away.** `GOAWAY(reason)` ends the session; it is the last frame a
//!   side sends. A side that receives a frame it cannot accept (undecodable,
//!   an id the peer may not use) sends GOAWAY with the reason and closes.
//!
//! Every stream state and its transitions are in one table,
//! [`StreamState::on`]; everything else in this module follows from it.

pub mod keepalive;
pub mod outbox;
pub mod stream_state;
#[cfg(test)]
mod tests;

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};

pub use self::{
    keepalive::KeepaliveConfig,
    outbox::Taken,
    stream_state::{Input, StreamState, Transition},
};
use self::{
    keepalive::{Keepalive, KeepaliveAction},
    outbox::{Bounds, Outbox},
};
use crate::{
    flow::{RecvWindow, SendWindow},
    message,
    stream_id::StreamIds,
    ControlMessage, Frame, FrameDecoder, Role, StreamId, Target,
};

/// Largest DATA payload a sender puts in one frame.
pub const MAX_DATA_FRAME: usize = 256 * 1024;

/// DATA payloads shorter than this are copied out of the buffer they were
/// read into: a slice would keep that whole buffer alive (up to 256 KiB
/// for a 1-byte payload) while the stream's reader holds it, so a peer
/// sending tiny frames to a stalled stream could make it pin far more than
/// its window. Every whole frame the decoder passes on is shorter (it
/// passes larger frames on in pieces as they arrive); a piece this long or
/// longer stays a slice, pinning about 5x its size at most (a read buffer
/// of 256 KiB plus what was left in the previous one).
pub const COPY_PAYLOADS_BELOW: usize = 64 * 1024;

/// The largest datagram a stream carries: one DATA frame each, never split
/// by the receiver, which passes only larger frames on in fragments.
pub const MAX_DATAGRAM: usize = 65_535;

/// Tunables of a connection.
#[derive(Debug, Clone)]
pub struct Config {
    /// Per-stream receive window in bytes (both sides must agree).
    pub window: u32,
    /// Most live streams (opened by either side) when the peer opens one.
    pub max_streams: usize,
    /// Most receive memory all live streams together may pin: each can
    /// hold up to its window of bytes its application has not consumed, so
    /// a stream is opened (by either side), or widened, only while the sum
    /// of the windows stays within this.
    pub max_stream_memory: u64,
    /// Most credit this side grants beyond `window` on all streams together
    /// ([`Connection::widen`]); a stream that would pass it keeps `window`.
    pub max_widened: u64,
    /// Most bytes waiting on the urgent queue before the connection ends as
    /// one whose peer reads nothing.
    pub max_urgent_bytes: usize,
    /// Most DATA frames of byte streams waiting on the ordered queue.
    pub max_queued_data: usize,
    /// Most datagrams waiting on the ordered queue (each is a DATA frame).
    pub max_queued_datagrams: usize,
    /// Most bytes of datagrams waiting on the ordered queue.
    pub max_queued_datagram_bytes: usize,
    /// Longest wait for the answer to an OPEN; the stream is then reset.
    pub open_timeout: Duration,
    /// Keepalive, if both sides offered it.
    pub keepalive: Option<KeepaliveConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            window: crate::flow::DEFAULT_WINDOW,
            max_streams: 16_384,
            max_stream_memory: 4 << 30,
            max_widened: 256 << 20,
            max_urgent_bytes: 64 << 20,
            max_queued_data: 1024,
            max_queued_datagrams: 4096,
            max_queued_datagram_bytes: 4 << 20,
            open_timeout: Duration::from_secs(30),
            keepalive: Some(KeepaliveConfig { interval: Duration::from_secs(1), timeout: Duration::from_secs(5) }),
        }
    }
}

/// Why an OPEN of ours did not lead to a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenFailure {
    /// The peer could not reach the target.
    Refused(String),
    /// The peer did not answer within the open timeout.
    TimedOut(Duration),
    /// The stream or the connection ended first.
    Ended(String),
}

/// Something the application must learn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The peer accepted our OPEN.
    Opened(StreamId),
    /// Our OPEN failed; the stream is gone.
    OpenFailed {
        /// The stream.
        stream: StreamId,
        /// Why.
        failure: OpenFailure,
    },
    /// The peer wants a stream to `target`: accept it, or refuse it with
    /// [`Connection::reset`].
    Incoming {
        /// The stream.
        stream: StreamId,
        /// Where the peer wants to be connected.
        target: Target,
    },
    /// Data from the peer, in order.
    Data {
        /// The stream.
        stream: StreamId,
        /// The bytes.
        payload: Bytes,
    },
    /// The peer will send no more data on the stream.
    Fin(StreamId),
    /// The stream was aborted (by either side, a violation, or the
    /// connection's end); it is gone.
    Reset {
        /// The stream.
        stream: StreamId,
        /// Why.
        reason: String,
    },
    /// The peer granted send credit on the stream.
    Credit(StreamId),
    /// The stream left the table (after its last event).
    Gone(StreamId),
    /// A control message from the peer.
    Control(ControlMessage),
    /// A control message this version cannot read (a newer peer's); it was
    /// skipped, for this reason.
    UnreadableControl(String),
    /// The connection has ended; nothing more will happen.
    Closed(String),
}

/// Why a command was not carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The connection has ended.
    #[error("session closed: {0}")]
    Closed(String),
    /// The stream is not in the table (it ended), or its state does not
    /// allow the command.
    #[error("stream {0} cannot do that in its state")]
    NotAllowed(StreamId),
    /// This side has used up its stream ids.
    #[error("stream ids exhausted; the session must be re-established")]
    IdsExhausted,
    /// Opening another stream would pass a bound.
    #[error("{0}")]
    Limit(String),
}

/// Why [`Connection::send`] took nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// The stream has no send credit: wait for [`Event::Credit`].
    Credit,
    /// The DATA queue is full: wait until a batch is taken.
    Queue,
}

/// What a peer input did to a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The stream goes on.
    Live,
    /// The stream ended cleanly and left the table.
    Ended,
    /// The input broke the stream's rules: it was reset.
    Aborted,
}

/// One live stream.
#[derive(Debug)]
struct Stream {
    state: StreamState,
    send: SendWindow,
    recv: RecvWindow,
}

/// One session's protocol state.
#[derive(Debug)]
pub struct Connection {
    role: Role,
    cfg: Config,
    streams: HashMap<StreamId, Stream>,
    /// The credit granted beyond `window` on live streams, summed.
    widened: u64,
    ids: StreamIds,
    last_peer_id: StreamId,
    decoder: FrameDecoder,
    outbox: Outbox,
    events: VecDeque<Event>,
    open_deadlines: VecDeque<(Instant, StreamId)>,
    keepalive: Option<Keepalive>,
    last_heard: Instant,
    /// A GOAWAY for a protocol error is queued: input is no longer read.
    failing: Option<String>,
    /// Frames that arrived for streams that had ended.
    late_frames: u64,
    closed: Option<String>,
}

impl Connection {
    /// A connection for the side in `role`, starting at `now` (just after
    /// the handshake).
    pub fn new(role: Role, cfg: Config, now: Instant) -> Self {
        Self {
            role,
            streams: HashMap::new(),
            widened: 0,
            ids: StreamIds::new(role),
            last_peer_id: 0,
            // Frames that may hold a datagram stay whole: a datagram is one frame.
            decoder: FrameDecoder::default().with_data_fragments(MAX_DATAGRAM as u32),
            outbox: Outbox::new(Bounds {
                urgent_bytes: cfg.max_urgent_bytes,
                data_frames: cfg.max_queued_data,
                datagrams: cfg.max_queued_datagrams,
                datagram_bytes: cfg.max_queued_datagram_bytes,
            }),
            events: VecDeque::new(),
            open_deadlines: VecDeque::new(),
            keepalive: cfg.keepalive.map(|k| Keepalive::new(k, now)),
            last_heard: now,
            failing: None,
            late_frames: 0,
            closed: None,
            cfg,
        }
    }

    // ----- input from the transport -----

    /// Takes every complete frame from the front of `buf` (bytes just read
    /// from the transport at `now`). A protocol error queues a GOAWAY and
    /// stops reading: see [`Connection::failing`].
    pub fn handle_bytes(&mut self, buf: &mut BytesMut, now: Instant) {
        if self.closed.is_some() || self.failing.is_some() {
            buf.clear();
            return;
        }
        self.last_heard = now;
        loop {
            match self.decoder.decode(buf) {
                Ok(Some(frame)) => {
                    if let Err(reason) = self.handle_frame(frame) {
                        return self.fail(&reason);
                    }
                    if self.closed.is_some() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => return self.fail(&e.to_string()),
            }
        }
    }

    /// Handles one frame from the peer; an `Err` is a protocol violation
    /// that ends the connection.
    pub fn handle_frame(&mut self, frame: Frame) -> Result<(), String> {
        let stream = frame.stream();
        if stream != 0 && !matches!(frame, Frame::Open { .. }) && !self.streams.contains_key(&stream) {
            self.late_arrival(frame);
            return Ok(());
        }
        match frame {
            Frame::Data { stream, payload } => {
                let payload =
                    if payload.len() < COPY_PAYLOADS_BELOW { Bytes::copy_from_slice(&payload) } else { payload };
                let st = self.streams.get_mut(&stream).expect("checked above");
                if let Err(e) = st.recv.on_data(payload.len()) {
                    self.abort(stream, &format!("flow control violation: {e}"));
                } else if self.step(stream, Input::PeerData) == Step::Live {
                    self.events.push_back(Event::Data { stream, payload });
                }
            }
            Frame::Window { stream, increment } => {
                let st = self.streams.get_mut(&stream).expect("checked above");
                if let Err(e) = st.send.grant(increment) {
                    self.abort(stream, &format!("flow control violation: {e}"));
                } else if self.step(stream, Input::PeerWindow) == Step::Live {
                    self.events.push_back(Event::Credit(stream));
                }
            }
            Frame::Open { stream, target } => self.on_open(stream, &target)?,
            Frame::OpenOk { stream } => {
                if self.step(stream, Input::PeerOpenOk) == Step::Live {
                    self.events.push_back(Event::Opened(stream));
                }
            }
            Frame::OpenRefused { stream, reason } => {
                if self.step(stream, Input::PeerRefused) == Step::Ended {
                    self.events.push_back(Event::OpenFailed { stream, failure: OpenFailure::Refused(reason) });
                    self.events.push_back(Event::Gone(stream));
                }
            }
            Frame::Fin { stream } => match self.step(stream, Input::PeerFin) {
                Step::Live => self.events.push_back(Event::Fin(stream)),
                Step::Ended => {
                    self.events.push_back(Event::Fin(stream));
                    self.events.push_back(Event::Gone(stream));
                }
                Step::Aborted => {}
            },
            Frame::Reset { stream, reason } => {
                let st = self.remove(stream).expect("checked above");
                self.report_end(stream, st.state, format!("peer reset: {reason}"));
            }
            Frame::Control { message } => self.events.push_back(match message::decode::<ControlMessage>(&message) {
                Ok(msg) => Event::Control(msg),
                // A newer peer's message this version cannot read: skipped.
                Err(e) => Event::UnreadableControl(e.to_string()),
            }),
            Frame::Ping { nonce } => self.urgent(Frame::Pong { nonce }),
            Frame::Pong { .. } => {}
            Frame::GoAway { reason } => self.terminate(&format!("peer closed the session: {reason}")),
        }
        Ok(())
    }

    /// A frame for a stream that is not in the table: one that ended here
    /// while the peer was still sending (DATA, WINDOW, FIN after a RESET;
    /// a RESET crossing ours). Ignored, with one exception: an OPEN_OK for
    /// an OPEN this side cancelled is answered with RESET, so that the peer
    /// never keeps an orphan (a RESET behind the OPEN prevents this with
    /// peers of this version; older ones sent it ahead).
    fn late_arrival(&mut self, frame: Frame) {
        self.late_frames += 1;
        if let Frame::OpenOk { stream } = frame {
            if !StreamIds::is_peer_id(self.role, stream) {
                self.urgent(Frame::Reset { stream, reason: "no such stream here: its open was cancelled".into() });
            }
        }
    }

    fn on_open(&mut self, stream: StreamId, target: &[u8]) -> Result<(), String> {
        if !StreamIds::is_peer_id(self.role, stream) || stream <= self.last_peer_id {
            return Err(format!("peer opened stream {stream}, which it may not use"));
        }
        self.last_peer_id = stream;
        if let Err(limit) = self.room_for_peer_stream() {
            self.urgent(Frame::OpenRefused { stream, reason: limit });
            return Ok(());
        }
        let target = match message::decode::<Target>(target) {
            Ok(t) => t,
            Err(e) => {
                self.urgent(Frame::OpenRefused { stream, reason: format!("unsupported open target: {e}") });
                return Ok(());
            }
        };
        self.insert(stream, StreamState::Accepting);
        self.events.push_back(Event::Incoming { stream, target });
        Ok(())
    }

    // ----- commands of the application -----

    /// Opens a stream to `target`: queues the OPEN and returns the id. The
    /// answer comes as [`Event::Opened`] or [`Event::OpenFailed`].
    pub fn open(&mut self, target: &Target, now: Instant) -> Result<StreamId, CommandError> {
        self.check_open()?;
        self.room_in_memory(self.cfg.window as u64).map_err(CommandError::Limit)?;
        let id = self.ids.next_id().ok_or(CommandError::IdsExhausted)?;
        self.insert(id, StreamState::Opening);
        self.outbox.push_ordered(Frame::Open { stream: id, target: message::encode(target) });
        self.open_deadlines.push_back((now + self.cfg.open_timeout, id));
        Ok(id)
    }

    /// Accepts the peer's OPEN of `stream`.
    pub fn accept(&mut self, stream: StreamId) -> Result<(), CommandError> {
        self.check_open()?;
        self.command(stream, Input::Accept)?;
        self.outbox.push_ordered(Frame::OpenOk { stream });
        Ok(())
    }

    /// Widens `stream`'s receive window by `extra` bytes, once: the peer is
    /// granted that much credit beyond the window both sides started with
    /// (a WINDOW frame, queued behind the stream's OPEN_OK so it never
    /// reaches a peer still waiting for it). `Ok(false)`: not widened, as
    /// the stream already was, or the grant would pass
    /// [`Config::max_widened`] or the memory ceiling; the stream keeps its
    /// window. Any peer takes the grant: credit is the receiver's to give.
    pub fn widen(&mut self, stream: StreamId, extra: u32) -> Result<bool, CommandError> {
        self.check_open()?;
        let window = self.cfg.window;
        let st = match self.streams.get(&stream) {
            Some(st) if matches!(st.state, StreamState::Open | StreamState::SentFin) => st,
            _ => return Err(CommandError::NotAllowed(stream)),
        };
        let extra64 = extra as u64;
        if st.recv.window() != window
            || window as u64 + extra64 > crate::flow::MAX_CREDIT
            || self.widened + extra64 > self.cfg.max_widened
            || self.room_in_memory(extra64).is_err()
        {
            return Ok(false);
        }
        let st = self.streams.get_mut(&stream).expect("checked above");
        st.recv.widen(extra);
        self.widened += extra64;
        self.outbox.push_ordered(Frame::Window { stream, increment: extra });
        Ok(true)
    }

    /// Send credit of `stream` right now.
    pub fn send_credit(&self, stream: StreamId) -> Result<u64, CommandError> {
        self.check_open()?;
        match self.streams.get(&stream) {
            Some(st) if st.state.may_send() => Ok(st.send.available()),
            _ => Err(CommandError::NotAllowed(stream)),
        }
    }

    /// Queues as much of `data` as credit and queue room allow, in one DATA
    /// frame of at most [`MAX_DATA_FRAME`] bytes, and removes it from the
    /// front of `data`. `Ok(Err(_))` says what to wait for when nothing was
    /// taken.
    pub fn send(&mut self, stream: StreamId, data: &mut Bytes) -> Result<Result<usize, Blocked>, CommandError> {
        self.check_open()?;
        let room = self.outbox.data_room();
        let st = match self.streams.get_mut(&stream) {
            Some(st) if st.state.may_send() => st,
            _ => return Err(CommandError::NotAllowed(stream)),
        };
        if data.is_empty() {
            return Ok(Ok(0));
        }
        if st.send.available() == 0 {
            return Ok(Err(Blocked::Credit));
        }
        if room == 0 {
            return Ok(Err(Blocked::Queue));
        }
        let n = st.send.take(data.len().min(MAX_DATA_FRAME));
        self.outbox.push_data(Frame::Data { stream, payload: data.split_to(n) });
        Ok(Ok(n))
    }

    /// Queues `datagram` as exactly one DATA frame if that can be done now:
    /// with enough credit and room in the datagram queue (its own bounds:
    /// datagrams take no room from byte streams). `Ok(false)`: the datagram
    /// was dropped, as datagrams never wait.
    pub fn send_datagram(&mut self, stream: StreamId, datagram: Bytes) -> Result<bool, CommandError> {
        self.check_open()?;
        let room = self.outbox.datagram_room(datagram.len());
        let st = match self.streams.get_mut(&stream) {
            Some(st) if st.state.may_send() => st,
            _ => return Err(CommandError::NotAllowed(stream)),
        };
        if datagram.len() > MAX_DATAGRAM || !room || st.send.available() < datagram.len() as u64 {
            return Ok(false);
        }
        st.send.take(datagram.len());
        self.outbox.push_datagram(Frame::Data { stream, payload: datagram });
        Ok(true)
    }

    /// Half-closes `stream`: no more data from this side.
    pub fn finish(&mut self, stream: StreamId) -> Result<(), CommandError> {
        self.check_open()?;
        self.command(stream, Input::Finish)?;
        self.outbox.push_ordered(Frame::Fin { stream });
        Ok(())
    }

    /// Aborts `stream` in both directions (a no-op for a stream that has
    /// ended), and reports it like any other end ([`Event::Reset`], or
    /// [`Event::OpenFailed`] for an OPEN of ours, which is cancelled; an
    /// unanswered OPEN of the peer's is refused).
    pub fn reset(&mut self, stream: StreamId, reason: &str) {
        if self.closed.is_none() {
            self.abort(stream, reason);
        }
    }

    /// Records that the application handed on `len` bytes of `stream`'s
    /// data, which returns credit to the peer in batches.
    pub fn consumed(&mut self, stream: StreamId, len: usize) {
        if self.closed.is_some() {
            return;
        }
        let Some(st) = self.streams.get_mut(&stream) else { return };
        if let Some(increment) = st.recv.on_consumed(len) {
            // Credit matters only while the peer may still send.
            if matches!(st.state, StreamState::Open | StreamState::SentFin) {
                self.urgent(Frame::Window { stream, increment });
            }
        }
    }

    /// Queues a control message for the peer.
    pub fn send_control(&mut self, msg: &ControlMessage) -> Result<(), CommandError> {
        self.check_open()?;
        self.urgent(Frame::Control { message: message::encode(msg) });
        Ok(())
    }

    /// Starts closing: queues a GOAWAY; the connection ends once it is
    /// written ([`Connection::take_batch`] reports it).
    pub fn close(&mut self, reason: &str) {
        if self.closed.is_none() {
            self.urgent(Frame::GoAway { reason: reason.to_string() });
        }
    }

    /// Ends the connection now (the transport failed or GOAWAY was sent):
    /// every stream is reset, then [`Event::Closed`]. The first reason wins.
    pub fn terminate(&mut self, reason: &str) {
        if self.closed.is_some() {
            return;
        }
        self.closed = Some(reason.to_string());
        let mut ids: Vec<StreamId> = self.streams.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let st = self.remove(id).expect("listed");
            self.report_end(id, st.state, format!("session closed: {reason}"));
        }
        self.open_deadlines.clear();
        self.events.push_back(Event::Closed(reason.to_string()));
    }

    // ----- time -----

    /// When [`Connection::handle_timeout`] must run next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed.is_some() {
            return None;
        }
        let open = self.open_deadlines.front().map(|(t, _)| *t);
        let keepalive = self.keepalive.as_ref().map(Keepalive::deadline);
        match (open, keepalive) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs the timers due at `now`: keepalive and open timeouts.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed.is_some() {
            return;
        }
        while let Some(&(deadline, id)) = self.open_deadlines.front() {
            if deadline > now {
                break;
            }
            self.open_deadlines.pop_front();
            if self.streams.get(&id).is_some_and(|s| s.state == StreamState::Opening) {
                self.remove(id);
                self.send_reset(id, StreamState::Opening, "no answer to OPEN in time");
                let failure = OpenFailure::TimedOut(self.cfg.open_timeout);
                self.events.push_back(Event::OpenFailed { stream: id, failure });
                self.events.push_back(Event::Gone(id));
            }
        }
        let last_heard = self.last_heard;
        match self.keepalive.as_mut().and_then(|k| k.on_timer(now, last_heard)) {
            Some(KeepaliveAction::Ping(nonce)) => self.urgent(Frame::Ping { nonce }),
            Some(KeepaliveAction::Dead(reason)) => self.terminate(&reason),
            None => {}
        }
    }

    // ----- output -----

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Moves the next batch of frames to send into `out`, urgent ones
    /// first. After writing a batch whose [`Taken::goaway`] is set, the
    /// driver calls [`Connection::terminate`].
    pub fn take_batch(&mut self, out: &mut Vec<Frame>, max_frames: usize, max_bytes: usize) -> Taken {
        self.outbox.take_batch(out, max_frames, max_bytes)
    }

    /// Whether frames wait to be sent.
    pub fn has_frames(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// Whether the DATA queue has room (senders blocked on
    /// [`Blocked::Queue`] wait for this).
    pub fn has_data_room(&self) -> bool {
        self.outbox.data_room() > 0
    }

    // ----- inspection -----

    /// The protocol error being reported to the peer, if any: the
    /// connection reads no more and ends once its GOAWAY is written.
    pub fn failing(&self) -> Option<&str> {
        self.failing.as_deref()
    }

    /// Why the connection ended, if it has.
    pub fn closed_reason(&self) -> Option<&str> {
        self.closed.as_deref()
    }

    /// Number of live streams.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// The state of `stream`, `None` once it has ended.
    pub fn stream_state(&self, stream: StreamId) -> Option<StreamState> {
        self.streams.get(&stream).map(|s| s.state)
    }

    /// Frames that arrived for streams that had already ended here (late
    /// arrivals, ignored).
    pub fn late_frames(&self) -> u64 {
        self.late_frames
    }

    /// Bytes waiting on the urgent queue.
    pub fn urgent_bytes(&self) -> usize {
        self.outbox.urgent_bytes()
    }

    /// DATA frames of byte streams waiting on the ordered queue.
    pub fn queued_data(&self) -> usize {
        self.outbox.queued_data()
    }

    /// Datagrams waiting on the ordered queue, and their bytes.
    pub fn queued_datagrams(&self) -> (usize, usize) {
        self.outbox.queued_datagrams()
    }

    /// The role of this side.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    #[cfg(test)]
    fn windows(&self, stream: StreamId) -> Option<(SendWindow, RecvWindow)> {
        self.streams.get(&stream).map(|s| (s.send.clone(), s.recv.clone()))
    }

    // ----- internals -----

    fn check_open(&self) -> Result<(), CommandError> {
        match &self.closed {
            Some(r) => Err(CommandError::Closed(r.clone())),
            None => Ok(()),
        }
    }

    /// Whether the peer may open one more stream: within the stream limit
    /// and the memory ceiling.
    fn room_for_peer_stream(&self) -> Result<(), String> {
        if self.streams.len() >= self.cfg.max_streams {
            return Err(format!("too many streams (limit {})", self.cfg.max_streams));
        }
        self.room_in_memory(self.cfg.window as u64)
    }

    /// Whether `window` more bytes of windows fit within the memory ceiling.
    fn room_in_memory(&self, window: u64) -> Result<(), String> {
        let pinned = self.pinned();
        if pinned + window > self.cfg.max_stream_memory {
            return Err(format!(
                "session memory ceiling: {} streams already pin up to {} MiB in their windows; another needs {} KiB \
                 (limit {} MiB)",
                self.streams.len(),
                pinned >> 20,
                window >> 10,
                self.cfg.max_stream_memory >> 20
            ));
        }
        Ok(())
    }

    /// The receive windows of the live streams, summed: the memory they may
    /// pin (each started at `window`; some were widened).
    fn pinned(&self) -> u64 {
        self.streams.len() as u64 * self.cfg.window as u64 + self.widened
    }

    fn insert(&mut self, id: StreamId, state: StreamState) {
        let w = self.cfg.window;
        self.streams.insert(id, Stream { state, send: SendWindow::new(w), recv: RecvWindow::new(w) });
    }

    /// Takes `id` out of the table, releasing what its widening took of the
    /// budget.
    fn remove(&mut self, id: StreamId) -> Option<Stream> {
        let st = self.streams.remove(&id)?;
        self.widened -= (st.recv.window() - self.cfg.window) as u64;
        Some(st)
    }

    /// Applies a peer input to a stream in the table (a violation resets
    /// the stream).
    fn step(&mut self, id: StreamId, input: Input) -> Step {
        let st = self.streams.get_mut(&id).expect("caller checked");
        let state = st.state;
        match state.on(input) {
            Transition::To(s) => {
                st.state = s;
                Step::Live
            }
            Transition::End => {
                self.remove(id);
                Step::Ended
            }
            // The table never answers a peer input with NotAllowed (a test
            // checks); were it to, the stream is reset like for a violation.
            Transition::PeerViolation(what) => {
                self.abort(id, &format!("protocol violation on the stream: {what}"));
                Step::Aborted
            }
            Transition::NotAllowed => {
                self.abort(id, &format!("protocol violation on the stream: {input:?} in {state:?}"));
                Step::Aborted
            }
        }
    }

    /// Applies an application command to a stream.
    fn command(&mut self, id: StreamId, input: Input) -> Result<(), CommandError> {
        let st = self.streams.get_mut(&id).ok_or(CommandError::NotAllowed(id))?;
        match st.state.on(input) {
            Transition::To(s) => {
                st.state = s;
                Ok(())
            }
            Transition::End => {
                self.remove(id);
                self.events.push_back(Event::Gone(id));
                Ok(())
            }
            Transition::NotAllowed | Transition::PeerViolation(_) => Err(CommandError::NotAllowed(id)),
        }
    }

    /// Queues what aborts a stream that was in `state`:
    /// - an OPEN of ours, cancelled: RESET behind it, in order (a RESET that
    ///   overtook its OPEN would be ignored and the OPEN then accepted, an
    ///   orphan);
    /// - an OPEN of the peer's, unanswered: OPEN_REFUSED with the reason;
    /// - an established stream: RESET, urgent.
    fn send_reset(&mut self, id: StreamId, state: StreamState, reason: &str) {
        let reason = reason.to_string();
        match state {
            StreamState::Opening => self.outbox.push_ordered(Frame::Reset { stream: id, reason }),
            StreamState::Accepting => self.urgent(Frame::OpenRefused { stream: id, reason }),
            _ => self.urgent(Frame::Reset { stream: id, reason }),
        }
    }

    /// Aborts a stream from this side for `reason` and tells the application.
    fn abort(&mut self, id: StreamId, reason: &str) {
        if let Some(st) = self.remove(id) {
            self.send_reset(id, st.state, reason);
            self.report_end(id, st.state, reason.to_string());
        }
    }

    /// Tells the application a stream in `state` ended for `reason`.
    fn report_end(&mut self, id: StreamId, state: StreamState, reason: String) {
        let event = match state {
            StreamState::Opening => Event::OpenFailed { stream: id, failure: OpenFailure::Ended(reason) },
            _ => Event::Reset { stream: id, reason },
        };
        self.events.push_back(event);
        self.events.push_back(Event::Gone(id));
    }

    /// Queues an urgent frame; past the bound the connection ends.
    fn urgent(&mut self, f: Frame) {
        if let Err(full) = self.outbox.push_urgent(f) {
            self.terminate(&format!(
                "the peer reads nothing: {} bytes of control frames would be waiting (limit {})",
                full.queued, self.cfg.max_urgent_bytes
            ));
        }
    }

    /// Reports a protocol error to the peer and stops reading.
    fn fail(&mut self, reason: &str) {
        let reason = format!("protocol error: {reason}");
        self.failing = Some(reason.clone());
        self.close(&reason);
    }
}
