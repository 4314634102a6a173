//! A multiplexed session over one transport: the handshake, then the
//! tokio driver of the sans-I/O [`Connection`]: a reader task, a writer
//! task and a timer task around it, and the handles the application uses.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use ferry_protocol::{
    auth::Secret,
    connection::{self, CommandError, Connection, KeepaliveConfig, OpenFailure},
    handshake::{features, Negotiated},
    ControlMessage, Role, Target,
};
use tokio::sync::{mpsc, oneshot};

pub use crate::handshake::SessionError;
pub use crate::incoming::{IncomingOpen, SessionEvent};
use crate::{
    data_auth::DataKeys,
    data_end::EndTicket,
    sealed::{SealedReader, SealedWriter},
    shared::Shared,
    stream::MuxStream,
    transport::Transport,
};

/// Tunables of a session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Per-stream receive window in bytes.
    pub window: u32,
    /// Most concurrent streams (opened by either side) when the peer opens
    /// one.
    pub max_streams: usize,
    /// Most receive memory all streams together may pin (each up to its
    /// window): streams beyond it are refused, by either side.
    pub max_stream_memory: u64,
    /// How often to ping the peer, if both offered keepalive (the
    /// KEEPALIVE feature bit; every ferry does).
    pub keepalive_interval: Duration,
    /// Silence after which the peer is declared dead.
    pub keepalive_timeout: Duration,
    /// Longest wait for the peer's answer to an OPEN (the peer's own connect
    /// has a shorter timeout, so this catches only a peer that stopped
    /// answering); the stream is then reset.
    pub open_timeout: Duration,
    /// Most bytes of frames waiting on the urgent queue (answers, credit,
    /// resets, control messages) before the session is closed as one whose
    /// peer reads nothing.
    pub max_urgent_bytes: usize,
    /// Longest wait for the whole handshake (hello and authentication).
    pub handshake_timeout: Duration,
    /// The per-instance secret both peers must prove; `None` only for
    /// `--insecure-no-auth`, and then the peer must not require it either.
    pub secret: Option<Arc<Secret>>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            window: ferry_protocol::flow::DEFAULT_WINDOW,
            max_streams: 16_384,
            max_stream_memory: 4 << 30,
            keepalive_interval: Duration::from_secs(1),
            keepalive_timeout: Duration::from_secs(5),
            max_urgent_bytes: 64 << 20,
            open_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            secret: None,
        }
    }
}

/// Why opening a stream failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The peer could not reach the target.
    #[error("open refused: {0}")]
    Refused(String),
    /// The session is gone.
    #[error("session closed: {0}")]
    SessionClosed(String),
    /// This session has used up its stream ids.
    #[error("stream ids exhausted; the session must be re-established")]
    IdsExhausted,
    /// The peer did not answer within the session's `open_timeout`.
    #[error("no answer from the peer within {0:?}")]
    Timeout(Duration),
    /// Another stream would pass the session's stream or memory limit.
    #[error("{0}")]
    Limit(String),
}

/// A handle on a running session; clones share it.
#[derive(Clone)]
pub struct Session {
    pub(crate) shared: Arc<Shared>,
    negotiated: Negotiated,
    pub(crate) data_keys: Arc<DataKeys>,
}

impl Session {
    /// Performs the handshake over `transport` and starts the session's
    /// tasks. Returns the handle and the events the peer sends; the event
    /// channel ends when the session does.
    pub async fn start(
        mut transport: Transport,
        role: Role,
        cfg: SessionConfig,
    ) -> Result<(Session, mpsc::Receiver<SessionEvent>), SessionError> {
        let peer = transport.peer.clone();
        let handshake = crate::handshake::run(&mut transport, role, cfg.secret.as_deref());
        let agreed = match tokio::time::timeout(cfg.handshake_timeout, handshake).await {
            Err(_) => return Err(SessionError::Timeout { peer, timeout: cfg.handshake_timeout }),
            Ok(r) => r?,
        };
        let negotiated = agreed.negotiated;
        // Over a network every byte from here on is sealed (without a
        // secret the keys would be public, and there is nothing to seal with).
        if negotiated.features & features::SEALED != 0 && agreed.authenticated {
            let (send, receive) = match role {
                Role::Host => (&agreed.keys.host_to_agent, &agreed.keys.agent_to_host),
                Role::Agent => (&agreed.keys.agent_to_host, &agreed.keys.host_to_agent),
            };
            transport.reader = Box::pin(SealedReader::new(transport.reader, receive));
            transport.writer = Box::pin(SealedWriter::new(transport.writer, send));
        }
        let data_keys = Arc::new(DataKeys::new(&agreed.keys, negotiated.version));
        // A peer that did not offer KEEPALIVE answers no pings: its silence
        // proves nothing, so it is not timed out.
        let keepalive = (negotiated.features & features::KEEPALIVE != 0)
            .then_some(KeepaliveConfig { interval: cfg.keepalive_interval, timeout: cfg.keepalive_timeout });
        let conn_cfg = connection::Config {
            window: cfg.window,
            max_streams: cfg.max_streams,
            max_stream_memory: cfg.max_stream_memory,
            max_urgent_bytes: cfg.max_urgent_bytes,
            open_timeout: cfg.open_timeout,
            keepalive,
            ..connection::Config::default()
        };
        let (events_tx, events_rx) = mpsc::channel(256);
        let shared = Arc::new(Shared::new(Connection::new(role, conn_cfg, Instant::now())));
        let Transport { reader, writer, child, .. } = transport;
        tokio::spawn(crate::writer::run(shared.clone(), writer));
        tokio::spawn(crate::reader::run(shared.clone(), reader, events_tx));
        tokio::spawn(timers(shared.clone()));
        if let Some(mut child) = child {
            // Reap an exec: transport's command, and close the session when it exits.
            let s = shared.clone();
            tokio::spawn(async move {
                tokio::select! {
                    status = child.wait() => s.terminate(&format!("transport command exited ({})",
                        status.map(|st| st.to_string()).unwrap_or_else(|e| e.to_string()))),
                    _ = s.wait_closed() => { let _ = child.kill().await; }
                }
            });
        }
        Ok((Session { shared, negotiated, data_keys }, events_rx))
    }

