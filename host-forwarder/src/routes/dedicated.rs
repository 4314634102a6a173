//! Forwarding a client over a dedicated data connection of its own: one
//! transport connection per client, bytes moved with splice(2).

use std::sync::atomic::{AtomicU64, Ordering};

use ferry_mux::{Address, LocalConn, RawConn, Session, Traffic};

use crate::status::board::{Route, RouteCounts};
use ferry_protocol::{
    data_conn::{DataHello, TOKEN_LEN},
    Target,
};

/// How long dialling a data connection may take (a TCP connect to a guest
/// that stopped answering, a hybrid-vsock CONNECT without its OK) before
/// the client goes over the session instead.
const DIAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How to open data connections to the agent of one session.
pub struct DataPath {
    addr: Address,
    token: [u8; TOKEN_LEN],
    /// The version the session negotiated, which its data connections speak.
    version: u16,
    /// The session, which confirms how each data connection ends.
    session: Session,
    /// The id of the next data connection.
    next_conn: AtomicU64,
}

impl DataPath {
    /// A data path, if `addr` can be dialled again and carries half-close
    /// (or `trust_hvsock` says the hybrid-vsock backend does: see
    /// [`RawConn::keeps_half_close`]).
    pub fn new(addr: &Address, token: [u8; TOKEN_LEN], session: &Session, trust_hvsock: bool) -> Option<Self> {
        let usable = RawConn::dialable(addr) && (trust_hvsock || RawConn::keeps_half_close(addr));
        let version = session.negotiated().version;
        usable.then(|| Self {
            addr: addr.clone(),
            token,
            version,
            session: session.clone(),
            next_conn: AtomicU64::new(1),
        })
    }

    /// Forwards `local` to `target`. Gives the connection back if no data
    /// connection could be made, so the caller can use the session instead.
    pub async fn forward(
        &self,
        local: LocalConn,
        target: &Target,
        traffic: &Traffic,
        counts: &RouteCounts,
    ) -> Result<(), LocalConn> {
        let mut conn = match tokio::time::timeout(DIAL_TIMEOUT, RawConn::dial(&self.addr)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::debug!("no data connection ({e}); multiplexing instead");
                return Err(local);
            }
            Err(_) => {
                tracing::debug!("no data connection within {DIAL_TIMEOUT:?}; multiplexing instead");
                return Err(local);
            }
        };
        // With DATA_END the session confirms each side's clean end (see
        // `ferry_mux::data_end`); the ticket is held before the hello goes
        // out, so that no word from the agent can come before it.
        let ticket = self.session.data_end_ticket(self.next_conn.fetch_add(1, Ordering::Relaxed));
        let conn_id = ticket.as_ref().map(|t| t.id());
        let hello = DataHello { version: self.version, token: self.token, target: target.clone(), conn: conn_id };
        if conn.write_all(&hello.encode()).await.is_err() {
            // Nothing has been read from the client yet: it can still go through the session.
            tracing::debug!("data connection to {target:?} failed during its hello; multiplexing instead");
            if let Some(ticket) = ticket {
                ticket.cancel();
            }
            return Err(local);
        }
        counts.count(Route::Dedicated);
        // No round trip before the first byte: the client's bytes follow the
        // hello at once, and the agent's answer is read before anything
        // flows back (a refusal resets the client, as a closed port would).
        if let Some(e) = local.relay(&conn, traffic, true, ticket.as_ref()).await {
            tracing::debug!("connection to guest {target:?} ended: {e}");
        }
        Ok(())
    }
}
