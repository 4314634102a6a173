//! `scripts/soak.sh [MINUTES]` (or `cargo bench -p ferry-bench --bench soak -- --minutes N`):
//! a bounded soak of ferry's TCP forwarding (dedicated and multiplexed
//! routes at once). Every cycle: a bulk upload, checksummed echoes and a burst
//! of short connections on each route; it prints throughput over time, then
//! RSS and descriptor counts at the end, and fails on any checksum mismatch.
//! UDP and Unix-socket load join when those channels land.

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::Arc,
    time::{Duration, Instant},
};

use ferry_bench::{
    load::{connection_rate, upload, Endpoint},
    procstat::rss_bytes,
    servers::GuestServers,
};
use ferry_tests::{
    data::{pattern, sha256},
    free_port,
    procs::fd_count,
    require_root, Bridge,
};

/// Echoes `n` checksummed payloads; returns how many came back intact.
fn echo_checks(ep: &Endpoint, n: usize, seed: u64) -> usize {
    (0..n)
        .filter(|i| {
            let data = pattern(seed + *i as u64, 64 * 1024 + i * 4099);
            let Ok(mut s) = TcpStream::connect(ep.addr) else { return false };
            let mut w = s.try_clone().unwrap();
            let d2 = data.clone();
            let writer = std::thread::spawn(move || {
                w.write_all(&d2).unwrap();
                w.shutdown(std::net::Shutdown::Write).unwrap();
            });
            let mut back = Vec::new();
            let ok = s.read_to_end(&mut back).is_ok();
            writer.join().unwrap();
            ok && sha256(&back) == sha256(&data)
        })
        .count()
}

fn main() {
    let minutes: f64 =
        std::env::args().skip_while(|a| a != "--minutes").nth(1).and_then(|m| m.parse().ok()).unwrap_or(10.0);
    require_root();
    let routes =
        [("dedicated", Bridge::start_with(&[], &[])), ("multiplexed", Bridge::start_with(&[], &["--no-dedicated"]))];
    let servers: Vec<Arc<GuestServers>> = routes
        .iter()
        .map(|(_, b)| Arc::new(GuestServers::start(&b.guest.name, [free_port(), free_port(), free_port()])))
        .collect();
    let ep = |port: u16| Endpoint { addr: ([127, 0, 0, 1], port).into(), netns: None };
    for s in &servers {
        ferry_tests::wait_for(Duration::from_secs(20), "ports published", || {
            [s.sink, s.source, s.echo].iter().all(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok()).then_some(())
        });
    }
    let start = Instant::now();
    let (mut cycles, mut bad) = (0u64, 0usize);
    println!("{:>7} {:>12} {:>10} {:>8} {:>8}", "t (s)", "route", "Gbit/s", "conn/s", "echo ok");
    while start.elapsed() < Duration::from_secs_f64(minutes * 60.0) {
        for ((name, _), s) in routes.iter().zip(&servers) {
            let up = upload(&ep(s.sink), &s.counters, 4, Duration::from_secs(2), &mut || {});
            let rate = connection_rate(&ep(s.echo), Duration::from_secs(1));
            let ok = echo_checks(&ep(s.echo), 20, cycles * 100);
            bad += 20 - ok;
            println!(
                "{:>7.0} {:>12} {:>10.2} {:>8.0} {:>5}/20",
                start.elapsed().as_secs_f64(),
                name,
                up.gbit_s,
                rate,
                ok
            );
        }
        cycles += 1;
    }
    println!("\nafter {cycles} cycles ({:.1} min):", start.elapsed().as_secs_f64() / 60.0);
    for (name, b) in &routes {
        let (f, a) = (b.forwarder.pid(), b.agent.pid());
        println!(
            "  {name:>12}: ferry RSS {:.1} MiB, {} fds; agent RSS {:.1} MiB, {} fds",
            rss_bytes(&[f]) as f64 / 1048576.0,
            fd_count(f),
            rss_bytes(&[a]) as f64 / 1048576.0,
            fd_count(a)
        );
    }
    println!("  checksum mismatches: {bad}");
    assert_eq!(bad, 0, "echoed data differed from what was sent");
}
