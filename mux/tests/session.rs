//! In-process session tests over a Unix socket pair: both ends run the real
//! multiplexer; the "agent" end serves an in-memory echo.

use std::time::Duration;

use bytes::Bytes;
use ferry_mux::{
    pump::{pump, PumpEnd},
    transport::Transport,
    OpenError, Session, SessionConfig, SessionEvent, StreamError,
};
use ferry_protocol::{ControlMessage, Role, Target};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::UnixStream,
    sync::mpsc,
};

fn pair() -> (Transport, Transport) {
    let (a, b) = UnixStream::pair().unwrap();
    (Transport::from_unix(a, "agent".into()), Transport::from_unix(b, "host".into()))
}

/// A transport for a session under test, and the raw socket of its peer.
fn raw_peer() -> (Transport, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    (Transport::from_unix(a, "raw".into()), b)
}

/// What an unauthenticated raw peer sends to open a session: its hello
/// and its nonce (protocol v2 exchanges nonces even without a secret).
async fn raw_handshake(raw: &mut UnixStream, hello: ferry_protocol::Hello) {
    raw.write_all(&hello.encode()).await.unwrap();
    raw.write_all(&[0x42; ferry_protocol::auth::NONCE_LEN]).await.unwrap();
}

async fn sessions(
    cfg: SessionConfig,
) -> (Session, mpsc::Receiver<SessionEvent>, Session, mpsc::Receiver<SessionEvent>) {
    let (ta, th) = pair();
    let (h, a) = tokio::join!(Session::start(ta, Role::Host, cfg.clone()), Session::start(th, Role::Agent, cfg));
    let (h, hev) = h.unwrap();
    let (a, aev) = a.unwrap();
    (h, hev, a, aev)
}

/// Agent side: echo every stream whose target port is 7, refuse others.
fn serve_echo(mut events: mpsc::Receiver<SessionEvent>) {
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            let SessionEvent::Open(open) = ev else { continue };
            let Target::Tcp(addr) = open.target else { panic!("a TCP target") };
            if addr.port() != 7 {
                open.refuse("connection refused");
                continue;
            }
            tokio::spawn(async move {
                let stream = open.accept().await.unwrap();
                let (mut rx, mut tx) = stream.into_split();
                while let Ok(Some(b)) = rx.recv().await {
                    tx.send(b).await.unwrap();
                }
                tx.finish().await.unwrap();
            });
        }
    });
}

fn echo_target() -> Target {
    Target::Tcp("127.0.0.1:7".parse().unwrap())
}

#[tokio::test]
async fn echo_and_half_close_through_the_mux() {
    let (host, _hev, _agent, aev) = sessions(SessionConfig::default()).await;
    serve_echo(aev);
    let stream = host.open(&echo_target()).await.unwrap();
    let (mut rx, mut tx) = stream.into_split();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let sender = {
        let data = Bytes::from(data.clone());
        tokio::spawn(async move {
            tx.send(data).await.unwrap();
            tx.finish().await.unwrap();
        })
    };
    let mut got = Vec::new();
    while let Some(b) = rx.recv().await.unwrap() {
        got.extend_from_slice(&b);
    }
    sender.await.unwrap();
    assert_eq!(got, data);
    // Both FINs exchanged: the stream is gone from both tables.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(host.stream_count(), 0);
}

#[tokio::test]
async fn refused_open_carries_the_reason() {
    let (host, _hev, _agent, aev) = sessions(SessionConfig::default()).await;
    serve_echo(aev);
    let err = host.open(&Target::Tcp("127.0.0.1:8".parse().unwrap())).await.err().unwrap();
    assert_eq!(err, OpenError::Refused("connection refused".into()));
    assert_eq!(host.stream_count(), 0);
}

