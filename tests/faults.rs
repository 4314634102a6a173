//! Fault injection, bounded in time: a frozen agent, and many connections
//! opened and closed without leaking file descriptors or memory.

use std::{process::Command, time::Duration};

use ferry_tests::{
    free_port,
    net::{connect_forwarded, spawn_echo},
    procs::{fd_count, rss_bytes},
    try_wait_for, wait_for, Bridge,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const GUARD: Duration = Duration::from_secs(60);

async fn echo_once(addr: &str, msg: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(msg).await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    back
}

async fn wait_echo(addr: &str) {
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        if let Ok(mut s) = TcpStream::connect(addr).await {
            let ok = s.write_all(b"?").await.is_ok() && s.shutdown().await.is_ok();
            let mut back = Vec::new();
            if ok && s.read_to_end(&mut back).await.is_ok() && back == b"?" {
                return;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "{addr} never forwarded again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn signal(pid: u32, sig: &str) {
    assert!(Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_speaks_is_closed_by_the_agent() {
    let bridge = Bridge::start();
    let mut silent = tokio::net::UnixStream::connect(bridge.dir.path().join("agent.sock")).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(GUARD, silent.read_to_end(&mut got)).await;
    assert!(matches!(read, Ok(Ok(0))), "the agent kept a silent connection open: {read:?}");
    wait_for(GUARD, "the agent's note on the silent connection", || {
        bridge.agent.log_text().contains("sent nothing within").then_some(())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_agent_is_detected_and_the_bridge_recovers_after_it_thaws() {
    let bridge = Bridge::start_multiplexed();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    spawn_echo(bridge.guest.tcp_listener(&addr));
    wait_echo(&addr).await;
    signal(bridge.agent.pid(), "-STOP");
    // Keepalive declares the silent agent dead (5 s) and the forwarder starts reconnecting.
    bridge.wait_log(1, "keepalive timeout");
    signal(bridge.agent.pid(), "-CONT");
    bridge.wait_log(2, "connected to agent");
    wait_echo(&addr).await;
    assert_eq!(echo_once(&addr, b"thawed").await, b"thawed");
}

/// Opens and closes `n` connections, `batch` at a time, each with an echo.
async fn churn(addr: &str, n: usize, batch: usize) {
    for _ in 0..n / batch {
        let mut tasks = Vec::with_capacity(batch);
        for i in 0..batch {
            let addr = addr.to_string();
            tasks.push(tokio::spawn(async move {
                let msg = format!("conn {i}");
                assert_eq!(echo_once(&addr, msg.as_bytes()).await, msg.as_bytes());
            }));
        }
        for t in tasks {
            tokio::time::timeout(GUARD, t).await.expect("connection hung").unwrap();
        }
    }
}

async fn no_growth_after_ten_thousand_connections(bridge: Bridge) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    spawn_echo(bridge.guest.tcp_listener(&addr));
    wait_echo(&addr).await;
    let pids = [bridge.forwarder.pid(), bridge.agent.pid()];
    // Warm up allocator pools and runtime threads, then take the baseline.
    churn(&addr, 1000, 50).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fds_now = || -> Vec<usize> { pids.iter().map(|p| fd_count(*p)).collect() };
    let fds0 = fds_now();
    let rss0: Vec<u64> = pids.iter().map(|p| rss_bytes(&[*p])).collect();
    churn(&addr, 10_000, 50).await;
    // Closed connections are released asynchronously; give them a moment.
    // Each process may keep up to SPARE_PIPES_MAX empty pipes for reuse (two
    // descriptors each): a bounded cache, far below one descriptor per
    // connection, which is what a leak would cost.
    let cache = 2 * ferry_mux::relay::SPARE_PIPES_MAX;
    let settled = try_wait_for(GUARD, || {
        let now = fds_now();
        now.iter().zip(&fds0).all(|(n, b)| *n <= b + 2 + cache).then_some(now)
    });
    let fds1 = settled.unwrap_or_else(|| {
        panic!("file descriptors of ferry and the agent did not return to the baseline: {fds0:?} -> {:?}", fds_now())
    });
    let rss1: Vec<u64> = pids.iter().map(|p| rss_bytes(&[*p])).collect();
    eprintln!("fds {fds0:?} -> {fds1:?}, RSS bytes {rss0:?} -> {rss1:?}");
    for (after, before) in rss1.iter().zip(&rss0) {
        // A leak of even 1 KiB per connection would add 10 MiB.
        assert!(after.saturating_sub(*before) < 8 << 20, "RSS grew from {before} to {after} bytes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_connections_leave_no_fds_or_memory_behind_dedicated() {
    no_growth_after_ten_thousand_connections(Bridge::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_connections_leave_no_fds_or_memory_behind_multiplexed() {
    no_growth_after_ten_thousand_connections(Bridge::start_multiplexed()).await;
}

/// A fake agent: accepts one connection at a time on `path` and answers
/// each with `reply`, then half-closes and reads until the forwarder
/// closes (which may still be sending its part of the handshake).
fn fake_agent(path: std::path::PathBuf, reply: Vec<u8>) {
    let l = tokio::net::UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            let _ = s.write_all(&reply).await;
            let _ = s.shutdown().await;
            let _ = s.read_to_end(&mut Vec::new()).await;
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_truncated_and_oversized_input_from_the_agent_side_is_survived() {
    let dir = tempfile::tempdir().unwrap();
    let mut valid_hello = ferry_protocol::Hello::ours(ferry_protocol::Role::Agent).encode().to_vec();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("garbage", b"SSH-2.0-OpenSSH_9.2\r\n and then some".to_vec(), "not a ferry endpoint"),
        ("truncated", b"FERR".to_vec(), "handshake I/O"),
        (
            "oversized",
            {
                // Without authentication the handshake is the hellos and
                // the nonces; frames follow.
                valid_hello.extend_from_slice(&[0x11; ferry_protocol::auth::NONCE_LEN]);
                valid_hello.extend_from_slice(&ferry_protocol::frame::header(
                    0,
                    ferry_protocol::FrameType::Control,
                    u32::MAX,
                ));
                valid_hello.clone()
            },
            "exceeds the limit",
        ),
    ];
    for (name, reply, needle) in cases {
        let sock = dir.path().join(format!("{name}.sock"));
        fake_agent(sock.clone(), reply);
        let mut cmd = Command::new(ferry_tests::bin_dir().join("ferry"));
        cmd.args(["run", "--insecure-no-auth", "--agent", &format!("unix:{}", sock.display())]);
        let mut fwd = ferry_tests::Proc::spawn(cmd, dir.path().join(format!("{name}.log")));
        wait_for(GUARD, needle, || fwd.log_text().contains(needle).then_some(()));
        // It keeps retrying instead of dying.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(fwd.is_running(), "{name}: the forwarder must survive: {}", fwd.log_text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_guest_target_resets_the_client_in_both_routes() {
    for multiplexed in [false, true] {
        // The guest listener exists when the agent takes its (only) snapshot,
        // then goes away: the host still listens, the guest refuses.
        let guest = ferry_tests::Guest::new();
        let port = free_port();
        let gone = guest.run_in(move || std::net::TcpListener::bind(("127.0.0.1", port)).unwrap());
        let fwd_args: &[&str] = if multiplexed { &["--no-dedicated"] } else { &[] };
        let bridge = Bridge::start_in(guest, &["--port-events", "off", "--scan-interval-ms", "60000"], fwd_args, &[]);
        let addr = format!("127.0.0.1:{port}");
        bridge.wait_log(1, &format!("forwarding {addr}"));
        drop(gone);
        // The reset may already be there when connect() completes, or arrive on the first read.
        let r = match TcpStream::connect(&addr).await {
            Err(e) => Err(e),
            Ok(mut s) => tokio::time::timeout(GUARD, s.read(&mut [0u8; 1])).await.expect("client hung"),
        };
        assert_eq!(
            r.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::ConnectionReset),
            "multiplexed={multiplexed}: a refused target must reset the client"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resetting_mid_stream_frees_the_guest_side_and_harms_nothing_else() {
    let bridge = Bridge::start();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let l = bridge.guest.tcp_listener(&addr);
    let (ended_tx, ended_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        // Send until the (reset) client's side is torn down.
        let chunk = vec![1u8; 64 << 10];
        while s.write_all(&chunk).await.is_ok() {}
        let _ = ended_tx.send(());
    });
    let mut s = connect_forwarded(&addr).await;
    let mut buf = vec![0u8; 1 << 16];
    s.read_exact(&mut buf).await.unwrap();
    ferry_mux::pump::reset_tcp(s); // RST mid-stream
    tokio::time::timeout(GUARD, ended_rx).await.expect("guest side never ended").unwrap();
    let port2 = free_port();
    let addr2 = format!("127.0.0.1:{port2}");
    spawn_echo(bridge.guest.tcp_listener(&addr2));
    wait_echo(&addr2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptor_exhaustion_gives_clear_errors_and_full_recovery() {
    let bridge =
        Bridge::start_in(ferry_tests::Guest::new(), &[], &["--retry-busy-ms", "200"], &["prlimit", "--nofile=256:256"]);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    spawn_echo(bridge.guest.tcp_listener(&addr));
    wait_echo(&addr).await;
    // 1000 clients hold connections open at once: far beyond 256 descriptors.
    let mut held = Vec::new();
    for _ in 0..1000 {
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(&addr)).await {
            held.push(s);
        }
    }
    bridge.wait_log(1, "Too many open files");
    assert!(bridge.forwarder.log_text().contains("accept on"), "the error names what failed");
    drop(held);
    // Full recovery once the clients are gone.
    wait_echo(&addr).await;
    let data = vec![9u8; 1 << 20];
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let (mut r, mut w) = s.split();
    let (_, back) = tokio::join!(
        async {
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
        },
        async {
            let mut back = Vec::new();
            r.read_to_end(&mut back).await.unwrap();
            back
        }
    );
    assert!(back == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_transfer_resets_clients_and_forwarding_resumes() {
    // Over a Unix socket the dedicated route could tell the agent's death by
    // POLLHUP; over TCP only the session's confirmation of each clean end can.
    for (name, multiplexed) in [("unix", false), ("unix", true), ("tcp", false)] {
        let mut bridge = match (name, multiplexed) {
            ("tcp", _) => Bridge::start_over_tcp(),
            (_, true) => Bridge::start_multiplexed(),
            _ => Bridge::start(),
        };
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let l = bridge.guest.tcp_listener(&addr);
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else { return };
                tokio::spawn(async move {
                    // A download that never ends by itself, or a 1-byte echo.
                    let mut first = [0u8; 1];
                    if s.read_exact(&mut first).await.is_err() {
                        return;
                    }
                    if first[0] == b'?' {
                        let _ = s.write_all(b"?").await;
                        return;
                    }
                    let chunk = vec![7u8; 64 << 10];
                    while s.write_all(&chunk).await.is_ok() {}
                });
            }
        });
        let mut s = connect_forwarded(&addr).await;
        s.write_all(b"d").await.unwrap();
        let mut buf = vec![0u8; 1 << 20];
        s.read_exact(&mut buf).await.unwrap();
        bridge.restart_agent(); // SIGKILL mid-transfer, then a fresh agent
        let end = tokio::time::timeout(GUARD, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) => return Ok(()),
                    Ok(_) => continue,
                    Err(e) => return Err(e.kind()),
                }
            }
        })
        .await
        .expect("client hung");
        assert_eq!(
            end,
            Err(std::io::ErrorKind::ConnectionReset),
            "{name} multiplexed={multiplexed}: a cut download must not look complete"
        );
        bridge.wait_log(2, "connected to agent");
        let deadline = tokio::time::Instant::now() + GUARD;
        loop {
            let mut c = connect_forwarded(&addr).await;
            let mut one = [0u8; 1];
            if c.write_all(b"?").await.is_ok() && c.read_exact(&mut one).await.is_ok() {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "forwarding never resumed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The other direction of the same guarantee: the forwarder killed in the
/// middle of an upload must reach the guest server as an abort, never as
/// the end of a complete upload, on either transport.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarder_killed_mid_upload_resets_the_guest_server() {
    for name in ["unix", "tcp"] {
        let mut bridge = if name == "tcp" { Bridge::start_over_tcp() } else { Bridge::start() };
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let l = bridge.guest.tcp_listener(&addr);
        let (got_tx, mut got_rx) = tokio::sync::mpsc::unbounded_channel();
        let (end_tx, end_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 1 << 16];
            let end = loop {
                match s.read(&mut buf).await {
                    Ok(0) => break Ok(()),
                    Ok(n) => {
                        let _ = got_tx.send(n);
                    }
                    Err(e) => break Err(e.kind()),
                }
            };
            let _ = end_tx.send(end);
        });
        let mut s = connect_forwarded(&addr).await;
        let chunk = vec![5u8; 64 << 10];
        let upload = tokio::spawn(async move { while s.write_all(&chunk).await.is_ok() {} });
        let mut seen = 0;
        while seen < 1 << 20 {
            seen += got_rx.recv().await.expect("the guest server gets the upload");
        }
        bridge.forwarder.kill();
        let end = tokio::time::timeout(GUARD, end_rx).await.expect("guest server hung").unwrap();
        assert_eq!(
            end,
            Err(std::io::ErrorKind::ConnectionReset),
            "{name}: a cut upload must not look complete to the guest"
        );
        upload.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_silent_connections_does_not_keep_the_host_out() {
    let bridge = Bridge::start();
    let port = free_port();
    spawn_echo(bridge.guest.tcp_listener(&format!("127.0.0.1:{port}")));
    let addr = format!("127.0.0.1:{port}");
    connect_forwarded(&addr).await;
    assert_eq!(echo_once(&addr, b"before").await, b"before");
    // The agent may hold a few hundred more descriptors than it has now
    // (the soft limit only); then 600 connections to its socket that never
    // say anything, held open.
    let agent = bridge.agent.pid().to_string();
    let limit = fd_count(bridge.agent.pid()) + 400;
    let out = Command::new("prlimit").args(["--pid", &agent, &format!("--nofile={limit}:")]).output().unwrap();
    assert!(out.status.success(), "prlimit: {}", String::from_utf8_lossy(&out.stderr));
    let sock = bridge.dir.path().join("agent.sock");
    let silent: Vec<_> = (0..600).filter_map(|_| std::os::unix::net::UnixStream::connect(&sock).ok()).collect();
    assert!(silent.len() >= 500, "only {} silent connections", silent.len());
    // Every new client needs a data connection to the agent: it is served
    // at once, not after the silent ones time out (5 s each).
    let t0 = std::time::Instant::now();
    let back = tokio::time::timeout(Duration::from_secs(30), echo_once(&addr, b"during the flood")).await.unwrap();
    let took = t0.elapsed();
    assert_eq!(back, b"during the flood");
    assert!(took < Duration::from_secs(3), "the host waited {took:?} behind unauthenticated connections");
    wait_for(GUARD, "the agent to say it closed some", || {
        bridge.agent.log_text().contains("waiting to authenticate").then_some(())
    });
    drop(silent);
}
