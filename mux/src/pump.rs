//! Splicing a byte-stream socket with a multiplexed stream, both ways,
//! keeping half-close (FIN travels as FIN) and aborts (RST travels as RESET).

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{
    stream::{MuxStream, StreamError, StreamReader, StreamWriter, MAX_DATA_FRAME},
    traffic::Traffic,
};

/// First read size of a stream; doubled while reads fill it, so idle
/// streams stay small and bulk streams reach [`MAX_DATA_FRAME`].
const FIRST_READ: usize = 16 * 1024;

/// How a pumped connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PumpEnd {
    /// Both directions finished cleanly (FIN each way).
    Closed,
    /// The connection was aborted; the caller should reset its socket so the
    /// client sees the abort rather than a clean close.
    Reset(String),
}

/// Copies `r` into the stream and the stream into `w` until both directions
/// are finished or either side aborts, counting bytes in `traffic`
/// (up: `r` -> stream).
pub async fn pump<R, W>(r: R, w: W, stream: MuxStream, traffic: &Traffic) -> PumpEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (rx, tx) = stream.into_split();
    let up = upstream(r, tx, traffic);
    let down = downstream(w, rx, traffic);
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        let res = tokio::select! {
            r = &mut up, if !up_done => { up_done = true; r }
            r = &mut down, if !down_done => { down_done = true; r }
        };
        if let Err(reason) = res {
            return PumpEnd::Reset(reason);
        }
    }
    PumpEnd::Closed
}

/// Socket -> stream. Reads only as much as the peer has credit for.
async fn upstream<R: AsyncRead + Unpin>(mut r: R, mut tx: StreamWriter, traffic: &Traffic) -> Result<(), String> {
    let mut buf = BytesMut::new();
    let mut chunk = FIRST_READ;
    loop {
        let credit = tx.credit().await.map_err(err_text)?;
        if buf.capacity() < chunk {
            buf.reserve(chunk);
        }
        let limit = credit.min(chunk);
        match r.read_buf(&mut (&mut buf).limit(limit)).await {
            Ok(0) => return tx.finish().await.map_err(err_text),
            Ok(n) => {
                if n == limit && chunk < MAX_DATA_FRAME {
                    chunk *= 2;
                }
                traffic.add_up(n);
                tx.send(buf.split().freeze()).await.map_err(err_text)?;
            }
            Err(e) => {
                let reason = format!("client read failed: {e}");
                tx.reset(&reason);
                return Err(reason);
            }
        }
    }
}

/// Stream -> socket. Returning credit only after each write keeps a slow
/// client's backlog on the peer's side of this stream alone.
async fn downstream<W: AsyncWrite + Unpin>(mut w: W, mut rx: StreamReader, traffic: &Traffic) -> Result<(), String> {
    loop {
        match rx.recv().await {
            Ok(Some(b)) => {
                if let Err(e) = w.write_all(&b).await {
                    // Dropping `rx` unfinished resets the stream.
                    return Err(format!("client write failed: {e}"));
                }
                traffic.add_down(b.len());
            }
            Ok(None) => {
                let _ = w.shutdown().await;
                return Ok(());
            }
            Err(e) => return Err(err_text(e)),
        }
    }
}

fn err_text(e: StreamError) -> String {
    e.to_string()
}

/// Closes a TCP connection with RST (SO_LINGER 0) so that the client sees
/// an abort, e.g. when the guest refused the connection.
pub fn reset_tcp(tcp: tokio::net::TcpStream) {
    if let Ok(std) = tcp.into_std() {
        reset_on_close(&std);
        drop(std);
    }
}

/// Makes the socket's close an abort where it can be one (TCP: RST).
pub(crate) fn reset_on_close(socket: &impl std::os::fd::AsFd) {
    let _ = socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO));
}
