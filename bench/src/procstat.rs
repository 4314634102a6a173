//! CPU time and memory of a forwarder's processes, and whether the machine
//! is quiet, read from /proc.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

fn clock_ticks() -> f64 {
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// (ppid, utime+stime, start time) in ticks.
fn stat(pid: u32) -> Option<(u32, u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Some((n(1) as u32, n(11) + n(12), n(19)))
}

fn uptime_ticks() -> u64 {
    let up = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
    let secs: f64 = up.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (secs * clock_ticks()) as u64
}

/// The processes under `roots` (inclusive) with their CPU ticks and start times.
fn tree(roots: &[u32]) -> HashMap<u32, (u64, u64)> {
    let mut all: HashMap<u32, (u32, u64, u64)> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
                if let Some(st) = stat(pid) {
                    all.insert(pid, st);
                }
            }
        }
    }
    let in_tree = |mut pid: u32| {
        for _ in 0..64 {
            if roots.contains(&pid) {
                return true;
            }
            match all.get(&pid) {
                Some((ppid, _, _)) if *ppid > 1 => pid = *ppid,
                _ => return false,
            }
        }
        false
    };
    all.iter().filter(|(pid, _)| in_tree(**pid)).map(|(pid, (_, ticks, start))| (*pid, (*ticks, *start))).collect()
}

/// Measures the CPU time of a process tree over an interval by sampling it,
/// so that children which fork per connection and are reaped without
/// accounting (socat ignores SIGCHLD) still count.
pub struct CpuMeter {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<f64>,
}

impl CpuMeter {
    /// Starts sampling the tree under `roots` every 20 ms.
    pub fn start(roots: &[u32]) -> Self {
        let roots = roots.to_vec();
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let began = uptime_ticks();
            // pid -> (ticks when first seen, or 0 if born after we began; last ticks)
            let mut seen: HashMap<u32, (u64, u64)> = HashMap::new();
            loop {
                let done = s2.load(Ordering::Relaxed);
                for (pid, (ticks, start)) in tree(&roots) {
                    let e = seen.entry(pid).or_insert((if start >= began { 0 } else { ticks }, ticks));
                    e.1 = ticks;
                }
                if done {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            seen.values().map(|(first, last)| last.saturating_sub(*first)).sum::<u64>() as f64 / clock_ticks()
        });
        Self { stop, thread }
    }

    /// Stops sampling and returns the CPU seconds used since `start`.
    pub fn stop(self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(0.0)
    }
}

pub use ferry_tests::procs::rss_bytes;

/// The machine's CPU time so far, from /proc/stat's first line, in ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MachineTicks {
    /// Ticks some CPU spent running anything (user, nice, system, irq,
    /// softirq; guest time is part of user).
    busy: u64,
    /// `busy` plus idle and iowait. Steal, the time the hypervisor gave to
    /// other VMs, is in neither: it says nothing of what runs here.
    total: u64,
}

impl MachineTicks {
    /// Now's ticks; zero if /proc/stat cannot be read.
    fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        stat.lines().find(|l| l.starts_with("cpu ")).map(Self::parse).unwrap_or_default()
    }

    /// Parses the `cpu ` line: user nice system idle iowait irq softirq ...
    fn parse(line: &str) -> Self {
        let f: Vec<u64> = line.split_whitespace().skip(1).map(|v| v.parse().unwrap_or(0)).collect();
        let at = |i: usize| f.get(i).copied().unwrap_or(0);
        let busy = at(0) + at(1) + at(2) + at(5) + at(6);
        Self { busy, total: busy + at(3) + at(4) }
    }
}

/// How many CPUs' worth may be busy for the machine to count as quiet.
pub const QUIET_CPUS: f64 = 0.2;

/// Whether the machine was quiet between two readings: under
/// [`QUIET_CPUS`] busy on average, on a machine of `cpus` CPUs. A reading
/// that did not move on (or went back: iowait may) says nothing, so it is
/// not quiet.
pub fn was_quiet(before: MachineTicks, after: MachineTicks, cpus: usize) -> bool {
    let total = after.total.saturating_sub(before.total);
    if total == 0 || after.total < before.total || after.busy < before.busy {
        return false;
    }
    let busy = after.busy - before.busy;
    (busy as f64 / total as f64) * (cpus as f64) < QUIET_CPUS
}

/// Readings one window apart; the machine is quiet after [`QUIET_WINDOWS`]
/// quiet windows in a row (at 100 ticks a second one window holds only 10
/// ticks per CPU, so a single one could miss a process at a third of a
/// core).
const WINDOW: std::time::Duration = std::time::Duration::from_millis(100);
const QUIET_WINDOWS: usize = 2;

/// The CPUs /proc/stat counts: every CPU of the machine, not only those
/// this process may use.
pub fn machine_cpus() -> usize {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    stat.lines().filter(|l| l.starts_with("cpu") && !l.starts_with("cpu ")).count().max(1)
}

