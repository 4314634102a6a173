//! CPU time and memory of a forwarder's processes, read from /proc.

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

/// The machine's (busy, total) CPU ticks so far, from /proc/stat.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else { return (0, 0) };
    let f: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is in user).
    let total: u64 = f.iter().take(8).sum();
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Waits until the machine is quiet (under a tenth of its CPUs busy over
/// 100 ms), for at most `limit`; returns how long it waited. A path
/// measured right after another must not pay for what the other still
/// does: a forwarder that collapsed under many streams drains its buffers
/// for seconds after its clients are gone.
pub fn settle(limit: std::time::Duration) -> std::time::Duration {
    let began = std::time::Instant::now();
    let mut last = machine_ticks();
    while began.elapsed() < limit {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let now = machine_ticks();
        let (busy, total) = (now.0 - last.0, now.1 - last.1);
        last = now;
        if total > 0 && busy * 10 < total {
            break;
        }
    }
    began.elapsed()
}

/// [`settle`] before each measurement, remembering the waits for the
/// report: a path measured on a machine that never went quiet is worth
/// knowing about when its figure looks odd.
#[derive(Debug)]
pub struct Settler {
    limit: std::time::Duration,
    waited: std::time::Duration,
    times: usize,
    /// What was measured after the machine stayed busy for all of `limit`.
    unsettled: Vec<String>,
}

impl Settler {
    /// Waits at most `limit` each time.
    pub fn new(limit: std::time::Duration) -> Self {
        Self { limit, waited: std::time::Duration::ZERO, times: 0, unsettled: Vec::new() }
    }

    /// Waits for a quiet machine before `what` is measured.
    pub fn before(&mut self, what: &str) {
        let waited = settle(self.limit);
        self.waited += waited;
        self.times += 1;
        if waited >= self.limit {
            self.unsettled.push(what.to_string());
        }
    }

    /// A line for the report: how long the waits took, and what was
    /// measured on a machine still busy.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "Waited {:.1} s in all for a quiet machine before {} measurements",
            self.waited.as_secs_f64(),
            self.times
        );
        if self.unsettled.is_empty() {
            line.push('.');
        } else {
            line.push_str(&format!(
                "; still busy after {} s before: {}.",
                self.limit.as_secs_f64(),
                self.unsettled.join(", ")
            ));
        }
        line
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
    fn settle_waits_while_the_machine_is_busy() {
        let mut busy =
            std::process::Command::new("timeout").args(["0.6", "sh", "-c", "while :; do :; done"]).spawn().unwrap();
        let waited = settle(std::time::Duration::from_secs(5));
        busy.wait().unwrap();
        // Half the machine or more stays busy while the loop spins.
        assert!(waited >= std::time::Duration::from_millis(500), "settled after {waited:?} while a core spun");
    }
}
