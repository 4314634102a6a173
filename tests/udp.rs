//! UDP forwarding end to end: guest UDP servers found by discovery, host
//! clients with flows of their own, real dnsmasq answering real dig.

use std::{
    net::UdpSocket,
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use ferry_tests::{
    data::{pattern, sha256},
    free_port,
    net::{connect_forwarded, spawn_echo, GUARD},
    procs::Proc,
    wait_for, Bridge, Guest,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const AGENT: &[&str] = &["-v"];

/// A UDP echo server in the guest, on a thread of its own, until the socket errors.
fn udp_echo(guest: &Guest, addr: &str) {
    let addr = addr.to_string();
    serve_echo(guest.run_in(move || UdpSocket::bind(&addr).expect("bind udp in guest")));
}

/// Echoes every datagram `socket` receives, on a thread of its own, until
/// the socket errors.
fn serve_echo(socket: UdpSocket) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_535];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], from);
        }
    });
}

/// A bridge with a reverse UDP forward from guest port (returned) to
/// `host_addr`, once the agent listens.
fn reverse_udp_bridge(host_addr: std::net::SocketAddr) -> (Bridge, u16) {
    let guest_port = free_port();
    let reverse = format!("udp:127.0.0.1:{guest_port}={host_addr}");
    let bridge = Bridge::start_with(AGENT, &["--reverse", &reverse, "-v"]);
    wait_for(GUARD, "the reverse UDP listener", || {
        (bridge.status_row("reverse-udp", &format!("udp:{host_addr}"))?["state"] == "listening").then_some(())
    });
    (bridge, guest_port)
}

/// Opens `c`'s flow (its first datagram opens the flow's stream) and waits
/// for the echo.
fn open_flow(c: &UdpSocket) {
    c.send(b"open").unwrap();
    assert_eq!(c.recv(&mut [0u8; 16]).unwrap(), 4);
}

/// Sends datagrams 0..n of 1,400 bytes (`pattern(i, 1400)`), pausing 2 ms
/// after every hundred so that the receiving socket keeps up.
fn send_paced(c: &UdpSocket, n: u64) {
    for i in 0..n {
        c.send(&pattern(i, 1400)).unwrap();
        if i % 100 == 99 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Sends `signal` to `pid`, a process the test started.
fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) on a process this test started.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, signal) }, 0, "{}", std::io::Error::last_os_error());
}

/// Waits until the forwarder publishes UDP `host`.
fn wait_udp_forwarded(bridge: &Bridge, host: &str) {
    wait_for(GUARD, &format!("udp {host} forwarded"), || {
        (bridge.status_row("udp", host)?["state"] == "forwarding").then_some(())
    });
}

fn client(host: &str) -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

#[test]
fn ten_thousand_datagrams_of_mixed_sizes_each_get_their_own_reply() {
    let bridge = Bridge::start_with(AGENT, &["-v"]);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    udp_echo(&bridge.guest, &addr);
    wait_udp_forwarded(&bridge, &addr);
    let c = client(&addr);
    let sizes = [1usize, 2, 64, 512, 1400, 1472, 4096, 9000, 16_384, 32_768, 65_000];
    let mut buf = vec![0u8; 65_535];
    for i in 0..10_000u64 {
        let d = pattern(i, sizes[i as usize % sizes.len()]);
        c.send(&d).unwrap();
        let n = c.recv(&mut buf).unwrap_or_else(|e| panic!("datagram {i} ({} bytes): no reply: {e}", d.len()));
        assert!(buf[..n] == d[..], "datagram {i}: reply of {n} bytes differs from the {} sent", d.len());
    }
    let row = bridge.status_row("udp", &addr).unwrap();
    let sent: u64 = (0..10_000).map(|i| sizes[i % sizes.len()] as u64).sum();
    assert_eq!(row["bytes_to_guest"].as_u64(), Some(sent), "{row}");
    assert_eq!(row["bytes_from_guest"].as_u64(), Some(sent), "{row}");
}

/// Forces `socket`'s receive buffer to `bytes` (root may pass the
/// system's maximum), so that a test's own sockets never drop a datagram.
fn force_receive_buffer(socket: &UdpSocket, bytes: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt(2) on a socket this function borrows, with a
    // pointer to a c_int that outlives the call and its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
}

