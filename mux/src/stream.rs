//! Handles of one multiplexed stream: a receiving and a sending half. They
//! drive the connection's stream commands (send, finish, reset, consumed)
//! and wait on the wake-ups the session's tasks give them.

use std::sync::Arc;

use bytes::Bytes;
pub use ferry_protocol::connection::{MAX_DATAGRAM, MAX_DATA_FRAME};
use ferry_protocol::{
    connection::{Blocked, CommandError},
    StreamId,
};
use tokio::sync::mpsc;

use crate::shared::{Inbound, Shared, Signals, StreamParts};

/// Why a stream operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The stream was aborted (by either side).
    #[error("stream reset: {0}")]
    Reset(String),
    /// The whole session is gone.
    #[error("session closed: {0}")]
    SessionClosed(String),
}

fn reset_error(shared: &Shared, reason: String) -> StreamError {
    match shared.closed_reason() {
        Some(r) => StreamError::SessionClosed(r.to_string()),
        None => StreamError::Reset(reason),
    }
}

/// The error for a command the connection did not carry out.
fn command_error(shared: &Shared, signals: &Signals, e: CommandError) -> StreamError {
    match e {
        CommandError::Closed(r) => StreamError::SessionClosed(r),
        _ => reset_error(shared, signals.reset.get().cloned().unwrap_or_else(|| e.to_string())),
    }
}

/// One established stream; split it to read and write concurrently.
pub struct MuxStream {
    reader: StreamReader,
    writer: StreamWriter,
}

impl MuxStream {
    pub(crate) fn new(parts: StreamParts, shared: Arc<Shared>) -> Self {
        let StreamParts { id, rx, signals } = parts;
        Self {
            reader: StreamReader {
                id,
                signals: signals.clone(),
                shared: shared.clone(),
                rx,
                unreleased: None,
                done: false,
            },
            writer: StreamWriter { id, signals, shared, done: false },
        }
    }

    /// The stream's id within its session.
    pub fn id(&self) -> StreamId {
        self.writer.id
    }

    /// Splits into the receiving and the sending half.
    pub fn into_split(self) -> (StreamReader, StreamWriter) {
        (self.reader, self.writer)
    }
}

/// The receiving half: data from the peer, in order, then end-of-stream.
pub struct StreamReader {
    id: StreamId,
    signals: Arc<Signals>,
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<Inbound>,
    /// The bytes of the DATA frame last handed out, whose credit (and place
    /// among the frames the stream may hold) return at the next call.
    unreleased: Option<usize>,
    done: bool,
}

impl StreamReader {
    /// The next chunk from the peer; `Ok(None)` once the peer half-closed.
    ///
    /// Calling `recv` again signals that the previous chunk has been handed
    /// on, which returns its credit to the peer: a consumer that stops
    /// calling stops the peer's sending on this stream only.
    pub async fn recv(&mut self) -> Result<Option<Bytes>, StreamError> {
        self.release();
        let next = self.rx.recv().await;
        self.take(next)
    }

    /// Like [`recv`](Self::recv), but only what has already arrived: `None`
    /// when nothing is waiting. Lets a consumer drain a burst in one go.
    pub fn try_recv(&mut self) -> Option<Result<Option<Bytes>, StreamError>> {
        self.release();
        match self.rx.try_recv() {
            Ok(next) => Some(self.take(Some(next))),
            Err(mpsc::error::TryRecvError::Empty) => None,
            Err(mpsc::error::TryRecvError::Disconnected) => Some(self.take(None)),
        }
    }

    /// Widens this direction's receive window to `window` bytes, once,
    /// granting the peer the difference as credit (UDP flows do: see
    /// [`ferry_protocol::flow::DATAGRAM_WINDOW`]); `false` if it was not
    /// (already widened, the session's budget for it is spent, `window` is
    /// not wider, the stream is not open, or the session has closed).
    pub fn widen_window_to(&self, window: u32) -> bool {
        let id = self.id;
        self.shared.with(|c| {
            let extra = window.saturating_sub(c.conn.config().window);
            extra > 0 && c.conn.widen(id, extra).unwrap_or(false)
        })
    }

