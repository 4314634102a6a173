//! Session authentication (sans-I/O part): each peer proves it holds the
//! per-instance secret with an HMAC-SHA256 over the handshake's
//! [`Transcript`] (both hellos and fresh nonces from both sides).
//!
//! ```text
//!  proof = HMAC-SHA256(secret, "ferry-auth-v2\0" || sender role || transcript)
//! ```
//!
//! The sender's role is inside the MAC, so a proof can never be reflected
//! back to its author; the receiver's fresh nonce makes every proof
//! single-use; the hellos inside the transcript mean a feature bit changed
//! on the way (a downgrade) fails the proof. The exchange itself (host
//! proves first, the agent answers only after checking) is driven by
//! `ferry-mux`; the keys that follow are in [`crate::keys`].

use hmac::{Hmac, Mac};
use sha2::Sha256;

use sha2::Digest;

use crate::{handshake::HELLO_LEN, Role};

/// Length of the shared secret in bytes.
pub const SECRET_LEN: usize = 32;
/// Length of each peer's nonce in bytes.
pub const NONCE_LEN: usize = 32;
/// Length of a proof in bytes.
pub const PROOF_LEN: usize = 32;

const LABEL: &[u8] = b"ferry-auth-v2\0";

/// A fresh random nonce.
pub type Nonce = [u8; NONCE_LEN];

/// The hash of one handshake: both hellos and both nonces, in role order.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Transcript(pub(crate) [u8; 32]);

impl std::fmt::Debug for Transcript {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Transcript(..)")
    }
}

impl Transcript {
    /// Hashes the handshake as the host and the agent each sent it.
    pub fn new(
        host_hello: &[u8; HELLO_LEN],
        agent_hello: &[u8; HELLO_LEN],
        host_nonce: &Nonce,
        agent_nonce: &Nonce,
    ) -> Self {
        let mut h = Sha256::new();
        h.update(b"ferry-transcript-v2\0");
        h.update(host_hello);
        h.update(agent_hello);
        h.update(host_nonce);
        h.update(agent_nonce);
        Self(h.finalize().into())
    }
}

/// Why a secret could not be made or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The text is not 64 hex digits.
    #[error("a ferry secret is {} hex digits; this one is not", SECRET_LEN * 2)]
    Malformed,
    /// The operating system's random source failed.
    #[error("no randomness available: {0}")]
    Random(String),
}

/// The per-instance secret. Its `Debug` output never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret([u8; SECRET_LEN]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// A new random secret.
    pub fn generate() -> Result<Self, SecretError> {
        let mut b = [0u8; SECRET_LEN];
        getrandom::fill(&mut b).map_err(|e| SecretError::Random(e.to_string()))?;
        Ok(Self(b))
    }

    /// Parses the hex form (surrounding whitespace allowed).
    pub fn from_hex(text: &str) -> Result<Self, SecretError> {
        let t = text.trim();
        if t.len() != SECRET_LEN * 2 || !t.is_ascii() {
            return Err(SecretError::Malformed);
        }
        let mut b = [0u8; SECRET_LEN];
        for (i, byte) in b.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).map_err(|_| SecretError::Malformed)?;
        }
        Ok(Self(b))
    }

    /// The hex form, as stored in a secret file.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The secret's bytes, for the key schedule.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }

    fn mac(&self, sender: Role, transcript: &Transcript) -> Hmac<Sha256> {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        m.update(LABEL);
        m.update(&[sender as u8]);
        m.update(&transcript.0);
        m
    }

    /// Our proof, as `sender`, over the handshake's transcript.
    pub fn proof(&self, sender: Role, transcript: &Transcript) -> [u8; PROOF_LEN] {
        self.mac(sender, transcript).finalize().into_bytes().into()
    }

    /// Checks (in constant time) a proof the peer in role `sender` sent.
    pub fn verify(&self, sender: Role, transcript: &Transcript, proof: &[u8]) -> bool {
        self.mac(sender, transcript).verify_slice(proof).is_ok()
    }
}

/// A fresh random nonce.
pub fn nonce() -> Result<Nonce, SecretError> {
    let mut n = [0u8; NONCE_LEN];
    getrandom::fill(&mut n).map_err(|e| SecretError::Random(e.to_string()))?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_verify_only_with_the_same_secret_role_and_transcript() {
        let s = Secret::generate().unwrap();
        let (a, b) = (nonce().unwrap(), nonce().unwrap());
        let (h, g) = (crate::Hello::ours(Role::Host).encode(), crate::Hello::ours(Role::Agent).encode());
        let t = Transcript::new(&h, &g, &a, &b);
        let p = s.proof(Role::Host, &t);
        assert!(s.verify(Role::Host, &t, &p));
        assert!(!s.verify(Role::Agent, &t, &p), "a proof cannot be reflected to the other role");
        assert!(!s.verify(Role::Host, &Transcript::new(&h, &g, &b, &a), &p), "nonces are bound in order");
        assert!(!Secret::generate().unwrap().verify(Role::Host, &t, &p), "another secret fails");
        assert!(!s.verify(Role::Host, &t, &p[..31]), "a truncated proof fails");
    }

    #[test]
    fn hex_round_trip_and_rejects_garbage() {
        let s = Secret::generate().unwrap();
        assert_eq!(Secret::from_hex(&format!(" {}\n", s.to_hex())).unwrap(), s);
        for bad in ["", "zz", &"g".repeat(64), &"a".repeat(63), &"é".repeat(32)] {
            assert_eq!(Secret::from_hex(bad), Err(SecretError::Malformed), "{bad:?}");
        }
        assert_eq!(format!("{s:?}"), "Secret(..)");
    }
}
