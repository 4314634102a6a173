//! Dev-server restarts: nodemon, webpack-dev-server, vite and `cargo watch`
//! close and re-open their listener on every save. A host port released the
//! moment its guest listener closes refuses the browser reload that lands in
//! that window, so a TCP port is kept through a grace period instead: the
//! host listener stays open, connections that arrive are held, handed over
//! when the guest listens again and reset only if it does not return in time.
//!
//! The forwarder owns one [`Gate`] per host port; each held connection waits
//! on it with [`wait_listening`].

use tokio::{sync::watch, time::Instant};

/// Whether the guest listener behind a host port is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestState {
    /// It listens: connections go through at once.
    Listening,
    /// It closed; the host port is kept until `until` in case it returns.
    Restarting {
        /// When the host port is released if the listener has not returned.
        until: Instant,
    },
    /// It did not return (or the forwarder stopped): held connections are reset.
    Gone,
}

/// The forwarder's side: sets the state all held connections see.
pub type Gate = watch::Sender<GuestState>;

/// A new gate for a listening guest port.
pub fn gate() -> Gate {
    watch::channel(GuestState::Listening).0
}

/// Waits until the guest listens; `false` if it is gone, its grace ends
/// first, or the forwarder dropped the gate.
pub async fn wait_listening(rx: &mut watch::Receiver<GuestState>) -> bool {
    loop {
        let state = *rx.borrow_and_update();
        match state {
            GuestState::Listening => return true,
            GuestState::Gone => return false,
            GuestState::Restarting { until } => {
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { return false },
                    _ = tokio::time::sleep_until(until) => return false,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn held_connections_go_through_when_the_listener_returns_in_time() {
        let gate = gate();
        let mut rx = gate.subscribe();
        assert!(wait_listening(&mut rx).await, "a listening port lets connections through");
        gate.send_replace(GuestState::Restarting { until: Instant::now() + Duration::from_secs(2) });
        let held = tokio::spawn(async move { wait_listening(&mut rx).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!held.is_finished(), "held while the guest restarts");
        gate.send_replace(GuestState::Listening);
        assert!(held.await.unwrap(), "handed over once the guest listens again");
    }

    #[tokio::test(start_paused = true)]
    async fn held_connections_are_refused_when_the_grace_ends_or_the_port_goes() {
        let gate = gate();
        gate.send_replace(GuestState::Restarting { until: Instant::now() + Duration::from_secs(2) });
        let mut rx = gate.subscribe();
        let start = Instant::now();
        assert!(!wait_listening(&mut rx).await);
        assert!(start.elapsed() >= Duration::from_secs(2), "not before the grace ends");
        let mut rx = gate.subscribe();
        let held = tokio::spawn(async move { wait_listening(&mut rx).await });
        gate.send_replace(GuestState::Gone);
        assert!(!held.await.unwrap());
        let mut rx = gate.subscribe();
        gate.send_replace(GuestState::Restarting { until: Instant::now() + Duration::from_secs(60) });
        drop(gate);
        assert!(!wait_listening(&mut rx).await, "a dropped gate refuses");
    }
}
