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
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use ferry_protocol::{
    data_conn::{ConnIdError, ConnIds},
    ControlMessage,
};
use tokio::sync::Notify;

use crate::shared::Shared;

/// Longest wait, after a data connection's EOF, for the far side's word on
/// how it ended (it normally comes within a round trip of the EOF).
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// Most connections the book tracks: the far side's word on a connection
/// this side no longer (or never) tracks is dropped past it.
const MAX_SLOTS: usize = 16_384;

/// What the far side said of one connection, and who waits for it.
#[derive(Debug, Default)]
struct Slot {
    /// A ticket of this side holds the slot.
    held: bool,
    /// The far side's word: `Some(Some(n))` clean after `n` bytes,
    /// `Some(None)` aborted.
    far: Option<Option<u64>>,
    wake: Arc<Notify>,
}

/// The session's record of data connection ends, and of the ids the far
/// side has used.
#[derive(Debug, Default)]
pub(crate) struct EndBook {
    slots: HashMap<u64, Slot>,
    /// The far side's data connection ids seen so far: each is admitted once.
    used: ConnIds,
}

impl EndBook {
    /// Admits the far side's new data connection `conn`: an error if the id
    /// was used already (a replay) or is too old.
    pub fn admit(&mut self, conn: u64) -> Result<(), ConnIdError> {
        self.used.accept(conn)
    }

    /// Records the far side's word on `conn` and wakes whoever waits for it.
    /// After an abort the id is spent, whether or not its hello ever came
    /// (a clean end's word may overtake its own hello, which must then
    /// still be admitted).
    pub fn record(&mut self, conn: u64, sent: Option<u64>) {
        if sent.is_none() {
            self.used.retire(conn);
        }
        if !self.slots.contains_key(&conn) && self.slots.len() >= MAX_SLOTS {
            // Words on connections nobody here holds (they ended here first).
            self.slots.retain(|_, s| s.held);
            if self.slots.len() >= MAX_SLOTS {
                return;
            }
        }
        let slot = self.slots.entry(conn).or_default();
        slot.far = Some(sent);
        slot.wake.notify_one();
    }

    /// Holds the slot of `conn` for a ticket; `None` if one already does.
    fn hold(&mut self, conn: u64) -> Option<Arc<Notify>> {
        let slot = self.slots.entry(conn).or_default();
        if slot.held {
            return None;
        }
        slot.held = true;
        Some(slot.wake.clone())
    }

    fn far(&self, conn: u64) -> Option<Option<u64>> {
        self.slots.get(&conn).and_then(|s| s.far)
    }

    fn release(&mut self, conn: u64) {
        self.slots.remove(&conn);
    }

    /// Number of connections tracked.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.slots.len()
    }
}

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

    #[test]
    fn a_word_before_the_ticket_is_kept_for_it() {
        let mut book = EndBook::default();
        book.record(7, Some(100));
        assert!(book.hold(7).is_some());
        assert_eq!(book.far(7), Some(Some(100)));
        assert!(book.hold(7).is_none(), "one ticket per connection");
        book.release(7);
        assert_eq!(book.len(), 0);
    }

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

    #[test]
    fn an_abort_spends_the_id_and_a_clean_word_does_not() {
        let mut book = EndBook::default();
        book.record(3, Some(5));
        assert_eq!(book.admit(3), Ok(()), "a clean word may overtake its own hello");
        book.record(4, None);
        assert!(book.admit(4).is_err(), "an aborted connection's id is spent");
    }

    #[test]
    fn words_nobody_holds_are_bounded() {
        let mut book = EndBook::default();
        assert!(book.hold(1).is_some());
        for conn in 2..(MAX_SLOTS as u64 + 10) {
            book.record(conn, None);
        }
        assert!(book.len() <= MAX_SLOTS);
        assert!(book.slots.get(&1).is_some_and(|s| s.held), "held slots survive");
    }
}
