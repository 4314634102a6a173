//! Connections that have not yet proven the instance secret, bounded in
//! number as well as in time, so that a flood of silent or slow connections
//! can neither exhaust the agent's descriptors nor keep the real host out:
//! past [`MAX_PENDING`], each new connection closes the oldest one still
//! unauthenticated. A host authenticates within a round trip or two, so it
//! is not the oldest for long; a flood only churns through itself.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use tokio::task::AbortHandle;

/// The most connections waiting to authenticate at once.
pub const MAX_PENDING: usize = 256;

/// The unauthenticated connections, oldest first.
#[derive(Clone, Default)]
pub struct PreAuth(Arc<Mutex<Pending>>);

#[derive(Default)]
struct Pending {
    next: u64,
    tasks: VecDeque<(u64, AbortHandle)>,
    evicted: u64,
}

/// One connection's place among the unauthenticated; dropping it (once the
/// connection has authenticated, or has ended) gives the place up.
pub struct Ticket {
    pre_auth: PreAuth,
    id: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.pre_auth.0.lock().unwrap().tasks.retain(|(id, _)| *id != self.id);
    }
}

impl PreAuth {
    /// Spawns `serve` for a new connection, giving it its ticket; closes the
    /// oldest unauthenticated connection if there are too many.
    pub fn spawn<F, Fut>(&self, serve: F)
    where
        F: FnOnce(Ticket) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        // Held across the spawn, so the task cannot drop its ticket before
        // it is listed.
        let mut p = self.0.lock().unwrap();
        let id = p.next;
        p.next += 1;
        let task = tokio::spawn(serve(Ticket { pre_auth: self.clone(), id }));
        p.tasks.push_back((id, task.abort_handle()));
        if p.tasks.len() > MAX_PENDING {
            if let Some((_, oldest)) = p.tasks.pop_front() {
                oldest.abort();
                p.evicted += 1;
                if p.evicted.is_power_of_two() {
                    tracing::warn!(
                        "more than {MAX_PENDING} connections waiting to authenticate: closed the oldest \
                         ({} so far)",
                        p.evicted
                    );
                }
            }
        }
    }

    /// How many connections wait to authenticate now.
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.0.lock().unwrap().tasks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn past_the_bound_the_oldest_goes_and_authenticated_ones_leave_the_count() {
        let pre_auth = PreAuth::default();
        let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
        /// Reports its index when dropped: when its task ends or is aborted
        /// (even before it first ran).
        struct OnDrop(usize, tokio::sync::mpsc::UnboundedSender<usize>);
        impl Drop for OnDrop {
            fn drop(&mut self) {
                let _ = self.1.send(self.0);
            }
        }
        for i in 0..MAX_PENDING + 10 {
            let on_drop = OnDrop(i, closed_tx.clone());
            pre_auth.spawn(move |ticket| async move {
                let _d = on_drop;
                let _t = ticket;
                std::future::pending::<()>().await;
            });
        }
        let mut gone = Vec::new();
        for _ in 0..10 {
            gone.push(tokio::time::timeout(Duration::from_secs(5), closed.recv()).await.unwrap().unwrap());
        }
        gone.sort();
        assert_eq!(gone, (0..10).collect::<Vec<_>>(), "the ten oldest were closed");
        assert_eq!(pre_auth.pending(), MAX_PENDING);
        // One that authenticates (drops its ticket) leaves the count at once.
        let (done_tx, done) = tokio::sync::oneshot::channel();
        pre_auth.spawn(move |ticket| async move {
            drop(ticket);
            let _ = done_tx.send(());
        });
        done.await.unwrap();
        assert_eq!(pre_auth.pending(), MAX_PENDING - 1, "the new one evicted the oldest, then left");
    }
}
