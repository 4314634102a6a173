//! The writer task: drains queued frames and sends them in batches with
//! vectored writes, so stream payloads reach the transport without a copy.

use std::{collections::VecDeque, io::IoSlice, sync::Arc};

use bytes::{Bytes, BytesMut};
use ferry_protocol::Frame;
use tokio::{
    io::{AsyncWrite, AsyncWriteExt},
    sync::mpsc,
};

use crate::{shared::Shared, transport::BoxWrite};

/// Upper bounds of one batch.
const BATCH_FRAMES: usize = 256;
const BATCH_BYTES: usize = 1 << 20;
/// Most slices handed to one writev call.
const MAX_IOV: usize = 64;

pub(crate) async fn run(
    shared: Arc<Shared>,
    mut urgent: mpsc::UnboundedReceiver<Frame>,
    mut ordered: mpsc::Receiver<Frame>,
    mut w: BoxWrite,
) {
    let mut heads = BytesMut::with_capacity(16 * 1024);
    let mut chunks: VecDeque<Bytes> = VecDeque::with_capacity(2 * BATCH_FRAMES);
    loop {
        let first = tokio::select! {
            biased;
            f = urgent.recv() => f.inspect(|f| unqueue(&shared, f)),
            f = ordered.recv() => f,
            _ = shared.wait_closed() => None,
        };
        let Some(first) = first else { break };
        let mut batch = Batch { heads: &mut heads, chunks: &mut chunks, bytes: 0, goaway: None };
        batch.push(first);
        let mut n = 1;
        while n < BATCH_FRAMES && batch.bytes < BATCH_BYTES && batch.goaway.is_none() {
            let next = match urgent.try_recv() {
                Ok(f) => {
                    unqueue(&shared, &f);
                    f
                }
                Err(_) => match ordered.try_recv() {
                    Ok(f) => f,
                    Err(_) => break,
                },
            };
            batch.push(next);
            n += 1;
        }
        let goaway = batch.goaway.take();
        if heads.capacity() < 4096 {
            heads.reserve(16 * 1024);
        }
        if let Err(e) = write_chunks(&mut w, &mut chunks).await.and(w.flush().await) {
            shared.close(&format!("transport write failed: {e}"));
            break;
        }
        if let Some(reason) = goaway {
            shared.close(&reason);
            break;
        }
    }
    let _ = w.shutdown().await;
}

/// The frames of one write, as header and payload slices.
/// Takes an urgent frame off the queue's byte count.
fn unqueue(shared: &Shared, f: &Frame) {
    shared.urgent_bytes.fetch_sub(crate::shared::queued_size(f), std::sync::atomic::Ordering::Relaxed);
}

struct Batch<'a> {
    heads: &'a mut BytesMut,
    chunks: &'a mut VecDeque<Bytes>,
    bytes: usize,
    goaway: Option<String>,
}

impl Batch<'_> {
    fn push(&mut self, f: Frame) {
        if let Frame::GoAway { reason } = &f {
            self.goaway = Some(reason.clone());
        }
        let (head, payload) = f.into_parts();
        self.heads.extend_from_slice(&head);
        self.chunks.push_back(self.heads.split().freeze());
        self.bytes += head.len() + payload.len();
        if !payload.is_empty() {
            self.chunks.push_back(payload);
        }
    }
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
