//! Sealed records (sans-I/O part): on a transport that is not private to
//! the two peers (TCP), every session byte after the handshake travels in
//! AES-256-GCM records, one key per direction ([`crate::keys`]).
//!
//! ```text
//!  record = length u32 BE | ciphertext | tag [16]
//!     length = bytes of ciphertext and tag (at most MAX_RECORD + 16)
//!     nonce  = 0u32 || record number u64 BE   (counts from 0 in each direction)
//!     AAD    = the length field
//! ```
//!
//! The implicit record number makes a replayed, dropped or reordered
//! record fail authentication, as does any flipped bit; the reader then
//! closes the session. A session cut between records is a transport EOF,
//! which the session treats as its end (every clean end is announced by a
//! GOAWAY inside the sealed stream). The AEAD is RustCrypto's `aes-gcm`.

use aes_gcm::{
    aead::{AeadInPlace, KeyInit},
    Aes256Gcm, Nonce, Tag,
};
use bytes::{Buf, BufMut, BytesMut};

use crate::keys::Key;

/// Most plaintext bytes in one record.
pub const MAX_RECORD: usize = 64 * 1024;
/// Length of the authentication tag.
pub const TAG_LEN: usize = 16;
/// Length of a record's header.
pub const HEADER_LEN: usize = 4;

/// Why a record could not be opened (the session must close).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The length field is out of bounds.
    #[error("sealed record of {0} bytes is out of bounds")]
    BadLength(usize),
    /// The record was forged, modified, replayed or reordered.
    #[error("sealed record failed authentication (modified, replayed or reordered on the way)")]
    Forged,
    /// 2^64 records in one direction: never in practice, but never wraps.
    #[error("record numbers exhausted; the session must be re-established")]
    Exhausted,
}

fn nonce(seq: u64) -> Nonce<aes_gcm::aead::consts::U12> {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&seq.to_be_bytes());
    n.into()
}

/// Seals one direction's records.
pub struct Sealer {
    cipher: Aes256Gcm,
    seq: u64,
}

impl Sealer {
    /// A sealer starting at record 0.
    pub fn new(key: &Key) -> Self {
        Self { cipher: Aes256Gcm::new(&key.0.into()), seq: 0 }
    }

    /// Reserves a record's header at the end of `out`; append the
    /// plaintext (at most [`MAX_RECORD`] bytes) and then call
    /// [`Sealer::finish`] with the returned start.
    pub fn begin(&self, out: &mut BytesMut) -> usize {
        let start = out.len();
        out.put_u32(0);
        start
    }

    /// Seals the plaintext appended since [`Sealer::begin`] in place.
    pub fn finish(&mut self, out: &mut BytesMut, start: usize) -> Result<(), SealError> {
        let body = start + HEADER_LEN;
        let len = out.len() - body;
        assert!(len <= MAX_RECORD, "a record holds at most MAX_RECORD bytes");
        let seq = self.seq;
        self.seq = self.seq.checked_add(1).ok_or(SealError::Exhausted)?;
        let header = ((len + TAG_LEN) as u32).to_be_bytes();
        out[start..body].copy_from_slice(&header);
        let tag = self
            .cipher
            .encrypt_in_place_detached(&nonce(seq), &header, &mut out[body..])
            .map_err(|_| SealError::BadLength(len))?;
        out.extend_from_slice(&tag);
        Ok(())
    }

    /// Seals `plaintext` (at most [`MAX_RECORD`] bytes) as one record at the end of `out`.
    pub fn seal(&mut self, plaintext: &[u8], out: &mut BytesMut) -> Result<(), SealError> {
        let start = self.begin(out);
        out.extend_from_slice(plaintext);
        self.finish(out, start)
    }
}

/// Opens one direction's records, in order.
pub struct Opener {
    cipher: Aes256Gcm,
    seq: u64,
}

impl Opener {
    /// An opener expecting record 0 first.
    pub fn new(key: &Key) -> Self {
        Self { cipher: Aes256Gcm::new(&key.0.into()), seq: 0 }
    }

