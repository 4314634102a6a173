//! TCP forwarding end to end: real agent in a guest namespace, real
//! forwarder on the host, real sockets, bytes checked on both ends.

use std::{
    process::Command,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use ferry_tests::{
    bin_dir,
    data::{pattern, sha256, Hasher},
    free_port,
    net::{connect_forwarded, spawn_echo, wait_released},
    procs::make_secret,
    Bridge, Guest, Proc,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const GUARD: Duration = Duration::from_secs(30);

/// Runs each scenario twice: with dedicated (spliced) data connections, the
/// default on a Unix transport, and with every stream multiplexed as frames
/// over the one session (`--no-dedicated`, the mode of exec: transports).
macro_rules! in_both_modes {
    ($($name:ident),* $(,)?) => { $(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn dedicated() {
                super::$name(super::Bridge::start()).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn multiplexed() {
                super::$name(super::Bridge::start_multiplexed()).await
            }
        }
    )* };
}

/// Runs scenarios over the TCP transport too (as over Lima's vzNAT
/// network): by default, every connection inside the sealed session; and
/// with `--unsealed-data-conns`, on dedicated data connections whose every
/// clean end is confirmed on the session.
macro_rules! over_tcp_too {
    ($($name:ident),* $(,)?) => {
        mod over_tcp { $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn dedicated_over_tcp() {
                    super::super::$name(super::super::Bridge::start_over_tcp()).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sealed_over_tcp() {
                    super::super::$name(super::super::Bridge::start_over_tcp_sealed()).await
                }
            }
        )* }
    };
}

over_tcp_too!(
    bulk_256_mib_each_direction_checksums_equal,
    half_close_request_then_full_response,
    two_hundred_concurrent_connections_interleaved,
    server_started_after_the_forwarder_is_reachable_with_curl,
);

in_both_modes!(
    a_reader_that_stops_does_not_slow_another_stream,
    bulk_256_mib_each_direction_checksums_equal,
    server_started_after_the_forwarder_is_reachable_with_curl,
    half_close_request_then_full_response,
    two_hundred_concurrent_connections_interleaved,
    guest_server_exit_releases_the_host_port,
    forwarding_resumes_after_the_agent_is_killed_and_restarted,
    a_taken_host_port_is_reported_and_others_still_forward,
    ipv6_guest_listener_is_published_on_both_host_loopbacks,
    garbage_on_the_agent_socket_is_rejected_and_the_agent_survives,
    a_restarting_guest_server_keeps_its_host_port_and_held_clients_are_served,
);

/// Threads of process `pid` named `name` (what `ps -T` shows).
fn threads_named(pid: u32, name: &str) -> usize {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim() == name)
        .count()
}

/// Both processes serve small requests on their one thread; once a port's
/// connections carry bulk, the next ones run on the bulk runtime's threads
/// in both (`ferry_mux::placement`), and every byte still arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_ports_move_to_the_bulk_runtime_and_still_carry_every_byte() {
    let bridge = Bridge::start();
    let pids = [bridge.forwarder.pid(), bridge.agent.pid()];
    bulk_moves_to_the_bulk_runtime_in(bridge, &pids).await;
}

/// With every connection multiplexed (`--no-dedicated`), the host keeps
/// tokio's multi-thread scheduler for its session, and the agent (on one
/// thread, as its listener expects data connections) pumps the streams of
/// a bulk target on its bulk runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiplexed_bulk_streams_move_to_the_agents_bulk_runtime() {
    let bridge = Bridge::start_multiplexed();
    let agent = [bridge.agent.pid()];
    bulk_moves_to_the_bulk_runtime_in(bridge, &agent).await;
}

/// Small requests, then bulk, to one echo port: `pids` start no bulk
/// runtime for the small ones and run the later bulk ones there.
async fn bulk_moves_to_the_bulk_runtime_in(bridge: Bridge, pids: &[u32]) {
    let port = free_port();
    spawn_echo(bridge.guest.tcp_listener(&format!("127.0.0.1:{port}")));
    let addr = format!("127.0.0.1:{port}");
    let small = echo_round(connect_forwarded(&addr).await, b"ping".to_vec(), 4).await;
    assert_eq!(small, b"ping");
    for &pid in pids {
        assert_eq!(threads_named(pid, "ferry-bulk"), 0, "small requests stay on the process's thread");
    }
    let first = pattern(1, 4 << 20);
    assert!(echo_round(connect_forwarded(&addr).await, first.clone(), 1 << 16).await == first);
    // The next connections, concurrent, run on the bulk runtime.
    let rounds = (0..3u8).map(|i| {
        let addr = addr.clone();
        tokio::spawn(async move {
            let data = pattern(10 + i as u64, 8 << 20);
            let got = echo_round(connect_forwarded(&addr).await, data.clone(), 1 << 16).await;
            assert!(got == data, "stream {i} came back whole");
        })
    });
    for r in rounds.collect::<Vec<_>>() {
        r.await.unwrap();
    }
    for &pid in pids {
        assert!(threads_named(pid, "ferry-bulk") >= 2, "pid {pid} runs bulk connections on worker threads");
    }
    let after = echo_round(connect_forwarded(&addr).await, b"pong".to_vec(), 4).await;
    assert_eq!(after, b"pong", "a small request on a bulk port is served too");
}

