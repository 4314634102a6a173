//! Handles of one multiplexed stream: a receiving and a sending half.

use std::sync::Arc;

use bytes::Bytes;
use ferry_protocol::{Frame, StreamId};
use tokio::sync::mpsc;

use crate::shared::{Inbound, Shared, StreamState};

/// Largest DATA payload the sender puts in one frame.
pub const MAX_DATA_FRAME: usize = 256 * 1024;

/// The largest datagram a stream carries: one DATA frame each, never split
/// by the receiver, which passes only larger frames on in fragments.
pub const MAX_DATAGRAM: usize = 65_535;

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

/// One established stream; split it to read and write concurrently.
pub struct MuxStream {
    reader: StreamReader,
    writer: StreamWriter,
}

impl MuxStream {
    pub(crate) fn new(st: Arc<StreamState>, rx: mpsc::UnboundedReceiver<Inbound>, shared: Arc<Shared>) -> Self {
        Self {
            reader: StreamReader { st: st.clone(), shared: shared.clone(), rx, unreleased: 0, done: false },
            writer: StreamWriter { st, shared, done: false },
        }
    }

    /// The stream's id within its session.
    pub fn id(&self) -> StreamId {
        self.writer.st.id
    }

    /// Splits into the receiving and the sending half.
    pub fn into_split(self) -> (StreamReader, StreamWriter) {
        (self.reader, self.writer)
    }
}

/// The receiving half: data from the peer, in order, then end-of-stream.
pub struct StreamReader {
    st: Arc<StreamState>,
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<Inbound>,
    unreleased: usize,
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

    fn take(&mut self, next: Option<Inbound>) -> Result<Option<Bytes>, StreamError> {
        match next {
            Some(Inbound::Data(b)) => {
                self.unreleased = b.len();
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
                Err(reset_error(&self.shared, "stream state dropped".into()))
            }
        }
    }

    fn release(&mut self) {
        if self.unreleased == 0 {
            return;
        }
        let inc = self.st.recv.lock().unwrap().on_consumed(self.unreleased);
        self.unreleased = 0;
        if let Some(increment) = inc {
            self.shared.send_urgent(Frame::Window { stream: self.st.id, increment });
        }
    }
}

impl Drop for StreamReader {
    fn drop(&mut self) {
        if !self.done {
            abort(&self.st, &self.shared, "receiver closed");
        }
    }
}

/// The sending half: data to the peer within the stream's credit, then FIN.
pub struct StreamWriter {
    st: Arc<StreamState>,
    shared: Arc<Shared>,
    done: bool,
}

impl StreamWriter {
    /// Waits until the peer has granted send credit and returns how much.
    pub async fn credit(&self) -> Result<usize, StreamError> {
        loop {
            let notified = self.st.credit.notified();
            {
                if let Some(r) = &self.st.flags.lock().unwrap().reset {
                    return Err(reset_error(&self.shared, r.clone()));
                }
                let avail = self.st.send.lock().unwrap().available();
                if avail > 0 {
                    return Ok(avail.min(usize::MAX as u64) as usize);
                }
            }
            notified.await;
        }
    }

    /// Sends `data`, waiting for credit as needed.
    pub async fn send(&mut self, mut data: Bytes) -> Result<(), StreamError> {
        while !data.is_empty() {
            self.credit().await?;
            let n = self.st.send.lock().unwrap().take(data.len().min(MAX_DATA_FRAME));
            if n == 0 {
                continue;
            }
            let payload = data.split_to(n);
            self.shared
                .ordered
                .send(Frame::Data { stream: self.st.id, payload })
                .await
                .map_err(|_| reset_error(&self.shared, "session writer gone".into()))?;
        }
        Ok(())
    }

    /// Sends `datagram` as exactly one DATA frame if that can be done now:
    /// with enough credit and room in the session's write queue (a quarter
    /// of it is kept for other streams). Returns `Ok(false)` when the
    /// datagram was dropped instead: datagrams never wait.
    pub fn try_send_datagram(&mut self, datagram: Bytes) -> Result<bool, StreamError> {
        if let Some(r) = &self.st.flags.lock().unwrap().reset {
            return Err(reset_error(&self.shared, r.clone()));
        }
        if datagram.len() > MAX_DATAGRAM {
            return Ok(false);
        }
        let ordered = &self.shared.ordered;
        if ordered.capacity() <= ordered.max_capacity() / 4 {
            return Ok(false);
        }
        let Ok(permit) = ordered.try_reserve() else { return Ok(false) };
        {
            let mut send = self.st.send.lock().unwrap();
            if send.available() < datagram.len() as u64 {
                return Ok(false);
            }
            send.take(datagram.len());
        }
        permit.send(Frame::Data { stream: self.st.id, payload: datagram });
        Ok(true)
    }

    /// Half-closes: tells the peer no more data follows.
    pub async fn finish(mut self) -> Result<(), StreamError> {
        self.done = true;
        if let Some(r) = &self.st.flags.lock().unwrap().reset {
            return Err(reset_error(&self.shared, r.clone()));
        }
        self.shared
            .ordered
            .send(Frame::Fin { stream: self.st.id })
            .await
            .map_err(|_| reset_error(&self.shared, "session writer gone".into()))?;
        self.st.flags.lock().unwrap().local_fin = true;
        self.shared.reap(&self.st);
        Ok(())
    }

    /// Aborts the stream in both directions.
    pub fn reset(mut self, reason: &str) {
        self.done = true;
        abort(&self.st, &self.shared, reason);
    }
}

impl Drop for StreamWriter {
    fn drop(&mut self) {
        if !self.done {
            abort(&self.st, &self.shared, "sender dropped");
        }
    }
}

/// Resets a stream from our side unless it is already finished.
pub(crate) fn abort(st: &StreamState, shared: &Shared, reason: &str) {
    if st.is_finished() {
        return;
    }
    st.fail(reason);
    shared.send_urgent(Frame::Reset { stream: st.id, reason: reason.to_string() });
    shared.reap(st);
}
