//! `cargo bench --bench forwarding [-- --quick]`: forwarding scenarios over
//! the namespace harness, for ferry and for the baselines, in one run.
//!
//! Paths: direct (client inside the guest: the limit), ferry in its modes,
//! socat two-hop over a Unix socket with 256 KiB buffers, the two-hop floor
//! (a minimal C relay pair: what the topology itself costs), ssh -L, ferry
//! over ssh, and a Go yamux forwarder (see docs/performance.md). Results:
//! target/bench/forwarding.{md,json}.

use std::{sync::Arc, time::Duration};

use ferry_bench::{
    discovery::{agent_cpu_percent, appear_and_release},
    load::{connection_rate, download, first_round_trips, idle_connections, reset, round_trips, upload},
    paths::{self, ForwardPath},
    procstat::{rss_bytes, CpuMeter, Settler},
    report::Report,
    servers::GuestServers,
    udp::kernel_drops,
};
use ferry_tests::{free_port, require_root, Bridge, Guest};

struct Plan {
    discovery: usize,
    cpu_window: Duration,
    udp_rates: Vec<u64>,
    file_burst: usize,
    rounds: usize,
    dur: Duration,
    rr: usize,
    /// Round trips on just-opened connections.
    first_rr: usize,
    many: usize,
}

/// The idle connections (each answered once, then left open) beside the
/// one bulk stream of the `idle` row: what a browser's or a database pool's
/// keep-alive connections cost a transfer, on every path.
const IDLE: usize = 100;

/// How long the `idle` row's connections stay idle before the upload starts.
const IDLE_FOR: Duration = Duration::from_millis(2500);

/// The longest wait for a quiet machine before a path is measured (see
/// `procstat::settle`).
const SETTLE: Duration = Duration::from_secs(3);

