//! Forwarding a client over a dedicated data connection of its own: one
//! transport connection per client, proven with the session's keys (see
//! `ferry_protocol::data_conn`), bytes moved with splice(2).
//!
//! With `--warm-data-conns N`, N connections are kept warm: dialled and
//! proven ahead of the clients, so that a new client pays only for its
//! request and the guest's connect. The pool is refilled in the background
//! after each use (never while nobody connects), bounded, and its
//! connections are dropped once idle for [`WARM_MAX_IDLE`]. Off by default:
//! on 2 vCPUs the refill competed with the clients and measured no faster.
//! The pool belongs to the process's own runtime (the refill runs there, so
//! its sockets are driven by that runtime's thread); a client served on the
//! bulk runtime (`ferry_mux::placement`) dials its own connection, so that
//! neither runtime's connections wait on the other's thread.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use ferry_mux::{
    placement::{BulkHistory, DataRelay},
    relay::Answer,
    Address, DataClaim, LocalConn, RawConn, Session, Traffic,
};

use crate::status::board::{Route, RouteCounts};
use ferry_protocol::Target;

/// How long dialling a data connection may take (a TCP connect to a guest
/// that stopped answering, a hybrid-vsock CONNECT without its OK) before
/// the client goes over the session instead.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// A warm connection idle longer than this is closed instead of used (the
/// agent waits [`ferry_protocol::data_conn::WARM_IDLE`] for its request).
pub const WARM_MAX_IDLE: Duration = Duration::from_secs(20);

/// A dialled and proven connection waiting for a client.
struct Warm {
    conn: RawConn,
    claim: DataClaim,
    since: Instant,
}

/// How to open data connections to the agent of one session.
pub struct DataPath {
    addr: Address,
    /// The session, whose keys prove each data connection and which
    /// confirms how each ends.
    session: Session,
    warm: Arc<Mutex<VecDeque<Warm>>>,
    /// How many connections to keep warm.
    warm_target: usize,
    refilling: Arc<AtomicBool>,
    /// The runtime the pool's connections are made on (the one `new` runs on).
    home: tokio::runtime::Handle,
}

impl DataPath {
    /// A data path, if `addr` can be dialled again and carries half-close
    /// (or `trust_hvsock` says the hybrid-vsock backend does: see
    /// [`RawConn::keeps_half_close`]); it keeps `warm` connections ready,
    /// made on the runtime this is called on.
    pub fn new(addr: &Address, session: &Session, trust_hvsock: bool, warm: usize) -> Option<Self> {
        let usable = RawConn::dialable(addr) && (trust_hvsock || RawConn::keeps_half_close(addr));
        usable.then(|| Self {
            addr: addr.clone(),
            session: session.clone(),
            warm: Default::default(),
            warm_target: warm,
            refilling: Default::default(),
            home: tokio::runtime::Handle::current(),
        })
    }

    /// Forwards `local` to `target`, its bytes counted towards `history`.
    /// Gives the connection back if no data connection could be made, so
    /// the caller can use the session instead.
    pub async fn forward(
        &self,
        local: LocalConn,
        target: &Target,
        traffic: &Arc<Traffic>,
        counts: &RouteCounts,
        history: &Arc<BulkHistory>,
    ) -> Result<(), LocalConn> {
        // A warm connection is registered with the process's own runtime.
        let warm = if ferry_mux::placement::on_parallel() { None } else { self.take_warm() };
        self.refill();
        let (mut conn, claim, hello) = match warm {
            Some(w) => {
                let request = w.claim.request(target);
                (w.conn, w.claim, request)
            }
            None => match dial_and_claim(&self.addr, &self.session).await {
                Some((conn, claim)) => {
                    let hello = claim.hello(target);
                    (conn, claim, hello)
                }
                None => return Err(local),
            },
        };
        if conn.write_all(&hello).await.is_err() {
            // Nothing has been read from the client yet: it can still go through the session.
            tracing::debug!("data connection to {target:?} failed during its hello; multiplexing instead");
            claim.ticket.cancel();
            return Err(local);
        }
        counts.count(Route::Dedicated);
        // No round trip before the first byte: the client's bytes follow the
        // hello at once, and the agent's answer is read before anything
        // flows back (a refusal resets the client, as a closed port would).
        // A connection that turns out to carry bulk moves to the bulk runtime.
        let relay =
            DataRelay { traffic: traffic.clone(), answer: Answer::Read, end: claim.ticket, history: history.clone() };
        if let Some(e) = relay.run(local, conn).await {
            tracing::debug!("connection to guest {target:?} ended: {e}");
        }
        Ok(())
    }

    /// The freshest warm connection, dropping those idle too long.
    fn take_warm(&self) -> Option<Warm> {
        let mut warm = self.warm.lock().unwrap();
        warm.retain(|w| w.since.elapsed() < WARM_MAX_IDLE);
        warm.pop_back()
    }

    /// Tops the pool up in the background, unless a refill is running.
    fn refill(&self) {
        if self.warm_target == 0 || self.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let (addr, session, warm, refilling) =
            (self.addr.clone(), self.session.clone(), self.warm.clone(), self.refilling.clone());
        let target = self.warm_target;
        drop(self.home.spawn(async move {
            while warm.lock().unwrap().len() < target && !session.is_closed() {
                let Some((mut conn, claim)) = dial_and_claim(&addr, &session).await else { break };
                if conn.write_all(&claim.proof()).await.is_err() {
                    break;
                }
                warm.lock().unwrap().push_back(Warm { conn, claim, since: Instant::now() });
            }
            refilling.store(false, Ordering::Release);
        }));
    }
}

/// Dials a data connection and claims an id for it; `None` (logged) if
/// either fails, so the client can go through the session.
async fn dial_and_claim(addr: &Address, session: &Session) -> Option<(RawConn, DataClaim)> {
    let conn = match tokio::time::timeout(DIAL_TIMEOUT, RawConn::dial(addr)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!("no data connection ({e}); multiplexing instead");
            return None;
        }
        Err(_) => {
            tracing::debug!("no data connection within {DIAL_TIMEOUT:?}; multiplexing instead");
            return None;
        }
    };
    // The claim's ticket confirms each side's clean end (see
    // `ferry_mux::data_end`); it is held before the hello goes out, so
    // that no word from the agent can come before it.
    let Some(claim) = session.claim_data_conn() else {
        tracing::debug!("no data connection (the session cannot prove one); multiplexing instead");
        return None;
    };
    Some((conn, claim))
}
