//! State shared by a session's tasks and its stream handles.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Instant,
};

use bytes::Bytes;
use ferry_protocol::{
    flow::{RecvWindow, SendWindow},
    stream_id::StreamIds,
    Frame, Role, StreamId,
};
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::session::SessionConfig;

/// What the reader task delivers to a stream's receiving half.
#[derive(Debug)]
pub(crate) enum Inbound {
    Data(Bytes),
    Fin,
    Reset(String),
}

/// Lifecycle flags of one stream.
#[derive(Debug, Default)]
pub(crate) struct StreamFlags {
    /// Why the stream was aborted, if it was.
    pub reset: Option<String>,
    /// We sent FIN.
    pub local_fin: bool,
    /// The peer sent FIN.
    pub remote_fin: bool,
}

/// Per-stream state, shared by the reader task and the stream's halves.
pub(crate) struct StreamState {
    pub id: StreamId,
    pub send: Mutex<SendWindow>,
    pub credit: Notify,
    pub recv: Mutex<RecvWindow>,
    pub inbound: mpsc::UnboundedSender<Inbound>,
    pub open_reply: Mutex<Option<oneshot::Sender<Result<(), String>>>>,
    pub flags: Mutex<StreamFlags>,
}

impl StreamState {
    pub fn new(id: StreamId, window: u32) -> (Arc<Self>, mpsc::UnboundedReceiver<Inbound>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let st = Arc::new(Self {
            id,
            send: Mutex::new(SendWindow::new(window)),
            credit: Notify::new(),
            recv: Mutex::new(RecvWindow::new(window)),
            inbound: tx,
            open_reply: Mutex::new(None),
            flags: Mutex::new(StreamFlags::default()),
        });
        (st, rx)
    }

    /// Marks the stream aborted and wakes everyone waiting on it.
    pub fn fail(&self, reason: &str) {
        {
            let mut f = self.flags.lock().unwrap();
            if f.reset.is_some() {
                return;
            }
            f.reset = Some(reason.to_string());
        }
        let _ = self.inbound.send(Inbound::Reset(reason.to_string()));
        self.credit.notify_one();
        if let Some(tx) = self.open_reply.lock().unwrap().take() {
            let _ = tx.send(Err(reason.to_string()));
        }
    }

    /// Whether nothing more can happen on the stream.
    pub fn is_finished(&self) -> bool {
        let f = self.flags.lock().unwrap();
        f.reset.is_some() || (f.local_fin && f.remote_fin)
    }
}

/// The stream table plus the session's closed state, under one lock so that
/// no stream can be registered after the session closed.
#[derive(Default)]
pub(crate) struct Table {
    pub streams: HashMap<StreamId, Arc<StreamState>>,
    pub closed: Option<Arc<str>>,
}

/// Everything a session's tasks and handles share.
pub(crate) struct Shared {
    pub role: Role,
    pub cfg: SessionConfig,
    pub urgent: mpsc::UnboundedSender<Frame>,
    pub ordered: mpsc::Sender<Frame>,
    pub table: Mutex<Table>,
    pub ids: Mutex<StreamIds>,
    pub closed_tx: watch::Sender<Option<Arc<str>>>,
    pub started: Instant,
    pub last_rx_ms: AtomicU64,
    /// Bytes of frames waiting on the urgent queue (see [`Shared::send_urgent`]).
    pub urgent_bytes: AtomicUsize,
}

impl Shared {
    /// Closes the session: the first reason wins, every stream fails.
    pub fn close(&self, reason: &str) {
        let streams: Vec<_> = {
            let mut t = self.table.lock().unwrap();
            if t.closed.is_some() {
                return;
            }
            t.closed = Some(Arc::from(reason));
            t.streams.drain().map(|(_, s)| s).collect()
        };
        for s in streams {
            s.fail(reason);
        }
        self.closed_tx.send_replace(Some(Arc::from(reason)));
    }

    /// Resolves once the session has closed.
    pub async fn wait_closed(&self) {
        let mut rx = self.closed_tx.subscribe();
        let _ = rx.wait_for(|c| c.is_some()).await.map(|_| ());
    }

    /// The reason the session closed, if it did.
    pub fn closed_reason(&self) -> Option<Arc<str>> {
        self.table.lock().unwrap().closed.clone()
    }

    /// Adds a stream; fails once the session is closed.
    pub fn register(&self, st: Arc<StreamState>) -> Result<(), Arc<str>> {
        let mut t = self.table.lock().unwrap();
        if let Some(r) = &t.closed {
            return Err(r.clone());
        }
        t.streams.insert(st.id, st);
        Ok(())
    }

    /// Looks a stream up by id.
    pub fn stream(&self, id: StreamId) -> Option<Arc<StreamState>> {
        self.table.lock().unwrap().streams.get(&id).cloned()
    }

    /// Drops a stream from the table once it is finished.
    pub fn reap(&self, st: &StreamState) {
        if st.is_finished() {
            self.table.lock().unwrap().streams.remove(&st.id);
        }
    }

    /// Number of live streams.
    pub fn stream_count(&self) -> usize {
        self.table.lock().unwrap().streams.len()
    }

    /// Queues a frame that may overtake stream data (window, ping, reset).
    ///
    /// The queue is bounded in bytes by `max_urgent_bytes`: a peer that
    /// reads nothing while it keeps sending (pings to answer, windows to
    /// grant) or a flood of control messages would otherwise grow it
    /// without end; past the bound the session closes instead.
    pub fn send_urgent(&self, f: Frame) {
        let size = queued_size(&f);
        let queued = self.urgent_bytes.fetch_add(size, Ordering::Relaxed) + size;
        if queued > self.cfg.max_urgent_bytes {
            self.urgent_bytes.fetch_sub(size, Ordering::Relaxed);
            self.close(&format!(
                "the peer reads nothing: {queued} bytes of control frames would be waiting (limit {})",
                self.cfg.max_urgent_bytes
            ));
            return;
        }
        let _ = self.urgent.send(f);
    }

    /// Records that the peer was heard from just now.
    pub fn touch(&self) {
        self.last_rx_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Milliseconds since the peer was last heard from.
    pub fn silence_ms(&self) -> u64 {
        (self.started.elapsed().as_millis() as u64).saturating_sub(self.last_rx_ms.load(Ordering::Relaxed))
    }
}

/// What a frame counts against the urgent queue's bound: its header and
/// payload.
pub(crate) fn queued_size(f: &Frame) -> usize {
    let payload = match f {
        Frame::Data { payload, .. } => payload.len(),
        Frame::Open { target, .. } => target.len(),
        Frame::Control { message } => message.len(),
        Frame::OpenRefused { reason, .. } | Frame::Reset { reason, .. } | Frame::GoAway { reason } => reason.len(),
        Frame::Window { .. } => 4,
        Frame::Ping { .. } | Frame::Pong { .. } => 8,
        Frame::OpenOk { .. } | Frame::Fin { .. } => 0,
    };
    ferry_protocol::frame::HEADER_LEN + payload
}