/// What a guest server does with one connection, for the tests of a
/// connection that moves to the bulk runtime while it is relayed.
#[derive(Clone, Copy, Debug)]
enum Turn {
    /// A small exchange first (on the process's own thread), then bulk
    /// echoed both ways at once.
    SmallThenEcho,
    /// Bulk up to a server that says nothing until the client's EOF (the
    /// agent's answer waits for the server's first bytes all along), then
    /// sends it all back.
    SilentUntilEof,
    /// Bulk down from a server that sends at once to a client that says
    /// nothing.
    DownloadOnly,
}

/// Connections relayed on each process's own thread turn to bulk on a port
/// that never carried any (so they were not placed on the bulk runtime
/// when they opened). A lone one keeps the one thread; two at once both
/// move to their bulk runtime while they run, at a moment when nothing is
/// in flight, and every byte arrives in order, with half-close carried
/// after the move. Only such a move starts a bulk runtime here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_turn_to_bulk_together_move_to_the_bulk_runtime_mid_stream() {
    for turn in [Turn::SmallThenEcho, Turn::SilentUntilEof, Turn::DownloadOnly] {
        let bridge = Bridge::start();
        let pids = [bridge.forwarder.pid(), bridge.agent.pid()];
        let data = pattern(77, 24 << 20);
        let (lone, pair) = (free_port(), free_port());
        for port in [lone, pair] {
            serve_turn(bridge.guest.tcp_listener(&format!("127.0.0.1:{port}")), turn, data.clone());
        }
        // Alone, a bulk connection stays where it is.
        let got = run_turn(connect_forwarded(&format!("127.0.0.1:{lone}")).await, turn, &data, &[]).await;
        assert!(got == data, "{turn:?}: the lone connection's bytes came back whole and in order");
        for &pid in &pids {
            assert_eq!(threads_named(pid, "ferry-bulk"), 0, "{turn:?}: a lone bulk connection keeps the one thread");
        }
        // Two at once: both move.
        let addr = format!("127.0.0.1:{pair}");
        let (a, b) = (connect_forwarded(&addr).await, connect_forwarded(&addr).await);
        let (got_a, got_b) = tokio::join!(run_turn(a, turn, &data, &pids), run_turn(b, turn, &data, &pids));
        assert!(got_a == data && got_b == data, "{turn:?}: both came back whole and in order");
        for &pid in &pids {
            assert!(threads_named(pid, "ferry-bulk") >= 2, "{turn:?}: pid {pid} moved the connections");
        }
    }
}

/// Serves each connection to `listener` as `turn` says, with `data`.
fn serve_turn(listener: tokio::net::TcpListener, turn: Turn, data: Vec<u8>) {
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let data = data.clone();
            tokio::spawn(async move {
                match turn {
                    Turn::SmallThenEcho => {
                        let (mut r, mut w) = s.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                        let _ = w.shutdown().await;
                    }
                    Turn::SilentUntilEof => {
                        let mut got = Vec::new();
                        s.read_to_end(&mut got).await.unwrap();
                        s.write_all(&got).await.unwrap();
                        s.shutdown().await.unwrap();
                    }
                    Turn::DownloadOnly => {
                        s.write_all(&data).await.unwrap();
                        s.shutdown().await.unwrap();
                        let _ = s.read_to_end(&mut Vec::new()).await;
                    }
                }
            });
        }
    });
}