    fn take(&mut self, next: Option<Inbound>) -> Result<Option<Bytes>, StreamError> {
        match next {
            Some(Inbound::Data(b)) => {
                self.unreleased = Some(b.len());
                Ok(Some(b))
            }
            Some(Inbound::Fin) => {
                self.done = true;
                Ok(None)
            }
            Some(Inbound::Reset(r)) => {
                self.done = true;
                Err(reset_error(&self.shared, r))
            }
            None => {
                self.done = true;
                let reason = self.signals.reset.get().cloned().unwrap_or_else(|| "stream ended".into());
                Err(reset_error(&self.shared, reason))
            }
        }
    }

    fn release(&mut self) {
        let Some(n) = self.unreleased.take() else { return };
        let id = self.id;
        self.shared.with(|c| {
            if n > 0 {
                c.conn.consumed(id, n);
            }
            c.released(id);
        });
    }
}

impl Drop for StreamReader {
    fn drop(&mut self) {
        // What is left unread no longer counts against the session's bound
        // (closed first: nothing more arrives once counted).
        self.rx.close();
        let mut unread = usize::from(self.unreleased.take().is_some());
        while let Ok(inbound) = self.rx.try_recv() {
            unread += usize::from(matches!(inbound, Inbound::Data(_)));
        }
        if unread > 0 {
            self.shared.with(|c| c.dropped_unread(unread));
        }
        if !self.done {
            self.shared.abort(self.id, "receiver closed");
        }
    }
}

/// The sending half: data to the peer within the stream's credit, then FIN.
pub struct StreamWriter {
    id: StreamId,
    signals: Arc<Signals>,
    shared: Arc<Shared>,
    done: bool,
}

impl StreamWriter {
    fn error(&self, e: CommandError) -> StreamError {
        command_error(&self.shared, &self.signals, e)
    }

    /// Waits until the peer has granted send credit and returns how much.
    pub async fn credit(&self) -> Result<usize, StreamError> {
        loop {
            let notified = self.signals.credit.notified();
            let id = self.id;
            let avail = self.shared.with(|c| c.conn.send_credit(id)).map_err(|e| self.error(e))?;
            if avail > 0 {
                return Ok(avail.min(usize::MAX as u64) as usize);
            }
            notified.await;
        }
    }

    /// Sends `data`, waiting for credit and for room in the session's queue
    /// as needed.
    pub async fn send(&mut self, mut data: Bytes) -> Result<(), StreamError> {
        let id = self.id;
        while !data.is_empty() {
            let credit = self.signals.credit.notified();
            match self.shared.with(|c| c.conn.send(id, &mut data)).map_err(|e| self.error(e))? {
                Ok(_) => {}
                Err(Blocked::Credit) => credit.await,
                Err(Blocked::Queue) => {
                    let room = self.shared.room.notified();
                    tokio::pin!(room);
                    room.as_mut().enable();
                    if !self.shared.with(|c| c.conn.has_data_room()) && self.shared.closed_reason().is_none() {
                        room.await;
                    }
                }
            }
        }
        Ok(())
    }

    /// Sends `datagram` as exactly one DATA frame if that can be done now:
    /// with enough credit and room in the session's datagram queue (apart
    /// from byte streams' DATA). Returns `Ok(false)` when the
    /// datagram was dropped instead: datagrams never wait.
    pub fn try_send_datagram(&mut self, datagram: Bytes) -> Result<bool, StreamError> {
        let id = self.id;
        self.shared.with(|c| c.conn.send_datagram(id, datagram)).map_err(|e| self.error(e))
    }

    /// Half-closes: tells the peer no more data follows.
    pub async fn finish(mut self) -> Result<(), StreamError> {
        self.done = true;
        let id = self.id;
        self.shared.with(|c| c.conn.finish(id)).map_err(|e| self.error(e))
    }

    /// Aborts the stream in both directions.
    pub fn reset(mut self, reason: &str) {
        self.done = true;
        self.shared.abort(self.id, reason);
    }
}

impl Drop for StreamWriter {
    fn drop(&mut self) {
        if !self.done {
            self.shared.abort(self.id, "sender dropped");
        }
    }
}