#[tokio::test]
async fn a_stalled_reader_does_not_block_other_streams() {
    let cfg = SessionConfig { window: 64 * 1024, ..Default::default() };
    let (host, _hev, _agent, aev) = sessions(cfg).await;
    serve_echo(aev);
    // Stream A: send far more than the window and never read the echo.
    let (_stalled_rx, mut stalled_tx) = host.open(&echo_target()).await.unwrap().into_split();
    let blocked = tokio::spawn(async move { stalled_tx.send(Bytes::from(vec![1u8; 4 << 20])).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!blocked.is_finished(), "the stalled stream must be held back by its window");
    // Stream B still flows.
    let (mut rx, mut tx) = host.open(&echo_target()).await.unwrap().into_split();
    for i in 0..100u32 {
        tx.send(Bytes::from(i.to_be_bytes().to_vec())).await.unwrap();
        let mut got = Vec::new();
        while got.len() < 4 {
            got.extend_from_slice(&rx.recv().await.unwrap().unwrap());
        }
        assert_eq!(got, i.to_be_bytes());
    }
    blocked.abort();
}

#[tokio::test]
async fn control_messages_arrive_in_order() {
    let (host, mut hev, agent, _aev) = sessions(SessionConfig::default()).await;
    for n in 0..50u16 {
        let l = ferry_protocol::Listener { proto: ferry_protocol::Proto::Tcp, addr: ([127, 0, 0, 1], n).into() };
        agent.send_control(&ControlMessage::PortSnapshot(vec![l])).unwrap();
    }
    for n in 0..50u16 {
        match hev.recv().await.unwrap() {
            SessionEvent::Control(ControlMessage::PortSnapshot(v)) => assert_eq!(v[0].addr.port(), n),
            _ => panic!("unexpected event"),
        }
    }
    drop(host);
}

#[tokio::test]
async fn garbage_after_handshake_closes_with_a_protocol_error() {
    let (ta, mut raw) = raw_peer();
    raw_handshake(&mut raw, ferry_protocol::Hello::ours(Role::Agent)).await;
    let (host, _ev) = Session::start(ta, Role::Host, SessionConfig::default()).await.unwrap();
    // An oversized frame header.
    raw.write_all(&ferry_protocol::frame::header(1, ferry_protocol::FrameType::Data, u32::MAX)).await.unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(5), host.closed()).await.unwrap();
    assert!(reason.contains("exceeds the limit"), "{reason}");
    // The peer was told why before the close.
    let mut buf = Vec::new();
    raw.read_to_end(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf).contains("protocol error"));
}

#[tokio::test]
async fn version_mismatch_names_both_versions() {
    let (ta, mut raw) = raw_peer();
    let future = ferry_protocol::Hello { version: 9, min_version: 9, features: 0, role: Role::Agent };
    raw.write_all(&future.encode()).await.unwrap();
    let err = Session::start(ta, Role::Host, SessionConfig::default()).await.err().unwrap().to_string();
    assert!(err.contains("v2") && err.contains("v9"), "{err}");
}

#[tokio::test]
async fn silent_peer_is_detected_by_keepalive() {
    let (ta, mut raw) = raw_peer();
    raw_handshake(&mut raw, ferry_protocol::Hello::ours(Role::Agent)).await;
    let cfg = SessionConfig {
        keepalive_interval: Duration::from_millis(50),
        keepalive_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let (host, _ev) = Session::start(ta, Role::Host, cfg).await.unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(5), host.closed()).await.unwrap();
    assert!(reason.contains("keepalive"), "{reason}");
    let err = host.open(&echo_target()).await.err().unwrap();
    assert!(matches!(err, OpenError::SessionClosed(_)));
    drop(raw);
}