/// The client's side of `turn`: what came back. With [`Turn::SmallThenEcho`]
/// it checks, once `data` went both ways with the connection still open
/// both ways, that the processes `moved` run a bulk runtime (the move
/// happened mid-stream), then sends `data` once more, half-closed.
async fn run_turn(mut client: TcpStream, turn: Turn, data: &[u8], moved: &[u32]) -> Vec<u8> {
    match turn {
        Turn::SmallThenEcho => {
            client.write_all(b"ping").await.unwrap();
            let mut pong = [0u8; 4];
            client.read_exact(&mut pong).await.unwrap();
            assert_eq!(&pong, b"ping");
            let (mut r, mut w) = client.into_split();
            let sent = data.to_vec();
            let writer = tokio::spawn(async move {
                w.write_all(&sent).await.unwrap();
                w
            });
            let mut got = vec![0u8; data.len()];
            r.read_exact(&mut got).await.unwrap();
            let w = writer.await.unwrap();
            assert!(got == data, "the bytes came back whole and in order before the half-close");
            for &pid in moved {
                assert!(threads_named(pid, "ferry-bulk") >= 2, "pid {pid} moved the open connection");
            }
            echo_round(r.reunite(w).unwrap(), data.to_vec(), 1 << 16).await
        }
        Turn::SilentUntilEof => echo_round(client, data.to_vec(), 1 << 16).await,
        Turn::DownloadOnly => {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        }
    }
}

/// One echo round: write `data` (in `chunk`-sized writes) while reading it back.
async fn echo_round(s: TcpStream, data: Vec<u8>, chunk: usize) -> Vec<u8> {
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        for c in data.chunks(chunk.max(1)) {
            w.write_all(c).await.unwrap();
        }
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    r.read_to_end(&mut got).await.unwrap();
    writer.await.unwrap();
    got
}

async fn server_started_after_the_forwarder_is_reachable_with_curl(bridge: Bridge) {
    let port = free_port();
    let www = tempfile::tempdir().unwrap();
    let body = pattern(42, 100_000);
    std::fs::write(www.path().join("blob.bin"), &body).unwrap();
    let mut http = bridge.guest.command("python3");
    http.args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1", "--directory"]).arg(www.path());
    let _server = Proc::spawn(http, bridge.dir.path().join("http.log"));
    let url = format!("http://127.0.0.1:{port}/blob.bin");
    let out = ferry_tests::wait_for(GUARD, "curl through the forwarded port", || {
        let out = Command::new("curl").args(["-sf", "--max-time", "5", &url]).output().unwrap();
        out.status.success().then_some(out.stdout)
    });
    assert_eq!(sha256(&out), sha256(&body));
}

async fn bulk_256_mib_each_direction_checksums_equal(bridge: Bridge) {
    const SIZE: usize = 256 << 20;
    let port = free_port();
    let up = bridge.guest.tcp_listener(&format!("127.0.0.1:{port}"));
    // The guest server hashes what it receives, then sends SIZE bytes of a pattern.
    tokio::spawn(async move {
        let (mut s, _) = up.accept().await.unwrap();
        let mut h = Hasher::default();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        let mut reply = h.finish().into_bytes();
        reply.extend_from_slice(&pattern(7, SIZE));
        s.write_all(&reply).await.unwrap();
        s.shutdown().await.unwrap();
    });
    let upload = pattern(3, SIZE);
    let want_up = sha256(&upload);
    let s = connect_forwarded(&format!("127.0.0.1:{port}")).await;
    let got = echo_round(s, upload, 1 << 20).await;
    assert_eq!(got.len(), 64 + SIZE, "download length");
    assert_eq!(std::str::from_utf8(&got[..64]).unwrap(), want_up, "guest saw the exact upload");
    assert_eq!(sha256(&got[64..]), sha256(&pattern(7, SIZE)), "host saw the exact download");
}

async fn half_close_request_then_full_response(bridge: Bridge) {
    let port = free_port();
    let l = bridge.guest.tcp_listener(&format!("127.0.0.1:{port}"));
    let response = pattern(11, 5 << 20);
    let expected = response.clone();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut req = Vec::new();
        s.read_to_end(&mut req).await.unwrap(); // completes only if the FIN arrived
        assert_eq!(req, b"GET everything");
        s.write_all(&response).await.unwrap();
        s.shutdown().await.unwrap();
    });
    let mut s = connect_forwarded(&format!("127.0.0.1:{port}")).await;
    s.write_all(b"GET everything").await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(GUARD, s.read_to_end(&mut got)).await.unwrap().unwrap();
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "response differs");
}

