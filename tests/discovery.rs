//! Port discovery and Lima's forwarding rules, end to end: a real agent in
//! a guest namespace, a real forwarder, real sockets, and `ferry status`.

use std::{collections::BTreeSet, process::Command, time::Duration};

use ferry_tests::{
    free_port,
    net::{connect_forwarded, spawn_echo, wait_released, GUARD},
    wait_for, Bridge,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const AGENT: &[&str] = &["-v"];

async fn echo_once(addr: &str, msg: &[u8]) -> Vec<u8> {
    let mut s = connect_forwarded(addr).await;
    s.write_all(msg).await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(GUARD, s.read_to_end(&mut back)).await.expect("echo hung").unwrap();
    back
}

fn write_rules(dir: &std::path::Path, yaml: &str) -> String {
    let path = dir.join("ferry.yaml");
    std::fs::write(&path, yaml).unwrap();
    path.display().to_string()
}

/// Waits until the status row of guest `guest` (proto) satisfies `pred`.
fn wait_row(bridge: &Bridge, proto: &str, guest: &str, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    wait_for(GUARD, &format!("status row for {proto} {guest}"), || {
        bridge.status()["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["proto"] == proto && r["guest"] == guest && pred(r))
            .cloned()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_file_clauses_apply_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let (shifted, shifted_host, ignored, ranged, ranged_host, lan, lan_host, other) =
        (free_port(), free_port(), free_port(), free_port(), free_port(), free_port(), free_port(), free_port());
    let rules = write_rules(
        dir.path(),
        &format!(
            "portForwards:
- guestPort: {shifted}
  hostPort: {shifted_host}
- guestPort: {ignored}
  ignore: true
- guestPortRange: [{ranged}, {ranged}]
  hostPortRange: [{ranged_host}, {ranged_host}]
  proto: tcp
- guestIP: 10.0.2.15
  guestPort: {lan}
  hostPort: {lan_host}
"
        ),
    );
    let bridge = Bridge::start_with(AGENT, &["--rules", &rules, "-v"]);
    let g = &bridge.guest;
    let ok =
        Command::new("ip").args(["netns", "exec", &g.name, "ip", "addr", "add", "10.0.2.15/32", "dev", "lo"]).status();
    assert!(ok.unwrap().success());
    spawn_echo(g.tcp_listener(&format!("127.0.0.1:{shifted}")));
    spawn_echo(g.tcp_listener(&format!("127.0.0.1:{ignored}")));
    spawn_echo(g.tcp_listener(&format!("127.0.0.1:{ranged}")));
    spawn_echo(g.tcp_listener(&format!("10.0.2.15:{lan}")));
    spawn_echo(g.tcp_listener(&format!("10.0.2.15:{other}")));
    spawn_echo(g.tcp_listener("127.0.0.1:22"));

    // hostPort and hostPortRange move the host port; the guest port stays unpublished.
    assert_eq!(echo_once(&format!("127.0.0.1:{shifted_host}"), b"shift").await, b"shift");
    assert_eq!(echo_once(&format!("127.0.0.1:{ranged_host}"), b"range").await, b"range");
    // A rule for a guest-only IP forwards it (the agent dials that IP).
    assert_eq!(echo_once(&format!("127.0.0.1:{lan_host}"), b"lan").await, b"lan");
    // Ignore rules, the implicit ignore of port 22, and addresses no rule matches.
    let row = wait_row(&bridge, "tcp", &format!("127.0.0.1:{ignored}"), |_| true);
    assert_eq!((row["state"].as_str(), row["host"].as_str()), (Some("ignored"), Some("-")), "{row}");
    let row = wait_row(&bridge, "tcp", "127.0.0.1:22", |_| true);
    assert_eq!(row["state"], "ignored", "{row}");
    let row = wait_row(&bridge, "tcp", &format!("10.0.2.15:{other}"), |_| true);
    assert_eq!(row["state"], "not-forwarded", "{row}");
    for port in [shifted, ignored, ranged, other] {
        assert!(TcpStream::connect(("127.0.0.1", port)).await.is_err(), "port {port} must not be published");
    }
    // The table form names the same rows.
    let table = bridge.status_table();
    assert!(table.contains(&format!("127.0.0.1:{shifted}")) && table.contains("forwarding"), "{table}");
    assert!(table.contains("ignored (rule"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_rules_file_stops_the_forwarder_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write_rules(dir.path(), "portForwards:\n- guestPortRange: [100, 50]\n");
    let out = Command::new(ferry_tests::bin_dir().join("ferry"))
        .args(["run", "--agent", "unix:/nonexistent", "--insecure-no-auth", "--rules", &rules])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("portForwards[0]") && err.contains("guestPortRange"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_listener_is_reachable_on_both_host_loopbacks() {
    let bridge = Bridge::start_with(AGENT, &["-v"]);
    let port = free_port();
    spawn_echo(bridge.guest.tcp_listener(&format!("0.0.0.0:{port}")));
    assert_eq!(echo_once(&format!("127.0.0.1:{port}"), b"v4").await, b"v4");
    assert_eq!(echo_once(&format!("[::1]:{port}"), b"v6").await, b"v6");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_opened_and_closed_100_times_ends_in_the_right_state() {
    open_and_close_100_times(AGENT, "port discovery: woken by bind/listen tracepoints").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_opened_and_closed_100_times_ends_in_the_right_state_when_polling() {
    open_and_close_100_times(&["--port-events", "off", "-v"], "port discovery: polling every 30ms").await;
}

/// Opens and closes one guest port 100 times, then leaves it open: the host
/// ends in the right state, with the agent discovering ports as `mechanism` says.
async fn open_and_close_100_times(agent_args: &[&str], mechanism: &str) {
    let bridge = Bridge::start_with(agent_args, &["-v"]);
    let log = bridge.agent.log_text();
    assert!(log.contains(mechanism), "the agent does not say {mechanism:?}:\n{log}");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    for i in 0..100u64 {
        let l = bridge.guest.run_in(move || std::net::TcpListener::bind(("127.0.0.1", port)).unwrap());
        std::thread::sleep(Duration::from_millis(i % 7));
        drop(l);
    }
    // Last state: closed. The host port must not be (or stay) published.
    tokio::time::sleep(Duration::from_millis(300)).await;
    wait_released(&addr).await;
    // Open for good: published and working.
    spawn_echo(bridge.guest.tcp_listener(&addr));
    assert_eq!(echo_once(&addr, b"final").await, b"final");
    let row = bridge.status_row("tcp", &addr).expect("row");
    assert_eq!(row["state"], "forwarding");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_listeners_at_once_are_all_forwarded() {
    let bridge = Bridge::start_with(AGENT, &["-v"]);
    let ports: Vec<u16> = (0..500).map(|_| free_port()).collect();
    for &p in &ports {
        spawn_echo(bridge.guest.tcp_listener(&format!("127.0.0.1:{p}")));
    }
    let want: BTreeSet<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    wait_for(GUARD, "500 forwarding rows", || {
        let status = bridge.status();
        let forwarding: BTreeSet<String> = status["ports"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["state"] == "forwarding")
            .map(|r| r["host"].as_str().unwrap().to_string())
            .collect();
        want.is_subset(&forwarding).then_some(())
    });
    for (i, p) in ports.iter().enumerate() {
        let msg = format!("port {i}");
        assert_eq!(echo_once(&format!("127.0.0.1:{p}"), msg.as_bytes()).await, msg.as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_servers_are_discovered_but_ephemeral_clients_and_system_ports_are_not() {
    let bridge = Bridge::start_with(AGENT, &["-v"]);
    let server_port = free_port();
    let sockets = bridge.guest.run_in(move || {
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap(); // ephemeral, unconnected
        let dhcp = std::net::UdpSocket::bind("0.0.0.0:68").unwrap();
        let server = std::net::UdpSocket::bind(("127.0.0.1", server_port)).unwrap();
        (client, dhcp, server)
    });
    let client_port = sockets.0.local_addr().unwrap().port();
    // Seeing the server proves a scan ran after all three were bound.
    wait_row(&bridge, "udp", &format!("127.0.0.1:{server_port}"), |_| true);
    let rows = bridge.status()["ports"].as_array().unwrap().clone();
    for port in [client_port, 68] {
        assert!(
            !rows.iter().any(|r| r["proto"] == "udp" && r["guest"].as_str().unwrap().ends_with(&format!(":{port}"))),
            "udp port {port} must not be reported: {rows:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_port_named_by_a_rule_is_reported_even_if_ignored_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write_rules(dir.path(), "portForwards:\n- guestPort: 5353\n  proto: udp\n");
    let bridge = Bridge::start_with(AGENT, &["--rules", &rules, "-v"]);
    let _mdns = bridge.guest.run_in(|| std::net::UdpSocket::bind("127.0.0.1:5353").unwrap());
    wait_row(&bridge, "udp", "127.0.0.1:5353", |_| true);
}

/// A TCP server that greets each client with `name`.
fn spawn_greeter(l: tokio::net::TcpListener, name: &'static str) {
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            let _ = s.write_all(name.as_bytes()).await;
        }
    });
}

async fn greeting(addr: &str) -> String {
    let mut s = connect_forwarded(addr).await;
    let mut buf = Vec::new();
    tokio::time::timeout(GUARD, s.read_to_end(&mut buf)).await.expect("greeting hung").unwrap();
    String::from_utf8(buf).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_forwarders_wanting_one_host_port_conflict_clearly_and_the_second_takes_over() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut first = Bridge::start_with(AGENT, &["-v"]);
    spawn_greeter(first.guest.tcp_listener(&addr), "first");
    assert_eq!(greeting(&addr).await, "first");
    let second = Bridge::start_with(AGENT, &["--retry-busy-ms", "300", "-v"]);
    spawn_greeter(second.guest.tcp_listener(&addr), "second");
    let needle = format!("host {addr}: host port in use");
    second.wait_log(1, &needle);
    let row = second.status_row("tcp", &addr).expect("row");
    assert_eq!(row["state"], "retrying", "{row}");
    // The first still serves its own guest: nothing half-works.
    assert_eq!(greeting(&addr).await, "first");
    first.forwarder.kill();
    wait_for(GUARD, "the second forwarder to take the port", || {
        (second.status_row("tcp", &addr)?["state"] == "forwarding").then_some(())
    });
    assert_eq!(greeting(&addr).await, "second");
    assert_eq!(second.forwarder.log_text().matches(&needle).count(), 1, "the conflict is reported once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_printed_as_json_lines() {
    let bridge = Bridge::start_with(AGENT, &["--events", "-v"]);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let l = bridge.guest.tcp_listener(&addr);
    connect_forwarded(&addr).await;
    drop(l);
    wait_released(&addr).await;
    let events: Vec<serde_json::Value> = wait_for(GUARD, "two events", || {
        let lines: Vec<serde_json::Value> = bridge
            .forwarder
            .stdout_text()
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .filter(|e: &serde_json::Value| e["hostAddr"] == addr.as_str())
            .collect();
        (lines.len() >= 2).then_some(lines)
    });
    assert_eq!(events[0]["type"], "forwarding");
    assert_eq!(events[0]["protocol"], "tcp");
    assert_eq!(events[0]["guestAddr"], addr.as_str());
    assert_eq!(events[1]["type"], "not-forwarding");
    assert!(events[0]["time"].as_str().unwrap().ends_with('Z'));
}

/// `ferry run --events` whose stdout nobody reads (a pipe of one page,
/// its read end held open and never read): the events wait in ferry's own
/// queue, and ports keep being forwarded and served. Before, the first
/// event that did not fit in the pipe stopped the thread that forwards
/// every connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_to_a_reader_that_stopped_reading_do_not_stop_forwarding() {
    // Execs ferry with stdout a 4 KiB pipe whose read end ferry itself holds.
    const STUCK_STDOUT: &str = "import os, fcntl, sys\n\
        r, w = os.pipe()\n\
        fcntl.fcntl(w, 1031, 4096)  # F_SETPIPE_SZ\n\
        os.set_inheritable(r, True)\n\
        os.dup2(w, 1)\n\
        os.execv(sys.argv[1], sys.argv[1:])\n";
    let bridge = Bridge::start_in(ferry_tests::Guest::new(), AGENT, &["--events"], &["python3", "-c", STUCK_STDOUT]);
    // Sixty ports: about 9 KB of events, twice what the pipe holds.
    let ports: Vec<u16> = (0..60).map(|_| free_port()).collect();
    let _echoes: Vec<_> =
        ports.iter().map(|p| spawn_echo(bridge.guest.tcp_listener(&format!("127.0.0.1:{p}")))).collect();
    for p in &ports {
        let back = echo_once(&format!("127.0.0.1:{p}"), b"still here").await;
        assert_eq!(back, b"still here", "port {p} is forwarded and served");
    }
    assert!(bridge.forwarder.stdout_text().is_empty(), "stdout went to the pipe");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_past_the_queue_are_dropped_and_counted_and_the_queue_is_written_at_exit() {
    // ferry's stdout is a 4 KiB pipe read by a child that waits for the file
    // `go` before it reads (or for ferry to be gone), copies everything to
    // `out.part` and renames it `out` at the end.
    const HELD_STDOUT: &str = "import os, fcntl, sys, time\n\
        r, w = os.pipe()\n\
        fcntl.fcntl(w, 1031, 4096)  # F_SETPIPE_SZ\n\
        go, out = os.environ['FERRY_TEST_GO'], os.environ['FERRY_TEST_OUT']\n\
        ferry = os.getpid()\n\
        if os.fork() == 0:\n\
        \x20   os.close(w)\n\
        \x20   while not os.path.exists(go) and os.getppid() == ferry: time.sleep(0.02)\n\
        \x20   with open(out + '.part', 'wb') as f:\n\
        \x20       while (b := os.read(r, 65536)): f.write(b)\n\
        \x20   os.rename(out + '.part', out)\n\
        \x20   os._exit(0)\n\
        os.close(r)\n\
        os.dup2(w, 1)\n\
        os.execv(sys.argv[1], sys.argv[1:])\n";
    // 600 guest listeners and their port locks: more descriptors than a
    // soft limit of 1024 allows.
    raise_descriptor_limit();
    let dir = tempfile::tempdir().unwrap();
    let (go, out) = (dir.path().join("go"), dir.path().join("out"));
    let env = [("FERRY_TEST_GO", go.to_str().unwrap()), ("FERRY_TEST_OUT", out.to_str().unwrap())];
    let mut bridge =
        Bridge::start_env(ferry_tests::Guest::new(), &env, AGENT, &["--events", "-v"], &["python3", "-c", HELD_STDOUT]);
    // 600 ports appear and go: 1,200 events, past the pipe and the queue of
    // 1,024 lines.
    let ports: Vec<u16> = (0..600).map(|_| free_port()).collect();
    let listeners: Vec<_> = ports.iter().map(|p| bridge.guest.tcp_listener(&format!("127.0.0.1:{p}"))).collect();
    wait_for(GUARD, "all 600 ports forwarded", || {
        let rows = bridge.status()["ports"].as_array()?.clone();
        let forwarding = rows.iter().filter(|r| r["proto"] == "tcp" && r["state"] == "forwarding").count();
        (forwarding >= 600).then_some(())
    });
    drop(listeners);
    bridge.wait_log(1, "stdout takes no more events");
    // Forwarding goes on meanwhile.
    let p = free_port();
    let _echo = spawn_echo(bridge.guest.tcp_listener(&format!("127.0.0.1:{p}")));
    let mut c = connect_forwarded(&format!("127.0.0.1:{p}")).await;
    c.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    tokio::time::timeout(GUARD, c.read_exact(&mut back)).await.expect("echo hung").unwrap();
    drop(c);
    // ferry is told to stop while its queue is full and nobody reads; it
    // waits for the queue (up to a second), and the reader reads again.
    // SAFETY: a signal to the forwarder this test started.
    unsafe { libc::kill(bridge.forwarder.pid() as i32, libc::SIGTERM) };
    bridge.wait_log(1, "queued events before exiting");
    std::fs::write(&go, b"").unwrap();
    assert!(bridge.forwarder.terminate(), "ferry did not exit");
    wait_for(GUARD, "the reader to finish", || out.exists().then_some(()));
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).expect("each event line is JSON")).collect();
    let log = bridge.forwarder.log_text();
    assert_eq!(log.matches("stdout takes no more events").count(), 1, "the first drop is logged once");
    let dropped: usize = log
        .lines()
        .find_map(|l| l.split_once(" events were dropped"))
        .and_then(|(head, _)| head.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no count of dropped events at exit: {log}"));
    assert!(lines.len() >= 1024, "only {} event lines written: the queue was not written at exit", lines.len());
    assert!(lines.len() + dropped >= 1200, "{} written and {dropped} dropped of 1,200 events", lines.len());
    let forwarded =
        |port: u16| lines.iter().any(|e| e["type"] == "forwarding" && e["guestAddr"] == format!("127.0.0.1:{port}"));
    assert!(
        ports.iter().all(|&p| forwarded(p)),
        "an event of the first 600 (before the pipe and the queue filled) is missing"
    );
}

/// Raises this process's soft limit on open descriptors to its hard limit.
fn raise_descriptor_limit() {
    // SAFETY: getrlimit/setrlimit fill and read the struct on the stack.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_closed_while_the_agent_was_down_is_released_after_it_returns() {
    let mut bridge = Bridge::start_with(AGENT, &["-v"]);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let l = bridge.guest.tcp_listener(&addr);
    connect_forwarded(&addr).await;
    bridge.agent.kill();
    drop(l);
    bridge.restart_agent();
    bridge.wait_log(2, "connected to agent");
    wait_released(&addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_node_ports_are_discovered_through_kubectl() {
    let dir = tempfile::tempdir().unwrap();
    let node_port = free_port();
    let kubectl = dir.path().join("kubectl");
    std::fs::write(
        &kubectl,
        format!(
            r#"#!/bin/sh
echo '{{"type":"ADDED","object":{{"metadata":{{"namespace":"default","name":"web"}},"spec":{{"type":"NodePort","ports":[{{"port":80,"nodePort":{node_port},"protocol":"TCP"}}]}}}}}}'
echo '{{"type":"ADDED","object":{{"metadata":{{"namespace":"default","name":"kubernetes"}},"spec":{{"type":"ClusterIP","ports":[{{"port":443}}]}}}}}}'
exec sleep 600
"#
        ),
    )
    .unwrap();
    std::fs::set_permissions(&kubectl, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let bridge = Bridge::start_with(&["--kubectl", kubectl.to_str().unwrap(), "-v"], &["-v"]);
    let row = wait_row(&bridge, "tcp", &format!("0.0.0.0:{node_port}"), |r| r["state"] == "forwarding");
    assert!(row["host"] == format!("127.0.0.1:{node_port}") || row["host"] == format!("[::1]:{node_port}"));
    // kube-proxy would answer on the node port; here a server stands in for it.
    spawn_echo(bridge.guest.tcp_listener(&format!("127.0.0.1:{node_port}")));
    assert_eq!(echo_once(&format!("127.0.0.1:{node_port}"), b"k8s").await, b"k8s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_rule_listens_before_the_guest_does() {
    let dir = tempfile::tempdir().unwrap();
    let (guest, host) = (free_port(), free_port());
    let rules = write_rules(
        dir.path(),
        &format!("portForwards:\n- guestPort: {guest}\n  hostPort: {host}\n  proto: tcp\n  static: true\n"),
    );
    let bridge = Bridge::start_with(AGENT, &["--rules", &rules, "-v"]);
    // Forwarding with nothing listening in the guest: the host port accepts
    // and resets the client as the guest refuses (the reset may come before
    // connect() returns); a port nobody listened on would refuse instead.
    wait_row(&bridge, "tcp", &format!("127.0.0.1:{guest}"), |r| r["state"] == "forwarding");
    let addr = format!("127.0.0.1:{host}");
    match TcpStream::connect(&addr).await {
        Ok(mut s) => {
            let mut back = Vec::new();
            let read = tokio::time::timeout(GUARD, s.read_to_end(&mut back)).await.expect("hung");
            assert!(back.is_empty(), "{read:?}");
        }
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    // The guest starts listening: the same host port reaches it.
    let echo = spawn_echo(bridge.guest.tcp_listener(&format!("127.0.0.1:{guest}")));
    assert_eq!(echo_once(&addr, b"static").await, b"static");
    // And it stays when the guest stops listening again (a discovered
    // port would be released within milliseconds).
    echo.abort();
    tokio::time::sleep(Duration::from_millis(500)).await;
    if let Err(e) = TcpStream::connect(&addr).await {
        assert_ne!(e.kind(), std::io::ErrorKind::ConnectionRefused, "the static host port closed");
    }
    let row = bridge.status_row("tcp", &addr).expect("row");
    assert_eq!(row["state"], "forwarding");
}
