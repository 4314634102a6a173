//! The TCP transport as an attacker on the VM's network sees it: a relay
//! between `ferry` and the agent records every connection (veth between
//! namespaces, as a vzNAT or shared network), then replays, tampers with
//! and floods the agent. Nothing the attacker sends opens anything in the
//! guest, a changed byte closes the session, and a flood costs the agent a
//! few log lines while the host's session carries on.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use ferry_tests::{
    data::{pattern, sha256},
    free_port,
    net::connect_forwarded,
    relay::Relay,
    try_wait_for, wait_for, Bridge,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const GUARD: Duration = Duration::from_secs(30);

/// An echo server in the guest that counts the connections it accepts.
fn counting_echo(bridge: &Bridge, addr: &str) -> Arc<AtomicUsize> {
    let l = bridge.guest.tcp_listener(addr);
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    count
}

/// Sends `data` through the forwarded `addr` to an echo server and reads
/// the echo back meanwhile (a bounded path would stall a client that
/// writes everything before it reads).
async fn echo_once(addr: &str, data: &[u8]) -> Vec<u8> {
    let s = connect_forwarded(addr).await;
    let (mut r, mut w) = s.into_split();
    let reading = tokio::spawn(async move {
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.map(|_| got)
    });
    w.write_all(data).await.unwrap();
    w.shutdown().await.unwrap();
    tokio::time::timeout(Duration::from_secs(120), reading).await.expect("echo hung").unwrap().unwrap()
}

/// Sends `bytes` to the agent from a socket of the attacker's own and
/// returns whatever comes back before the agent closes.
async fn send_raw(agent: &str, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(agent).await.expect("reach the agent");
    let _ = s.write_all(bytes).await;
    let _ = s.shutdown().await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await;
    got
}

/// A bridge over TCP that `ferry` dials directly, and the agent's address.
fn bridge_over_tcp() -> (Bridge, String) {
    let mut agent = String::new();
    let bridge = Bridge::start_over_tcp_via(
        |a| {
            agent = a.to_string();
            a.to_string()
        },
        &[],
    );
    (bridge, agent)
}

