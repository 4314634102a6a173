//! Servers inside the guest: sink, source and echo, on blocking threads.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use crate::enter_netns;

/// Per-connection byte counters of the sink, keyed by the 8-byte id each
/// client sends first.
pub type SinkCounters = Arc<Mutex<HashMap<u64, Arc<AtomicU64>>>>;

/// The guest's three servers and their ports.
pub struct GuestServers {
    /// Reads and counts everything (bulk uploads, fairness).
    pub sink: u16,
    /// Writes forever (bulk downloads).
    pub source: u16,
    /// Echoes (round trips, connection rate).
    pub echo: u16,
    /// Bytes received by the sink, per connection id.
    pub counters: SinkCounters,
}

impl GuestServers {
    /// Starts the servers on 127.0.0.1 inside namespace `ns`.
    pub fn start(ns: &str, ports: [u16; 3]) -> Self {
        let counters: SinkCounters = Arc::default();
        let c2 = counters.clone();
        spawn_server(ns, ports[0], move |s| sink(s, &c2));
        spawn_server(ns, ports[1], source);
        spawn_server(ns, ports[2], echo);
        Self { sink: ports[0], source: ports[1], echo: ports[2], counters }
    }
}

fn spawn_server(ns: &str, port: u16, handler: impl Fn(TcpStream) + Send + Sync + Clone + 'static) {
    let ns = ns.to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        enter_netns(&ns);
        let l = TcpListener::bind(("127.0.0.1", port)).expect("bind guest server");
        tx.send(()).unwrap();
        for s in l.incoming().flatten() {
            let h = handler.clone();
            std::thread::Builder::new().stack_size(64 * 1024).spawn(move || h(s)).expect("server thread");
        }
    });
    rx.recv().expect("server started");
}

fn sink(mut s: TcpStream, counters: &SinkCounters) {
    let mut id = [0u8; 8];
    if s.read_exact(&mut id).is_err() {
        return;
    }
    let counter = Arc::new(AtomicU64::new(0));
    counters.lock().unwrap().insert(u64::from_le_bytes(id), counter.clone());
    let mut buf = vec![0u8; 256 * 1024];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        counter.fetch_add(n as u64, Ordering::Relaxed);
        // The measurement took its counter back: what is still arriving is
        // a backlog that would only burden the next path's measurement.
        if Arc::strong_count(&counter) == 1 {
            crate::load::reset(s);
            return;
        }
    }
}

fn source(mut s: TcpStream) {
    let buf = vec![0x5au8; 256 * 1024];
    while s.write_all(&buf).is_ok() {}
}

fn echo(mut s: TcpStream) {
    let _ = s.set_nodelay(true);
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 || s.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}
