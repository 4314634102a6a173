//! What the peer asks of the application: streams to accept or refuse,
//! and control messages. The reader task makes these; the application
//! takes them from the session's event channel.

use std::sync::Arc;

use ferry_protocol::{connection::CommandError, ControlMessage, Target};

use crate::{
    shared::Shared,
    stream::{MuxStream, StreamError},
};

/// Something the peer asked of us.
pub enum SessionEvent {
    /// The peer wants a stream to `target`: accept or refuse it.
    Open(IncomingOpen),
    /// A control message.
    Control(ControlMessage),
}

/// A stream the peer asked to open, awaiting our answer.
pub struct IncomingOpen {
    /// Where the peer wants to be connected.
    pub target: Target,
    stream: Option<MuxStream>,
    shared: Arc<Shared>,
}

impl IncomingOpen {
    pub(crate) fn new(target: Target, stream: MuxStream, shared: Arc<Shared>) -> Self {
        Self { target, stream: Some(stream), shared }
    }

    /// Confirms the stream to the peer and returns it.
    pub async fn accept(mut self) -> Result<MuxStream, StreamError> {
        let stream = self.stream.take().expect("accepted once");
        let id = stream.id();
        match self.shared.with(|c| c.conn.accept(id)) {
            Ok(()) => Ok(stream),
            Err(CommandError::Closed(r)) => Err(StreamError::SessionClosed(r)),
            // The peer gave up on it (RESET) before the answer.
            Err(_) => Err(StreamError::Reset("the peer cancelled the open".into())),
        }
    }

    /// Tells the peer the target is unreachable, with the reason.
    pub fn refuse(mut self, reason: &str) {
        self.refuse_inner(reason);
    }

    fn refuse_inner(&mut self, reason: &str) {
        if let Some(stream) = self.stream.take() {
            // The halves see the stream already failed and send nothing more.
            self.shared.abort(stream.id(), reason);
            drop(stream);
        }
    }
}

impl Drop for IncomingOpen {
    fn drop(&mut self) {
        self.refuse_inner("open request dropped");
    }
}
