//! Dedicated data connections: one transport connection per forwarded
//! connection, relayed to the guest target with splice(2).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use ferry_mux::RawConn;
use ferry_protocol::{
    data_conn::{self, DataHello, FIXED_LEN, TOKEN_LEN},
    Target,
};
use tokio::net::TcpStream;

/// How long a data connection may take to present itself.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the agent tries to reach a guest target.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The tokens of the live authenticated sessions: a data connection is
/// accepted only if it presents one of them.
#[derive(Clone, Default)]
pub struct Tokens(Arc<Mutex<Vec<[u8; TOKEN_LEN]>>>);

impl Tokens {
    /// Registers a fresh token for a session; it is withdrawn when the guard drops.
    pub fn issue(&self) -> std::io::Result<TokenGuard> {
        let token = ferry_protocol::auth::nonce().map_err(std::io::Error::other)?;
        self.0.lock().unwrap().push(token);
        Ok(TokenGuard { tokens: self.clone(), token })
    }

    fn contains(&self, t: &[u8; TOKEN_LEN]) -> bool {
        // Check every entry so the time taken does not depend on the match.
        self.0.lock().unwrap().iter().fold(false, |found, ours| found | data_conn::token_eq(ours, t))
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
        self.tokens.0.lock().unwrap().retain(|t| t != &self.token);
    }
}

/// Serves one data connection whose magic has been read.
pub async fn serve(mut conn: RawConn, tokens: Tokens) {
    let target = match tokio::time::timeout(HELLO_TIMEOUT, read_hello(&mut conn, &tokens)).await {
        Ok(Ok(t)) => t,
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
    let addr = match target {
        Target::Tcp(addr) => addr,
        Target::Udp(_) => {
            let _ = conn.write_all(&data_conn::refusal("UDP flows travel over the session")).await;
            return;
        }
    };
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            let _ = conn.write_all(&data_conn::refusal(&format!("connect to {addr} in the guest: {e}"))).await;
            return;
        }
        Err(_) => {
            let _ = conn.write_all(&data_conn::refusal(&format!("connect to {addr} in the guest: timed out"))).await;
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    if conn.write_all(&[data_conn::CONNECTED]).await.is_err() {
        return;
    }
    if let Err(e) = conn.splice_with(&tcp, &ferry_mux::Traffic::default()).await {
        tracing::debug!("data connection to {addr} ended: {e}");
        ferry_mux::pump::reset_tcp(tcp);
    }
}

async fn read_hello(conn: &mut RawConn, tokens: &Tokens) -> Result<Target, String> {
    let mut fixed = [0u8; FIXED_LEN];
    fixed[..6].copy_from_slice(&data_conn::DATA_MAGIC);
    conn.read_exact(&mut fixed[6..]).await.map_err(|e| format!("reading hello: {e}"))?;
    let (token, len) = DataHello::decode_fixed(&fixed).map_err(|e| e.to_string())?;
    // Read the whole hello before judging it, so that a refusal is read by
    // the peer instead of being lost to a reset.
    let mut target = vec![0u8; len];
    conn.read_exact(&mut target).await.map_err(|e| format!("reading target: {e}"))?;
    if !tokens.contains(&token) {
        return Err("unknown session token".into());
    }
    DataHello::decode_target(&target).map_err(|e| e.to_string())
}
