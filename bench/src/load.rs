//! Load generators: blocking client threads, so that every path is driven
//! by the same simple, low-overhead code.

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Condvar, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{enter_netns, servers::SinkCounters};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Where clients connect: an address, from the host or from inside a namespace.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The address to dial.
    pub addr: SocketAddr,
    /// Dial from inside this network namespace (the direct path).
    pub netns: Option<String>,
}

impl Endpoint {
    fn client_thread<T: Send + 'static>(&self, f: impl FnOnce(SocketAddr) -> T + Send + 'static) -> JoinHandle<T> {
        let (addr, ns) = (self.addr, self.netns.clone());
        std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(move || {
                if let Some(ns) = ns {
                    enter_netns(&ns);
                }
                f(addr)
            })
            .expect("client thread")
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    try_connect(addr).unwrap_or_else(|| panic!("cannot connect to {addr}"))
}

/// Connects, retrying for a while (a forwarder may still be publishing).
fn try_connect(addr: SocketAddr) -> Option<TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect(addr) {
            Ok(s) => return Some(s),
            Err(e) if Instant::now() > deadline => {
                eprintln!("connect {addr}: {e}");
                return None;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// A start line for client threads: they block until it opens, instead
/// of polling a flag (a thousand threads polling every millisecond kept
/// hundreds runnable and starved the forwarder's processes for seconds).
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    /// Blocks until [`Gate::open`].
    fn wait(&self) {
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
    }

    /// Lets every waiting thread go.
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

/// Closes `s` with a reset, dropping whatever it still holds unsent or
/// unread: a path that fell behind (`ssh -L` with 100 streams holds hundreds
/// of megabytes in its buffers) then has no backlog to work through while
/// the next path is measured.
pub fn reset(s: TcpStream) {
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    drop(s);
}

fn sink_total(counters: &SinkCounters, ids: &[u64]) -> Vec<u64> {
    let map = counters.lock().unwrap();
    ids.iter().map(|id| map.get(id).map(|c| c.load(Ordering::Relaxed)).unwrap_or(0)).collect()
}

/// Result of a many-stream upload.
#[derive(Debug, Clone, Copy)]
pub struct Upload {
    /// Aggregate throughput.
    pub gbit_s: f64,
    /// Jain's fairness index of the per-stream byte counts (1 = perfectly fair).
    pub jain: f64,
    /// The smallest stream's share relative to the mean (0 = starved).
    pub min_share: f64,
    /// Bytes moved in the measured window.
    pub bytes: u64,
    /// Bytes moved from the first write to the last (for CPU per byte).
    pub total_bytes: u64,
}

/// `streams` clients upload to the sink for `dur`; the sink's counters are
/// the measure. `on_idle` runs once all streams are open and still idle.
pub fn upload(
    ep: &Endpoint,
    counters: &SinkCounters,
    streams: usize,
    dur: Duration,
    on_idle: &mut dyn FnMut(),
) -> Upload {
    let stop = Arc::new(AtomicBool::new(false));
    let go = Arc::new(Gate::default());
    let ids: Vec<u64> = (0..streams).map(|_| NEXT_ID.fetch_add(1, Ordering::Relaxed)).collect();
    let handles: Vec<_> = ids
        .iter()
        .map(|&id| {
            let (stop, go) = (stop.clone(), go.clone());
            ep.client_thread(move |addr| {
                let Some(mut s) = try_connect(addr) else { return };
                if s.write_all(&id.to_le_bytes()).is_err() {
                    return;
                }
                go.wait();
                // A timeout lets a starved stream (some paths starve streams)
                // still notice the stop, instead of blocking the join forever.
                let _ = s.set_write_timeout(Some(Duration::from_millis(100)));
                let buf = vec![0xa5u8; 128 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    match s.write(&buf) {
                        Ok(_) => {}
                        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                        Err(_) => break,
                    }
                }
                reset(s);
            })
        })
        .collect();
    // Wait until the sink has seen every stream (or give up on the laggards),
    // then let the caller look at the idle state.
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let map = counters.lock().unwrap();
        if ids.iter().all(|id| map.contains_key(id)) {
            break;
        }
        drop(map);
        std::thread::sleep(Duration::from_millis(10));
    }
    on_idle();
    go.open();
    std::thread::sleep(Duration::from_millis(300));
    let before = sink_total(counters, &ids);
    let t0 = Instant::now();
    std::thread::sleep(dur);
    let after = sink_total(counters, &ids);
    let secs = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    let total_bytes = sink_total(counters, &ids).iter().sum();
    // The sink resets these streams at their next bytes (see `reset`).
    counters.lock().unwrap().retain(|id, _| !ids.contains(id));
    let per: Vec<f64> = after.iter().zip(&before).map(|(a, b)| (a - b) as f64).collect();
    let sum: f64 = per.iter().sum();
    let sq: f64 = per.iter().map(|x| x * x).sum();
    let mean = sum / per.len() as f64;
    Upload {
        gbit_s: sum * 8.0 / secs / 1e9,
        jain: if sq > 0.0 { sum * sum / (per.len() as f64 * sq) } else { 0.0 },
        min_share: if mean > 0.0 { per.iter().cloned().fold(f64::MAX, f64::min) / mean } else { 0.0 },
        bytes: sum as u64,
        total_bytes,
    }
}

/// `n` connections to the echo server, each answered once (so that every
/// hop holds it open end to end) and then left idle until dropped: a
/// browser's or a database pool's keep-alive connections beside a
/// transfer. Opening stops at the first connection that fails; the caller
/// counts those opened.
pub fn idle_connections(ep: &Endpoint, n: usize) -> Vec<TcpStream> {
    let open = move |addr| {
        let answered = |_| {
            let mut s = try_connect(addr)?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            s.write_all(&[7]).ok()?;
            let mut answer = [0u8; 1];
            s.read_exact(&mut answer).ok()?;
            Some(s)
        };
        (0..n).map_while(answered).collect()
    };
    ep.client_thread(open).join().unwrap_or_default()
}

/// `streams` clients download from the source for `dur`; returns Gbit/s.
pub fn download(ep: &Endpoint, streams: usize, dur: Duration) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let go = Arc::new(Gate::default());
    let handles: Vec<_> = (0..streams)
        .map(|_| {
            let (stop, total, go) = (stop.clone(), total.clone(), go.clone());
            ep.client_thread(move |addr| {
                let Some(mut s) = try_connect(addr) else { return };
                let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
                let mut buf = vec![0u8; 256 * 1024];
                go.wait();
                while !stop.load(Ordering::Relaxed) {
                    match s.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            total.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                        Err(_) => break,
                    }
                }
                reset(s);
            })
        })
        .collect();
    go.open();
    std::thread::sleep(Duration::from_millis(300));
    let before = total.load(Ordering::Relaxed);
    let t0 = Instant::now();
    std::thread::sleep(dur);
    let bytes = total.load(Ordering::Relaxed) - before;
    let secs = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    bytes as f64 * 8.0 / secs / 1e9
}