#[test]
fn a_flow_keeps_every_datagram_sent_while_the_agent_cannot_run() {
    // A stall of the agent (descheduled on a busy machine) is what a flow's
    // window must cover: 1,500 datagrams of 1,400 bytes (2.1 MB, twice the
    // 1 MiB window of byte streams) are sent while the agent is stopped,
    // and every one is echoed once it runs again.
    let bridge = Bridge::start_with(AGENT, &["-v"]);
    let addr = format!("127.0.0.1:{}", free_port());
    let echo = {
        let addr = addr.clone();
        bridge.guest.run_in(move || UdpSocket::bind(&addr).expect("bind udp in guest"))
    };
    force_receive_buffer(&echo, 16 << 20);
    serve_echo(echo);
    wait_udp_forwarded(&bridge, &addr);
    let c = client(&addr);
    force_receive_buffer(&c, 16 << 20);
    open_flow(&c);
    signal(bridge.agent.pid(), libc::SIGSTOP);
    const N: u64 = 1500;
    let sent_bytes = 4 + N * 1400;
    send_paced(&c, N);
    // Everything the host read went into the flow's window, none dropped.
    let up = wait_for(GUARD, "the forwarder to take every datagram", || {
        let row = bridge.status_row("udp", &addr)?;
        (row["bytes_to_guest"].as_u64()? + 1400 * row["dropped_datagrams"].as_u64()? >= sent_bytes).then_some(row)
    });
    signal(bridge.agent.pid(), libc::SIGCONT);
    assert_eq!(up["dropped_datagrams"].as_u64(), Some(0), "{up}");
    let mut buf = vec![0u8; 65_535];
    for i in 0..N {
        let n = c.recv(&mut buf).unwrap_or_else(|e| panic!("echo {i} of {N} missing: {e}"));
        assert!(buf[..n] == pattern(i, 1400)[..], "echo {i}: {n} bytes, not what was sent");
    }
    let row = bridge.status_row("udp", &addr).unwrap();
    assert_eq!(row["bytes_from_guest"].as_u64(), Some(sent_bytes), "{row}");
}

#[test]
fn two_clients_at_once_each_get_only_their_own_replies() {
    let bridge = Bridge::start_with(AGENT, &["-v"]);
    let addr = format!("127.0.0.1:{}", free_port());
    udp_echo(&bridge.guest, &addr);
    wait_udp_forwarded(&bridge, &addr);
    let clients: Vec<_> = (0..2u8)
        .map(|id| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let c = client(&addr);
                let mut buf = [0u8; 64];
                for i in 0..1000u32 {
                    let msg = format!("client {id} message {i}");
                    c.send(msg.as_bytes()).unwrap();
                    let n = c.recv(&mut buf).expect("reply");
                    assert_eq!(&buf[..n], msg.as_bytes(), "client {id} got someone else's reply");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client thread");
    }
    let row = bridge.status_row("udp", &addr).unwrap();
    assert_eq!(row["total_connections"], 2, "one flow per client: {row}");
}

#[test]
fn dig_on_the_host_asks_dnsmasq_in_the_guest() {
    for tool in ["/usr/sbin/dnsmasq", "/usr/bin/dig"] {
        assert!(std::path::Path::new(tool).exists(), "{tool} is missing: apt-get install dnsmasq-base dnsutils");
    }
    let bridge = Bridge::start_with(AGENT, &["-v"]);
    let port = free_port();
    let hosts = bridge.dir.path().join("hosts");
    std::fs::write(&hosts, "10.1.2.3 web.ferry.test\n").unwrap();
    let mut cmd = bridge.guest.command("/usr/sbin/dnsmasq");
    cmd.args(["--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--bind-interfaces"])
        .args(["--listen-address=127.0.0.1", "--user=root", "--pid-file"])
        .arg(format!("--port={port}"))
        .arg(format!("--addn-hosts={}", hosts.display()));
    let _dnsmasq = Proc::spawn(cmd, bridge.dir.path().join("dnsmasq.log"));
    let addr = format!("127.0.0.1:{port}");
    wait_udp_forwarded(&bridge, &addr);
    let out = Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string(), "web.ferry.test", "A", "+short", "+time=3", "+tries=2"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "10.1.2.3", "{}", String::from_utf8_lossy(&out.stderr));
    // dig +tcp goes through the TCP forward of the same port.
    let out = Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string(), "web.ferry.test", "A", "+short", "+tcp", "+time=3"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "10.1.2.3");
}

