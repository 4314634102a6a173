//! Confirming how each dedicated data connection ended, on the session
//! (the DATA_END feature).
//!
//! Over TCP the death of the far process looks exactly like its
//! half-close: both are a FIN. So each side tells the other, on the
//! authenticated session, how its half ended: [`EndTicket::sent_all`] after
//! a clean half-close (with the byte count), an abort otherwise (when the
//! ticket drops). A side that reads EOF on a data connection passes it on
//! as a clean end only once [`EndTicket::far_end`] confirms it with the
//! same byte count; without that (an abort, the session gone, no word in
//! time) it resets its local socket, so a cut transfer never looks
//! complete.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use ferry_protocol::ControlMessage;
use tokio::sync::Notify;

use crate::shared::Shared;

/// Longest wait, after a data connection's EOF, for the far side's word on
/// how it ended (it normally comes within a round trip of the EOF).
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// One data connection's end confirmation, held while it is relayed.
pub struct EndTicket {
    shared: Arc<Shared>,
    conn: u64,
    wake: Arc<Notify>,
    sent: AtomicBool,
}

impl EndTicket {
    /// A ticket for connection `conn`; `None` if one is already held.
    pub(crate) fn new(shared: Arc<Shared>, conn: u64) -> Option<Self> {
        let wake = shared.with(|c| c.ends.hold(conn))?;
        Some(Self { shared, conn, wake, sent: AtomicBool::new(false) })
    }

    /// The connection's id.
    pub fn id(&self) -> u64 {
        self.conn
    }

    /// Tells the far side this side sent exactly `bytes` bytes and then
    /// half-closed cleanly.
    pub fn sent_all(&self, bytes: u64) {
        if !self.sent.swap(true, Ordering::Relaxed) {
            self.send(Some(bytes));
        }
    }

    /// Releases the ticket of a connection that never started (its hello
    /// failed on the way, or its target was unreachable): the far side is
    /// told it aborted, which also spends its id there.
    pub fn cancel(self) {
        drop(self);
    }

    /// After an EOF on the data connection with `received` bytes read:
    /// whether the far side confirms it sent exactly those and half-closed
    /// cleanly. `false` for an abort, a different count, the session's end
    /// or no word within [`CONFIRM_TIMEOUT`].
    pub async fn far_end(&self, received: u64) -> bool {
        let wait = async {
            loop {
                let notified = self.wake.notified();
                if let Some(word) = self.shared.with(|c| c.ends.far(self.conn)) {
                    return word == Some(received);
                }
                notified.await;
            }
        };
        tokio::select! {
            // A word already recorded wins over the session's end that
            // follows it: a confirmed clean end is never reported as an abort.
            biased;
            confirmed = wait => confirmed,
            _ = self.shared.wait_closed() => self.shared.with(|c| c.ends.far(self.conn)) == Some(Some(received)),
            _ = tokio::time::sleep(CONFIRM_TIMEOUT) => {
                tracing::warn!(conn = self.conn, "no word on how the data connection ended within {CONFIRM_TIMEOUT:?}");
                false
            }
        }
    }

    fn send(&self, sent: Option<u64>) {
        let msg = ControlMessage::DataConnEnd { conn: self.conn, sent };
        let _ = self.shared.with(|c| c.conn.send_control(&msg));
    }
}

impl Drop for EndTicket {
    fn drop(&mut self) {
        if !self.sent.load(Ordering::Relaxed) {
            // This side's half did not end cleanly: say so, so that the far
            // side resets its end at once instead of waiting.
            self.send(None);
        }
        let conn = self.conn;
        self.shared.with(|c| c.ends.release(conn));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The far side's clean end is recorded, then the session closes (the
    /// far side finished and went away): both are ready when the waiter
    /// looks, and the word must win every time.
    #[tokio::test]
    async fn a_recorded_clean_end_wins_over_the_sessions_close() {
        use ferry_protocol::{connection::Connection, Role};
        for _ in 0..400 {
            let conn = Connection::new(Role::Host, Default::default(), std::time::Instant::now());
            let shared = Arc::new(Shared::new(conn));
            let ticket = EndTicket::new(shared.clone(), 1).unwrap();
            shared.with(|c| c.ends.record(1, Some(10)));
            shared.terminate("the far side is done");
            assert!(ticket.far_end(10).await, "a confirmed clean end reported as an abort");
            assert!(!ticket.far_end(11).await, "a different count is still an abort");
        }
    }
}
