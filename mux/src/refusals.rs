//! Counting connections refused before they authenticated (bad hellos,
//! failed proofs, silence), so that a peer without the secret costs a
//! counter increment instead of a log line: the first refusal of a quiet
//! period is logged at once, and the rest as one summary line at most every
//! [`SUMMARY_EVERY`].

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::time::Instant;

/// The shortest time between two log lines about refusals.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// A process's refusals; clones share the count.
#[derive(Clone)]
pub struct Refusals(Arc<Inner>);

struct Inner {
    total: AtomicU64,
    window: Mutex<Window>,
    /// The shortest time between two lines.
    period: Duration,
}

impl Default for Refusals {
    fn default() -> Self {
        Self::with_period(SUMMARY_EVERY)
    }
}

/// What has not been logged yet.
#[derive(Default)]
struct Window {
    last_line: Option<Instant>,
    unlogged: u64,
    latest: String,
    /// A summary is scheduled for the end of the current period.
    scheduled: bool,
}

impl Refusals {
    /// Refusals logged at most once per `period`.
    pub fn with_period(period: Duration) -> Self {
        Self(Arc::new(Inner { total: AtomicU64::new(0), window: Mutex::default(), period }))
    }

    /// Counts one refusal of a `what` (e.g. "session", "data connection")
    /// for `reason`, logging it now or in the next summary.
    pub fn record(&self, what: &str, reason: &str) {
        self.0.total.fetch_add(1, Ordering::Relaxed);
        let mut w = self.0.window.lock().unwrap();
        let now = Instant::now();
        match w.last_line {
            Some(t) if now.duration_since(t) < self.0.period => {
                w.unlogged += 1;
                if w.unlogged == 1 {
                    w.latest = format!("{what}: {reason}");
                }
                if !w.scheduled && tokio::runtime::Handle::try_current().is_ok() {
                    w.scheduled = true;
                    let due = t + self.0.period;
                    let me = self.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep_until(due).await;
                        me.summarise();
                    });
                }
            }
            _ => {
                tracing::warn!("refused a {what}: {reason}");
                w.last_line = Some(now);
            }
        }
    }

    /// Logs what was counted since the last line, if anything.
    fn summarise(&self) {
        let mut w = self.0.window.lock().unwrap();
        w.scheduled = false;
        if w.unlogged > 0 {
            tracing::warn!(
                "refused {} more unauthenticated connections in the last {:?} ({} since start; the first: {})",
                w.unlogged,
                self.0.period,
                self.total(),
                w.latest
            );
            w.unlogged = 0;
            w.last_line = Some(Instant::now());
        }
    }

    /// Refusals since the process started.
    pub fn total(&self) -> u64 {
        self.0.total.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_flood_is_counted_and_summarised_once_per_period() {
        let period = Duration::from_millis(200);
        let r = Refusals::with_period(period);
        for i in 0..5000 {
            r.record("data connection", &format!("bad proof {i}"));
        }
        assert_eq!(r.total(), 5000);
        {
            let w = r.0.window.lock().unwrap();
            assert_eq!(w.unlogged, 4999, "one line at once, the rest counted");
            assert!(w.scheduled);
            assert_eq!(w.latest, "data connection: bad proof 1");
        }
        tokio::time::sleep(period * 2).await;
        let w = r.0.window.lock().unwrap();
        assert_eq!(w.unlogged, 0, "the summary went out");
        assert!(!w.scheduled);
    }
}