async fn two_hundred_concurrent_connections_interleaved(bridge: Bridge) {
    let port = free_port();
    spawn_echo(bridge.guest.tcp_listener(&format!("127.0.0.1:{port}")));
    let addr = format!("127.0.0.1:{port}");
    drop(connect_forwarded(&addr).await);
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let data = pattern(i, 20_000 + (i as usize * 997) % 200_000);
            let s = TcpStream::connect(&addr).await.unwrap();
            let got = echo_round(s, data.clone(), 1 + (i as usize * 131) % 9000).await;
            assert_eq!(sha256(&got), sha256(&data), "connection {i}");
        }));
    }
    for t in tasks {
        tokio::time::timeout(GUARD, t).await.expect("connection hung").unwrap();
    }
}

async fn a_reader_that_stops_does_not_slow_another_stream(bridge: Bridge) {
    const FLOOD: u64 = 512 << 20;
    let (flood_port, echo_port) = (free_port(), free_port());
    let flood = bridge.guest.tcp_listener(&format!("127.0.0.1:{flood_port}"));
    spawn_echo(bridge.guest.tcp_listener(&format!("127.0.0.1:{echo_port}")));
    // The guest floods a client that never reads; count what it manages to write.
    let written = Arc::new(AtomicU64::new(0));
    let w2 = written.clone();
    tokio::spawn(async move {
        let (mut s, _) = flood.accept().await.unwrap();
        let chunk = vec![0u8; 64 << 10];
        while w2.load(Ordering::Relaxed) < FLOOD {
            if s.write_all(&chunk).await.is_err() {
                return;
            }
            w2.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
    });
    let _stalled = connect_forwarded(&format!("127.0.0.1:{flood_port}")).await;
    // Let the stalled stream fill every buffer along the way.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let data = pattern(5, 32 << 20);
    let s = connect_forwarded(&format!("127.0.0.1:{echo_port}")).await;
    let got = tokio::time::timeout(GUARD, echo_round(s, data.clone(), 1 << 16)).await.expect("second stream stalled");
    assert!(got == data, "echo differs");
    let stuck = written.load(Ordering::Relaxed);
    assert!(stuck < FLOOD, "the stalled stream must be held back by flow control, not buffered without bound");
}

async fn guest_server_exit_releases_the_host_port(bridge: Bridge) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let server = spawn_echo(bridge.guest.tcp_listener(&addr));
    let s = connect_forwarded(&addr).await;
    assert_eq!(echo_round(s, b"ping".to_vec(), 4).await, b"ping");
    server.abort(); // drops the guest listener
    wait_released(&addr).await;
}

async fn forwarding_resumes_after_the_agent_is_killed_and_restarted(mut bridge: Bridge) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    spawn_echo(bridge.guest.tcp_listener(&addr));
    let s = connect_forwarded(&addr).await;
    assert_eq!(echo_round(s, b"before".to_vec(), 6).await, b"before");
    // A connection in flight when the agent dies is reset, not left hanging.
    let mut inflight = connect_forwarded(&addr).await;
    inflight.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    inflight.read_exact(&mut one).await.unwrap();
    bridge.restart_agent();
    let mut rest = Vec::new();
    let end = tokio::time::timeout(GUARD, inflight.read_to_end(&mut rest)).await.expect("in-flight connection hung");
    assert!(end.is_err() || rest.is_empty(), "in-flight connection must end");
    bridge.wait_log(2, "connected to agent");
    let s = connect_forwarded(&addr).await;
    assert_eq!(echo_round(s, b"after".to_vec(), 5).await, b"after");
}

async fn a_taken_host_port_is_reported_and_others_still_forward(bridge: Bridge) {
    let (taken, free) = (free_port(), free_port());
    let squatter = std::net::TcpListener::bind(("127.0.0.1", taken)).unwrap();
    spawn_echo(bridge.guest.tcp_listener(&format!("127.0.0.1:{taken}")));
    spawn_echo(bridge.guest.tcp_listener(&format!("127.0.0.1:{free}")));
    let s = connect_forwarded(&format!("127.0.0.1:{free}")).await;
    assert_eq!(echo_round(s, b"ok".to_vec(), 2).await, b"ok");
    let needle = format!("host 127.0.0.1:{taken}: host port in use");
    bridge.wait_log(1, &needle);
    // Reported once, not on every retry; the status says why it waits.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(bridge.forwarder.log_text().matches(&needle).count(), 1);
    let row = bridge.status_row("tcp", &format!("127.0.0.1:{taken}")).expect("a status row for the taken port");
    assert_eq!(row["state"], "retrying", "{row}");
    assert!(row["reason"].as_str().unwrap().contains("in use"), "{row}");
    // Once the port is free, the retry picks it up.
    drop(squatter);
    bridge.wait_log(1, &format!("forwarding 127.0.0.1:{taken}"));
    assert!(bridge.forwarder.log_text().contains("(the host port is free now)"));
    let s = connect_forwarded(&format!("127.0.0.1:{taken}")).await;
    assert_eq!(echo_round(s, b"later".to_vec(), 5).await, b"later");
}

