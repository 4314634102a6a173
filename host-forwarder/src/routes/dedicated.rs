//! Forwarding a client over a dedicated data connection of its own: one
//! transport connection per client, bytes moved with splice(2).

use ferry_mux::{Address, LocalConn, RawConn, Traffic};
use ferry_protocol::{
    data_conn::{self, DataHello, TOKEN_LEN},
    Target,
};

/// How to open data connections to the agent of one session.
pub struct DataPath {
    addr: Address,
    token: [u8; TOKEN_LEN],
}

impl DataPath {
    /// A data path, if `addr` can be dialled again.
    pub fn new(addr: &Address, token: [u8; TOKEN_LEN]) -> Option<Self> {
        RawConn::dialable(addr).then(|| Self { addr: addr.clone(), token })
    }

    /// Forwards `local` to `target`. Gives the connection back if no data
    /// connection could be made, so the caller can use the session instead.
    pub async fn forward(&self, local: LocalConn, target: &Target, traffic: &Traffic) -> Result<(), LocalConn> {
        let mut conn = match RawConn::dial(&self.addr).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("no data connection ({e}); multiplexing instead");
                return Err(local);
            }
        };
        let hello = DataHello { token: self.token, target: target.clone() }.encode();
        let mut status = [0u8; 1];
        if conn.write_all(&hello).await.is_err() || conn.read_exact(&mut status).await.is_err() {
            // Nothing has been read from the client yet: it can still go through the session.
            tracing::debug!("data connection to {target:?} failed during its hello; multiplexing instead");
            return Err(local);
        }
        if status[0] != data_conn::CONNECTED {
            let mut len = [0u8; 2];
            let mut reason = String::from("refused");
            if conn.read_exact(&mut len).await.is_ok() {
                let mut r = vec![0u8; u16::from_be_bytes(len) as usize];
                if conn.read_exact(&mut r).await.is_ok() {
                    reason = String::from_utf8_lossy(&r).into_owned();
                }
            }
            tracing::debug!("guest refused {target:?}: {reason}");
            local.abort();
            return Ok(());
        }
        if let Some(e) = local.splice(&conn, traffic).await {
            tracing::debug!("connection to guest {target:?} reset: {e}");
        }
        Ok(())
    }
}
