//! Fault injection, bounded in time: a frozen agent, and many connections
//! opened and closed without leaking file descriptors or memory.

use std::{process::Command, time::Duration};

use ferry_tests::{free_port, wait_for, Bridge};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const GUARD: Duration = Duration::from_secs(60);

fn spawn_echo(l: tokio::net::TcpListener) {
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
}

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

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
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
    let fds0: Vec<usize> = pids.iter().map(|p| fd_count(*p)).collect();
    let rss0: Vec<u64> = pids.iter().map(|p| rss_kib(*p)).collect();
    churn(&addr, 10_000, 50).await;
    // Closed connections are released asynchronously; give them a moment.
    let fds1 = wait_for(GUARD, "file descriptors to return to the baseline", || {
        let now: Vec<usize> = pids.iter().map(|p| fd_count(*p)).collect();
        now.iter().zip(&fds0).all(|(n, b)| *n <= b + 2).then_some(now)
    });
    let rss1: Vec<u64> = pids.iter().map(|p| rss_kib(*p)).collect();
    eprintln!("fds {fds0:?} -> {fds1:?}, RSS KiB {rss0:?} -> {rss1:?}");
    for (after, before) in rss1.iter().zip(&rss0) {
        // A leak of even 1 KiB per connection would add 10 MiB.
        assert!(after.saturating_sub(*before) < 8 * 1024, "RSS grew from {before} KiB to {after} KiB");
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
