//! The one policy for a failed accept(2), shared by every listener of both
//! binaries: a failure (EMFILE, ENFILE, ECONNABORTED and friends) is
//! transient, so it is logged (at most every few seconds, with a count of
//! the repeats), followed by a short pause instead of a spin, and the
//! listener keeps accepting.

use std::time::{Duration, Instant};

/// How long a listener pauses after a failed accept.
pub const PAUSE: Duration = Duration::from_millis(50);

/// How often a repeating failure is logged.
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// The failed accepts of one listener.
#[derive(Debug, Default)]
pub struct AcceptErrors {
    last: Option<Instant>,
    suppressed: u64,
}

impl AcceptErrors {
    /// Logs `msg` now, or counts it if a report was made recently.
    pub fn report(&mut self, msg: &str) {
        if self.last.is_none_or(|t| t.elapsed() >= REPORT_EVERY) {
            if self.suppressed > 0 {
                tracing::warn!("{msg} (and {} more times since the last report)", self.suppressed);
            } else {
                tracing::warn!("{msg}");
            }
            self.last = Some(Instant::now());
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
    }

    /// Reports a failed accept on `listener` and pauses before the next one.
    pub async fn pause_after(&mut self, listener: &str, error: &std::io::Error) {
        self.report(&format!("accept on {listener} failed: {error}; retrying"));
        tokio::time::sleep(PAUSE).await;
    }
}
