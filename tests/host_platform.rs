//! Host behaviour that differs on macOS, exercised here on Linux: the
//! portable data paths (`FERRY_PORTABLE=1`, which `scripts/test.sh` sets for
//! a second run of the TCP, UDP, socket and fault suites), a port another
//! program serves on the wildcard address (BSD SO_REUSEADDR would let a
//! loopback bind share it), and the pseudoloopback listener macOS needs for
//! privileged ports (a wildcard listener that refuses non-local peers).

use std::time::Duration;

use ferry_tests::{
    free_port,
    net::{connect_forwarded, spawn_echo},
    Bridge, Guest,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn echo(addr: &str, msg: &[u8]) -> Vec<u8> {
    let mut s = connect_forwarded(addr).await;
    s.write_all(msg).await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut back)).await.expect("echo hung").unwrap();
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_log_the_data_paths_that_ferry_portable_selects() {
    let bridge = Bridge::start();
    let portable = std::env::var("FERRY_PORTABLE").as_deref() == Ok("1");
    let want = if portable { "data paths: portable" } else { "data paths: linux" };
    bridge.wait_log(1, want);
    ferry_tests::wait_for(Duration::from_secs(10), "the agent's data paths line", || {
        bridge.agent.log_text().contains(want).then_some(())
    });
    // And the relay they name carries bytes.
    let port = free_port();
    spawn_echo(bridge.guest.tcp_listener(&format!("127.0.0.1:{port}")));
    let data = ferry_tests::data::pattern(3, 1 << 20);
    assert!(echo(&format!("127.0.0.1:{port}"), &data).await == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_another_program_serves_on_the_wildcard_address_is_taken_not_shared() {
    let bridge = Bridge::start();
    let port = free_port();
    let squatter = std::net::TcpListener::bind(("0.0.0.0", port)).unwrap();
    spawn_echo(bridge.guest.tcp_listener(&format!("127.0.0.1:{port}")));
    let needle = format!("host 127.0.0.1:{port}: host port in use");
    bridge.wait_log(1, &needle);
    let row = bridge.status_row("tcp", &format!("127.0.0.1:{port}")).expect("a status row for the taken port");
    assert_eq!(row["state"], "retrying", "{row}");
    // Clients still reach the squatter, not the guest.
    squatter.set_nonblocking(true).unwrap();
    let _probe = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    // Once the squatter leaves, the retry takes the port for the guest.
    drop(squatter);
    bridge.wait_log(1, &format!("forwarding 127.0.0.1:{port}"));
    assert_eq!(echo(&format!("127.0.0.1:{port}"), b"guest").await, b"guest");
}

/// A second namespace joined to the host by a veth pair (see
/// [`Guest::link_to_host`]): the namespace and the host end's address.
fn peer_namespace() -> (Guest, String) {
    let peer = Guest::new();
    let (host_ip, _) = peer.link_to_host("fvp");
    (peer, host_ip)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pseudoloopback_serves_local_clients_and_refuses_a_peer_in_another_namespace() {
    let bridge = Bridge::start_with(&["-v"], &["--retry-busy-ms", "200", "--pseudoloopback", "-v"]);
    bridge.wait_log(1, "dedicated data connections");
    let port = free_port();
    spawn_echo(bridge.guest.tcp_listener(&format!("127.0.0.1:{port}")));
    assert_eq!(echo(&format!("127.0.0.1:{port}"), b"local").await, b"local");
    let row = bridge.status_row("tcp", &format!("127.0.0.1:{port}")).expect("a status row");
    assert_eq!(row["state"], "forwarding", "{row}");

    // The listener is on the wildcard address, so a peer on another host
    // (here: another namespace over veth) can connect, but gets nothing.
    let (peer, host_ip) = peer_namespace();
    let target = format!("{host_ip}:{port}");
    let answer = peer.run_in(move || {
        use std::io::{Read, Write};
        let mut s = match std::net::TcpStream::connect_timeout(&target.parse().unwrap(), Duration::from_secs(10)) {
            Ok(s) => s,
            // The reset may beat connect()'s own check of the handshake.
            Err(e) => return Err(e.kind()),
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(b"remote");
        let mut back = Vec::new();
        match s.read_to_end(&mut back) {
            Ok(_) => Ok(back),
            Err(e) => Err(e.kind()),
        }
    });
    match answer {
        // Accepted by the wildcard listener, then reset or closed unanswered.
        Err(std::io::ErrorKind::ConnectionReset) => {}
        Ok(back) => assert!(back.is_empty(), "a non-local peer must never reach the guest: {back:?}"),
        // Refused would mean no wildcard listener: the pseudoloopback path was not taken.
        Err(other) => panic!("the peer's connection should be accepted, then reset: {other:?}"),
    }
    bridge.wait_log(1, "published on loopback only");
    // Local clients are still served.
    assert_eq!(echo(&format!("127.0.0.1:{port}"), b"again").await, b"again");
}
