//! Port-discovery latency: from a guest `listen()` to the host port accepting.

use std::{
    net::TcpStream,
    time::{Duration, Instant},
};

use ferry_tests::{free_port, Guest};

/// Opens `samples` fresh listeners in `guest`, one after another, and times
/// how long each takes to become connectable on the host's 127.0.0.1.
/// Returns (median, p99) in milliseconds.
pub fn listen_to_host_accept(guest: &Guest, samples: usize) -> (f64, f64) {
    let mut ms = Vec::with_capacity(samples);
    for _ in 0..samples {
        let port = free_port();
        let t0 = Instant::now();
        let listener = guest.run_in(move || std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind in guest"));
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "port {port} never appeared on the host");
            std::thread::sleep(Duration::from_micros(500));
        }
        ms.push(t0.elapsed().as_secs_f64() * 1e3);
        drop(listener);
    }
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (ms[ms.len() / 2], ms[(ms.len() * 99 / 100).min(ms.len() - 1)])
}