#[tokio::test]
async fn a_peer_that_offers_no_keepalive_is_not_timed_out_for_its_silence() {
    let (ta, mut raw) = raw_peer();
    let hello = ferry_protocol::Hello { features: 0, ..ferry_protocol::Hello::ours(Role::Agent) };
    raw_handshake(&mut raw, hello).await;
    let cfg = SessionConfig {
        keepalive_interval: Duration::from_millis(50),
        keepalive_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let (host, _ev) = Session::start(ta, Role::Host, cfg).await.unwrap();
    assert_eq!(host.negotiated().features & ferry_protocol::handshake::features::KEEPALIVE, 0);
    let closed = tokio::time::timeout(Duration::from_secs(1), host.closed()).await;
    assert!(closed.is_err(), "closed for silence it never promised to break: {:?}", closed.ok());
    drop(raw);
}

#[tokio::test]
async fn a_stalled_process_does_not_blame_its_peer() {
    let cfg = SessionConfig {
        keepalive_interval: Duration::from_millis(50),
        keepalive_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let (host, _hev, _agent, aev) = sessions(cfg).await;
    serve_echo(aev);
    // Let both keepalives run (and ping) before the stall.
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Both ends share this single-threaded runtime: blocking it stalls both
    // processes' worth of tasks for longer than the timeout, as a starved
    // machine or a suspended VM would.
    std::thread::sleep(Duration::from_millis(900));
    let closed = tokio::time::timeout(Duration::from_millis(600), host.closed()).await;
    assert!(closed.is_err(), "the session was closed: {:?}", closed.ok());
    let (mut rx, mut tx) = host.open(&echo_target()).await.unwrap().into_split();
    tx.send(bytes::Bytes::from_static(b"still here")).await.unwrap();
    assert_eq!(&rx.recv().await.unwrap().unwrap()[..], b"still here");
}

#[tokio::test]
async fn session_loss_resets_open_streams() {
    let (host, _hev, agent, aev) = sessions(SessionConfig::default()).await;
    serve_echo(aev);
    let (mut rx, _tx) = host.open(&echo_target()).await.unwrap().into_split();
    agent.close("agent shutting down").await;
    match rx.recv().await {
        Err(StreamError::SessionClosed(r)) => assert!(r.contains("agent shutting down"), "{r}"),
        other => panic!("expected session closed, got {other:?}"),
    }
}

#[tokio::test]
async fn pump_splices_a_socket_with_half_close() {
    let (host, _hev, _agent, aev) = sessions(SessionConfig::default()).await;
    serve_echo(aev);
    let (mut client, server_side) = UnixStream::pair().unwrap();
    let stream = host.open(&echo_target()).await.unwrap();
    let pumping = tokio::spawn(async move {
        let (r, w) = server_side.into_split();
        pump(r, w, stream, &ferry_mux::Traffic::default()).await
    });
    client.write_all(b"request").await.unwrap();
    client.shutdown().await.unwrap();
    let mut resp = Vec::new();
    client.read_to_end(&mut resp).await.unwrap();
    assert_eq!(resp, b"request");
    assert_eq!(pumping.await.unwrap(), PumpEnd::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_opens_keep_ids_in_order() {
    let (host, _hev, agent, aev) = sessions(SessionConfig::default()).await;
    serve_echo(aev);
    let mut tasks = Vec::new();
    for i in 0..500u32 {
        let host = host.clone();
        tasks.push(tokio::spawn(async move {
            let (mut rx, mut tx) = host.open(&echo_target()).await.unwrap().into_split();
            tx.send(Bytes::from(i.to_be_bytes().to_vec())).await.unwrap();
            tx.finish().await.unwrap();
            let mut got = Vec::new();
            while let Some(b) = rx.recv().await.unwrap() {
                got.extend_from_slice(&b);
            }
            assert_eq!(got, i.to_be_bytes());
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(!agent.is_closed(), "agent saw no protocol error");
}

async fn start_pair(
    host_secret: Option<ferry_protocol::auth::Secret>,
    agent_secret: Option<ferry_protocol::auth::Secret>,
) -> (Result<Session, String>, Result<Session, String>) {
    let (ta, th) = pair();
    let cfg = |s: Option<ferry_protocol::auth::Secret>| SessionConfig {
        secret: s.map(std::sync::Arc::new),
        handshake_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let (h, a) = tokio::join!(
        Session::start(ta, Role::Host, cfg(host_secret)),
        Session::start(th, Role::Agent, cfg(agent_secret))
    );
    (h.map(|(s, _)| s).map_err(|e| e.to_string()), a.map(|(s, _)| s).map_err(|e| e.to_string()))
}

#[tokio::test]
async fn peers_with_the_same_secret_authenticate() {
    let s = ferry_protocol::auth::Secret::generate().unwrap();
    let (h, a) = start_pair(Some(s.clone()), Some(s)).await;
    assert!(h.is_ok() && a.is_ok(), "{:?} {:?}", h.err(), a.err());
}

#[tokio::test]
async fn different_secrets_fail_on_both_sides_with_clear_errors() {
    let (h, a) = start_pair(
        Some(ferry_protocol::auth::Secret::generate().unwrap()),
        Some(ferry_protocol::auth::Secret::generate().unwrap()),
    )
    .await;
    let (h, a) = (h.err().unwrap(), a.err().unwrap());
    assert!(h.contains("different secrets"), "{h}");
    assert!(a.contains("could not prove"), "{a}");
}

#[tokio::test]
async fn authentication_modes_must_match() {
    let (h, a) = start_pair(Some(ferry_protocol::auth::Secret::generate().unwrap()), None).await;
    assert!(h.err().unwrap().contains("without authentication"));
    assert!(a.err().unwrap().contains("requires authentication"));
    let (h, a) = start_pair(None, None).await;
    assert!(h.is_ok() && a.is_ok(), "both sides insecure is allowed");
}

#[tokio::test]
async fn streams_beyond_the_limit_are_refused_with_a_reason() {
    let cfg = SessionConfig { max_streams: 4, ..Default::default() };
    let (host, _hev, agent, aev) = sessions(cfg).await;
    serve_echo(aev);
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(host.open(&echo_target()).await.unwrap());
    }
    let err = host.open(&echo_target()).await.err().unwrap();
    assert_eq!(err, OpenError::Refused("too many streams (limit 4)".into()));
    assert!(!agent.is_closed(), "refusing a stream does not end the session");
    drop(held);
}

#[tokio::test]
async fn draining_with_try_recv_returns_credit_and_sees_the_end() {
    let (host, _hev, _agent, aev) = sessions(SessionConfig::default()).await;
    serve_echo(aev);
    let stream = host.open(&echo_target()).await.unwrap();
    let (mut rx, mut tx) = stream.into_split();
    assert!(rx.try_recv().is_none(), "nothing has arrived yet");
    // Four windows' worth: the echo stalls unless drained chunks return credit.
    let data: Vec<u8> = (0..4 * ferry_protocol::flow::DEFAULT_WINDOW).map(|i| (i % 253) as u8).collect();
    let sender = {
        let data = Bytes::from(data.clone());
        tokio::spawn(async move {
            for chunk in data.chunks(1400) {
                tx.send(Bytes::copy_from_slice(chunk)).await.unwrap();
            }
            tx.finish().await.unwrap();
        })
    };
    let mut got = Vec::new();
    let drained = tokio::time::timeout(Duration::from_secs(20), async {
        // Wait for one chunk, then take whatever else has arrived without waiting.
        while let Some(b) = rx.recv().await.unwrap() {
            got.extend_from_slice(&b);
            loop {
                match rx.try_recv() {
                    None => break,
                    Some(Ok(Some(b))) => got.extend_from_slice(&b),
                    Some(Ok(None)) => return,
                    Some(Err(e)) => panic!("stream failed: {e}"),
                }
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "stalled after {} of {} bytes", got.len(), data.len());
    sender.await.unwrap();
    assert_eq!(got, data);
}

#[tokio::test]
async fn an_open_cancelled_before_its_answer_leaves_no_stream_on_the_peer() {
    let (host, _hev, agent, aev) = sessions(SessionConfig::default()).await;
    serve_echo(aev);
    let target = echo_target();
    for _ in 0..50 {
        // Polled once: the OPEN is queued, then the future is dropped and the
        // stream reset (on the urgent queue, which may overtake the OPEN).
        let mut open = Box::pin(host.open(&target));
        assert!(futures_poll_once(open.as_mut()).await.is_none());
        drop(open);
    }
    // A round trip after them: by its answer the agent has seen every
    // earlier frame.
    {
        let (mut rx, mut tx) = host.open(&echo_target()).await.unwrap().into_split();
        tx.send(Bytes::from_static(b"after")).await.unwrap();
        assert_eq!(&rx.recv().await.unwrap().unwrap()[..], b"after");
        tx.finish().await.unwrap();
        assert!(rx.recv().await.unwrap().is_none());
    }
    // Every stream the agent accepted for the cancelled opens ends: none is
    // left waiting for a host stream that no longer exists.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while agent.stream_count() > 0 || host.stream_count() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "orphan streams: agent {}, host {}",
            agent.stream_count(),
            host.stream_count()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `f` once; its output if it was ready.
async fn futures_poll_once<F: std::future::Future + Unpin>(mut f: F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

#[tokio::test]
async fn a_peer_that_reads_nothing_cannot_grow_the_answer_queue_without_end() {
    let (ta, mut raw) = raw_peer();
    let hello = ferry_protocol::Hello { features: 0, ..ferry_protocol::Hello::ours(Role::Agent) };
    raw_handshake(&mut raw, hello).await;
    let cfg = SessionConfig { max_urgent_bytes: 64 << 10, ..Default::default() };
    let (host, _ev) = Session::start(ta, Role::Host, cfg).await.unwrap();
    // Pings, each owed a pong, and never a byte read back.
    let (_raw_rx, mut raw_tx) = raw.into_split();
    let flood = tokio::spawn(async move {
        let mut buf = bytes::BytesMut::new();
        for nonce in 0..2_000u64 {
            ferry_protocol::Frame::Ping { nonce }.encode(&mut buf);
        }
        while raw_tx.write_all(&buf).await.is_ok() {}
    });
    let reason = tokio::time::timeout(Duration::from_secs(20), host.closed()).await.expect("the queue grew unbounded");
    assert!(reason.contains("reads nothing"), "{reason}");
    flood.abort();
}

#[tokio::test]
async fn an_open_the_peer_never_answers_times_out() {
    let (ta, mut raw) = raw_peer();
    raw_handshake(&mut raw, ferry_protocol::Hello::ours(Role::Agent)).await;
    let cfg = SessionConfig { open_timeout: Duration::from_millis(300), ..Default::default() };
    let (host, _ev) = Session::start(ta, Role::Host, cfg).await.unwrap();
    // The raw peer reads (and answers pings) but never answers the OPEN.
    let started = std::time::Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(10), host.open(&echo_target())).await.expect("open hung");
    assert!(matches!(err, Err(OpenError::Timeout(_))), "{:?}", err.err());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(host.stream_count(), 0, "the timed-out stream is gone");
    drop(raw);
}

/// Nothing but the frames themselves moves a session on: with no
/// keepalive traffic to carry them along, an open is answered and echoed
/// data comes back (an event held until the next read would hang here).
#[tokio::test]
async fn every_frame_is_acted_on_without_further_traffic() {
    let cfg = SessionConfig { keepalive_interval: Duration::from_secs(3600), ..Default::default() };
    let (host, _hev, _agent, aev) = sessions(cfg).await;
    serve_echo(aev);
    for _ in 0..20 {
        let cycle = async {
            let (mut rx, mut tx) = host.open(&echo_target()).await.unwrap().into_split();
            tx.send(Bytes::from_static(b"x")).await.unwrap();
            tx.finish().await.unwrap();
            assert_eq!(rx.recv().await.unwrap().as_deref(), Some(&b"x"[..]));
            assert_eq!(rx.recv().await.unwrap(), None);
        };
        tokio::time::timeout(Duration::from_secs(20), cycle).await.expect("the session stalled");
    }
}

/// Resident memory of this process, in bytes.
fn own_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb = status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).unwrap();
    kb.parse::<u64>().unwrap() * 1024
}

/// A host session and a raw agent: the host's events, the agent's write
/// half, and each PONG nonce the agent's (drained) read half sees.
struct RawAgent {
    host: Session,
    events: mpsc::Receiver<SessionEvent>,
    wr: tokio::net::unix::OwnedWriteHalf,
    pong: mpsc::UnboundedReceiver<u64>,
}

impl RawAgent {
    async fn start() -> Self {
        use ferry_protocol::{Frame, FrameDecoder};
        let (ta, mut raw) = raw_peer();
        raw_handshake(&mut raw, ferry_protocol::Hello::ours(Role::Agent)).await;
        let (host, events) = Session::start(ta, Role::Host, SessionConfig::default()).await.unwrap();
        let (mut rd, wr) = raw.into_split();
        let (pong_tx, pong) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            // The host's hello and nonce, then frames.
            let mut skip = vec![0u8; ferry_protocol::handshake::HELLO_LEN + ferry_protocol::auth::NONCE_LEN];
            rd.read_exact(&mut skip).await.unwrap();
            let mut dec = FrameDecoder::default();
            let mut buf = bytes::BytesMut::with_capacity(1 << 16);
            while rd.read_buf(&mut buf).await.is_ok_and(|n| n > 0) {
                while let Ok(Some(f)) = dec.decode(&mut buf) {
                    if let Frame::Pong { nonce } = f {
                        let _ = pong_tx.send(nonce);
                    }
                }
            }
        });
        Self { host, events, wr, pong }
    }

    /// Opens stream `id` to the host, whose application accepts it.
    async fn open(&mut self, id: u32) -> ferry_mux::MuxStream {
        let mut wire = bytes::BytesMut::new();
        let target = ferry_protocol::message::encode(&Target::Tcp("127.0.0.1:7".parse().unwrap()));
        ferry_protocol::Frame::Open { stream: id, target }.encode(&mut wire);
        self.wr.write_all(&wire).await.unwrap();
        let Some(SessionEvent::Open(open)) = self.events.recv().await else { panic!("no OPEN reached the host") };
        open.accept().await.unwrap()
    }
}

/// A raw agent that has opened stream 2 to the host, whose application
/// accepted it and reads nothing from it; the raw peer's read half is
/// drained, and `pong` reports each PONG nonce it sees.
async fn raw_agent_with_an_unread_stream(
) -> (Session, ferry_mux::MuxStream, tokio::net::unix::OwnedWriteHalf, mpsc::UnboundedReceiver<u64>) {
    let mut agent = RawAgent::start().await;
    let stream = agent.open(2).await;
    (agent.host, stream, agent.wr, agent.pong)
}

/// Sends a PING and waits for its PONG: the host has handled everything
/// written before it.
async fn sync_with_host(wr: &mut tokio::net::unix::OwnedWriteHalf, pong: &mut mpsc::UnboundedReceiver<u64>, n: u64) {
    let mut wire = bytes::BytesMut::new();
    ferry_protocol::Frame::Ping { nonce: n }.encode(&mut wire);
    wr.write_all(&wire).await.unwrap();
    while tokio::time::timeout(Duration::from_secs(30), pong.recv()).await.unwrap().unwrap() != n {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_frames_cannot_make_an_unread_stream_pin_far_more_than_its_window() {
    // A hostile peer sends 1-byte DATA frames to a stream whose reader is
    // stalled, each followed by 256 KiB of DATA for a stream that does not
    // exist (ignored as a late arrival). It uses 800 bytes of the stream's
    // 1 MiB credit; the host must not hold 200 MB for it.
    let (host, stream, mut wr, mut pong) = raw_agent_with_an_unread_stream().await;
    let mut tiny = bytes::BytesMut::new();
    ferry_protocol::Frame::Data { stream: 2, payload: Bytes::from_static(b"x") }.encode(&mut tiny);
    let mut padding = bytes::BytesMut::new();
    ferry_protocol::Frame::Data { stream: 4, payload: Bytes::from(vec![0u8; 256 << 10]) }.encode(&mut padding);
    sync_with_host(&mut wr, &mut pong, 1).await;
    let before = own_rss();
    for _ in 0..800 {
        wr.write_all(&tiny).await.unwrap();
        wr.write_all(&padding).await.unwrap();
    }
    sync_with_host(&mut wr, &mut pong, 2).await;
    let grown = own_rss().saturating_sub(before);
    assert!(!host.is_closed(), "the session went on");
    assert!(
        grown < 32 << 20,
        "800 unread bytes on one stream (window 1 MiB) made the host hold {} MiB more",
        grown >> 20
    );
    drop(stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_data_frames_cannot_grow_an_unread_stream_without_bound() {
    // Empty DATA frames cost no credit: a hostile peer sends two million
    // to a stream whose reader is stalled. The host must not queue each.
    let (host, stream, mut wr, mut pong) = raw_agent_with_an_unread_stream().await;
    let mut batch = bytes::BytesMut::new();
    for _ in 0..10_000 {
        ferry_protocol::Frame::Data { stream: 2, payload: Bytes::new() }.encode(&mut batch);
    }
    sync_with_host(&mut wr, &mut pong, 1).await;
    let before = own_rss();
    for _ in 0..200 {
        wr.write_all(&batch).await.unwrap();
    }
    sync_with_host(&mut wr, &mut pong, 2).await;
    let grown = own_rss().saturating_sub(before);
    assert!(
        grown < 32 << 20 || host.is_closed() || host.stream_count() == 0,
        "2,000,000 empty DATA frames (0 bytes of credit) on one unread stream made the host hold {} MiB more",
        grown >> 20
    );
    drop(stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_of_ended_streams_still_count_against_the_session_bound() {
    // 17 streams, each sent 65,535 empty DATA frames (under the per-stream
    // bound) then FIN, after the host's application half-closed them and
    // while it reads nothing: 1,114,095 frames wait in the host at once, more
    // than the session bound (1,048,576), so some stream must be reset.
    use ferry_protocol::Frame;
    const STREAMS: u32 = 17;
    const FRAMES: usize = 65_535;
    let mut agent = RawAgent::start().await;
    let mut readers = Vec::new();
    for i in 0..STREAMS {
        let id = 2 + 2 * i;
        let (reader, writer) = agent.open(id).await.into_split();
        writer.finish().await.unwrap(); // our FIN: the peer's FIN ends the stream
        readers.push(reader);
        let mut batch = bytes::BytesMut::new();
        for _ in 0..FRAMES {
            Frame::Data { stream: id, payload: Bytes::new() }.encode(&mut batch);
        }
        Frame::Fin { stream: id }.encode(&mut batch);
        agent.wr.write_all(&batch).await.unwrap();
    }
    sync_with_host(&mut agent.wr, &mut agent.pong, 1).await;
    assert!(!agent.host.is_closed());
    let mut reset = 0;
    for mut r in readers {
        loop {
            match r.recv().await {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    reset += 1;
                    break;
                }
            }
        }
    }
    assert!(
        reset >= 1,
        "{} frames waited at once in the host's readers (session bound 1,048,576) and no stream was reset",
        STREAMS as usize * FRAMES
    );
}
