//! Dedicated data connections (sans-I/O part).
//!
//! Where the transport can dial more connections (Unix, hybrid vsock, TCP),
//! each forwarded connection may travel on a transport connection of its own
//! instead of as frames on the session: the kernel then does the flow
//! control, and the bytes can move with splice(2). Such a connection opens
//! with a proof that it belongs to a live authenticated session, then the
//! request naming its target; the agent answers with one status byte, and,
//! on refusal, a reason (once connected, it sends that byte with the
//! target's first bytes). After that the connection carries raw bytes both
//! ways, and closing a direction is a half-close.
//!
//! ```text
//!  proof   (80): "FERRYD" | version u16 BE | session id [16] | connection id u64 BE | nonce [16] | mac [32]
//!     mac = HMAC-SHA256(data key, "ferry-data-proof-v2\0" || version || session id || connection id || nonce)
//!  request:      target length u16 BE | postcard Target | mac [32]
//!     mac = HMAC-SHA256(data key, "ferry-data-request-v2\0" || connection id || nonce || target length || target)
//!  answer:       0x00 (connected) | 0x01, reason length u16 BE, UTF-8 reason
//! ```
//!
//! The data key is the session's own ([`crate::keys`]): it never crosses
//! the wire, and dies with the session. The session id only names the
//! session. Each connection id is accepted once ([`ConnIds`]): a recorded
//! hello sent again, whole or spliced onto another request, is refused.
//! The proof and the request are separate so that a connection can be
//! proven before its target is known (kept warm).
//!
//! Each side confirms, on the session, how its half of the connection
//! ended ([`crate::ControlMessage::DataConnEnd`], naming the connection
//! id): an EOF on the data connection is a clean end only with that
//! confirmation, since over TCP (unlike a Unix socket) the death of the far
//! process looks exactly like its half-close. That word also retires the id.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{
    keys::{Key, SessionId, SESSION_ID_LEN},
    message, Target,
};

/// Magic of a data connection (the session's hello starts `FERRY\0`).
pub const DATA_MAGIC: [u8; 6] = *b"FERRYD";

/// Length of a data connection's nonce.
pub const DATA_NONCE_LEN: usize = 16;
/// Length of each MAC.
pub const MAC_LEN: usize = 32;
/// Length of the proof, magic included.
pub const PROOF_LEN: usize = 6 + 2 + SESSION_ID_LEN + 8 + DATA_NONCE_LEN + MAC_LEN;

/// Longest the agent waits for the request of a proven connection (one
/// kept warm by the host before a client came).
pub const WARM_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// Largest encoded target accepted.
pub const MAX_TARGET_LEN: usize = 1024;

/// Status byte: the agent reached the target.
pub const CONNECTED: u8 = 0;
/// Status byte: the agent could not reach the target; a reason follows.
pub const REFUSED: u8 = 1;

const PROOF_LABEL: &[u8] = b"ferry-data-proof-v2\0";
const REQUEST_LABEL: &[u8] = b"ferry-data-request-v2\0";

/// The proof that opens a data connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataProof {
    /// The protocol version the session negotiated.
    pub version: u16,
    /// The session the connection belongs to.
    pub session: SessionId,
    /// The connection's id within its session (single-use).
    pub conn: u64,
    /// Fresh randomness of the dialer.
    pub nonce: [u8; DATA_NONCE_LEN],
}

/// A data-connection opening that is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataHelloError {
    /// Not a data connection.
    #[error("not a ferry data connection (bad magic)")]
    BadMagic,
    /// A version this build does not speak.
    #[error(
        "data connection of protocol v{0}; this build speaks v{min} to v{ours}",
        min = crate::handshake::MIN_COMPATIBLE_VERSION,
        ours = crate::PROTOCOL_VERSION
    )]
    Version(u16),
    /// The target length is over the limit.
    #[error("data connection target of {0} bytes exceeds the limit")]
    TargetTooLong(usize),
    /// The target does not decode.
    #[error("data connection target: {0}")]
    Target(String),
    /// A MAC does not verify: no live session of this agent made it.
    #[error("data connection proof does not verify")]
    BadMac,
}

