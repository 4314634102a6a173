//! The writer task: takes batches of frames from the connection and sends
//! each with vectored writes, so stream payloads reach the transport
//! without a copy.

use std::{collections::VecDeque, io::IoSlice, sync::Arc};

use bytes::{Bytes, BytesMut};
use ferry_protocol::Frame;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::{halves::BoxWrite, shared::Shared};

/// Upper bounds of one batch.
const BATCH_FRAMES: usize = 256;
const BATCH_BYTES: usize = 1 << 20;
/// Most slices handed to one writev call.
const MAX_IOV: usize = 64;

pub(crate) async fn run(shared: Arc<Shared>, mut w: BoxWrite) {
    let mut heads = BytesMut::with_capacity(16 * 1024);
    let mut chunks: VecDeque<Bytes> = VecDeque::with_capacity(2 * BATCH_FRAMES);
    let mut frames: Vec<Frame> = Vec::with_capacity(BATCH_FRAMES);
    // Once the session has closed nothing more is written: what is still
    // queued belongs to streams that have failed.
    while shared.closed_reason().is_none() {
        let wake = shared.writer_wake.notified();
        let taken = shared.with(|c| c.conn.take_batch(&mut frames, BATCH_FRAMES, BATCH_BYTES));
        if frames.is_empty() {
            wake.await;
            continue;
        }
        if taken.made_room {
            shared.room.notify_waiters();
        }
        for f in frames.drain(..) {
            let (head, payload) = f.into_parts();
            heads.extend_from_slice(&head);
            chunks.push_back(heads.split().freeze());
            if !payload.is_empty() {
                chunks.push_back(payload);
            }
        }
        if heads.capacity() < 4096 {
            heads.reserve(16 * 1024);
        }
        let written = tokio::select! {
            r = async { write_chunks(&mut w, &mut chunks).await?; w.flush().await } => r,
            // A peer that stopped reading must not hold the writer after
            // the session closed (keepalive timeout, the reader's EOF).
            _ = shared.wait_closed() => break,
        };
        if let Err(e) = written {
            shared.terminate(&format!("transport write failed: {e}"));
            break;
        }
        if let Some(reason) = taken.goaway {
            shared.terminate(&reason);
            break;
        }
    }
    let _ = w.shutdown().await;
}

/// Writes every chunk, several per system call.
async fn write_chunks<W: AsyncWrite + Unpin + ?Sized>(w: &mut W, chunks: &mut VecDeque<Bytes>) -> std::io::Result<()> {
    while !chunks.is_empty() {
        let written = {
            let slices: Vec<IoSlice<'_>> = chunks.iter().take(MAX_IOV).map(|c| IoSlice::new(c)).collect();
            w.write_vectored(&slices).await?
        };
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let mut left = written;
        while left > 0 {
            let front = chunks.front_mut().expect("written bytes come from queued chunks");
            if front.len() <= left {
                left -= front.len();
                chunks.pop_front();
            } else {
                let _ = front.split_to(left);
                left = 0;
            }
        }
    }
    Ok(())
}