#[test]
fn an_idle_flow_expires_and_frees_its_slot() {
    let bridge = Bridge::start_with(AGENT, &["--udp-idle-timeout", "1", "-v"]);
    let addr = format!("127.0.0.1:{}", free_port());
    udp_echo(&bridge.guest, &addr);
    wait_udp_forwarded(&bridge, &addr);
    let c = client(&addr);
    c.send(b"hello").unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(c.recv(&mut buf).unwrap(), 5);
    assert_eq!(bridge.status_row("udp", &addr).unwrap()["active_connections"], 1);
    wait_for(GUARD, "the flow to expire", || {
        (bridge.status_row("udp", &addr)?["active_connections"] == 0).then_some(())
    });
    // The same client starts a new flow.
    c.send(b"again").unwrap();
    assert_eq!(c.recv(&mut buf).unwrap(), 5);
    assert_eq!(bridge.status_row("udp", &addr).unwrap()["total_connections"], 2);
}

#[test]
fn flows_are_bounded_and_the_excess_is_counted() {
    let bridge = Bridge::start_with(AGENT, &["--udp-max-flows", "2", "-v"]);
    let addr = format!("127.0.0.1:{}", free_port());
    udp_echo(&bridge.guest, &addr);
    wait_udp_forwarded(&bridge, &addr);
    let mut buf = [0u8; 16];
    let (a, b, c) = (client(&addr), client(&addr), client(&addr));
    for s in [&a, &b] {
        s.send(b"in").unwrap();
        assert_eq!(s.recv(&mut buf).unwrap(), 2);
    }
    c.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    c.send(b"third").unwrap();
    assert!(c.recv(&mut buf).is_err(), "a third flow must not be admitted");
    let row = bridge.status_row("udp", &addr).unwrap();
    assert_eq!((row["active_connections"].as_u64(), row["dropped_datagrams"].as_u64()), (Some(2), Some(1)), "{row}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_flood_does_not_starve_a_tcp_transfer_on_the_same_session() {
    // Multiplexed: UDP flows and the TCP stream share the one transport connection.
    let bridge = Bridge::start_with(AGENT, &["--no-dedicated", "-v"]);
    let (uport, tport) = (free_port(), free_port());
    let uaddr = format!("127.0.0.1:{uport}");
    let taddr = format!("127.0.0.1:{tport}");
    udp_echo(&bridge.guest, &uaddr);
    spawn_echo(bridge.guest.tcp_listener(&taddr));
    wait_udp_forwarded(&bridge, &uaddr);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let flooders: Vec<_> = (0..4)
        .map(|_| {
            let (stop, sent, uaddr) = (stop.clone(), sent.clone(), uaddr.clone());
            std::thread::spawn(move || {
                let c = client(&uaddr);
                c.set_nonblocking(true).unwrap();
                let d = [0x5au8; 1400];
                let mut sink = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if c.send(&d).is_ok() {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    while c.recv(&mut sink).is_ok() {}
                }
            })
        })
        .collect();
    let data = pattern(7, 64 << 20);
    let want = sha256(&data);
    let s = connect_forwarded(&taddr).await;
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::with_capacity(64 << 20);
    tokio::time::timeout(Duration::from_secs(120), r.read_to_end(&mut back))
        .await
        .expect("the TCP transfer stalled under the UDP flood")
        .unwrap();
    writer.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        f.join().unwrap();
    }
    assert_eq!(sha256(&back), want, "TCP bytes damaged under the UDP flood");
    assert!(sent.load(Ordering::Relaxed) > 10_000, "the flood was not a flood");
    let row = bridge.status_row("udp", &uaddr).unwrap();
    eprintln!("flood: {} datagrams sent, {} dropped", sent.load(Ordering::Relaxed), row["dropped_datagrams"]);
}