/// A bridge over TCP whose `ferry` dials through a recording relay; the
/// agent's own address and the relay.
fn bridge_via_relay(forwarder_args: &[&str]) -> (Bridge, String, Relay) {
    let mut agent = String::new();
    let mut relay = None;
    let bridge = Bridge::start_over_tcp_via(
        |a| {
            agent = a.to_string();
            let r =
                tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(Relay::start(a.to_string())));
            let dial = r.addr.clone();
            relay = Some(r);
            dial
        },
        forwarder_args,
    );
    (bridge, agent, relay.expect("the relay started"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_recorded_connections_opens_nothing_in_the_guest() {
    // Some connections kept warm too: their proofs are on the wire before
    // any client, and must be as useless to a replayer as the rest.
    let (bridge, agent, relay) = bridge_via_relay(&["--warm-data-conns", "4", "--unsealed-data-conns"]);
    bridge.wait_log(1, "dedicated data connections");
    let port = free_port();
    let target = format!("127.0.0.1:{port}");
    let accepted = counting_echo(&bridge, &target);
    for i in 0..3 {
        let data = pattern(i, 4096);
        assert_eq!(echo_once(&target, &data).await, data);
    }
    wait_for(GUARD, "three accepted connections", || (accepted.load(Ordering::SeqCst) == 3).then_some(()));
    let recorded = relay.recorded();
    let proof_len = ferry_protocol::data_conn::PROOF_LEN;
    // Used data connections carry a request and the client's bytes; the
    // rest are kept warm (proven, waiting for a client).
    let data_conns: Vec<&Vec<u8>> =
        recorded.iter().filter(|c| c.starts_with(b"FERRYD") && c.len() > proof_len).collect();
    let warm: Vec<&Vec<u8>> = recorded.iter().filter(|c| c.starts_with(b"FERRYD") && c.len() == proof_len).collect();
    let sessions: Vec<&Vec<u8>> = recorded.iter().filter(|c| c.starts_with(b"FERRY\0")).collect();
    assert_eq!(data_conns.len(), 3, "each client went on a data connection of its own");
    assert_eq!(sessions.len(), 1);

    // Whole, and in parts: the proof alone, the proof with another
    // connection's request; and every warm connection's proof with a
    // recorded request behind it.
    let mut replays: Vec<Vec<u8>> = data_conns.iter().map(|c| c.to_vec()).collect();
    assert!(!warm.is_empty(), "warm connections were recorded");
    for w in &warm {
        replays.push([&w[..], &data_conns[0][proof_len..]].concat());
    }
    replays.push(data_conns[0][..proof_len].to_vec());
    let mut spliced = data_conns[0][..proof_len].to_vec();
    spliced.extend_from_slice(&data_conns[1][proof_len..]);
    replays.push(spliced);
    for replay in &replays {
        let answer = send_raw(&agent, replay).await;
        if let Some(&status) = answer.first() {
            assert_eq!(status, ferry_protocol::data_conn::REFUSED, "{:?}", String::from_utf8_lossy(&answer));
        }
    }
    // The recorded session, whole: the agent's proof comes from a fresh nonce.
    send_raw(&agent, sessions[0]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 3, "a replay reached the guest service");
    let log = bridge.agent.log_text();
    assert!(log.contains("refused a"), "{log}");
    assert_eq!(bridge.agent.log_text().matches("host connected via").count(), 1, "a replayed session got in");
    // The real host is unaffected.
    let data = pattern(9, 1 << 20);
    assert_eq!(sha256(&echo_once(&target, &data).await), sha256(&data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_the_session_closes_it() {
    // Everything on the session, so that the flipped byte lands in its frames.
    let (bridge, _, relay) = bridge_via_relay(&["--no-dedicated"]);
    assert!(bridge.forwarder.log_text().contains("(protocol v2, sealed)"), "{}", bridge.forwarder.log_text());
    let port = free_port();
    let target = format!("127.0.0.1:{port}");
    counting_echo(&bridge, &target);
    let data = pattern(1, 64 * 1024);
    assert_eq!(echo_once(&target, &data).await, data);
    // The stream's bytes crossed inside the session, sealed: no stretch of
    // them is on the wire in clear.
    let recorded = relay.recorded();
    let session = recorded.iter().find(|c| c.starts_with(b"FERRY\0")).expect("the session was recorded");
    assert!(session.len() > data.len(), "the stream went over the session");
    for probe in data.chunks(32).step_by(128) {
        assert!(!session.windows(32).any(|w| w == probe), "the stream's bytes crossed the session in clear");
    }
    relay.flip_next_byte();
    // Traffic for the flip to land in; the stream it hits may fail.
    let mut s = connect_forwarded(&target).await;
    let _ = s.write_all(&pattern(2, 256 * 1024)).await;
    wait_for(GUARD, "the flip", || (relay.flipped.load(Ordering::SeqCst) == 1).then_some(()));
    wait_for(GUARD, "the agent closing the tampered session", || {
        bridge.agent.log_text().contains("failed authentication").then_some(())
    });
    // The host reconnects (a new handshake, new keys) and forwards again.
    bridge.wait_log(2, "connected to agent");
    let data = pattern(3, 64 * 1024);
    let got = try_wait_for(GUARD, || {
        let data = data.clone();
        let target = target.clone();
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async move {
                let s = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(&target)).await.ok()?.ok()?;
                let mut s = s;
                s.write_all(&data).await.ok()?;
                s.shutdown().await.ok()?;
                let mut got = Vec::new();
                tokio::time::timeout(GUARD, s.read_to_end(&mut got)).await.ok()?.ok()?;
                (got == data).then_some(got)
            })
        })
    });
    assert!(got.is_some(), "forwarding came back after the tampered session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_without_the_secret_costs_a_few_log_lines_and_no_data() {
    let (bridge, agent) = bridge_over_tcp();
    bridge.wait_log(1, "connections travel inside the sealed session");
    let port = free_port();
    let target = format!("127.0.0.1:{port}");
    let accepted = counting_echo(&bridge, &target);
    let log_before = bridge.agent.log_text().len();
    // A transfer running alongside.
    let data = pattern(5, 32 << 20);
    let expect = sha256(&data);
    let transfer = tokio::spawn({
        let target = target.clone();
        async move { sha256(&echo_once(&target, &data).await) }
    });
    let (proof, request) = ferry_tests::forge::data_hello(&target);
    let bad_hello: Vec<u8> = [proof, request].concat();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..10_000usize {
        let (agent, bad_hello) = (agent.clone(), bad_hello.clone());
        tasks.spawn(async move {
            let Ok(mut s) = TcpStream::connect(&agent).await else { return };
            if i % 2 == 0 {
                // Unauthenticated: connect and go.
                drop(s);
            } else {
                let _ = s.write_all(&bad_hello).await;
                let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut Vec::new())).await;
            }
        });
        while tasks.len() >= 64 {
            tasks.join_next().await;
        }
    }
    while tasks.join_next().await.is_some() {}
    assert_eq!(tokio::time::timeout(Duration::from_secs(120), transfer).await.unwrap().unwrap(), expect);
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "only the real transfer reached the guest");
    let grown = bridge.agent.log_text().len() - log_before;
    assert!(grown <= 4096, "the agent's log grew by {grown} bytes:\n{}", &bridge.agent.log_text()[log_before..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_peer_is_refused_with_both_versions_named() {
    let (bridge, agent) = bridge_over_tcp();
    // A version 1 host: its hello, as v1 sent it.
    let old = ferry_protocol::Hello { version: 1, min_version: 1, features: 0b111, role: ferry_protocol::Role::Host };
    let answer = send_raw(&agent, &old.encode()).await;
    let theirs =
        ferry_protocol::Hello::decode(answer[..ferry_protocol::handshake::HELLO_LEN].try_into().unwrap()).unwrap();
    assert_eq!(theirs.version, 2, "the agent says which version it speaks");
    wait_for(GUARD, "the agent's refusal", || {
        let log = bridge.agent.log_text();
        (log.contains("we speak v2") && log.contains("the peer speaks v1") && log.contains("upgrade the older side"))
            .then_some(())
    });
    // A version 1 agent, as `ferry` sees it.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let v1 =
            ferry_protocol::Hello { version: 1, min_version: 1, features: 0b111, role: ferry_protocol::Role::Agent };
        s.write_all(&v1.encode()).await.unwrap();
        let _ = s.read_to_end(&mut Vec::new()).await;
    });
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(ferry_tests::bin_dir().join("ferry"));
    cmd.args(["run", "--agent", &format!("tcp:{addr}"), "--insecure-no-auth"]).env("FERRY_STATE_DIR", dir.path());
    let ferry = ferry_tests::Proc::spawn(cmd, dir.path().join("ferry.log"));
    wait_for(GUARD, "ferry's refusal of a v1 agent", || {
        let log = ferry.log_text();
        (log.contains("we speak v2") && log.contains("the peer speaks v1")).then_some(())
    });
}

