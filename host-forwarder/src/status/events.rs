//! `ferry run --events`: one JSON line on stdout per forwarding change, in
//! the shape of Lima's `PortForwardEvent` (time, type, protocol, guestAddr,
//! hostAddr, error), so tools that follow Lima can follow ferry.

use std::{
    io::Write,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc::SyncSender,
        OnceLock,
    },
    time::{Duration, Instant},
};

use serde::Serialize;

/// What happened to a forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// The host address accepts connections for the guest listener.
    Forwarding,
    /// The forward went away (the guest listener closed, or the session ended).
    NotForwarding,
    /// The forward is wanted but cannot be set up (the error says why).
    Failed,
}

#[derive(Serialize)]
struct Event<'a> {
    time: String,
    #[serde(rename = "type")]
    kind: EventKind,
    protocol: &'a str,
    #[serde(rename = "guestAddr")]
    guest: &'a str,
    #[serde(rename = "hostAddr")]
    host: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

/// Prints events when enabled; a no-op otherwise.
///
/// The lines go out from a thread of their own through a bounded queue: a
/// reader of ferry's stdout that stops reading fills the pipe, and a write
/// on the thread that forwards every connection would stop them all. Past
/// [`QUEUE`] waiting lines, new events are dropped (and counted in the log).
#[derive(Debug, Clone, Copy, Default)]
pub struct EventSink {
    enabled: bool,
}

/// The most event lines waiting for stdout.
pub const QUEUE: usize = 1024;

/// Lines queued and not yet written (for [`EventSink::finish`]).
static PENDING: AtomicUsize = AtomicUsize::new(0);
/// Events dropped because the queue was full.
static DROPPED: AtomicU64 = AtomicU64::new(0);

impl EventSink {
    /// A sink that prints only if `enabled`.
    pub fn new(enabled: bool) -> Self {
        Self { enabled }
    }

    /// Prints one event line (queues it for the writer).
    pub fn emit(&self, kind: EventKind, protocol: &str, guest: &str, host: &str, error: Option<&str>) {
        if !self.enabled {
            return;
        }
        let event = Event { time: rfc3339_now(), kind, protocol, guest, host, error };
        let line = serde_json::to_string(&event).expect("an event serialises");
        let Some(writer) = writer() else { return };
        PENDING.fetch_add(1, Ordering::Relaxed);
        if writer.try_send(line).is_err() {
            PENDING.fetch_sub(1, Ordering::Relaxed);
            if DROPPED.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::warn!("stdout takes no more events (is its reader stuck?); dropping them until it does");
            }
        }
    }

    /// Waits, at most `within`, for the queued lines to be written (before
    /// the process exits).
    pub fn finish(within: Duration) {
        let pending = PENDING.load(Ordering::Relaxed);
        if pending > 0 {
            tracing::debug!("writing the {pending} queued events before exiting");
        }
        let deadline = Instant::now() + within;
        while PENDING.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let dropped = DROPPED.load(Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!("{dropped} events were dropped: stdout did not take them");
        }
    }
}

/// The queue to the writer thread, started with the first event; `None`
/// if no thread could be made (events are then dropped, logged once).
fn writer() -> Option<&'static SyncSender<String>> {
    static WRITER: OnceLock<Option<SyncSender<String>>> = OnceLock::new();
    WRITER
        .get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<String>(QUEUE);
            let spawned = std::thread::Builder::new().name("ferry-events".into()).spawn(move || {
                for line in rx {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
                    PENDING.fetch_sub(1, Ordering::Relaxed);
                }
            });
            spawned.map_err(|e| tracing::warn!("no thread to print events ({e}); they are not printed")).ok()?;
            Some(tx)
        })
        .as_ref()
}

/// The current UTC time as RFC 3339 with milliseconds.
fn rfc3339_now() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, now.subsec_millis())
}

/// Days since 1970-01-01 to a (year, month, day) date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_right() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_416), (2025, 11, 24));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn events_serialise_like_lima() {
        let e = Event {
            time: "t".into(),
            kind: EventKind::NotForwarding,
            protocol: "tcp",
            guest: "127.0.0.1:80",
            host: "127.0.0.1:80",
            error: None,
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"time":"t","type":"not-forwarding","protocol":"tcp","guestAddr":"127.0.0.1:80","hostAddr":"127.0.0.1:80"}"#
        );
    }
}