#[test]
fn ferry_status_shows_udp_rows() {
    let bridge = Bridge::start_with(AGENT, &["-v"]);
    let addr = format!("127.0.0.1:{}", free_port());
    udp_echo(&bridge.guest, &addr);
    wait_udp_forwarded(&bridge, &addr);
    let table = bridge.status_table();
    assert!(table.lines().any(|l| l.starts_with("udp") && l.contains(&addr) && l.contains("forwarding")), "{table}");
}

/// dnsmasq on the host at 127.0.0.1:`port`, answering web.ferry.test.
fn host_dnsmasq(dir: &std::path::Path, port: u16) -> Proc {
    let hosts = dir.join("host-hosts");
    std::fs::write(&hosts, "10.9.8.7 web.ferry.test\n").unwrap();
    let mut cmd = Command::new("/usr/sbin/dnsmasq");
    cmd.args(["--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--bind-interfaces"])
        .args(["--listen-address=127.0.0.1", "--user=root", "--pid-file"])
        .arg(format!("--port={port}"))
        .arg(format!("--addn-hosts={}", hosts.display()));
    Proc::spawn(cmd, dir.join("host-dnsmasq.log"))
}

#[test]
fn dig_in_the_guest_asks_a_resolver_on_the_host_over_reverse_udp() {
    for tool in ["/usr/sbin/dnsmasq", "/usr/bin/dig"] {
        assert!(std::path::Path::new(tool).exists(), "{tool} is missing: apt-get install dnsmasq-base dnsutils");
    }
    let host_port = free_port();
    // The guest's resolver address (port 53, as /etc/resolv.conf would name
    // it) reaches the host's resolver.
    let reverse = format!("udp:127.0.0.1:53=127.0.0.1:{host_port}");
    let bridge = Bridge::start_with(AGENT, &["--reverse", &reverse, "-v"]);
    let _dnsmasq = host_dnsmasq(bridge.dir.path(), host_port);
    wait_for(GUARD, "the reverse UDP listener", || {
        (bridge.status_row("reverse-udp", &format!("udp:127.0.0.1:{host_port}"))?["state"] == "listening").then_some(())
    });
    let dig = || {
        bridge
            .guest
            .command("dig")
            .args(["@127.0.0.1", "web.ferry.test", "A", "+short", "+time=3", "+tries=2"])
            .output()
            .unwrap()
    };
    let out = wait_for(GUARD, "an answer from the host's resolver", || {
        let out = dig();
        (!out.stdout.is_empty()).then_some(out)
    });
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "10.9.8.7", "{}", String::from_utf8_lossy(&out.stderr));
    // Each dig is a client of its own (a new source port): a flow each.
    for _ in 0..5 {
        assert_eq!(String::from_utf8_lossy(&dig().stdout).trim(), "10.9.8.7");
    }
    let row = bridge.status_row("reverse-udp", &format!("udp:127.0.0.1:{host_port}")).unwrap();
    assert!(row["total_connections"].as_u64().unwrap() >= 6, "{row}");
    assert!(row["bytes_from_guest"].as_u64().unwrap() > 0 && row["bytes_to_guest"].as_u64().unwrap() > 0, "{row}");
    // The agent's own listener is not discovered and forwarded back.
    assert!(bridge.status_row("udp", "127.0.0.1:53").is_none(), "{}", bridge.status_table());
}

