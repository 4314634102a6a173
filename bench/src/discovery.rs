//! Port discovery: how fast a guest listener appears on (and disappears
//! from) the host, and what the agent's discovery costs in CPU.

use std::{
    net::TcpStream,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use ferry_tests::{free_port, Guest};

/// (median, p99) of `ms`.
fn median_p99(mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (ms[ms.len() / 2], ms[(ms.len() * 99 / 100).min(ms.len() - 1)])
}

fn wait_until(what: &str, port: u16, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(30), "port {port}: {what} never happened");
        std::thread::sleep(Duration::from_micros(500));
    }
}

fn host_accepts(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// Opens `samples` fresh listeners in `guest`, one after another at random
/// moments after a quiet spell (so the agent's scanner is not hot), and times
/// (a) from `listen()` until the host's 127.0.0.1 port accepts and (b) from
/// `close()` until the host port refuses. Returns ((median, p99) of (a),
/// (median, p99) of (b)) in milliseconds.
pub fn appear_and_release(guest: &Guest, samples: usize) -> ((f64, f64), (f64, f64)) {
    let (mut appear, mut release) = (Vec::with_capacity(samples), Vec::with_capacity(samples));
    let mut seed = std::process::id() as u64 | 1;
    for _ in 0..samples {
        // Listen at a random moment, not in step with the previous release
        // (which itself triggered a scan).
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_micros(300_000 + seed % 100_000));
        let port = free_port();
        let t0 = Instant::now();
        let listener = guest.run_in(move || std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind in guest"));
        wait_until("appear", port, || host_accepts(port));
        appear.push(t0.elapsed().as_secs_f64() * 1e3);
        // Take the probe connection off the backlog so close() is a plain close.
        let _ = listener.accept();
        let t1 = Instant::now();
        drop(listener);
        wait_until("release", port, || !host_accepts(port));
        release.push(t1.elapsed().as_secs_f64() * 1e3);
    }
    (median_p99(appear), median_p99(release))
}

/// CPU time of every thread of `pid` so far, in nanoseconds (schedstat:
/// exact, unlike the 10 ms ticks of /proc/PID/stat).
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// The agent's CPU use, in % of one core, over `dur`; with `churn_hz`, a
/// guest thread binds and closes a listener that many times per second
/// meanwhile (each cycle a discovery add and remove).
pub fn agent_cpu_percent(agent_pid: u32, guest: &Guest, dur: Duration, churn_hz: Option<u32>) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let churner = churn_hz.map(|hz| {
        let (stop, ns) = (stop.clone(), format!("/run/netns/{}", guest.name));
        std::thread::spawn(move || {
            let f = std::fs::File::open(ns).expect("netns");
            let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0);
            let port = free_port();
            let period = Duration::from_secs(1) / hz;
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let l = std::net::TcpListener::bind(("127.0.0.1", port)).ok();
                std::thread::sleep(period / 2);
                drop(l);
                next += period;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        })
    });
    let (c0, t0) = (cpu_ns(agent_pid), Instant::now());
    std::thread::sleep(dur);
    let (c1, t1) = (cpu_ns(agent_pid), Instant::now());
    stop.store(true, Ordering::Relaxed);
    if let Some(t) = churner {
        t.join().expect("churn thread");
    }
    (c1 - c0) as f64 / (t1 - t0).as_nanos() as f64 * 100.0
}