/// By default nothing but the sealed session crosses a TCP network: there
/// is no data connection for an attacker on the path to hold back and take
/// over (see the next test for what `--unsealed-data-conns` risks), and
/// what the clients sent is not in the recording in clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_only_the_sealed_session_crosses_the_network() {
    let (bridge, _, relay) = bridge_via_relay(&[]);
    bridge.wait_log(1, "connections travel inside the sealed session");
    let port = free_port();
    let target = format!("127.0.0.1:{port}");
    let accepted = counting_echo(&bridge, &target);
    let secret_text = b"a password the network must not see, in a client's request";
    for _ in 0..3 {
        assert_eq!(echo_once(&target, secret_text).await, secret_text);
    }
    wait_for(GUARD, "three accepted connections", || (accepted.load(Ordering::SeqCst) == 3).then_some(()));
    let recorded = relay.recorded();
    assert_eq!(recorded.len(), 1, "only the session crossed the network");
    assert!(recorded[0].starts_with(b"FERRY\0"));
    assert!(!recorded[0].windows(secret_text.len()).any(|w| w == secret_text), "a client's bytes crossed in clear");
}

/// With `--unsealed-data-conns` (a network the user says nobody else is
/// on), an attacker on the path who holds back the host's data connection
/// and sends its recorded proof and request first, from a socket of its
/// own, is admitted: nothing binds a proof to the TCP connection it arrived
/// on. The test documents that risk of the opt-in and is not run; the
/// default (above) carries every connection in the sealed session instead.
/// Closing it for the opt-in too means sealing each data connection
/// (a per-connection key from the data key and both nonces, AES-GCM
/// records as on the session), at the cost of the splice path.
#[ignore = "documents the risk --unsealed-data-conns takes; the default is not exposed"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_back_data_connection_cannot_be_taken_over() {
    let (bridge, agent, relay) = bridge_via_relay(&["--warm-data-conns", "0", "--unsealed-data-conns"]);
    bridge.wait_log(1, "dedicated data connections");
    let port = free_port();
    let target = format!("127.0.0.1:{port}");
    let accepted = counting_echo(&bridge, &target);
    relay.hold_data_conns(true);
    let client = tokio::spawn({
        let target = target.clone();
        async move {
            let mut s = connect_forwarded(&target).await;
            let _ = s.write_all(b"the host's client").await;
            let _ = tokio::time::timeout(GUARD, s.read_to_end(&mut Vec::new())).await;
        }
    });
    let proof_len = ferry_protocol::data_conn::PROOF_LEN;
    let held = wait_for(GUARD, "the host's held-back data connection", || {
        relay.recorded().into_iter().find(|c| {
            c.starts_with(b"FERRYD")
                && c.len() >= proof_len + 2
                && ferry_protocol::data_conn::DataProof::request_rest_len([c[proof_len], c[proof_len + 1]])
                    .is_ok_and(|rest| c.len() >= proof_len + 2 + rest)
        })
    });
    let rest = ferry_protocol::data_conn::DataProof::request_rest_len([held[proof_len], held[proof_len + 1]]).unwrap();
    let hello = &held[..proof_len + 2 + rest];
    let mut s = TcpStream::connect(&agent).await.expect("reach the agent");
    s.write_all(hello).await.unwrap();
    s.write_all(b"the attacker's bytes").await.unwrap();
    s.shutdown().await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
    relay.hold_data_conns(false);
    let _ = tokio::time::timeout(GUARD, client).await;
    assert_ne!(answer.first(), Some(&ferry_protocol::data_conn::CONNECTED), "{:?}", String::from_utf8_lossy(&answer));
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "the attacker's copy reached the guest service");
}

