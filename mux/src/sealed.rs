//! The tokio side of sealed records ([`ferry_protocol::seal`]): a reader
//! and a writer that wrap a transport's halves, so that the session above
//! reads and writes plain bytes while only records cross the network.

use std::{
    io::{self, IoSlice},
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::{Buf, BytesMut};
use ferry_protocol::{
    keys::Key,
    seal::{Opener, Sealer, MAX_RECORD},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::halves::{BoxRead, BoxWrite};

/// How much ciphertext is read from the transport at a time.
const READ_CHUNK: usize = 256 * 1024;

/// Opens the records read from a transport.
pub struct SealedReader {
    inner: BoxRead,
    opener: Opener,
    /// Ciphertext read but not yet opened.
    raw: BytesMut,
    /// Plaintext opened but not yet read.
    plain: BytesMut,
}

impl SealedReader {
    /// Wraps `inner`, whose records are sealed with `key`.
    pub fn new(inner: BoxRead, key: &Key) -> Self {
        Self { inner, opener: Opener::new(key), raw: BytesMut::with_capacity(READ_CHUNK), plain: BytesMut::new() }
    }
}

impl AsyncRead for SealedReader {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.plain.is_empty() {
                let n = this.plain.len().min(buf.remaining());
                buf.put_slice(&this.plain[..n]);
                this.plain.advance(n);
                return Poll::Ready(Ok(()));
            }
            match this.opener.open(&mut this.raw) {
                Ok(Some(p)) => {
                    this.plain = p;
                    continue;
                }
                Ok(None) => {}
                Err(e) => return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e))),
            }
            if this.raw.capacity() - this.raw.len() < READ_CHUNK / 4 {
                this.raw.reserve(READ_CHUNK);
            }
            let n = ready!(read_into_spare(this.inner.as_mut(), cx, &mut this.raw))?;
            if n == 0 {
                if this.raw.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the sealed session was cut in the middle of a record",
                )));
            }
        }
    }
}

/// Reads into the spare capacity of `buf` (what `tokio_util::io::poll_read_buf` does).
fn read_into_spare(
    r: Pin<&mut (dyn AsyncRead + Send)>,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    let spare = buf.spare_capacity_mut();
    let mut rb = ReadBuf::uninit(spare);
    ready!(r.poll_read(cx, &mut rb))?;
    let n = rb.filled().len();
    // SAFETY: `poll_read` initialised the first `n` bytes of the spare
    // capacity (ReadBuf tracks what it filled), so they may become part of
    // the buffer.
    unsafe { buf.set_len(buf.len() + n) };
    Poll::Ready(Ok(n))
}

/// Seals what is written into records and sends them on a transport.
pub struct SealedWriter {
    inner: BoxWrite,
    sealer: Sealer,
    /// Sealed records not yet written to the transport (at most one
    /// record's worth is accepted ahead of the transport).
    out: BytesMut,
}

impl SealedWriter {
    /// Wraps `inner`, sealing with `key`.
    pub fn new(inner: BoxWrite, key: &Key) -> Self {
        Self { inner, sealer: Sealer::new(key), out: BytesMut::with_capacity(MAX_RECORD + 64) }
    }

    /// Writes out the pending records.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let n = ready!(self.inner.as_mut().poll_write(cx, &self.out))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for SealedWriter {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        // One record of up to MAX_RECORD bytes, gathered from the slices.
        let start = this.sealer.begin(&mut this.out);
        let mut taken = 0;
        for b in bufs {
            let n = b.len().min(MAX_RECORD - taken);
            this.out.extend_from_slice(&b[..n]);
            taken += n;
            if taken == MAX_RECORD {
                break;
            }
        }
        if taken == 0 {
            this.out.clear();
            return Poll::Ready(Ok(0));
        }
        this.sealer.finish(&mut this.out, start).map_err(io::Error::other)?;
        // Start sending at once; what the transport does not take now goes
        // out with the next write or the flush.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        self.inner.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        self.inner.as_mut().poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::{auth::Secret, keys::SessionKeys, keys::Transcript, Hello, Role};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn key() -> Key {
        let t =
            Transcript::new(&Hello::ours(Role::Host).encode(), &Hello::ours(Role::Agent).encode(), &[1; 32], &[2; 32]);
        SessionKeys::derive(Some(&Secret::generate().unwrap()), &t).host_to_agent
    }

    #[tokio::test]
    async fn bytes_cross_sealed_and_a_flipped_byte_is_an_error() {
        let k = key();
        let (a, b) = tokio::io::duplex(1 << 16);
        let (_ar, aw) = tokio::io::split(a);
        let (br, _bw) = tokio::io::split(b);
        let mut w = SealedWriter::new(Box::pin(aw), &k);
        let mut r = SealedReader::new(Box::pin(br), &k);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let send = data.clone();
        let writer = tokio::spawn(async move {
            w.write_all_buf(&mut &send[..]).await.unwrap();
            let slices = [IoSlice::new(b"ab"), IoSlice::new(b"cd")];
            assert_eq!(w.write_vectored(&slices).await.unwrap(), 4, "slices gather into one record");
            w.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(&got[..data.len()], &data[..]);
        assert_eq!(&got[data.len()..], b"abcd");

        // The same stream with one byte flipped on the way.
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut w = SealedWriter::new(Box::pin(a), &k);
        w.write_all(b"a command the attacker would like to change").await.unwrap();
        w.flush().await.unwrap();
        let mut b = b;
        let mut wire = vec![0u8; 4 + 43 + 16];
        b.read_exact(&mut wire).await.unwrap();
        wire[10] ^= 1;
        let mut r = SealedReader::new(Box::pin(std::io::Cursor::new(wire)), &k);
        let err = r.read_to_end(&mut Vec::new()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
