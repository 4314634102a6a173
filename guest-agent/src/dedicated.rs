//! Dedicated data connections: one transport connection per forwarded
//! connection, relayed to the guest target with splice(2).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use ferry_mux::{RawConn, Traffic};
use ferry_protocol::{
    data_conn::{self, DataHello, FIXED_LEN, TOKEN_LEN},
    Target,
};

use crate::targets::{self, Grants};

/// How long a data connection may take to present itself.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// The tokens of the live authenticated sessions, each with what its
/// session may reach: a data connection is accepted only if it presents one.
#[derive(Clone, Default)]
pub struct Tokens(Arc<Mutex<Vec<Issued>>>);

/// A session's token, what its session may reach, and the protocol
/// version it negotiated (which its data connections must speak).
type Issued = ([u8; TOKEN_LEN], Grants, u16);

impl Tokens {
    /// Registers a fresh token for a session with `grants`; it is withdrawn
    /// when the guard drops.
    pub fn issue(&self, grants: Grants, version: u16) -> std::io::Result<TokenGuard> {
        let token = ferry_protocol::auth::nonce().map_err(std::io::Error::other)?;
        self.0.lock().unwrap().push((token, grants, version));
        Ok(TokenGuard { tokens: self.clone(), token })
    }

    fn lookup(&self, t: &[u8; TOKEN_LEN]) -> Option<(Grants, u16)> {
        // Compare with every entry so the time taken does not depend on the match.
        let tokens = self.0.lock().unwrap();
        let mut found = None;
        for (ours, grants, version) in tokens.iter() {
            if data_conn::token_eq(ours, t) {
                found = Some((grants.clone(), *version));
            }
        }
        found
    }
}

/// A token valid while its session lives.
pub struct TokenGuard {
    tokens: Tokens,
    /// The token's bytes.
    pub token: [u8; TOKEN_LEN],
}

impl Drop for TokenGuard {
    fn drop(&mut self) {
        self.tokens.0.lock().unwrap().retain(|(t, _, _)| t != &self.token);
    }
}

/// Serves one data connection whose magic has been read.
pub async fn serve(mut conn: RawConn, tokens: Tokens, ticket: crate::pre_auth::Ticket) {
    let (target, grants) = match tokio::time::timeout(HELLO_TIMEOUT, read_hello(&mut conn, &tokens)).await {
        Ok(Ok(t)) => {
            // Its token is a live session's: authenticated.
            drop(ticket);
            t
        }
        Ok(Err(e)) => {
            tracing::warn!("data connection rejected: {e}");
            let _ = conn.write_all(&data_conn::refusal(&e)).await;
            return;
        }
        Err(_) => {
            tracing::warn!("data connection rejected: no hello within {HELLO_TIMEOUT:?}");
            return;
        }
    };
    let local = match targets::connect(&target, &grants).await {
        Ok(l) => l,
        Err(reason) => {
            let _ = conn.write_all(&data_conn::refusal(&reason)).await;
            return;
        }
    };
    tracing::debug!("data connection to {target:?}");
    if conn.write_all(&[data_conn::CONNECTED]).await.is_err() {
        return local.abort();
    }
    if let Some(e) = local.relay(&conn, &Traffic::default(), false).await {
        tracing::debug!("data connection to {target:?} ended: {e}");
    }
}

async fn read_hello(conn: &mut RawConn, tokens: &Tokens) -> Result<(Target, Grants), String> {
    let mut fixed = [0u8; FIXED_LEN];
    fixed[..6].copy_from_slice(&data_conn::DATA_MAGIC);
    conn.read_exact(&mut fixed[6..]).await.map_err(|e| format!("reading hello: {e}"))?;
    let hello = DataHello::decode_fixed(&fixed).map_err(|e| e.to_string())?;
    // Read the whole hello before judging it, so that a refusal is read by
    // the peer instead of being lost to a reset.
    let mut target = vec![0u8; hello.target_len];
    conn.read_exact(&mut target).await.map_err(|e| format!("reading target: {e}"))?;
    let (grants, version) = tokens.lookup(&hello.token).ok_or("unknown session token")?;
    if hello.version != version {
        return Err(format!("data connection speaks v{}, its session negotiated v{version}", hello.version));
    }
    Ok((DataHello::decode_target(&target).map_err(|e| e.to_string())?, grants))
}