fn hmac(key: &Key) -> Hmac<Sha256> {
    <Hmac<Sha256> as Mac>::new_from_slice(&key.0).expect("HMAC takes any key length")
}

impl DataProof {
    fn mac(&self, key: &Key) -> Hmac<Sha256> {
        let mut m = hmac(key);
        m.update(PROOF_LABEL);
        m.update(&self.version.to_be_bytes());
        m.update(&self.session);
        m.update(&self.conn.to_be_bytes());
        m.update(&self.nonce);
        m
    }

    /// The proof's wire form, MAC'd with the session's data key.
    pub fn encode(&self, key: &Key) -> [u8; PROOF_LEN] {
        let mut out = [0u8; PROOF_LEN];
        let mut at = 0;
        for part in [&DATA_MAGIC[..], &self.version.to_be_bytes(), &self.session, &self.conn.to_be_bytes(), &self.nonce]
        {
            out[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        out[at..].copy_from_slice(&self.mac(key).finalize().into_bytes());
        out
    }

    /// Parses a proof, returning it and its MAC (checked against the
    /// named session's key with [`DataProof::verify`]).
    pub fn decode(b: &[u8; PROOF_LEN]) -> Result<(Self, [u8; MAC_LEN]), DataHelloError> {
        if b[..6] != DATA_MAGIC {
            return Err(DataHelloError::BadMagic);
        }
        let version = u16::from_be_bytes([b[6], b[7]]);
        if !(crate::handshake::MIN_COMPATIBLE_VERSION..=crate::PROTOCOL_VERSION).contains(&version) {
            return Err(DataHelloError::Version(version));
        }
        let session = b[8..8 + SESSION_ID_LEN].try_into().expect("session id length");
        let at = 8 + SESSION_ID_LEN;
        let conn = u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        let nonce = b[at + 8..at + 8 + DATA_NONCE_LEN].try_into().expect("nonce length");
        let mac = b[PROOF_LEN - MAC_LEN..].try_into().expect("MAC length");
        Ok((Self { version, session, conn, nonce }, mac))
    }

    /// Checks (in constant time) the proof's MAC against `key`.
    pub fn verify(&self, key: &Key, mac: &[u8; MAC_LEN]) -> bool {
        self.mac(key).verify_slice(mac).is_ok()
    }

    fn request_mac(&self, key: &Key, target: &[u8]) -> Hmac<Sha256> {
        let mut m = hmac(key);
        m.update(REQUEST_LABEL);
        m.update(&self.conn.to_be_bytes());
        m.update(&self.nonce);
        m.update(&(target.len() as u16).to_be_bytes());
        m.update(target);
        m
    }

    /// The request for `target` that follows this proof.
    pub fn encode_request(&self, key: &Key, target: &Target) -> Vec<u8> {
        let t = message::encode(target);
        let mut out = Vec::with_capacity(2 + t.len() + MAC_LEN);
        out.extend_from_slice(&(t.len() as u16).to_be_bytes());
        out.extend_from_slice(&t);
        out.extend_from_slice(&self.request_mac(key, &t).finalize().into_bytes());
        out
    }

    /// How many bytes follow a request's 2-byte length field (the target
    /// and its MAC).
    pub fn request_rest_len(len: [u8; 2]) -> Result<usize, DataHelloError> {
        let len = u16::from_be_bytes(len) as usize;
        if len > MAX_TARGET_LEN {
            return Err(DataHelloError::TargetTooLong(len));
        }
        Ok(len + MAC_LEN)
    }

    /// Checks the request's MAC (target bytes then MAC, as
    /// [`DataProof::request_rest_len`] counted them) and decodes its target.
    pub fn open_request(&self, key: &Key, rest: &[u8]) -> Result<Target, DataHelloError> {
        let split = rest.len().checked_sub(MAC_LEN).ok_or(DataHelloError::BadMac)?;
        let (target, mac) = rest.split_at(split);
        self.request_mac(key, target).verify_slice(mac).map_err(|_| DataHelloError::BadMac)?;
        message::decode(target).map_err(|e| DataHelloError::Target(e.to_string()))
    }
}

/// Encodes a refusal answer.
pub fn refusal(reason: &str) -> Vec<u8> {
    let r = &reason.as_bytes()[..reason.len().min(crate::frame::MAX_REASON_LEN)];
    let mut out = vec![REFUSED];
    out.extend_from_slice(&(r.len() as u16).to_be_bytes());
    out.extend_from_slice(r);
    out
}

/// The connection ids a session has used: each is accepted once. The
/// dialer numbers its connections upwards from 1; ids may arrive somewhat
/// out of order, so the last [`ConnIds::WINDOW`] below the highest are
/// remembered one by one and everything older is refused. An id is also
/// used up when the dialer's word on how it ended arrives
/// ([`ConnIds::retire`]), whether or not its hello ever arrived: a hello
/// held back on the way is good at most until its own connection ends.
#[derive(Debug, Clone)]
pub struct ConnIds {
    /// The highest id used so far (0: none).
    highest: u64,
    /// Bit `i`: id `highest - i` is used.
    seen: [u64; (Self::WINDOW / 64) as usize],
}

/// Why a connection id was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnIdError {
    /// The id was used already (a replay).
    #[error("data connection id {0} was used already (a replay)")]
    Used(u64),
    /// The id is older than the window (a replay, or a hello held back).
    #[error("data connection id {0} is too old")]
    Stale(u64),
}

impl Default for ConnIds {
    fn default() -> Self {
        Self { highest: 0, seen: [0; (Self::WINDOW / 64) as usize] }
    }
}

impl ConnIds {
    /// How far below the highest id single ids are remembered.
    pub const WINDOW: u64 = 4096;

