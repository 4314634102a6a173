//! The session handshake over a fresh transport: hellos, nonces, proofs of
//! the secret over the transcript, and the session's keys (the rules are in
//! `ferry_protocol::{handshake, auth, keys}`; this is their I/O).

use std::time::Duration;

use ferry_protocol::{
    auth::{self, Nonce, Secret},
    handshake::{features, Negotiated, HELLO_LEN},
    keys::{SessionKeys, Transcript},
    HandshakeError, Hello, Role,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::transport::Transport;

/// Why a session could not start.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The transport failed during the handshake.
    #[error("handshake I/O with {peer}: {source}")]
    Io {
        peer: String,
        #[source]
        source: std::io::Error,
    },
    /// The peer's hello was unacceptable.
    #[error("handshake with {peer}: {source}")]
    Handshake {
        peer: String,
        #[source]
        source: HandshakeError,
    },
    /// The handshake did not finish in time.
    #[error("handshake with {peer}: not finished within {timeout:?}")]
    Timeout { peer: String, timeout: Duration },
    /// Authentication failed or the peers' authentication modes differ.
    #[error("authentication with {peer} failed: {reason}")]
    Auth { peer: String, reason: String },
}

/// The agent's verdict byte on the host's proof.
const AUTH_ACCEPTED: u8 = 1;
const AUTH_REJECTED: u8 = 0;

/// What a finished handshake agreed on.
pub(crate) struct Agreed {
    pub negotiated: Negotiated,
    pub keys: SessionKeys,
    /// Both sides authenticated: the keys are secret.
    pub authenticated: bool,
}

/// Hello exchange, nonces, then authentication unless both sides run
/// without it; returns the session's keys.
pub(crate) async fn run(t: &mut Transport, role: Role, secret: Option<&Secret>) -> Result<Agreed, SessionError> {
    let peer = t.peer.clone();
    let io_err = |source| SessionError::Io { peer: peer.clone(), source };
    let auth_err = |reason: &str| SessionError::Auth { peer: peer.clone(), reason: reason.to_string() };
    let mut ours = Hello::ours(role);
    if secret.is_some() {
        ours.features |= features::AUTH;
    }
    if t.exposed {
        ours.features |= features::SEALED;
    }
    let our_hello = ours.encode();
    t.writer.write_all(&our_hello).await.map_err(io_err)?;
    t.writer.flush().await.map_err(io_err)?;
    let mut their_hello = [0u8; HELLO_LEN];
    t.reader.read_exact(&mut their_hello).await.map_err(io_err)?;
    let theirs =
        Hello::decode(&their_hello).map_err(|source| SessionError::Handshake { peer: peer.clone(), source })?;
    let negotiated =
        ours.negotiate(&theirs).map_err(|source| SessionError::Handshake { peer: peer.clone(), source })?;
    match (secret.is_some(), theirs.features & features::AUTH != 0) {
        (false, false) | (true, true) => {}
        (true, false) => {
            return Err(auth_err(
                "the peer runs without authentication (--insecure-no-auth); refusing it. \
                 Give both sides the same secret file, or start both with --insecure-no-auth",
            ))
        }
        (false, true) => {
            return Err(auth_err(
                "the peer requires authentication; give this side the instance's secret file (--secret-file)",
            ))
        }
    }
    // getrandom() blocks until the kernel's generator is seeded, which in a
    // freshly booted VM without a hardware RNG can take a long time: wait for
    // it off the runtime's threads, so that only this handshake waits.
    let own_nonce: Nonce = tokio::task::spawn_blocking(auth::nonce)
        .await
        .map_err(|e| auth_err(&e.to_string()))?
        .map_err(|e| auth_err(&e.to_string()))?;
    t.writer.write_all(&own_nonce).await.map_err(io_err)?;
    t.writer.flush().await.map_err(io_err)?;
    let mut peer_nonce = [0u8; auth::NONCE_LEN];
    t.reader.read_exact(&mut peer_nonce).await.map_err(io_err)?;
    let transcript = match role {
        Role::Host => Transcript::new(&our_hello, &their_hello, &own_nonce, &peer_nonce),
        Role::Agent => Transcript::new(&their_hello, &our_hello, &peer_nonce, &own_nonce),
    };
    if let Some(secret) = secret {
        // The other role than ours (`negotiate` refused a peer claiming ours).
        let peer_role = match role {
            Role::Host => Role::Agent,
            Role::Agent => Role::Host,
        };
        let mut proof = [0u8; auth::PROOF_LEN];
        if role == Role::Host {
            // The host proves first; the agent answers only after checking.
            t.writer.write_all(&secret.proof(role, &transcript)).await.map_err(io_err)?;
            t.writer.flush().await.map_err(io_err)?;
            let mut verdict = [0u8; 1];
            t.reader
                .read_exact(&mut verdict)
                .await
                .map_err(|_| auth_err("the agent closed the connection instead of answering our proof"))?;
            if verdict[0] != AUTH_ACCEPTED {
                return Err(auth_err(
                    "the agent rejected our proof: the two sides hold different secrets \
                     (or the handshake was changed on the way)",
                ));
            }
            t.reader.read_exact(&mut proof).await.map_err(io_err)?;
            if !secret.verify(peer_role, &transcript, &proof) {
                return Err(auth_err("the agent could not prove it holds the secret"));
            }
        } else {
            t.reader.read_exact(&mut proof).await.map_err(io_err)?;
            if !secret.verify(peer_role, &transcript, &proof) {
                let _ = t.writer.write_all(&[AUTH_REJECTED]).await;
                let _ = t.writer.flush().await;
                return Err(auth_err("the host could not prove it holds the secret (wrong or missing secret file)"));
            }
            t.writer.write_all(&[AUTH_ACCEPTED]).await.map_err(io_err)?;
            t.writer.write_all(&secret.proof(role, &transcript)).await.map_err(io_err)?;
            t.writer.flush().await.map_err(io_err)?;
        }
    }
    Ok(Agreed { negotiated, keys: SessionKeys::derive(secret, &transcript), authenticated: secret.is_some() })
}
