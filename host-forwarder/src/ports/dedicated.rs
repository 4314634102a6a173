//! Forwarding a client over a dedicated data connection of its own: one
//! transport connection per client, bytes moved with splice(2).

use std::net::SocketAddr;

use ferry_mux::{pump::reset_tcp, Address, RawConn, Traffic};
use ferry_protocol::{
    data_conn::{self, DataHello, TOKEN_LEN},
    Target,
};
use tokio::net::TcpStream;

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

    /// Forwards `client` to `guest`. Gives the client back if no data
    /// connection could be made, so the caller can use the session instead.
    pub async fn forward(&self, client: TcpStream, guest: SocketAddr, traffic: &Traffic) -> Result<(), TcpStream> {
        let mut conn = match RawConn::dial(&self.addr).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("no data connection ({e}); multiplexing instead");
                return Err(client);
            }
        };
        let hello = DataHello { token: self.token, target: Target::Tcp(guest) }.encode();
        let mut status = [0u8; 1];
        if conn.write_all(&hello).await.is_err() || conn.read_exact(&mut status).await.is_err() {
            // Nothing has been read from the client yet: it can still go through the session.
            tracing::debug!("data connection to {guest} failed during its hello; multiplexing instead");
            return Err(client);
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
            tracing::debug!("guest refused {guest}: {reason}");
            reset_tcp(client);
            return Ok(());
        }
        if let Err(e) = conn.splice_with(&client, traffic).await {
            tracing::debug!("connection to guest {guest} reset: {e}");
            reset_tcp(client);
        }
        Ok(())
    }
}
