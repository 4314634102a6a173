//! The reader task: decodes frames from the transport and routes them to
//! streams and to the session's event channel.

use std::{sync::Arc, time::Duration};

use bytes::BytesMut;
use ferry_protocol::{message, stream_id::StreamIds, ControlMessage, Frame, FrameDecoder, StreamId, Target};
use tokio::{io::AsyncReadExt, sync::mpsc};

use crate::{
    session::{IncomingOpen, SessionEvent},
    shared::{Inbound, Shared, StreamState},
    stream::MuxStream,
    transport::BoxRead,
};

const READ_CHUNK: usize = 256 * 1024;

pub(crate) async fn run(shared: Arc<Shared>, mut r: BoxRead, events: mpsc::Sender<SessionEvent>) {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    // Frames that may hold a datagram stay whole: a datagram is one frame.
    let mut decoder = FrameDecoder::default().with_data_fragments(crate::stream::MAX_DATAGRAM as u32);
    let mut router = Router { shared: shared.clone(), events, last_peer_id: 0 };
    loop {
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        let n = tokio::select! {
            n = r.read_buf(&mut buf) => n,
            _ = shared.wait_closed() => return,
        };
        match n {
            Ok(0) => {
                shared.close("the peer closed the transport");
                return;
            }
            Ok(_) => shared.touch(),
            Err(e) => {
                shared.close(&format!("transport read failed: {e}"));
                return;
            }
        }
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    if let Err(e) = router.route(frame).await {
                        protocol_error(&shared, &e).await;
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    protocol_error(&shared, &e.to_string()).await;
                    return;
                }
            }
        }
    }
}

/// Tells the peer why, gives the writer a moment to send it, then closes.
async fn protocol_error(shared: &Shared, reason: &str) {
    let reason = format!("protocol error: {reason}");
    tracing::warn!("closing session: {reason}");
    shared.send_urgent(Frame::GoAway { reason: reason.clone() });
    let _ = tokio::time::timeout(Duration::from_secs(1), shared.wait_closed()).await;
    shared.close(&reason);
}

struct Router {
    shared: Arc<Shared>,
    events: mpsc::Sender<SessionEvent>,
    last_peer_id: StreamId,
}

impl Router {
    /// Handles one frame; an `Err` is a protocol violation that ends the session.
    async fn route(&mut self, frame: Frame) -> Result<(), String> {
        let shared = &self.shared;
        match frame {
            Frame::Data { stream, payload } => {
                // Frames for streams we already dropped are late arrivals: ignore.
                let Some(st) = shared.stream(stream) else { return Ok(()) };
                let accepted = st.recv.lock().unwrap().on_data(payload.len());
                match accepted {
                    Ok(()) => {
                        let _ = st.inbound.send(Inbound::Data(payload));
                    }
                    Err(e) => {
                        tracing::warn!(stream, "resetting stream: {e}");
                        crate::stream::abort(&st, shared, &format!("flow control violation: {e}"));
                    }
                }
            }
            Frame::Window { stream, increment } => {
                if let Some(st) = shared.stream(stream) {
                    let granted = st.send.lock().unwrap().grant(increment);
                    match granted {
                        Ok(()) => st.credit.notify_one(),
                        Err(e) => crate::stream::abort(&st, shared, &format!("flow control violation: {e}")),
                    }
                }
            }
            Frame::Open { stream, target } => self.open(stream, &target).await?,
            Frame::OpenOk { stream } => match shared.stream(stream) {
                Some(st) => {
                    if let Some(tx) = st.open_reply.lock().unwrap().take() {
                        let _ = tx.send(Ok(()));
                    }
                }
                // An OPEN this side cancelled before its answer: the RESET it
                // sent then may have overtaken the OPEN (RESET is urgent, OPEN
                // ordered) and been ignored, leaving the peer's end open with
                // nobody here. Reset it now; a peer that already has is
                // unaffected (it ignores a RESET for a stream it no longer has).
                None if !StreamIds::is_peer_id(shared.role, stream) => shared
                    .send_urgent(Frame::Reset { stream, reason: "no such stream here: its open was cancelled".into() }),
                None => {}
            },
            Frame::OpenRefused { stream, reason } => {
                if let Some(st) = shared.stream(stream) {
                    st.fail(&reason);
                    shared.reap(&st);
                }
            }
            Frame::Fin { stream } => {
                if let Some(st) = shared.stream(stream) {
                    st.flags.lock().unwrap().remote_fin = true;
                    let _ = st.inbound.send(Inbound::Fin);
                    shared.reap(&st);
                }
            }
            Frame::Reset { stream, reason } => {
                if let Some(st) = shared.stream(stream) {
                    st.fail(&format!("peer reset: {reason}"));
                    shared.reap(&st);
                }
            }
            Frame::Control { message } => match message::decode::<ControlMessage>(&message) {
                Ok(msg) => {
                    let _ = self.events.send(SessionEvent::Control(msg)).await;
                }
                Err(e) => tracing::warn!("ignoring control message this version cannot read: {e}"),
            },
            Frame::Ping { nonce } => shared.send_urgent(Frame::Pong { nonce }),
            Frame::Pong { .. } => {}
            Frame::GoAway { reason } => {
                tracing::info!("peer closed the session: {reason}");
                shared.close(&format!("peer closed the session: {reason}"));
            }
        }
        Ok(())
    }

    async fn open(&mut self, stream: StreamId, target: &[u8]) -> Result<(), String> {
        let shared = &self.shared;
        if !StreamIds::is_peer_id(shared.role, stream) || stream <= self.last_peer_id {
            return Err(format!("peer opened stream {stream}, which it may not use"));
        }
        self.last_peer_id = stream;
        let refuse = |reason: String| {
            shared.send_urgent(Frame::OpenRefused { stream, reason });
        };
        if shared.stream_count() >= shared.cfg.max_streams {
            refuse(format!("too many streams (limit {})", shared.cfg.max_streams));
            return Ok(());
        }
        let target = match message::decode::<Target>(target) {
            Ok(t) => t,
            Err(e) => {
                refuse(format!("unsupported open target: {e}"));
                return Ok(());
            }
        };
        let (st, rx) = StreamState::new(stream, shared.cfg.window);
        if shared.register(st.clone()).is_err() {
            return Ok(());
        }
        let open = IncomingOpen::new(target, MuxStream::new(st, rx, shared.clone()), shared.clone());
        let _ = self.events.send(SessionEvent::Open(open)).await;
        Ok(())
    }
}