/// Waits until the status row of `addr` is in `state`.
fn wait_state(bridge: &Bridge, addr: &str, state: &str) -> serde_json::Value {
    ferry_tests::wait_for(GUARD, &format!("{addr} to be {state}"), || {
        bridge.status_row("tcp", addr).filter(|r| r["state"] == state)
    })
}

async fn a_restarting_guest_server_keeps_its_host_port_and_held_clients_are_served(bridge: Bridge) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let first = spawn_echo(bridge.guest.tcp_listener(&addr));
    assert_eq!(echo_round(connect_forwarded(&addr).await, b"v1".to_vec(), 2).await, b"v1");
    // The dev server restarts: its listener closes and comes back 400 ms later.
    first.abort();
    let row = wait_state(&bridge, &addr, "restarting");
    assert!(row["reason"].as_str().unwrap().contains("in case it returns"), "{row}");
    // A reload in that window is held, not refused, and served once it is back.
    let held =
        tokio::spawn(echo_round(TcpStream::connect(&addr).await.expect("held, not refused"), b"reload".to_vec(), 6));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!held.is_finished(), "answered while no guest listener existed");
    let second = spawn_echo(bridge.guest.tcp_listener(&addr));
    assert_eq!(tokio::time::timeout(GUARD, held).await.expect("held client hung").unwrap(), b"reload");
    wait_state(&bridge, &addr, "forwarding");
    bridge.wait_log(1, "is back;");
    // It stops for good: a client held now is reset when the grace ends,
    // and the port is released.
    second.abort();
    wait_state(&bridge, &addr, "restarting");
    let mut late = TcpStream::connect(&addr).await.expect("held during the grace");
    let _ = late.write_all(b"anyone?").await;
    let mut got = Vec::new();
    let end = tokio::time::timeout(GUARD, late.read_to_end(&mut got)).await.expect("held client never released");
    assert!(end.is_err() || got.is_empty(), "no guest, yet an answer: {got:?}");
    wait_released(&addr).await;
}