/// A warm connection's request held back on the path until its session
/// has ended opens nothing: the keys die with the session, and so do the
/// proven connections waiting for a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_connections_request_held_past_its_session_opens_nothing() {
    let (mut bridge, _, relay) = bridge_via_relay(&["--warm-data-conns", "4", "--unsealed-data-conns"]);
    bridge.wait_log(1, "dedicated data connections");
    let port = free_port();
    let target = format!("127.0.0.1:{port}");
    let accepted = counting_echo(&bridge, &target);
    let proof_len = ferry_protocol::data_conn::PROOF_LEN;
    // Wait for the pool: the first client goes on a connection kept warm.
    let data = pattern(1, 4096);
    assert_eq!(echo_once(&target, &data).await, data);
    wait_for(GUARD, "warm data connections", || {
        relay.recorded().iter().any(|c| c.starts_with(b"FERRYD") && c.len() == proof_len).then_some(())
    });
    let before = accepted.load(Ordering::SeqCst);
    let used =
        |relay: &Relay| relay.recorded().iter().filter(|c| c.starts_with(b"FERRYD") && c.len() > proof_len).count();
    let used_before = used(&relay);
    relay.hold_requests(true);
    let mut s = connect_forwarded(&target).await;
    s.write_all(b"held back").await.unwrap();
    wait_for(GUARD, "a warm connection's request", || (used(&relay) > used_before).then_some(()));
    // The session ends (the host goes away); then the request goes on.
    bridge.forwarder.kill();
    wait_for(GUARD, "the agent seeing the session end", || {
        bridge.agent.log_text().contains("host session via").then_some(())
    });
    relay.hold_requests(false);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(accepted.load(Ordering::SeqCst), before, "a request came after its session ended and was served");
}