    /// What the handshake agreed on.
    pub fn negotiated(&self) -> Negotiated {
        self.negotiated
    }

    /// Whether the session's bytes travel in sealed records (a network
    /// transport, both sides authenticated).
    pub fn is_sealed(&self) -> bool {
        self.negotiated.features & features::SEALED != 0 && self.negotiated.features & features::AUTH != 0
    }

    /// A ticket to confirm how data connection `conn` ends (see
    /// [`crate::data_end`]): `None` if the session did not negotiate
    /// DATA_END, or a ticket for `conn` is already held.
    pub fn data_end_ticket(&self, conn: u64) -> Option<EndTicket> {
        if self.negotiated.features & features::DATA_END == 0 {
            return None;
        }
        EndTicket::new(self.shared.clone(), conn)
    }

    /// Opens a stream to `target` on the peer's side and waits for the answer.
    pub async fn open(&self, target: &Target) -> Result<MuxStream, OpenError> {
        let (tx, reply) = oneshot::channel();
        let parts = self.shared.with(|c| {
            let id = c.conn.open(target, Instant::now())?;
            Ok(c.register(id, Some(tx)))
        });
        let parts = parts.map_err(|e| match e {
            CommandError::Closed(r) => OpenError::SessionClosed(r),
            CommandError::IdsExhausted => OpenError::IdsExhausted,
            CommandError::Limit(l) => OpenError::Limit(l),
            // Opening names no existing stream; kept total all the same.
            e @ CommandError::NotAllowed(_) => OpenError::Limit(e.to_string()),
        })?;
        // Dropping this future drops the stream, which cancels the OPEN (a
        // RESET behind it); the connection itself times an unanswered OPEN out.
        let stream = MuxStream::new(parts, self.shared.clone());
        let failure = match reply.await {
            Ok(Ok(())) => return Ok(stream),
            Ok(Err(failure)) => failure,
            Err(_) => OpenFailure::Ended(String::new()),
        };
        if let Some(r) = self.shared.closed_reason() {
            return Err(OpenError::SessionClosed(r.to_string()));
        }
        Err(match failure {
            OpenFailure::Refused(r) | OpenFailure::Ended(r) => OpenError::Refused(r),
            OpenFailure::TimedOut(d) => OpenError::Timeout(d),
        })
    }

    /// Sends a control message to the peer.
    pub fn send_control(&self, msg: &ControlMessage) -> Result<(), OpenError> {
        self.shared.with(|c| c.conn.send_control(msg)).map_err(|e| OpenError::SessionClosed(e.to_string()))
    }

    /// Number of streams currently open.
    pub fn stream_count(&self) -> usize {
        self.shared.with(|c| c.conn.stream_count())
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.closed_reason().is_some()
    }

    /// Waits until the session ends and returns why.
    pub async fn closed(&self) -> String {
        self.shared.wait_closed().await;
        self.shared.closed_reason().map(|r| r.to_string()).unwrap_or_default()
    }

    /// Closes the session, telling the peer why (GOAWAY) first.
    pub async fn close(&self, reason: &str) {
        self.shared.with(|c| c.conn.close(reason));
        let closed = self.closed();
        if tokio::time::timeout(Duration::from_secs(1), closed).await.is_err() {
            self.shared.terminate(reason);
        }
    }
}

/// Runs the connection's timers (keepalive, open timeouts) at their
/// deadlines until the session ends.
async fn timers(shared: Arc<Shared>) {
    while shared.closed_reason().is_none() {
        let wake = shared.timer_wake.notified();
        let deadline = shared.with(|c| c.conn.poll_timeout());
        tokio::select! {
            _ = wake => {}
            _ = shared.wait_closed() => return,
            _ = async {
                match deadline {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            } => shared.with(|c| c.conn.handle_timeout(Instant::now())),
        }
    }
}