/// 64-byte request/response round trips on one connection: (median, p99) in µs.
pub fn round_trips(ep: &Endpoint, n: usize) -> (f64, f64) {
    ep.client_thread(move |addr| {
        let mut s = connect(addr);
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let msg = [7u8; 64];
        let mut back = [0u8; 64];
        let mut us = Vec::with_capacity(n);
        for i in 0..n + n / 10 {
            let t = Instant::now();
            s.write_all(&msg).unwrap();
            s.read_exact(&mut back).unwrap();
            if i >= n / 10 {
                us.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        us.sort_by(|a, b| a.partial_cmp(b).unwrap());
        (us[us.len() / 2], us[us.len() * 99 / 100])
    })
    .join()
    .expect("round-trip client")
}

/// Round trips on just-opened connections: connect, one 64-byte echo,
/// close, `n` times one after another; (median, p99) in µs from the start
/// of connect(2) to the whole echo received (first-byte latency: what a new
/// request pays before its first answer).
pub fn first_round_trips(ep: &Endpoint, n: usize) -> (f64, f64) {
    ep.client_thread(move |addr| {
        let msg = [7u8; 64];
        let mut back = [0u8; 64];
        let mut us = Vec::with_capacity(n);
        for i in 0..n + n / 10 {
            let t = Instant::now();
            let mut s = connect(addr);
            s.set_nodelay(true).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(&msg).unwrap();
            s.read_exact(&mut back).unwrap();
            if i >= n / 10 {
                us.push(t.elapsed().as_secs_f64() * 1e6);
            }
            drop(s);
        }
        us.sort_by(|a, b| a.partial_cmp(b).unwrap());
        (us[us.len() / 2], us[us.len() * 99 / 100])
    })
    .join()
    .expect("first-round-trip client")
}

/// Connections per second: connect, 1-byte echo, close, for `dur`.
pub fn connection_rate(ep: &Endpoint, dur: Duration) -> f64 {
    ep.client_thread(move |addr| {
        let t0 = Instant::now();
        let mut n = 0u64;
        let mut b = [0u8; 1];
        while t0.elapsed() < dur {
            let mut s = connect(addr);
            s.set_nodelay(true).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"x").unwrap();
            s.read_exact(&mut b).unwrap();
            drop(s);
            n += 1;
        }
        n as f64 / t0.elapsed().as_secs_f64()
    })
    .join()
    .expect("connection-rate client")
}
