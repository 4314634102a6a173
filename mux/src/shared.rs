//! The session's one piece of shared state: the sans-I/O
//! [`Connection`](ferry_protocol::connection::Connection) under a lock, plus
//! what the tokio side needs to hand its events on (each stream's channel
//! and wake-ups) and to wake the session's tasks.
//!
//! Every change goes through [`Shared::with`]: it runs the change, hands the
//! connection's events to the streams they concern, and wakes the writer,
//! the timer and waiting senders as needed.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, OnceLock},
};

use bytes::Bytes;
use ferry_protocol::{
    connection::{Connection, Event, OpenFailure},
    ControlMessage, StreamId, Target,
};
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::end_book::EndBook;

/// What the reader task delivers to a stream's receiving half.
#[derive(Debug)]
pub(crate) enum Inbound {
    Data(Bytes),
    Fin,
    Reset(String),
}

/// Wake-ups and the end reason of one stream, shared by its two halves and
/// the session.
#[derive(Debug, Default)]
pub(crate) struct Signals {
    /// Woken when the peer grants credit (or the stream ends).
    pub credit: Notify,
    /// Why the stream was aborted, once it was.
    pub reset: OnceLock<String>,
}

/// Most DATA frames one stream's reader may have waiting, not yet taken:
/// a 4 MiB datagram window of 64-byte datagrams. Credit bounds their bytes,
/// not their number, and an empty frame costs no credit, so a peer sending
/// empty or tiny frames to a stream whose reader stalls could otherwise
/// grow its queue without end: past this the stream is reset.
pub(crate) const MAX_HELD_FRAMES: usize = 65_536;

/// The same bound for all the streams of a session together.
pub(crate) const MAX_SESSION_HELD_FRAMES: usize = 1 << 20;

/// The session's end of one stream.
struct Handle {
    inbound: mpsc::UnboundedSender<Inbound>,
    signals: Arc<Signals>,
    open_reply: Option<oneshot::Sender<Result<(), OpenFailure>>>,
    /// DATA frames sent to the reader and not yet released by it (see
    /// [`Core::released`]).
    held: usize,
}

/// A new stream's receiving channel and signals, for its halves.
pub(crate) struct StreamParts {
    pub id: StreamId,
    pub rx: mpsc::UnboundedReceiver<Inbound>,
    pub signals: Arc<Signals>,
}

/// Something for the application's event channel (the reader forwards
/// these after releasing the lock).
pub(crate) enum AppEvent {
    Incoming(Target, StreamParts),
    Control(ControlMessage),
}

/// The connection and the streams' handles, under one lock.
pub(crate) struct Core {
    pub conn: Connection,
    handles: HashMap<StreamId, Handle>,
    pub app: VecDeque<AppEvent>,
    /// How the session's data connections ended (see [`crate::data_end`]).
    pub ends: EndBook,
    /// DATA frames waiting in all the streams' readers, ended streams'
    /// included, until each is released or its reader is dropped.
    held: usize,
}

impl Core {
    /// Adds the handle of a stream the connection just created.
    pub fn register(
        &mut self,
        id: StreamId,
        open_reply: Option<oneshot::Sender<Result<(), OpenFailure>>>,
    ) -> StreamParts {
        let (tx, rx) = mpsc::unbounded_channel();
        let signals = Arc::new(Signals::default());
        self.handles.insert(id, Handle { inbound: tx, signals: signals.clone(), open_reply, held: 0 });
        StreamParts { id, rx, signals }
    }

    /// Records that `id`'s reader released one DATA frame (handed it on:
    /// its next `recv`).
    pub fn released(&mut self, id: StreamId) {
        self.held = self.held.saturating_sub(1);
        if let Some(h) = self.handles.get_mut(&id) {
            h.held = h.held.saturating_sub(1);
        }
    }

    /// Records that a reader was dropped with `frames` DATA frames unread.
    pub fn dropped_unread(&mut self, frames: usize) {
        self.held = self.held.saturating_sub(frames);
    }

    /// Tells a stream's halves it ended for `reason`.
    fn fail(&mut self, id: StreamId, reason: &str) {
        if let Some(h) = self.handles.get_mut(&id) {
            fail_handle(h, reason, None);
        }
    }

