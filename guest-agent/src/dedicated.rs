//! Dedicated data connections: one transport connection per forwarded
//! connection, proven with its session's keys (see
//! `ferry_protocol::data_conn`) and relayed to the guest target with
//! splice(2), on the agent's thread or, for a target whose connections
//! carry bulk, on the bulk runtime (`ferry_mux::placement`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use ferry_mux::{
    data_end::EndTicket,
    placement::{self, BulkHistories, BulkHistory, DataRelay},
    refusals::Refusals,
    relay::Answer,
    DataRefusal, RawConn, Session,
};
use ferry_protocol::{
    data_conn::{self, DataProof, PROOF_LEN},
    keys::SessionId,
    Target,
};

use crate::targets::{self, Grants};

/// How long a data connection may take to present itself.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// The live authenticated sessions that take data connections, by session
/// id, each with what it may reach.
#[derive(Clone, Default)]
pub struct DataSessions {
    live: Arc<Mutex<HashMap<SessionId, (Grants, Session)>>>,
    /// Whether each target's recent connections carried bulk.
    histories: Arc<BulkHistories<Target>>,
}

impl DataSessions {
    /// Lists `session` with `grants` until the guard drops.
    pub fn register(&self, grants: Grants, session: &Session) -> Registration {
        let id = session.session_id();
        self.live.lock().unwrap().insert(id, (grants, session.clone()));
        Registration { sessions: self.clone(), id }
    }

    /// Whether each target's recent connections carried bulk (shared with
    /// the sessions' multiplexed streams).
    pub fn histories(&self) -> Arc<BulkHistories<Target>> {
        self.histories.clone()
    }

    fn lookup(&self, id: &SessionId) -> Option<(Grants, Session)> {
        self.live.lock().unwrap().get(id).cloned()
    }
}

/// A session's place among those taking data connections.
pub struct Registration {
    sessions: DataSessions,
    id: SessionId,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.sessions.live.lock().unwrap().remove(&self.id);
    }
}

/// Serves one data connection whose magic has been read.
pub async fn serve(mut conn: RawConn, sessions: DataSessions, ticket: crate::pre_auth::Ticket, refusals: Refusals) {
    let refuse = |conn: RawConn, reason: String| async move {
        refusals.record("data connection", &reason);
        refuse_in_band(conn, &reason).await
    };
    let (proof, grants, session, end) =
        match tokio::time::timeout(HELLO_TIMEOUT, read_proof(&mut conn, &sessions)).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return refuse(conn, e).await,
            Err(_) => return refuse(conn, format!("no proof within {HELLO_TIMEOUT:?}")).await,
        };
    // Proven by a live session: authenticated. The request may come later
    // (a connection the host keeps warm for its next client).
    drop(ticket);
    // A proven connection is good only while its session lives: the keys
    // die with the session, and so does a connection still waiting. The
    // session's end is looked at first: a request that arrived by the time
    // the agent saw its session end (both ready at once, on a busy machine)
    // opens nothing, where an unbiased select would pick either.
    let request = tokio::select! {
        biased;
        _ = session.closed() => None,
        r = tokio::time::timeout(data_conn::WARM_IDLE, read_request(&mut conn, &proof, &session)) => Some(r),
    };
    let target = match request {
        Some(Ok(Ok(t))) => t,
        Some(Ok(Err(e))) => {
            tracing::debug!("data connection ended before its request: {e}");
            return refuse_in_band(conn, &e).await;
        }
        Some(Err(_)) => return tracing::debug!("a warm data connection idled out"),
        None => return tracing::debug!("a warm data connection's session ended before its request"),
    };
    let history = sessions.histories.of(&target);
    let connection = Connection { target, grants, end };
    let bulk = history.expects_bulk();
    let serve = |conn| async move { connection.serve(conn, history).await };
    if bulk {
        placement::spawn_served(true, conn, serve);
    } else {
        // Already a task of its own on this thread.
        serve(conn).await;
    }
}

/// An admitted data connection's request, ready to be served.
struct Connection {
    target: Target,
    grants: Grants,
    end: EndTicket,
}

impl Connection {
    /// Connects to the target and relays `conn` with it until both ends
    /// are done, its bytes counted towards the target's `history`.
    async fn serve(self, mut conn: RawConn, history: Arc<BulkHistory>) {
        let Connection { target, grants, end } = self;
        let local = match targets::connect(&target, &grants).await {
            Ok(l) => l,
            Err(reason) => {
                // The refusal travels in-band; the host needs no word on the session.
                let _ = conn.write_all(&data_conn::refusal(&reason)).await;
                end.cancel();
                return;
            }
        };
        tracing::debug!("data connection to {target:?}");
        // "Connected" leaves with the target's first bytes: one wake-up of the
        // host for both. A connection that turns out to carry bulk moves to
        // the bulk runtime.
        let relay = DataRelay { traffic: Default::default(), answer: Answer::Send, end, history };
        if let Some(e) = relay.run(local, conn).await {
            tracing::debug!("data connection to {target:?} ended: {e}");
        }
    }
}

/// Answers a refusal, first reading what the peer already sent (a request
/// right behind its proof), so that the answer is not lost to a reset.
async fn refuse_in_band(mut conn: RawConn, reason: &str) {
    let mut sink = [0u8; data_conn::MAX_TARGET_LEN + 64];
    let _ = tokio::time::timeout(Duration::from_millis(50), conn.read_some(&mut sink)).await;
    let _ = conn.write_all(&data_conn::refusal(reason)).await;
}

/// Reads and checks the proof: the connection's session, its grants and
/// its end ticket.
async fn read_proof(
    conn: &mut RawConn,
    sessions: &DataSessions,
) -> Result<(DataProof, Grants, Session, EndTicket), String> {
    let mut wire = [0u8; PROOF_LEN];
    wire[..6].copy_from_slice(&data_conn::DATA_MAGIC);
    conn.read_exact(&mut wire[6..]).await.map_err(|e| format!("reading proof: {e}"))?;
    let (proof, mac) = DataProof::decode(&wire).map_err(|e| e.to_string())?;
    let (grants, session) = sessions.lookup(&proof.session).ok_or("no live session made this proof")?;
    let end = session.admit_data(&proof, &mac).map_err(|e| match e {
        // The same words for every forgery: a prober learns nothing.
        DataRefusal::Hello(_) => "no live session made this proof".to_string(),
        e => e.to_string(),
    })?;
    Ok((proof, grants, session, end))
}

/// Reads the request that follows an admitted proof and returns its target.
async fn read_request(conn: &mut RawConn, proof: &DataProof, session: &Session) -> Result<Target, String> {
    let mut len = [0u8; 2];
    conn.read_exact(&mut len).await.map_err(|e| format!("reading request: {e}"))?;
    let mut rest = vec![0u8; DataProof::request_rest_len(len).map_err(|e| e.to_string())?];
    conn.read_exact(&mut rest).await.map_err(|e| format!("reading request: {e}"))?;
    session.open_data_request(proof, &rest).map_err(|e| e.to_string())
}