fn main() {
    let quick = std::env::args().any(|a| a == "--quick") || std::env::var_os("FERRY_BENCH_QUICK").is_some();
    let plan = if quick {
        Plan {
            discovery: 10,
            cpu_window: Duration::from_secs(2),
            udp_rates: vec![10_000, 50_000],
            file_burst: 1000,
            // Three rounds, so that every row shows its spread.
            rounds: 3,
            dur: Duration::from_millis(500),
            rr: 2000,
            first_rr: 200,
            many: 100,
        }
    } else {
        Plan {
            discovery: 100,
            cpu_window: Duration::from_secs(5),
            udp_rates: vec![10_000, 50_000, 100_000],
            file_burst: 5000,
            rounds: 2,
            dur: Duration::from_secs(2),
            rr: 20_000,
            first_rr: 1000,
            many: 1000,
        }
    };
    // FERRY_BENCH_UDP_RATES=100000,200000 offers these UDP rates instead.
    let plan = match std::env::var("FERRY_BENCH_UDP_RATES") {
        Ok(r) => {
            Plan { udp_rates: r.split(',').map(|x| x.trim().parse().expect("FERRY_BENCH_UDP_RATES")).collect(), ..plan }
        }
        Err(_) => plan,
    };
    // FERRY_BENCH_MANY=N runs the concurrent-streams rows with N streams.
    let plan = match std::env::var("FERRY_BENCH_MANY") {
        Ok(n) => Plan { many: n.trim().parse().expect("FERRY_BENCH_MANY"), ..plan },
        Err(_) => plan,
    };
    // FERRY_BENCH_ROUNDS=N runs N rounds (each row then shows its spread).
    let plan = match std::env::var("FERRY_BENCH_ROUNDS") {
        Ok(n) => Plan { rounds: n.trim().parse::<usize>().expect("FERRY_BENCH_ROUNDS").max(1), ..plan },
        Err(_) => plan,
    };
    // FERRY_BENCH_ONLY=tcp,rr,conn,many,idle,udp,discovery,files runs only those sections.
    let only = std::env::var("FERRY_BENCH_ONLY").ok();
    let want = |section: &str| only.as_deref().is_none_or(|o| o.split(',').any(|s| s.trim() == section));
    require_root();
    build_binaries();
    // Two guests, identical servers: one bridged by ferry in its default mode
    // (dedicated spliced connections on a Unix transport), one by ferry with
    // every stream multiplexed over the session (the mode of exec: transports).
    // The release row measures the agent's close detection, so the main
    // bridge releases at once (`--restart-grace-ms 0`); by default a TCP
    // port is kept 2 s in case a dev server restarts. Nothing else differs.
    let bridge = Bridge::start_with(&[], &["--restart-grace-ms", "0"]);
    let bridge_mux = Bridge::start_with(&[], &["--no-dedicated"]);
    // FERRY_BENCH_WARM=1 adds ferry with 4 warm data connections (dialled
    // and proven ahead of the clients), for the A/B of that pool.
    let warm = std::env::var_os("FERRY_BENCH_WARM").is_some();
    let bridge_warm = warm.then(|| Bridge::start_with(&[], &["--warm-data-conns", "4"]));
    // A third: both sides on the portable data paths a macOS host runs
    // (copy relay instead of splice, one datagram per call).
    let bridge_portable = Bridge::start_env(Guest::new(), &[("FERRY_PORTABLE", "1")], &[], &[], &[]);
    // Two more over TCP (a veth link, as Lima's vzNAT network), the session
    // sealed in both: every stream inside it (the default), and connections
    // on dedicated data connections in clear (`--unsealed-data-conns`).
    let bridge_tcp = Bridge::start_over_tcp_with(&["--restart-grace-ms", "0", "--unsealed-data-conns"]);
    let bridge_tcp_mux = Bridge::start_over_tcp_with(&[]);
    let servers = Arc::new(GuestServers::start(&bridge.guest.name, [free_port(), free_port(), free_port()]));
    let servers_tcp = Arc::new(GuestServers::start(&bridge_tcp.guest.name, [free_port(), free_port(), free_port()]));
    let servers_tcp_mux =
        Arc::new(GuestServers::start(&bridge_tcp_mux.guest.name, [free_port(), free_port(), free_port()]));
    let servers_mux = Arc::new(GuestServers::start(&bridge_mux.guest.name, [free_port(), free_port(), free_port()]));
    let servers_portable =
        Arc::new(GuestServers::start(&bridge_portable.guest.name, [free_port(), free_port(), free_port()]));
    let servers_warm = bridge_warm
        .as_ref()
        .map(|b| Arc::new(GuestServers::start(&b.guest.name, [free_port(), free_port(), free_port()])));
    let work = tempfile::tempdir().expect("tempdir");
    let mut report = Report::default();
    let mut quiet = Settler::new(SETTLE);
    if want("discovery") {
        report.notes.push("Port release is measured with --restart-grace-ms 0 (by default 2 s of grace).".into());
    }

    let mut all: Vec<ForwardPath> = vec![
        paths::direct(&bridge.guest, &servers),
        paths::ferry("ferry", &bridge, &servers),
        paths::ferry("ferry (mux)", &bridge_mux, &servers_mux),
        paths::ferry("ferry (portable)", &bridge_portable, &servers_portable),
        paths::ferry("ferry (tcp)", &bridge_tcp, &servers_tcp),
        paths::ferry("ferry (tcp, sealed mux)", &bridge_tcp_mux, &servers_tcp_mux),
    ];
    if let (Some(b), Some(s)) = (&bridge_warm, &servers_warm) {
        all.push(paths::ferry("ferry (warm)", b, s));
    }
    for (name, made) in [
        ("socat -b262144", paths::socat(&bridge.guest, work.path(), &servers)),
        ("two-hop floor", paths::two_hop_floor(&bridge.guest, work.path(), &servers)),
        ("ssh -L", paths::ssh(&bridge.guest, work.path(), &servers)),
        ("ferry (exec:ssh)", paths::ferry_over_ssh(&bridge.guest, work.path(), &servers, false)),
        ("ferry (ssh master)", paths::ferry_over_ssh(&bridge.guest, work.path(), &servers, true)),
        ("ssh master floor", paths::ssh_master_floor(&bridge.guest, work.path(), &servers)),
        ("yamux (Go)", paths::yamux(&bridge.guest, work.path(), &servers)),
    ] {
        match made {
            Ok(p) => all.push(p),
            Err(why) => report.notes.push(format!("{name} not measured: {why}")),
        }
    }
    report
        .notes
        .push("Not measured here: pasta (its port forwarding needs a user namespace set-up of its own).".into());
    report.pairs.push(("ferry (mux)".into(), "yamux (Go)".into()));
    report.pairs.push(("ferry (exec:ssh)".into(), "ssh -L".into()));
    report.pairs.push(("ferry (ssh master)".into(), "ssh -L".into()));
    report.pairs.push(("ferry (ssh master)".into(), "ssh master floor".into()));
    report.pairs.push(("ssh master floor".into(), "ssh -L".into()));
    report.pairs.push(("ferry (portable)".into(), "socat".into()));
    report.notes.push(format!(
        "Mode: {} ({} round(s), {:?} per throughput sample, {} round trips, {} on just-opened connections, {} concurrent streams).",
        if quick { "quick" } else { "full" },
        plan.rounds,
        plan.dur,
        plan.rr,
        plan.first_rr,
        plan.many
    ));
    // FERRY_BENCH_PATHS=direct,ferry measures only those paths (names as in the report).
    if let Ok(names) = std::env::var("FERRY_BENCH_PATHS") {
        all.retain(|p| names.split(',').any(|n| n.trim() == p.name));
    }
    for p in &all {
        report.paths.push(p.name.to_string());
    }

    for round in 0..plan.rounds {
        let mut order: Vec<&ForwardPath> = all.iter().collect();
        order.rotate_left(round % all.len());
        eprintln!("round {}/{}: {:?}", round + 1, plan.rounds, order.iter().map(|p| p.name).collect::<Vec<_>>());
        for streams in [1, 4].into_iter().filter(|_| want("tcp")) {
            for p in &order {
                quiet.before(&format!("{} (host->guest, {streams} stream(s))", p.name));
                let meter = CpuMeter::start(&p.pids);
                let up = upload(&p.sink(), &p.servers.counters, streams, plan.dur, &mut || {});
                let cpu = meter.stop();
                report.record(&format!("TCP bulk host->guest, {streams} stream(s)"), "Gbit/s", true, p.name, up.gbit_s);
                // A stalled transfer (ssh -L sometimes stalls) says nothing of CPU per GB.
                if streams == 1 && !p.pids.is_empty() && up.total_bytes >= 64 << 20 {
                    let per_gb = cpu / (up.total_bytes as f64 / 1e9);
                    report.record("CPU of the forwarder per GB (1 stream)", "CPU s/GB", false, p.name, per_gb);
                }
            }
            for p in &order {
                quiet.before(&format!("{} (guest->host, {streams} stream(s))", p.name));
                let g = download(&p.source(), streams, plan.dur);
                report.record(&format!("TCP bulk guest->host, {streams} stream(s)"), "Gbit/s", true, p.name, g);
            }
        }
        for p in order.iter().filter(|_| want("rr")) {
            quiet.before(&format!("{} (round trips)", p.name));
            let meter = CpuMeter::start(&p.pids);
            let (med, p99) = round_trips(&p.echo(), plan.rr);
            let cpu = meter.stop();
            report.record("64 B round trip, median", "µs", false, p.name, med);
            report.record("64 B round trip, p99", "µs", false, p.name, p99);
            if !p.pids.is_empty() {
                let trips = (plan.rr + plan.rr / 10) as f64;
                report.record("CPU of the forwarder per round trip", "µs", false, p.name, cpu * 1e6 / trips);
            }
        }
        for p in order.iter().filter(|_| want("rr")) {
            quiet.before(&format!("{} (round trips on new connections)", p.name));
            let (med, p99) = first_round_trips(&p.echo(), plan.first_rr);
            report.record("64 B round trip on a just-opened connection, median", "µs", false, p.name, med);
            report.record("64 B round trip on a just-opened connection, p99", "µs", false, p.name, p99);
        }
        for p in order.iter().filter(|_| want("conn")) {
            quiet.before(&format!("{} (connections/s)", p.name));
            let meter = CpuMeter::start(&p.pids);
            let r = connection_rate(&p.echo(), plan.dur);
            let cpu = meter.stop();
            report.record("connections/s (connect, 1 B echo, close)", "conn/s", true, p.name, r);
            if !p.pids.is_empty() && r > 0.0 {
                let conns = r * plan.dur.as_secs_f64();
                report.record("CPU of the forwarder per connection", "µs", false, p.name, cpu * 1e6 / conns);
            }
        }
        for p in order.iter().filter(|_| want("many")) {
            quiet.before(&format!("{} ({} streams)", p.name, plan.many));
            let rss0 = rss_bytes(&p.pids);
            let mut rss_idle = 0;
            let up = upload(&p.sink(), &p.servers.counters, plan.many, plan.dur, &mut || {
                std::thread::sleep(Duration::from_millis(300));
                rss_idle = rss_bytes(&p.pids);
            });
            let n = plan.many;
            report.record(&format!("{n} concurrent streams, aggregate"), "Gbit/s", true, p.name, up.gbit_s);
            report.record(&format!("{n} concurrent streams, Jain fairness"), "index", true, p.name, up.jain);
            report.record(&format!("{n} concurrent streams, smallest/mean"), "ratio", true, p.name, up.min_share);
            if p.name.starts_with("ferry") {
                let per = rss_idle.saturating_sub(rss0) as f64 / n as f64;
                report.record(
                    &format!("RSS per idle stream (ferry + agent, {n} streams)"),
                    "bytes",
                    false,
                    p.name,
                    per,
                );
            }
        }
        for p in order.iter().filter(|_| want("idle")) {
            quiet.before(&format!("{} (1 stream beside {IDLE} idle connections)", p.name));
            let idle = idle_connections(&p.echo(), IDLE);
            if idle.len() < IDLE {
                report.notes.push(format!("{}: only {} of {IDLE} idle connections opened", p.name, idle.len()));
            }
            // Idle, not just opened: a forwarder may judge connections by
            // what they moved in the last second or two.
            std::thread::sleep(IDLE_FOR);
            let up = upload(&p.sink(), &p.servers.counters, 1, plan.dur, &mut || {});
            idle.into_iter().for_each(reset);
            report.record(
                &format!("TCP bulk host->guest, 1 stream beside {IDLE} idle connections"),
                "Gbit/s",
                true,
                p.name,
                up.gbit_s,
            );
        }
    }

    // UDP: the guest's echo, reached directly and through ferry (flows ride
    // the session in both of ferry's modes).
    if want("udp") {
        udp(&bridge, &plan, &mut report);
    }
    // These too run once per round, for their spread.
    for _ in 0..plan.rounds {
        if want("discovery") {
            discovery(&bridge, &plan, &mut report);
        }
        if want("files") {
            files(&plan, &mut report);
        }
    }

    report.notes.extend(quiet.summary());
    let md = report.markdown("ferry forwarding benchmark");
    println!("{md}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    report.save(&dir, "forwarding", "ferry forwarding benchmark").expect("save report");
    eprintln!("saved {}/forwarding.{{md,json}}", dir.display());
    drop(all);
}

/// UDP echo at paced rates, direct and through ferry.
fn udp(bridge: &Bridge, plan: &Plan, report: &mut Report) {
    let udp_port = free_port();
    ferry_bench::udp::start_echo(&bridge.guest.name, udp_port);
    ferry_tests::wait_for(Duration::from_secs(10), "the UDP port forwarded", || {
        (bridge.status_row("udp", &format!("127.0.0.1:{udp_port}"))?["state"] == "forwarding").then_some(())
    });
    let udp_target: std::net::SocketAddr = ([127, 0, 0, 1], udp_port).into();
    // One run per round, so each row shows its spread.
    for _ in 0..plan.rounds {
        udp_round(bridge, plan, udp_target, report);
    }
}

/// One run of every UDP size and rate, direct and through ferry.
fn udp_round(bridge: &Bridge, plan: &Plan, udp_target: std::net::SocketAddr, report: &mut Report) {
    for size in [64usize, 1400] {
        for rate in &plan.udp_rates {
            for (name, ns) in [("direct", Some(bridge.guest.name.clone())), ("ferry", None)] {
                let pids = if ns.is_none() { vec![bridge.forwarder.pid(), bridge.agent.pid()] } else { vec![] };
                // Where datagrams were lost: either namespace's kernel (a
                // full socket buffer) or the forwarder (a flow's credit or
                // the session's queue).
                let forwarder_drops = || {
                    let row = bridge.status_row("udp", &format!("127.0.0.1:{}", udp_target.port()));
                    row.and_then(|r| r["dropped_datagrams"].as_u64()).unwrap_or(0)
                };
                let drop_counts = || {
                    let (host, guest) = (kernel_drops(None), kernel_drops(Some(bridge.agent.pid())));
                    (host, guest, forwarder_drops())
                };
                let before = drop_counts();
                let meter = CpuMeter::start(&pids);
                let run = ferry_bench::udp::paced_echo(udp_target, ns, size, *rate, plan.dur);
                let cpu = meter.stop();
                let after = drop_counts();
                let scenario = format!("UDP echo {size} B at {rate}/s offered");
                let drops = [
                    ("host kernel", after.0 - before.0),
                    ("guest kernel", after.1 - before.1),
                    ("ferry (host side)", after.2 - before.2),
                ];
                for (place, n) in drops.into_iter().filter(|(place, _)| name == "ferry" || place.contains("kernel")) {
                    report.record(&format!("{scenario}, dropped in the {place}"), "datagrams", false, name, n as f64);
                }
                report.record(&format!("{scenario}, delivered"), "datagrams/s", true, name, run.delivered_per_s);
                report.record(&format!("{scenario}, loss"), "%", false, name, run.loss * 100.0);
                let echoed = run.delivered_per_s * plan.dur.as_secs_f64();
                if !pids.is_empty() && echoed > 0.0 {
                    let per = cpu * 1e6 / echoed;
                    report.record(&format!("{scenario}, CPU of the forwarder per echo"), "µs", false, name, per);
                }
            }
        }
    }
}

/// Discovery latency and the agent's CPU cost.
fn discovery(bridge: &Bridge, plan: &Plan, report: &mut Report) {
    // Discovery: only ferry finds ports by itself (the baselines forward
    // fixed ports; Lima's agent polls every 3 s, so ~1500 ms on average).
    let ((med, p99), (rel_med, rel_p99)) = appear_and_release(&bridge.guest, plan.discovery);
    report.record("port discovery, guest listen() -> host accepts, median", "ms", false, "ferry", med);
    report.record("port discovery, guest listen() -> host accepts, p99", "ms", false, "ferry", p99);
    report.record("port release, guest close() -> host refuses, median", "ms", false, "ferry", rel_med);
    report.record("port release, guest close() -> host refuses, p99", "ms", false, "ferry", rel_p99);
    let idle = agent_cpu_percent(bridge.agent.pid(), &bridge.guest, plan.cpu_window, None);
    report.record("agent CPU, idle", "% of a core", false, "ferry", idle);
    let churn = agent_cpu_percent(bridge.agent.pid(), &bridge.guest, plan.cpu_window, Some(100));
    report.record("agent CPU, 100 listen/close cycles per second", "% of a core", false, "ferry", churn);
}

/// File events: latency and sustained rate.
fn files(plan: &Plan, report: &mut Report) {
    // File events: host write -> guest watcher event (ferry only: no other
    // bridge produces guest inotify events; Lima's mountInotify gives ATTRIB only).
    match ferry_bench::files::FileBench::start() {
        Ok(fb) => {
            let (med, p99) = fb.write_to_event(plan.discovery);
            report.record("file event, host write -> guest fs.watch event, median", "ms", false, "ferry", med);
            report.record("file event, host write -> guest fs.watch event, p99", "ms", false, "ferry", p99);
            let rate = fb.sustained(plan.file_burst);
            report.record(
                &format!("file events, {} new files, delivered", plan.file_burst),
                "files/s",
                true,
                "ferry",
                rate,
            );
        }
        Err(why) => report.notes.push(format!("file events not measured: {why}")),
    }
}

/// `cargo bench` builds this bench, not the `ferry` and `ferry-agent` it
/// runs: build them here too, so that a bench never measures stale binaries.
fn build_binaries() {
    if std::env::var_os("FERRY_BIN_DIR").is_some() {
        return; // the caller chose its binaries
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let status = std::process::Command::new(cargo)
        .args(["build", "--release", "--bins", "--quiet", "--manifest-path", manifest])
        .status()
        .expect("running cargo build");
    assert!(status.success(), "building ferry and ferry-agent failed");
}