    /// Hands the connection's events to the streams (stream events) and to
    /// `self.app` (for the application's channel). [`Shared::with`] does
    /// this after every change; a caller that wants `app` filled inside its
    /// change calls it first.
    pub fn dispatch(&mut self) {
        while let Some(ev) = self.conn.poll_event() {
            match ev {
                Event::Data { stream, payload } => {
                    let Some(h) = self.handles.get_mut(&stream) else { continue };
                    let full = if h.held >= MAX_HELD_FRAMES {
                        Some((MAX_HELD_FRAMES, "the stream's reader"))
                    } else if self.held >= MAX_SESSION_HELD_FRAMES {
                        Some((MAX_SESSION_HELD_FRAMES, "the session's readers"))
                    } else {
                        None
                    };
                    if let Some((bound, whose)) = full {
                        let reason =
                            format!("flow control violation: more than {bound} DATA frames waiting for {whose}");
                        self.conn.reset(stream, &reason);
                    } else if h.inbound.send(Inbound::Data(payload)).is_ok() {
                        h.held += 1;
                        self.held += 1;
                    }
                }
                Event::Credit(stream) => {
                    if let Some(h) = self.handles.get(&stream) {
                        h.signals.credit.notify_one();
                    }
                }
                Event::Fin(stream) => {
                    if let Some(h) = self.handles.get(&stream) {
                        let _ = h.inbound.send(Inbound::Fin);
                    }
                }
                Event::Opened(stream) => {
                    if let Some(tx) = self.handles.get_mut(&stream).and_then(|h| h.open_reply.take()) {
                        let _ = tx.send(Ok(()));
                    }
                }
                Event::OpenFailed { stream, failure } => {
                    if let Some(h) = self.handles.get_mut(&stream) {
                        let reason = match &failure {
                            OpenFailure::Refused(r) | OpenFailure::Ended(r) => r.clone(),
                            OpenFailure::TimedOut(d) => format!("no answer from the peer within {d:?}"),
                        };
                        fail_handle(h, &reason, Some(failure));
                    }
                }
                Event::Reset { stream, reason } => self.fail(stream, &reason),
                // Its reader may still hold frames: they count until released.
                Event::Gone(stream) => {
                    self.handles.remove(&stream);
                }
                Event::Incoming { stream, target } => {
                    let parts = self.register(stream, None);
                    self.app.push_back(AppEvent::Incoming(target, parts));
                }
                // Confirmations of data connection ends are the session's
                // own business: recorded at once, never queued for the app.
                Event::Control(ControlMessage::DataConnEnd { conn, sent }) => self.ends.record(conn, sent),
                Event::Control(msg) => self.app.push_back(AppEvent::Control(msg)),
                Event::UnreadableControl(e) => {
                    tracing::warn!("ignoring a control message this version cannot read: {e}")
                }
                Event::Closed(_) => {}
            }
        }
    }
}

fn fail_handle(h: &mut Handle, reason: &str, failure: Option<OpenFailure>) {
    if h.signals.reset.set(reason.to_string()).is_err() {
        return;
    }
    let _ = h.inbound.send(Inbound::Reset(reason.to_string()));
    h.signals.credit.notify_one();
    if let Some(tx) = h.open_reply.take() {
        let _ = tx.send(Err(failure.unwrap_or_else(|| OpenFailure::Ended(reason.to_string()))));
    }
}

/// Everything a session's tasks and handles share.
pub(crate) struct Shared {
    core: Mutex<Core>,
    /// Wakes the writer task: frames wait to be sent.
    pub writer_wake: Notify,
    /// Wakes the timer task: the next deadline moved earlier.
    pub timer_wake: Notify,
    /// Wakes senders waiting for room in the DATA queue.
    pub room: Notify,
    closed_tx: watch::Sender<Option<Arc<str>>>,
}

impl Shared {
    /// Shared state around a fresh connection.
    pub fn new(conn: Connection) -> Self {
        let (closed_tx, _) = watch::channel(None);
        Self {
            core: Mutex::new(Core {
                conn,
                handles: HashMap::new(),
                app: VecDeque::new(),
                ends: EndBook::default(),
                held: 0,
            }),
            writer_wake: Notify::new(),
            timer_wake: Notify::new(),
            room: Notify::new(),
            closed_tx,
        }
    }

    /// Runs `f` on the connection, then hands its events on and wakes
    /// whoever has work.
    pub fn with<R>(&self, f: impl FnOnce(&mut Core) -> R) -> R {
        let mut core = self.core.lock().unwrap();
        let deadline = core.conn.poll_timeout();
        let r = f(&mut core);
        core.dispatch();
        let has_frames = core.conn.has_frames();
        let earlier = match (deadline, core.conn.poll_timeout()) {
            (Some(before), Some(after)) => after < before,
            (None, Some(_)) => true,
            _ => false,
        };
        let closed = match core.conn.closed_reason() {
            Some(r) if self.closed_tx.borrow().is_none() => Some(Arc::<str>::from(r)),
            _ => None,
        };
        drop(core);
        if has_frames {
            self.writer_wake.notify_one();
        }
        if earlier {
            self.timer_wake.notify_one();
        }
        if let Some(reason) = closed {
            self.closed_tx.send_replace(Some(reason));
            self.writer_wake.notify_one();
            self.timer_wake.notify_one();
            self.room.notify_waiters();
        }
        r
    }

    /// Ends the session now: every stream fails. The first reason wins.
    pub fn terminate(&self, reason: &str) {
        self.with(|c| c.conn.terminate(reason));
    }

    /// Resolves once the session has closed.
    pub async fn wait_closed(&self) {
        let mut rx = self.closed_tx.subscribe();
        let _ = rx.wait_for(|c| c.is_some()).await.map(|_| ());
    }

    /// The reason the session closed, if it did.
    pub fn closed_reason(&self) -> Option<Arc<str>> {
        self.closed_tx.borrow().clone()
    }

    /// Aborts a stream from this side: the peer gets RESET (or, for an
    /// unanswered OPEN of the peer, OPEN_REFUSED) and both halves fail.
    pub fn abort(&self, id: StreamId, reason: &str) {
        self.with(|c| c.conn.reset(id, reason));
    }
}