/// Waits until the machine of `cpus` CPUs ([`machine_cpus`]) is quiet (see
/// [`was_quiet`]), for at most `limit`; returns how long it waited and whether the machine went quiet.
/// A path measured right after another must not pay for what the other
/// still does: its clients end with a reset, but a forwarder that
/// collapsed under many streams (ssh -L) can still be working through
/// what its own buffers and its peer's hold.
pub fn settle(limit: std::time::Duration, cpus: usize) -> (std::time::Duration, bool) {
    let began = std::time::Instant::now();
    let (mut last, mut quiet_in_a_row) = (MachineTicks::now(), 0);
    while began.elapsed() < limit {
        std::thread::sleep(WINDOW);
        let now = MachineTicks::now();
        quiet_in_a_row = if was_quiet(last, now, cpus) { quiet_in_a_row + 1 } else { 0 };
        last = now;
        if quiet_in_a_row >= QUIET_WINDOWS {
            return (began.elapsed(), true);
        }
    }
    (began.elapsed(), false)
}

/// [`settle`] before each measurement, remembering the waits for the
/// report: a figure measured on a machine that never went quiet is worth
/// knowing about when it looks odd.
#[derive(Debug)]
pub struct Settler {
    limit: std::time::Duration,
    cpus: usize,
    waited: std::time::Duration,
    longest: std::time::Duration,
    times: usize,
    /// What was measured while the machine stayed busy for all of `limit`.
    unsettled: Vec<String>,
}

/// The measurements on a busy machine the report names (the rest it counts).
const UNSETTLED_NAMED: usize = 10;

impl Settler {
    /// Waits at most `limit` each time.
    pub fn new(limit: std::time::Duration) -> Self {
        let zero = std::time::Duration::ZERO;
        Self { limit, cpus: machine_cpus(), waited: zero, longest: zero, times: 0, unsettled: Vec::new() }
    }

    /// Waits for a quiet machine before `what` is measured.
    pub fn before(&mut self, what: &str) {
        let (waited, quiet) = settle(self.limit, self.cpus);
        self.waited += waited;
        self.longest = self.longest.max(waited);
        self.times += 1;
        if !quiet {
            self.unsettled.push(what.to_string());
        }
    }

    /// A line for the report: what the waits were for, how long they took,
    /// and what was measured on a machine still busy (none if nothing was
    /// measured).
    pub fn summary(&self) -> Option<String> {
        if self.times == 0 {
            return None;
        }
        let mut line = format!(
            "Before each TCP, round-trip, connection and concurrent-stream measurement the bench waits until \
             the machine is quiet (under {QUIET_CPUS} CPU busy over {} windows of {} ms in a row; {} s at most): \
             {:.1} s in all for {} measurements, {:.1} s at the longest",
            QUIET_WINDOWS,
            WINDOW.as_millis(),
            self.limit.as_secs(),
            self.waited.as_secs_f64(),
            self.times,
            self.longest.as_secs_f64(),
        );
        match self.unsettled.len() {
            0 => line.push('.'),
            n => {
                let named = self.unsettled[..n.min(UNSETTLED_NAMED)].join(", ");
                let more =
                    if n > UNSETTLED_NAMED { format!(" and {} more", n - UNSETTLED_NAMED) } else { String::new() };
                line.push_str(&format!("; {n} ran on a machine still busy: {named}{more}."));
            }
        }
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meter_counts_children_born_during_the_interval() {
        let mut root = std::process::Command::new("sh")
            .args(["-c", "sleep 0.1; timeout 0.8 sh -c 'while :; do :; done'; sleep 0.2"])
            .spawn()
            .unwrap();
        let meter = CpuMeter::start(&[root.id()]);
        root.wait().unwrap();
        let secs = meter.stop();
        assert!(secs > 0.3, "busy child used {secs} s");
    }

    #[test]
    fn quiet_means_under_a_fifth_of_a_cpu_busy_between_readings_that_moved_on() {
        let reading = |busy, total| MachineTicks { busy, total };
        // 2 CPUs, a 100 ms window: 20 ticks.
        assert!(was_quiet(reading(100, 1000), reading(101, 1020), 2), "0.1 CPU busy");
        assert!(!was_quiet(reading(100, 1000), reading(103, 1020), 2), "0.3 CPU busy");
        assert!(!was_quiet(reading(100, 1000), reading(110, 1020), 2), "one core spinning");
        // 16 CPUs, 160 ticks: one spinning core is a sixteenth of the machine, still busy.
        assert!(!was_quiet(reading(0, 0), reading(10, 160), 16), "one core of sixteen");
        assert!(was_quiet(reading(0, 0), reading(1, 160), 16));
        assert!(!was_quiet(reading(5, 100), reading(5, 100), 2), "a reading that did not move on");
        assert!(!was_quiet(reading(5, 100), reading(5, 90), 2), "a total that went back");
    }

    #[test]
    fn the_cpu_line_is_read_without_steal() {
        // user nice system idle iowait irq softirq steal guest guest_nice
        let t = MachineTicks::parse("cpu  100 2 30 500 7 0 11 900 40 0");
        assert_eq!(t, MachineTicks { busy: 143, total: 650 });
        assert_eq!(MachineTicks::parse("cpu"), MachineTicks::default());
    }
}
