//! Stream id allocation: the host opens odd ids, the agent even ids, so that
//! both may open streams at once without colliding.

use crate::{handshake::Role, StreamId};

/// Hands out the stream ids one peer may open.
#[derive(Debug, Clone)]
pub struct StreamIds {
    next: Option<StreamId>,
}

impl StreamIds {
    /// The id sequence for a peer in `role`.
    pub fn new(role: Role) -> Self {
        Self { next: Some(if role == Role::Host { 1 } else { 2 }) }
    }

    /// The next unused id, or `None` once the id space is exhausted (the
    /// session must then be re-established).
    pub fn next_id(&mut self) -> Option<StreamId> {
        let id = self.next?;
        self.next = id.checked_add(2);
        Some(id)
    }

    /// Whether `id` is one the *peer* of a `role` endpoint may open.
    pub fn is_peer_id(role: Role, id: StreamId) -> bool {
        id != 0 && (id % 2 == 1) == (role == Role::Agent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_agent_ids_never_collide() {
        let mut h = StreamIds::new(Role::Host);
        let mut a = StreamIds::new(Role::Agent);
        for _ in 0..100 {
            let (hi, ai) = (h.next_id().unwrap(), a.next_id().unwrap());
            assert_ne!(hi, ai);
            assert!(StreamIds::is_peer_id(Role::Agent, hi));
            assert!(StreamIds::is_peer_id(Role::Host, ai));
            assert!(!StreamIds::is_peer_id(Role::Host, hi));
        }
    }

    #[test]
    fn exhaustion_is_reported() {
        let mut h = StreamIds { next: Some(u32::MAX) };
        assert_eq!(h.next_id(), Some(u32::MAX));
        assert_eq!(h.next_id(), None);
    }
}
