//! Dedicated data connections: one transport connection per forwarded
//! connection, relayed to the guest target with splice(2).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use ferry_mux::{data_end::EndTicket, RawConn, Session, Traffic};
use ferry_protocol::{
    data_conn::{self, DataHello, CONN_ID_LEN, FIXED_LEN, TOKEN_LEN},
    handshake::features,
    Target,
};

use crate::targets::{self, Grants};

/// How long a data connection may take to present itself.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// The tokens of the live authenticated sessions, each with what its
/// session may reach: a data connection is accepted only if it presents one.
#[derive(Clone, Default)]
pub struct Tokens(Arc<Mutex<Vec<Issued>>>);

/// A session's token, what its session may reach, and the session itself
/// (its negotiated version, which its data connections must speak, and
/// the confirmation of their ends).
type Issued = ([u8; TOKEN_LEN], Grants, Session);

impl Tokens {
    /// Registers a fresh token for `session` with `grants`; it is withdrawn
    /// when the guard drops.
    pub fn issue(&self, grants: Grants, session: &Session) -> std::io::Result<TokenGuard> {
        let token = ferry_protocol::auth::nonce().map_err(std::io::Error::other)?;
        self.0.lock().unwrap().push((token, grants, session.clone()));
        Ok(TokenGuard { tokens: self.clone(), token })
    }

    fn lookup(&self, t: &[u8; TOKEN_LEN]) -> Option<(Grants, Session)> {
        // Compare with every entry so the time taken does not depend on the match.
        let tokens = self.0.lock().unwrap();
        let mut found = None;
        for (ours, grants, session) in tokens.iter() {
            if data_conn::token_eq(ours, t) {
                found = Some((grants.clone(), session.clone()));
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
    let (target, grants, end) = match tokio::time::timeout(HELLO_TIMEOUT, read_hello(&mut conn, &tokens)).await {
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
            // The refusal travels in-band; the host needs no word on the session.
            let _ = conn.write_all(&data_conn::refusal(&reason)).await;
            if let Some(end) = end {
                end.cancel();
            }
            return;
        }
    };
    tracing::debug!("data connection to {target:?}");
    if conn.write_all(&[data_conn::CONNECTED]).await.is_err() {
        return local.abort();
    }
    if let Some(e) = local.relay(&conn, &Traffic::default(), false, end.as_ref()).await {
        tracing::debug!("data connection to {target:?} ended: {e}");
    }
}

async fn read_hello(conn: &mut RawConn, tokens: &Tokens) -> Result<(Target, Grants, Option<EndTicket>), String> {
    let mut fixed = [0u8; FIXED_LEN];
    fixed[..6].copy_from_slice(&data_conn::DATA_MAGIC);
    conn.read_exact(&mut fixed[6..]).await.map_err(|e| format!("reading hello: {e}"))?;
    let hello = DataHello::decode_fixed(&fixed).map_err(|e| e.to_string())?;
    // Read the whole hello before judging it, so that a refusal is read by
    // the peer instead of being lost to a reset.
    let mut target = vec![0u8; hello.target_len];
    conn.read_exact(&mut target).await.map_err(|e| format!("reading target: {e}"))?;
    let (grants, session) = tokens.lookup(&hello.token).ok_or("unknown session token")?;
    let negotiated = session.negotiated();
    if hello.version != negotiated.version {
        return Err(format!(
            "data connection speaks v{}, its session negotiated v{}",
            hello.version, negotiated.version
        ));
    }
    let end = if negotiated.features & features::DATA_END != 0 {
        let mut id = [0u8; CONN_ID_LEN];
        conn.read_exact(&mut id).await.map_err(|e| format!("reading connection id: {e}"))?;
        let id = u64::from_be_bytes(id);
        Some(session.data_end_ticket(id).ok_or_else(|| format!("data connection id {id} is already in use"))?)
    } else {
        None
    };
    Ok((DataHello::decode_target(&target).map_err(|e| e.to_string())?, grants, end))
}
