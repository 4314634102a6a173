//! The reader task: feeds the bytes read from the transport to the
//! connection and forwards what the application must answer (incoming
//! streams, control messages) to the session's event channel.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::BytesMut;
use tokio::{io::AsyncReadExt, sync::mpsc};

use crate::{
    halves::BoxRead,
    incoming::{IncomingOpen, SessionEvent},
    shared::{AppEvent, Shared},
    stream::MuxStream,
};

const READ_CHUNK: usize = 256 * 1024;

pub(crate) async fn run(shared: Arc<Shared>, mut r: BoxRead, events: mpsc::Sender<SessionEvent>) {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut app = Vec::new();
    loop {
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        let n = tokio::select! {
            n = r.read_buf(&mut buf) => n,
            _ = shared.wait_closed() => return,
        };
        match n {
            Ok(0) => return shared.terminate("the peer closed the transport"),
            Ok(_) => {}
            Err(e) => return shared.terminate(&format!("transport read failed: {e}")),
        }
        let failing = shared.with(|c| {
            c.conn.handle_bytes(&mut buf, Instant::now());
            c.dispatch();
            app.extend(c.app.drain(..));
            c.conn.failing().map(str::to_string)
        });
        for ev in app.drain(..) {
            let ev = match ev {
                AppEvent::Incoming(target, parts) => {
                    let stream = MuxStream::new(parts, shared.clone());
                    SessionEvent::Open(IncomingOpen::new(target, stream, shared.clone()))
                }
                AppEvent::Control(msg) => SessionEvent::Control(msg),
            };
            // A full channel holds the reader back: the application's
            // pace bounds what waits for it.
            let _ = events.send(ev).await;
        }
        if let Some(reason) = failing {
            // The GOAWAY saying why is queued: give the writer a moment to
            // send it, then close.
            tracing::warn!("closing session: {reason}");
            let _ = tokio::time::timeout(Duration::from_secs(1), shared.wait_closed()).await;
            return shared.terminate(&reason);
        }
    }
}
