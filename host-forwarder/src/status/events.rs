//! `ferry run --events`: one JSON line on stdout per forwarding change, in
//! the shape of Lima's `PortForwardEvent` (time, type, protocol, guestAddr,
//! hostAddr, error), so tools that follow Lima can follow ferry.

use std::io::Write;

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
#[derive(Debug, Clone, Copy, Default)]
pub struct EventSink {
    enabled: bool,
}

impl EventSink {
    /// A sink that prints only if `enabled`.
    pub fn new(enabled: bool) -> Self {
        Self { enabled }
    }

    /// Prints one event line.
    pub fn emit(&self, kind: EventKind, protocol: &str, guest: &str, host: &str, error: Option<&str>) {
        if !self.enabled {
            return;
        }
        let event = Event { time: rfc3339_now(), kind, protocol, guest, host, error };
        let line = serde_json::to_string(&event).expect("an event serialises");
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
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
