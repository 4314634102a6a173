//! Proving dedicated data connections with the session's keys (the rules
//! are in `ferry_protocol::data_conn`): the host makes a [`DataClaim`] per
//! connection, the agent admits it with [`Session::admit_data`].

use std::sync::atomic::{AtomicU64, Ordering};

use ferry_protocol::{
    data_conn::{DataHelloError, DataProof, DATA_NONCE_LEN, MAC_LEN, PROOF_LEN},
    keys::{Key, SessionId, SessionKeys},
    Target,
};

use crate::{data_end::EndTicket, Session};

/// What a session's data connections are proven with.
pub(crate) struct DataKeys {
    session: SessionId,
    key: Key,
    version: u16,
    /// The id of the host's next data connection.
    next_conn: AtomicU64,
}

impl DataKeys {
    pub(crate) fn new(keys: &SessionKeys, version: u16) -> Self {
        Self { session: keys.session_id, key: keys.data.clone(), version, next_conn: AtomicU64::new(1) }
    }
}

/// Host side: one data connection's claim on its session: its id, proof
/// and end ticket. The proof goes first; the request for a target may
/// follow at once or later (a connection kept warm).
pub struct DataClaim {
    session: Session,
    proof: DataProof,
    /// Confirms how the connection ends (see [`crate::data_end`]); dropping
    /// the claim unused tells the agent the id is spent.
    pub ticket: EndTicket,
}

impl DataClaim {
    /// The proof's wire form.
    pub fn proof(&self) -> [u8; PROOF_LEN] {
        self.proof.encode(&self.session.data_keys.key)
    }

    /// The request for `target`, bound to this proof.
    pub fn request(&self, target: &Target) -> Vec<u8> {
        self.proof.encode_request(&self.session.data_keys.key, target)
    }

    /// The proof followed by the request, in one piece.
    pub fn hello(&self, target: &Target) -> Vec<u8> {
        let mut out = self.proof().to_vec();
        out.extend_from_slice(&self.request(target));
        out
    }
}

/// Why the agent refused a data connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataRefusal {
    /// The proof or the request is malformed or does not verify.
    #[error(transparent)]
    Hello(#[from] DataHelloError),
    /// A replay: the id was used (or is too old).
    #[error(transparent)]
    Replay(#[from] ferry_protocol::data_conn::ConnIdError),
    /// The proof's version is not the one its session negotiated.
    #[error("data connection speaks v{0}, its session negotiated v{1}")]
    Version(u16, u16),
    /// The session has ended or lacks data-connection ends.
    #[error("the session cannot take data connections")]
    NoSession,
}

impl Session {
    /// The session's public name, which its data connections carry.
    pub fn session_id(&self) -> SessionId {
        self.data_keys.session
    }

    /// Host side: a claim for a new data connection (a fresh id and
    /// nonce); `None` if the session cannot confirm data-connection ends
    /// or has no randomness.
    pub fn claim_data_conn(&self) -> Option<DataClaim> {
        let keys = &self.data_keys;
        let conn = keys.next_conn.fetch_add(1, Ordering::Relaxed);
        let ticket = self.data_end_ticket(conn)?;
        let fresh = ferry_protocol::auth::nonce().ok()?;
        let nonce: [u8; DATA_NONCE_LEN] = fresh[..DATA_NONCE_LEN].try_into().expect("a nonce is longer");
        let proof = DataProof { version: keys.version, session: keys.session, conn, nonce };
        Some(DataClaim { session: self.clone(), proof, ticket })
    }

    /// Agent side: admits a data connection's proof, naming this session:
    /// its MAC verifies (in constant time), its version is the session's
    /// and its id was never used. Returns the connection's end ticket.
    pub fn admit_data(&self, proof: &DataProof, mac: &[u8; MAC_LEN]) -> Result<EndTicket, DataRefusal> {
        let keys = &self.data_keys;
        if !proof.verify(&keys.key, mac) {
            return Err(DataHelloError::BadMac.into());
        }
        if proof.version != keys.version {
            return Err(DataRefusal::Version(proof.version, keys.version));
        }
        self.shared.with(|c| c.ends.admit(proof.conn))?;
        self.data_end_ticket(proof.conn).ok_or(DataRefusal::NoSession)
    }

    /// Agent side: checks the request that follows an admitted proof (the
    /// target bytes and the MAC) and returns its target.
    pub fn open_data_request(&self, proof: &DataProof, rest: &[u8]) -> Result<Target, DataRefusal> {
        Ok(proof.open_request(&self.data_keys.key, rest)?)
    }
}