async fn ipv6_guest_listener_is_published_on_both_host_loopbacks(bridge: Bridge) {
    let port = free_port();
    spawn_echo(bridge.guest.tcp_listener(&format!("[::1]:{port}")));
    for addr in [format!("[::1]:{port}"), format!("127.0.0.1:{port}")] {
        let s = connect_forwarded(&addr).await;
        assert_eq!(echo_round(s, b"six".to_vec(), 3).await, b"six", "{addr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_transport_runs_the_agent_over_stdio() {
    let guest = Guest::new();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    spawn_echo(guest.tcp_listener(&format!("127.0.0.1:{port}")));
    let agent = bin_dir().join("ferry-agent");
    let secret = make_secret(dir.path());
    let mut fwd = Command::new(bin_dir().join("ferry"));
    let cmd =
        format!("exec:ip netns exec {} {} --stdio --secret-file {}", guest.name, agent.display(), secret.display());
    fwd.args(["run", "--agent", &cmd, "--secret-file"]).arg(&secret);
    let _fwd = Proc::spawn(fwd, dir.path().join("ferry.log"));
    let s = connect_forwarded(&format!("127.0.0.1:{port}")).await;
    let data = pattern(9, 3 << 20);
    assert!(echo_round(s, data.clone(), 1 << 15).await == data);
}

async fn garbage_on_the_agent_socket_is_rejected_and_the_agent_survives(mut bridge: Bridge) {
    let sock = bridge.dir.path().join("agent.sock");
    for junk in [&b"GET / HTTP/1.1\r\n\r\n"[..], &[0xffu8; 4096][..], b"FERRY\0"] {
        let mut raw = tokio::net::UnixStream::connect(&sock).await.unwrap();
        let _ = raw.write_all(junk).await;
        let _ = raw.shutdown().await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(GUARD, raw.read_to_end(&mut sink)).await.expect("agent hung on garbage");
    }
    assert!(bridge.agent.is_running(), "agent must survive garbage");
    let port = free_port();
    spawn_echo(bridge.guest.tcp_listener(&format!("127.0.0.1:{port}")));
    let s = connect_forwarded(&format!("127.0.0.1:{port}")).await;
    assert_eq!(echo_round(s, b"still fine".to_vec(), 3).await, b"still fine");
    // The first refusal is logged with its reason; the rest are counted
    // into a summary line (a flood must not fill the guest's /run).
    assert!(
        bridge.agent.log_text().contains("refused a session: handshake"),
        "agent logs why: {}",
        bridge.agent.log_text()
    );
}

/// Starts a forwarder against `bridge`'s agent with other arguments and
/// returns it once it has logged `needle`.
fn second_forwarder(bridge: &Bridge, name: &str, args: &[&str], needle: &str) -> Proc {
    let mut cmd = Command::new(bin_dir().join("ferry"));
    cmd.args(["run", "--agent", &format!("unix:{}", bridge.dir.path().join("agent.sock").display())]).args(args);
    cmd.arg("--control-socket").arg(bridge.dir.path().join(format!("{name}.sock")));
    let p = Proc::spawn(cmd, bridge.dir.path().join(format!("{name}.log")));
    ferry_tests::wait_for(GUARD, needle, || p.log_text().contains(needle).then_some(()));
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarder_with_the_wrong_secret_gets_nothing() {
    let mut bridge = Bridge::start();
    let port = free_port();
    spawn_echo(bridge.guest.tcp_listener(&format!("127.0.0.1:{port}")));
    // The real forwarder publishes the port; take it down to free the host port.
    drop(connect_forwarded(&format!("127.0.0.1:{port}")).await);
    bridge.forwarder.kill();
    wait_released(&format!("127.0.0.1:{port}")).await;

    let other = tempfile::tempdir().unwrap();
    let wrong = make_secret(other.path());
    let impostor = second_forwarder(
        &bridge,
        "impostor",
        &["--secret-file", wrong.to_str().unwrap()],
        "the two sides hold different secrets",
    );
    // The agent logs the refusal after sending it: wait for its line.
    let refused = "the host could not prove it holds the secret";
    ferry_tests::wait_for(GUARD, refused, || bridge.agent.log_text().contains(refused).then_some(()));
    // Nothing was forwarded to the impostor.
    assert!(!impostor.log_text().contains("forwarding"), "{}", impostor.log_text());
    assert!(TcpStream::connect(format!("127.0.0.1:{port}")).await.is_err());

    let insecure = second_forwarder(&bridge, "insecure", &["--insecure-no-auth"], "requires authentication");
    assert!(!insecure.log_text().contains("forwarding"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_connection_with_a_forged_proof_is_refused() {
    let bridge = Bridge::start();
    let port = free_port();
    spawn_echo(bridge.guest.tcp_listener(&format!("127.0.0.1:{port}")));
    // Well-formed, but made with a key no live session has.
    let (proof, request) = ferry_tests::forge::data_hello(&format!("127.0.0.1:{port}"));
    let mut raw = tokio::net::UnixStream::connect(bridge.dir.path().join("agent.sock")).await.unwrap();
    raw.write_all(&proof).await.unwrap();
    raw.write_all(&request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(GUARD, raw.read_to_end(&mut answer)).await.expect("agent hung").unwrap();
    assert_eq!(answer.first(), Some(&ferry_protocol::data_conn::REFUSED));
    assert!(String::from_utf8_lossy(&answer).contains("no live session made this proof"));
    assert!(bridge.agent.log_text().contains("refused a data connection: no live session made this proof"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_flags_agent_and_forwarder_share_the_default_secret() {
    // As a user would run them on one machine: no --secret-file anywhere.
    let guest = Guest::new();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let sock = dir.path().join("agent.sock");
    let port = free_port();
    spawn_echo(guest.tcp_listener(&format!("127.0.0.1:{port}")));
    let mut agent = guest.command(bin_dir().join("ferry-agent").to_str().unwrap());
    agent.env("FERRY_STATE_DIR", &state).args(["--listen", &format!("unix:{}", sock.display())]);
    let _agent = Proc::spawn(agent, dir.path().join("agent.log"));
    let mut fwd = Command::new(bin_dir().join("ferry"));
    fwd.env("FERRY_STATE_DIR", &state).args(["run", "--agent", &format!("unix:{}", sock.display())]);
    let _fwd = Proc::spawn(fwd, dir.path().join("ferry.log"));
    let s = connect_forwarded(&format!("127.0.0.1:{port}")).await;
    assert_eq!(echo_round(s, b"defaults".to_vec(), 8).await, b"defaults");
    let mode = std::fs::metadata(state.join("secret")).unwrap().permissions();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
}
