//! The socket-table source: a sock_diag scan whenever the kernel says a port
//! may have appeared or gone, with a slow safety scan in between.
//!
//! Mechanism, chosen on numbers: a scan of TCP and UDP, IPv4 and IPv6, is
//! four netlink dumps of 12-15 µs each, nearly all of it in the kernel
//! walking its hash tables (measured: 56 µs, of which 0.2 µs user time).
//! What costs is scanning when nothing changed, so the scanner sleeps until
//! woken:
//! - new ports: [`bind_events`](super::bind_events) (the `bind()`/`listen()` syscall-exit
//!   tracepoints) wake it as the syscall returns;
//! - closed ports: [`destroy_events`](super::destroy_events) (sock_diag destroy broadcasts) wake it
//!   as the socket goes.
//!
//! A wake-up names what went stale (a `listen()` or a TCP destroy: the TCP
//! tables; a `bind()` or a UDP destroy: the UDP ones), and only that is
//! rescanned. Wake-ups are coalesced (each waits up to [`SETTLE`] for the
//! one that usually follows) and paced by a token bucket ([`ScanBudget`]),
//! so a program binding thousands of sockets costs at most a few percent of
//! a core. A safety scan every [`SAFETY_PERIOD`] catches what no tracepoint
//! shows (io_uring's bind and listen, 32-bit programs' syscalls).
//!
//! Where the tracepoints are unavailable (no CAP_PERFMON, no tracefs) the
//! scanner polls instead: every configured period (30 ms by default), and
//! every [`HOT_PERIOD`] for a short while after a change, because ports come
//! in bursts (a server restarting closes and listens again within
//! milliseconds; a stack starts several servers at once).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use ferry_protocol::Proto;

use super::{
    bind_events::BindEvents,
    destroy_events::DestroyEvents,
    sock_diag::SockDiag,
    watcher::{PortSet, Source, SourceSink},
};

/// The polling period right after a change, when polling.
pub const HOT_PERIOD: Duration = Duration::from_millis(5);

/// How long polling stays hot after the last change.
const HOT_FOR: Duration = Duration::from_millis(200);

/// The period of safety scans when tracepoints wake the scanner.
pub const SAFETY_PERIOD: Duration = Duration::from_secs(1);

/// How long a wake-up waits for the wake-up that usually follows it (a
/// `bind()` is followed by a `listen()` microseconds later), so that they
/// share one scan.
pub const SETTLE: Duration = Duration::from_millis(1);

/// Scans the guest's socket table.
pub struct SocketScanner {
    diag: SockDiag,
    interval: Duration,
    exclude: Vec<SocketAddr>,
    wakeups: Wakeups,
    hot_until: Instant,
    budget: ScanBudget,
    tcp: PortSet,
    udp: PortSet,
}

/// Which tables to scan next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stale {
    tcp: bool,
    udp: bool,
}

impl Stale {
    const ALL: Stale = Stale { tcp: true, udp: true };
    const NONE: Stale = Stale { tcp: false, udp: false };

    fn any(self) -> bool {
        self.tcp || self.udp
    }

    fn or(self, other: Stale) -> Stale {
        Stale { tcp: self.tcp || other.tcp, udp: self.udp || other.udp }
    }
}

impl SocketScanner {
    /// A scanner that polls with the given period unless `events` allows
    /// kernel events to wake it and they can (without `events`, it only
    /// polls), leaving out the agent's own transport listeners in `exclude`.
    pub fn new(interval: Duration, events: bool, exclude: Vec<SocketAddr>) -> std::io::Result<Self> {
        let diag = SockDiag::open()?;
        let destroys =
            if_allowed(events, DestroyEvents::open, "no socket-destroy events", "closed ports wait for a scan");
        let binds = if_allowed(events, BindEvents::open, "no bind/listen tracepoints", "new ports wait for a poll");
        let wakeups = Wakeups::new(binds, destroys);
        tracing::info!(
            "port discovery: {}",
            if wakeups.complete() {
                "woken by bind/listen tracepoints and destroy broadcasts".to_string()
            } else {
                format!("polling every {interval:?}")
            }
        );
        let (tcp, udp) = (PortSet::new(), PortSet::new());
        Ok(Self { diag, interval, exclude, wakeups, hot_until: Instant::now(), budget: ScanBudget::new(), tcp, udp })
    }

    /// Rescans the stale tables; returns the whole set.
    fn scan(&mut self, stale: Stale) -> std::io::Result<PortSet> {
        if stale.tcp {
            self.tcp = self.diag.listeners_of(Proto::Tcp)?;
            self.tcp.retain(|l| !self.exclude.contains(&l.addr));
        }
        if stale.udp {
            self.udp = self.diag.listeners_of(Proto::Udp)?;
            self.udp.retain(|l| !self.exclude.contains(&l.addr));
        }
        Ok(self.tcp.union(&self.udp).copied().collect())
    }

    /// Waits until the next scan is due, and says which tables it covers:
    /// those a wake-up names, or all at the end of the period (the safety
    /// period, or the polling period, short while hot).
    fn wait(&mut self) -> Stale {
        let period = if self.wakeups.complete() {
            SAFETY_PERIOD
        } else if Instant::now() < self.hot_until {
            HOT_PERIOD.min(self.interval)
        } else {
            self.interval
        };
        let stale = self.wakeups.wait(period);
        if !stale.any() {
            return Stale::ALL;
        }
        self.heat();
        let stale = stale.or(self.wakeups.wait(SETTLE));
        if self.budget.take() {
            // Waited for a scan to be allowed: take in what came meanwhile.
            return stale.or(self.wakeups.drain());
        }
        stale
    }