    /// Marks `id` used; an error if it was used or is too old.
    pub fn accept(&mut self, id: u64) -> Result<(), ConnIdError> {
        if id == 0 {
            return Err(ConnIdError::Stale(id));
        }
        if id > self.highest {
            self.shift(id - self.highest);
            self.highest = id;
            self.set(0);
            return Ok(());
        }
        let back = self.highest - id;
        if back >= Self::WINDOW {
            return Err(ConnIdError::Stale(id));
        }
        if self.get(back) {
            return Err(ConnIdError::Used(id));
        }
        self.set(back);
        Ok(())
    }

    /// Marks `id` used, if it is not already (its connection ended). An id
    /// already used or too old needs nothing more, so the error of
    /// [`ConnIds::accept`] is of no interest here.
    pub fn retire(&mut self, id: u64) {
        let _ = self.accept(id);
    }

    fn get(&self, back: u64) -> bool {
        self.seen[(back / 64) as usize] & (1 << (back % 64)) != 0
    }

    fn set(&mut self, back: u64) {
        self.seen[(back / 64) as usize] |= 1 << (back % 64);
    }

    /// Moves the window up by `by` ids.
    fn shift(&mut self, by: u64) {
        if by >= Self::WINDOW {
            self.seen = [0; (Self::WINDOW / 64) as usize];
            return;
        }
        let (words, bits) = ((by / 64) as usize, (by % 64) as u32);
        let n = self.seen.len();
        for i in (0..n).rev() {
            let from = i.checked_sub(words);
            let hi = from.map(|f| self.seen[f] << bits).unwrap_or(0);
            let lo = match (from.and_then(|f| f.checked_sub(1)), bits) {
                (Some(f), b) if b > 0 => self.seen[f] >> (64 - b),
                _ => 0,
            };
            self.seen[i] = hi | lo;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{auth::Secret, keys::SessionKeys, keys::Transcript, Hello, Role};
    use proptest::prelude::*;

    fn keys() -> SessionKeys {
        let t =
            Transcript::new(&Hello::ours(Role::Host).encode(), &Hello::ours(Role::Agent).encode(), &[1; 32], &[2; 32]);
        SessionKeys::derive(Some(&Secret::generate().unwrap()), &t)
    }

    fn proof(k: &SessionKeys, conn: u64) -> DataProof {
        DataProof { version: crate::PROTOCOL_VERSION, session: k.session_id, conn, nonce: [9; DATA_NONCE_LEN] }
    }

    #[test]
    fn round_trip_and_verify() {
        let k = keys();
        let p = proof(&k, 7);
        let (back, mac) = DataProof::decode(&p.encode(&k.data)).unwrap();
        assert_eq!(back, p);
        assert!(back.verify(&k.data, &mac));
        assert!(!back.verify(&keys().data, &mac), "another session's key");
        let target = Target::Tcp("[::1]:8080".parse().unwrap());
        let req = p.encode_request(&k.data, &target);
        let rest = DataProof::request_rest_len([req[0], req[1]]).unwrap();
        assert_eq!(rest, req.len() - 2);
        assert_eq!(p.open_request(&k.data, &req[2..]).unwrap(), target);
    }

    #[test]
    fn any_changed_byte_fails_the_macs() {
        let k = keys();
        let p = proof(&k, 7);
        let wire = p.encode(&k.data);
        for i in 6..PROOF_LEN {
            let mut bad = wire;
            bad[i] ^= 1;
            if let Ok((q, mac)) = DataProof::decode(&bad) {
                assert!(!q.verify(&k.data, &mac), "byte {i}");
            }
        }
        let req = p.encode_request(&k.data, &Target::Unix("/run/docker.sock".into()));
        for i in 2..req.len() {
            let mut bad = req.clone();
            bad[i] ^= 1;
            assert!(p.open_request(&k.data, &bad[2..]).is_err(), "request byte {i}");
        }
        // A request spliced onto another connection's proof fails.
        let other = proof(&k, 8);
        assert_eq!(other.open_request(&k.data, &req[2..]), Err(DataHelloError::BadMac));
    }

    #[test]
    fn rejects_garbage_versions_and_oversized_targets() {
        let mut b = [0u8; PROOF_LEN];
        assert_eq!(DataProof::decode(&b), Err(DataHelloError::BadMagic));
        b[..6].copy_from_slice(&DATA_MAGIC);
        b[7] = 9;
        assert_eq!(DataProof::decode(&b), Err(DataHelloError::Version(9)));
        b[7] = 1;
        assert_eq!(DataProof::decode(&b), Err(DataHelloError::Version(1)), "version 1's bearer tokens are refused");
        assert!(matches!(DataProof::request_rest_len([0xff, 0xff]), Err(DataHelloError::TargetTooLong(_))));
        let k = keys();
        assert_eq!(proof(&k, 1).open_request(&k.data, &[1, 2]), Err(DataHelloError::BadMac));
    }

    #[test]
    fn conn_ids_are_single_use() {
        let mut ids = ConnIds::default();
        assert_eq!(ids.accept(0), Err(ConnIdError::Stale(0)));
        ids.accept(1).unwrap();
        assert_eq!(ids.accept(1), Err(ConnIdError::Used(1)));
        ids.accept(3).unwrap();
        ids.accept(2).unwrap();
        assert_eq!(ids.accept(2), Err(ConnIdError::Used(2)));
        ids.retire(5);
        assert_eq!(ids.accept(5), Err(ConnIdError::Used(5)), "retired by its end");
        ids.accept(4).unwrap();
        ids.accept(3 + ConnIds::WINDOW + 70).unwrap();
        assert_eq!(ids.accept(4), Err(ConnIdError::Stale(4)));
    }

    proptest! {
        /// Against a plain set: an id is accepted exactly when it is new
        /// and within the window of the highest so far.
        #[test]
        fn conn_ids_match_a_set(ops in proptest::collection::vec(1u64..10_000, 1..400)) {
            let mut ids = ConnIds::default();
            let mut used = std::collections::BTreeSet::new();
            let mut highest = 0;
            for id in ops {
                let expect = if used.contains(&id) {
                    Err(ConnIdError::Used(id))
                } else if id + ConnIds::WINDOW <= highest {
                    Err(ConnIdError::Stale(id))
                } else {
                    Ok(())
                };
                let got = ids.accept(id);
                // An id that is both used and stale may be reported as either.
                if used.contains(&id) && id + ConnIds::WINDOW <= highest {
                    prop_assert!(got.is_err());
                } else {
                    prop_assert_eq!(got, expect);
                }
                if got.is_ok() {
                    used.insert(id);
                    highest = highest.max(id);
                }
            }
        }
    }
}