    /// Takes the first complete record off the front of `input` and returns
    /// its plaintext; `Ok(None)` while the record is incomplete. An error
    /// is final: the session must close.
    pub fn open(&mut self, input: &mut BytesMut) -> Result<Option<BytesMut>, SealError> {
        if input.len() < HEADER_LEN {
            return Ok(None);
        }
        let header: [u8; HEADER_LEN] = input[..HEADER_LEN].try_into().expect("header length");
        let len = u32::from_be_bytes(header) as usize;
        if !(TAG_LEN..=MAX_RECORD + TAG_LEN).contains(&len) {
            return Err(SealError::BadLength(len));
        }
        if input.len() < HEADER_LEN + len {
            input.reserve(HEADER_LEN + len - input.len());
            return Ok(None);
        }
        input.advance(HEADER_LEN);
        let mut body = input.split_to(len);
        let tag = Tag::clone_from_slice(&body[len - TAG_LEN..]);
        body.truncate(len - TAG_LEN);
        let seq = self.seq;
        self.cipher.decrypt_in_place_detached(&nonce(seq), &header, &mut body, &tag).map_err(|_| SealError::Forged)?;
        self.seq = self.seq.checked_add(1).ok_or(SealError::Exhausted)?;
        Ok(Some(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{auth::Secret, keys::SessionKeys, keys::Transcript, Hello, Role};

    fn key() -> Key {
        let t =
            Transcript::new(&Hello::ours(Role::Host).encode(), &Hello::ours(Role::Agent).encode(), &[1; 32], &[2; 32]);
        SessionKeys::derive(Some(&Secret::generate().unwrap()), &t).host_to_agent
    }

    fn records(s: &mut Sealer, msgs: &[&[u8]]) -> Vec<BytesMut> {
        msgs.iter()
            .map(|m| {
                let mut out = BytesMut::new();
                s.seal(m, &mut out).unwrap();
                out
            })
            .collect()
    }

    #[test]
    fn round_trip_in_pieces() {
        let k = key();
        let (mut s, mut o) = (Sealer::new(&k), Opener::new(&k));
        let mut wire = BytesMut::new();
        for r in records(&mut s, &[b"hello", b"", &[7u8; MAX_RECORD]]) {
            wire.extend_from_slice(&r);
        }
        let mut input = BytesMut::new();
        let mut got = Vec::new();
        for b in wire.chunks(1000) {
            input.extend_from_slice(b);
            while let Some(p) = o.open(&mut input).unwrap() {
                got.push(p.to_vec());
            }
        }
        assert_eq!(got, vec![b"hello".to_vec(), vec![], vec![7u8; MAX_RECORD]]);
        assert!(input.is_empty());
    }

    #[test]
    fn any_flipped_bit_fails() {
        let k = key();
        let r = records(&mut Sealer::new(&k), &[b"some session bytes"]).remove(0);
        for i in 0..r.len() {
            let mut o = Opener::new(&k);
            let mut bad = r.clone();
            bad[i] ^= 0x10;
            // A flipped length bit is out of bounds, short, or fails the tag.
            assert!(!matches!(o.open(&mut bad), Ok(Some(_))), "byte {i}");
        }
    }

    #[test]
    fn replayed_reordered_or_dropped_records_fail() {
        let k = key();
        let rs = records(&mut Sealer::new(&k), &[b"one", b"two", b"three"]);
        let mut o = Opener::new(&k);
        assert_eq!(o.open(&mut rs[0].clone()).unwrap().unwrap().as_ref(), b"one");
        assert_eq!(o.open(&mut rs[0].clone()), Err(SealError::Forged), "replay");
        let mut o = Opener::new(&k);
        assert_eq!(o.open(&mut rs[1].clone()), Err(SealError::Forged), "reorder or drop");
        let mut o = Opener::new(&k);
        o.open(&mut rs[0].clone()).unwrap();
        assert_eq!(o.open(&mut rs[2].clone()), Err(SealError::Forged), "a dropped record");
    }

    #[test]
    fn lengths_are_bounded_before_anything_is_buffered() {
        let mut o = Opener::new(&key());
        let mut huge = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        assert!(matches!(o.open(&mut huge), Err(SealError::BadLength(_))));
        let mut short = BytesMut::from(&3u32.to_be_bytes()[..]);
        assert!(matches!(o.open(&mut short), Err(SealError::BadLength(3))));
    }

    #[test]
    fn the_directions_do_not_open_each_other() {
        let t =
            Transcript::new(&Hello::ours(Role::Host).encode(), &Hello::ours(Role::Agent).encode(), &[1; 32], &[2; 32]);
        let k = SessionKeys::derive(Some(&Secret::generate().unwrap()), &t);
        let mut out = BytesMut::new();
        Sealer::new(&k.host_to_agent).seal(b"x", &mut out).unwrap();
        assert_eq!(Opener::new(&k.agent_to_host).open(&mut out), Err(SealError::Forged), "reflection");
    }
}