    fn heat(&mut self) {
        self.hot_until = Instant::now() + HOT_FOR;
    }
}

/// Opens a kernel event source where `allowed`; a failure is logged with
/// what it costs, and the scanner does without.
fn if_allowed<T>(allowed: bool, open: impl FnOnce() -> std::io::Result<T>, what: &str, consequence: &str) -> Option<T> {
    if !allowed {
        return None;
    }
    open().map_err(|e| tracing::warn!("{what} ({e}): {consequence}")).ok()
}

/// A token bucket for woken scans: a burst of [`ScanBudget::BURST`] at
/// once, then at most [`ScanBudget::RATE`] per second. An isolated change is
/// scanned at once; a storm of binds and closes is summed up in fewer scans.
struct ScanBudget {
    tokens: f64,
    at: Instant,
}

impl ScanBudget {
    const BURST: f64 = 4.0;
    const RATE: f64 = 100.0;

    fn new() -> Self {
        Self { tokens: Self::BURST, at: Instant::now() }
    }

    /// Takes one scan's token, sleeping until there is one; returns whether
    /// it had to sleep.
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + (now - self.at).as_secs_f64() * Self::RATE).min(Self::BURST);
        self.at = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            return false;
        }
        std::thread::sleep(Duration::from_secs_f64(-self.tokens / Self::RATE));
        true
    }
}

/// The kernel's signals that the socket table may have changed, polled
/// together by the scanner's thread.
struct Wakeups {
    binds: Option<BindEvents>,
    destroys: Option<DestroyEvents>,
    fds: Vec<libc::pollfd>,
}

impl Wakeups {
    fn new(binds: Option<BindEvents>, destroys: Option<DestroyEvents>) -> Self {
        let raw = binds.iter().flat_map(|b| b.fds()).chain(destroys.iter().flat_map(|d| d.fds()));
        let fds = raw.map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
        Self { binds, destroys, fds }
    }

    /// Whether both new and closed ports wake the scanner (no polling needed).
    fn complete(&self) -> bool {
        self.binds.is_some() && self.destroys.is_some()
    }

    /// Waits up to `timeout` for a signal; consumes every pending one and
    /// says which tables they make stale.
    fn wait(&mut self, timeout: Duration) -> Stale {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.fds.is_empty() {
                std::thread::sleep(left);
                return Stale::NONE;
            }
            // Round up, so that a sub-millisecond wait does not spin.
            let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            // SAFETY: `fds` is a valid array of pollfd for the whole call.
            let n = unsafe { libc::poll(self.fds.as_mut_ptr(), self.fds.len() as libc::nfds_t, ms) };
            let error = (n < 0).then(std::io::Error::last_os_error);
            if let Some(e) = error.filter(|e| e.kind() != std::io::ErrorKind::Interrupted) {
                tracing::warn!("polling for socket events failed ({e}); polling the table");
                *self = Self::new(None, None);
                continue;
            }
            let stale = self.drain();
            if stale.any() || Instant::now() >= deadline {
                return stale;
            }
        }
    }

    /// Consumes every pending signal and says which tables they make stale:
    /// a `bind()` may make a UDP listener (a TCP socket listens only at its
    /// `listen()`), and a destroy names its protocol.
    fn drain(&mut self) -> Stale {
        let hits = self.binds.as_ref().map(|b| b.drain()).unwrap_or_default();
        let gone = self.destroys.as_mut().map(|d| d.drain()).unwrap_or_default();
        Stale { tcp: hits.listen || gone.tcp, udp: hits.bind || gone.udp }
    }
}
impl Source for SocketScanner {
    fn name(&self) -> &'static str {
        "sockets"
    }

    fn run(mut self: Box<Self>, sink: SourceSink) {
        let mut failing = false;
        let mut last = None;
        let mut stale = Stale::ALL;
        while !sink.is_closed() {
            match self.scan(stale) {
                Ok(set) => {
                    failing = false;
                    if last.as_ref() != Some(&set) {
                        self.heat();
                        last = Some(set.clone());
                        sink.publish(set);
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!("port scan failed: {e}");
                    }
                    failing = true;
                }
            }
            let next = self.wait();
            stale = if failing { Stale::ALL } else { next };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_allows_a_burst_then_paces_scans() {
        let mut budget = ScanBudget::new();
        for _ in 0..ScanBudget::BURST as usize {
            assert!(!budget.take(), "a burst is scanned at once");
        }
        let t = Instant::now();
        assert!(budget.take(), "the next scan waits for a token");
        let waited = t.elapsed();
        assert!(waited >= Duration::from_secs_f64(0.5 / ScanBudget::RATE), "waited only {waited:?}");
    }

    #[test]
    fn stale_tables_accumulate() {
        let tcp = Stale { tcp: true, udp: false };
        let udp = Stale { tcp: false, udp: true };
        assert_eq!(tcp.or(udp), Stale::ALL);
        assert!(!Stale::NONE.any());
        assert_eq!(Stale::NONE.or(tcp), tcp);
    }
}
