//! The session's keys (sans-I/O part).
//!
//! Both peers hash the handshake they just exchanged (both hellos and both
//! fresh nonces, in role order) into a [`Transcript`]; the proofs of
//! [`crate::auth`] cover it, and HKDF-SHA256 turns the secret and the
//! transcript into the keys of this session alone:
//!
//! ```text
//!  transcript = SHA-256("ferry-transcript-v2\0" || host hello || agent hello || host nonce || agent nonce)
//!  keys       = HKDF-SHA256(salt = transcript, ikm = secret)
//!     "ferry-v2 session id"    16 bytes, public: names the session in data hellos
//!     "ferry-v2 data key"      32 bytes: MACs of data-connection hellos
//!     "ferry-v2 host->agent"   32 bytes: AES-256-GCM key of sealed records the host sends
//!     "ferry-v2 agent->host"   32 bytes: the same, the agent's direction
//! ```
//!
//! Nothing derived from the secret ever crosses the wire except MACs and
//! sealed records, and no key outlives its session. Without a secret
//! (`--insecure-no-auth`) the same schedule runs over an empty secret: the
//! keys then protect nothing, and nothing is sealed.

use hkdf::Hkdf;
use sha2::Sha256;

use crate::auth::Secret;
pub use crate::auth::Transcript;

/// Length of a session id.
pub const SESSION_ID_LEN: usize = 16;
/// Length of a derived key.
pub const KEY_LEN: usize = 32;

/// A session's public name, carried by its data connections.
pub type SessionId = [u8; SESSION_ID_LEN];

/// A secret key; its `Debug` output never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Key(pub(crate) [u8; KEY_LEN]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

/// Everything one session derives from the secret and its handshake.
#[derive(Debug, Clone)]
pub struct SessionKeys {
    /// The session's public name.
    pub session_id: SessionId,
    /// Authenticates data-connection hellos ([`crate::data_conn`]).
    pub data: Key,
    /// Seals what the host sends ([`crate::seal`]).
    pub host_to_agent: Key,
    /// Seals what the agent sends.
    pub agent_to_host: Key,
}

impl SessionKeys {
    /// Derives the session's keys; `None` is `--insecure-no-auth`.
    pub fn derive(secret: Option<&Secret>, transcript: &Transcript) -> Self {
        let ikm: &[u8] = secret.map(|s| s.bytes()).unwrap_or(&[]);
        let hk = Hkdf::<Sha256>::new(Some(&transcript.0), ikm);
        let expand = |label: &[u8], out: &mut [u8]| hk.expand(label, out).expect("HKDF output lengths are small");
        let mut keys = Self {
            session_id: [0; SESSION_ID_LEN],
            data: Key([0; KEY_LEN]),
            host_to_agent: Key([0; KEY_LEN]),
            agent_to_host: Key([0; KEY_LEN]),
        };
        expand(b"ferry-v2 session id", &mut keys.session_id);
        expand(b"ferry-v2 data key", &mut keys.data.0);
        expand(b"ferry-v2 host->agent", &mut keys.host_to_agent.0);
        expand(b"ferry-v2 agent->host", &mut keys.agent_to_host.0);
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Hello, Role};

    fn transcript(n: u8) -> Transcript {
        let (h, a) = (Hello::ours(Role::Host).encode(), Hello::ours(Role::Agent).encode());
        Transcript::new(&h, &a, &[n; 32], &[2; 32])
    }

    #[test]
    fn every_key_differs_and_depends_on_secret_and_transcript() {
        let s = Secret::generate().unwrap();
        let k = SessionKeys::derive(Some(&s), &transcript(1));
        assert_ne!(k.data, k.host_to_agent);
        assert_ne!(k.host_to_agent, k.agent_to_host);
        let again = SessionKeys::derive(Some(&s), &transcript(1));
        assert_eq!((again.session_id, again.data), (k.session_id, k.data.clone()), "deterministic");
        let other_nonce = SessionKeys::derive(Some(&s), &transcript(9));
        assert_ne!(other_nonce.data, k.data, "a new handshake, new keys");
        assert_ne!(other_nonce.session_id, k.session_id);
        let other_secret = SessionKeys::derive(Some(&Secret::generate().unwrap()), &transcript(1));
        assert_ne!(other_secret.data, k.data);
        assert_ne!(SessionKeys::derive(None, &transcript(1)).data, k.data);
        assert_eq!(format!("{:?}", k.data), "Key(..)");
    }

    #[test]
    fn the_transcript_binds_both_hellos() {
        let (h, a) = (Hello::ours(Role::Host).encode(), Hello::ours(Role::Agent).encode());
        let base = Transcript::new(&h, &a, &[1; 32], &[2; 32]);
        let mut downgraded = a;
        downgraded[17] ^= 1;
        assert_ne!(Transcript::new(&h, &downgraded, &[1; 32], &[2; 32]), base, "a changed feature bit");
        assert_ne!(Transcript::new(&a, &h, &[1; 32], &[2; 32]), base, "role order");
    }
}
