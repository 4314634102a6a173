//! Forwarding a client over a dedicated data connection of its own: one
//! transport connection per client, proven with the session's keys (see
//! `ferry_protocol::data_conn`), bytes moved with splice(2).

use ferry_mux::{Address, LocalConn, RawConn, Session, Traffic};

use crate::status::board::{Route, RouteCounts};
use ferry_protocol::Target;

/// How long dialling a data connection may take (a TCP connect to a guest
/// that stopped answering, a hybrid-vsock CONNECT without its OK) before
/// the client goes over the session instead.
const DIAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How to open data connections to the agent of one session.
pub struct DataPath {
    addr: Address,
    /// The session, whose keys prove each data connection and which
    /// confirms how each ends.
    session: Session,
}

impl DataPath {
    /// A data path, if `addr` can be dialled again and carries half-close
    /// (or `trust_hvsock` says the hybrid-vsock backend does: see
    /// [`RawConn::keeps_half_close`]).
    pub fn new(addr: &Address, session: &Session, trust_hvsock: bool) -> Option<Self> {
        let usable = RawConn::dialable(addr) && (trust_hvsock || RawConn::keeps_half_close(addr));
        usable.then(|| Self { addr: addr.clone(), session: session.clone() })
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
        // The claim's ticket confirms each side's clean end (see
        // `ferry_mux::data_end`); it is held before the hello goes out, so
        // that no word from the agent can come before it.
        let Some(claim) = self.session.claim_data_conn() else {
            tracing::debug!("no data connection (the session cannot prove one); multiplexing instead");
            return Err(local);
        };
        if conn.write_all(&claim.hello(target)).await.is_err() {
            // Nothing has been read from the client yet: it can still go through the session.
            tracing::debug!("data connection to {target:?} failed during its hello; multiplexing instead");
            claim.ticket.cancel();
            return Err(local);
        }
        counts.count(Route::Dedicated);
        // No round trip before the first byte: the client's bytes follow the
        // hello at once, and the agent's answer is read before anything
        // flows back (a refusal resets the client, as a closed port would).
        if let Some(e) = local.relay(&conn, traffic, true, Some(&claim.ticket)).await {
            tracing::debug!("connection to guest {target:?} ended: {e}");
        }
        Ok(())
    }
}
