//! The session's book of data connection ends (see [`crate::data_end`]):
//! the far side's word on each connection, who waits for it, and the ids
//! the far side has used.

use std::{collections::HashMap, sync::Arc};

use ferry_protocol::data_conn::{ConnIdError, ConnIds};
use tokio::sync::Notify;

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
    pub fn hold(&mut self, conn: u64) -> Option<Arc<Notify>> {
        let slot = self.slots.entry(conn).or_default();
        if slot.held {
            return None;
        }
        slot.held = true;
        Some(slot.wake.clone())
    }

    pub fn far(&self, conn: u64) -> Option<Option<u64>> {
        self.slots.get(&conn).and_then(|s| s.far)
    }

    pub fn release(&mut self, conn: u64) {
        self.slots.remove(&conn);
    }

    /// Number of connections tracked.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.slots.len()
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