#[test]
fn reverse_udp_carries_every_datagram_of_many_guest_clients_to_the_host() {
    let host = UdpSocket::bind("127.0.0.1:0").unwrap();
    let host_addr = host.local_addr().unwrap();
    serve_echo(host);
    let (bridge, guest_port) = reverse_udp_bridge(host_addr);
    // 20 guest clients, 50 datagrams each, sizes up to 16 KiB: every reply
    // comes back whole to the client that asked (UDP may drop under load,
    // so each client retries a datagram that got no reply).
    let target = format!("127.0.0.1:{guest_port}");
    let results = bridge.guest.run_in(move || {
        let clients: Vec<_> = (0..20u64)
            .map(|c| {
                let target = target.clone();
                std::thread::spawn(move || {
                    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                    s.connect(&target).unwrap();
                    s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
                    let mut buf = vec![0u8; 65_535];
                    for i in 0..50u64 {
                        let d = pattern(c * 1000 + i, ((c * 50 + i) * 331 % 16_384) as usize + 1);
                        let got = (0..10).find_map(|_| {
                            s.send(&d).unwrap();
                            s.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
                        });
                        if got.as_deref() != Some(&d[..]) {
                            return Err(format!("client {c} datagram {i}: no exact reply"));
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        clients.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>()
    });
    for r in results {
        r.unwrap();
    }
    let row = bridge.status_row("reverse-udp", &format!("udp:{host_addr}")).unwrap();
    assert!(row["total_connections"].as_u64().unwrap() >= 20, "a flow per guest client: {row}");
}

#[test]
fn a_reverse_flow_keeps_every_datagram_sent_while_the_forwarder_cannot_run() {
    // The mirror of the agent's stall: a guest client of a reverse UDP
    // forward sends 1,500 datagrams of 1,400 bytes (2.1 MB, twice the 1 MiB
    // window of byte streams) while the forwarder is stopped; every one is
    // echoed by the host server once it runs again.
    let host = UdpSocket::bind("127.0.0.1:0").unwrap();
    force_receive_buffer(&host, 16 << 20);
    let host_addr = host.local_addr().unwrap();
    serve_echo(host);
    let (bridge, guest_port) = reverse_udp_bridge(host_addr);
    let target = format!("127.0.0.1:{guest_port}");
    let c = bridge.guest.run_in(move || {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.connect(&target).unwrap();
        s
    });
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    force_receive_buffer(&c, 16 << 20);
    open_flow(&c);
    signal(bridge.forwarder.pid(), libc::SIGSTOP);
    const N: u64 = 1500;
    send_paced(&c, N);
    // The agent takes them at once (it runs); give it time.
    std::thread::sleep(Duration::from_millis(500));
    signal(bridge.forwarder.pid(), libc::SIGCONT);
    let mut buf = vec![0u8; 65_535];
    let mut echoed = 0;
    while c.recv(&mut buf).is_ok() {
        echoed += 1;
    }
    assert_eq!(echoed, N, "echoes of the {N} datagrams sent while the forwarder was stopped");
}

/// One TCP echo round through `addr`: `Err` says why it failed.
async fn tcp_echo_round(addr: &str, msg: &[u8]) -> Result<Vec<u8>, String> {
    let mut s = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    s.write_all(msg).await.map_err(|e| e.to_string())?;
    s.shutdown().await.map_err(|e| e.to_string())?;
    let mut back = Vec::new();
    match tokio::time::timeout(GUARD, s.read_to_end(&mut back)).await {
        Ok(Ok(_)) => Ok(back),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_port_at_its_flow_limit_does_not_keep_tcp_connections_out() {
    // Multiplexed: UDP flows and TCP connections are streams of one
    // session, under one memory ceiling. 1,024 clients (the default flow
    // limit of one port: DNS lookups from as many source ports, or any
    // local user) each send one datagram; a TCP connection must still go.
    let bridge = Bridge::start_with(AGENT, &["--no-dedicated", "-v"]);
    let (uaddr, taddr) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    udp_echo(&bridge.guest, &uaddr);
    spawn_echo(bridge.guest.tcp_listener(&taddr));
    wait_udp_forwarded(&bridge, &uaddr);
    drop(connect_forwarded(&taddr).await);
    assert_eq!(tcp_echo_round(&taddr, b"before").await.as_deref(), Ok(&b"before"[..]));
    // Held open, so that each has a source port of its own.
    let clients: Vec<UdpSocket> = (0..1024).map(|_| client(&uaddr)).collect();
    for c in &clients {
        c.send(b"q").unwrap();
    }
    wait_for(GUARD, "the forwarder to take 1,024 datagrams", || {
        let row = bridge.status_row("udp", &uaddr)?;
        let seen = row["total_connections"].as_u64()? + row["dropped_datagrams"].as_u64()?;
        (seen >= 1024).then_some(())
    });
    // Every flow's stream opens (or fails) within this.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = tcp_echo_round(&taddr, b"after").await;
    let log = bridge.forwarder.log_text();
    let why = log.lines().rfind(|l| l.contains("cannot forward")).unwrap_or("").to_string();
    assert_eq!(after.as_deref(), Ok(&b"after"[..]), "{why}");
}
