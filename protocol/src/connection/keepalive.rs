//! Keepalive: a PING every interval, and the verdict "the peer is dead" once
//! nothing has been heard from it for the timeout.
//!
//! A timer that fires far too late means this process itself was not
//! running (an overloaded machine, a suspended VM or laptop): the silence
//! is then partly ours, so the peer is judged only after a full timeout of
//! this process running again.

use std::time::{Duration, Instant};

/// Keepalive tunables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepaliveConfig {
    /// Time between PINGs.
    pub interval: Duration,
    /// Silence after which the peer is declared dead.
    pub timeout: Duration,
}

/// What the keepalive wants done when its deadline passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeepaliveAction {
    /// Send a PING with this nonce.
    Ping(u64),
    /// The peer is dead: close the connection for this reason.
    Dead(String),
}

/// The keepalive state of one connection.
#[derive(Debug, Clone)]
pub struct Keepalive {
    cfg: KeepaliveConfig,
    next_ping: Instant,
    nonce: u64,
    judged_since: Instant,
}

impl Keepalive {
    /// Keepalive starting at `now`; the first PING goes after one interval.
    pub fn new(cfg: KeepaliveConfig, now: Instant) -> Self {
        Self { cfg, next_ping: now + cfg.interval, nonce: 0, judged_since: now }
    }

    /// When [`Keepalive::on_timer`] must run next.
    pub fn deadline(&self) -> Instant {
        self.next_ping
    }

    /// Runs the keepalive at `now`, given when the peer was last heard
    /// from. Does nothing before the deadline.
    pub fn on_timer(&mut self, now: Instant, last_heard: Instant) -> Option<KeepaliveAction> {
        if now < self.next_ping {
            return None;
        }
        if now.duration_since(self.next_ping) > self.cfg.interval {
            // The timer fired more than an interval late: we were not running.
            self.judged_since = now;
        }
        let silent = now.saturating_duration_since(last_heard);
        if silent > self.cfg.timeout && now.duration_since(self.judged_since) > self.cfg.timeout {
            return Some(KeepaliveAction::Dead(format!(
                "keepalive timeout: nothing heard from the peer for {} ms",
                silent.as_millis()
            )));
        }
        self.nonce += 1;
        self.next_ping = now + self.cfg.interval;
        Some(KeepaliveAction::Ping(self.nonce))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: KeepaliveConfig = KeepaliveConfig { interval: Duration::from_secs(1), timeout: Duration::from_secs(5) };

    #[test]
    fn pings_every_interval_and_declares_a_silent_peer_dead() {
        let t0 = Instant::now();
        let mut k = Keepalive::new(CFG, t0);
        assert_eq!(k.on_timer(t0, t0), None);
        for n in 1..=5 {
            let t = k.deadline();
            assert_eq!(k.on_timer(t, t0), Some(KeepaliveAction::Ping(n)));
        }
        let t = k.deadline();
        assert!(matches!(k.on_timer(t, t0), Some(KeepaliveAction::Dead(_))));
    }

    #[test]
    fn a_peer_that_answers_stays_alive() {
        let t0 = Instant::now();
        let mut k = Keepalive::new(CFG, t0);
        for _ in 0..100 {
            let t = k.deadline();
            assert!(matches!(k.on_timer(t, t - Duration::from_millis(10)), Some(KeepaliveAction::Ping(_))));
        }
    }

    #[test]
    fn a_late_timer_restarts_the_judgement() {
        let t0 = Instant::now();
        let mut k = Keepalive::new(CFG, t0);
        // Suspended for a minute: the peer is silent, but so were we.
        let woke = t0 + Duration::from_secs(60);
        assert!(matches!(k.on_timer(woke, t0), Some(KeepaliveAction::Ping(_))));
        // A full timeout after waking, still silent: now it is the peer.
        let mut verdict = None;
        while verdict.is_none() {
            let t = k.deadline();
            if let Some(KeepaliveAction::Dead(r)) = k.on_timer(t, t0) {
                verdict = Some((t, r));
            }
        }
        assert!(verdict.unwrap().0 - woke > CFG.timeout);
    }
}
