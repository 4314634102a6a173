//! Two connections wired back to back in memory, driven by random
//! interleavings of application commands, partial deliveries of the bytes
//! in flight and clock steps. Whatever the schedule: no protocol error
//! between two correct peers, bytes arrive intact and in order, queues stay
//! within their bounds, credit is conserved, both sides agree on every
//! stream's state once the wires are drained, and every stream that either
//! side opened ends on both.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;

const WINDOW: u32 = 4096;

fn config() -> Config {
    Config {
        window: WINDOW,
        max_streams: 64,
        max_stream_memory: 64 * WINDOW as u64,
        max_widened: 8 * WINDOW as u64,
        max_urgent_bytes: 1 << 20,
        max_queued_data: 1,
        max_queued_datagrams: 4,
        max_queued_datagram_bytes: 1 << 20,
        open_timeout: Duration::from_millis(100),
        keepalive: Some(KeepaliveConfig { interval: Duration::from_millis(50), timeout: Duration::from_secs(3600) }),
    }
}

/// The byte at `offset` of what `stream`'s sender in `role` sends.
fn pattern(role: Role, stream: StreamId, offset: u64) -> u8 {
    (offset.wrapping_mul(31) ^ stream as u64 ^ (role as u64) << 7) as u8
}

/// What one side's application knows of a stream.
#[derive(Debug, Default)]
struct AppStream {
    /// Established (our OPEN answered, or theirs accepted).
    established: bool,
    sent: u64,
    received: u64,
    /// Data received and not yet consumed.
    unconsumed: Vec<usize>,
    finished: bool,
    fin_received: bool,
    reset: bool,
}

/// What a run went through, to show the schedules reach every path.
#[derive(Debug, Default, Clone, Copy)]
struct Coverage {
    clean_ends_with_data: u64,
    resets: u64,
    refusals: u64,
    open_timeouts: u64,
    credit_waits: u64,
    queue_waits: u64,
    late_frames: u64,
}

/// One side: its connection, the bytes it has written and the peer has not
/// read yet, and its application.
struct Side {
    conn: Connection,
    wire: BytesMut,
    streams: BTreeMap<StreamId, AppStream>,
    incoming: Vec<StreamId>,
    /// Streams that both started and ended (to check every start ends).
    started: BTreeSet<StreamId>,
    ended: BTreeSet<StreamId>,
    seen: Coverage,
}

impl Side {
    fn new(role: Role, now: Instant) -> Self {
        Self {
            conn: Connection::new(role, config(), now),
            wire: BytesMut::new(),
            streams: BTreeMap::new(),
            incoming: Vec::new(),
            started: BTreeSet::new(),
            ended: BTreeSet::new(),
            seen: Coverage::default(),
        }
    }

    fn role(&self) -> Role {
        self.conn.role()
    }

    /// Moves every queued frame onto the wire.
    fn flush(&mut self) {
        let mut out = Vec::new();
        loop {
            out.clear();
            let taken = self.conn.take_batch(&mut out, 16, 1 << 20);
            if out.is_empty() {
                return;
            }
            for f in out.drain(..) {
                f.encode(&mut self.wire);
            }
            assert!(taken.goaway.is_none(), "a correct peer never needs GOAWAY here");
        }
    }

    /// Handles the events the connection produced.
    fn drain_events(&mut self, peer_role: Role) {
        while let Some(ev) = self.conn.poll_event() {
            match ev {
                Event::Opened(id) => self.streams.get_mut(&id).expect("our open").established = true,
                Event::OpenFailed { stream, failure } => {
                    match failure {
                        OpenFailure::Refused(_) => self.seen.refusals += 1,
                        OpenFailure::TimedOut(_) => self.seen.open_timeouts += 1,
                        OpenFailure::Ended(_) => self.seen.resets += 1,
                    }
                    self.streams.get_mut(&stream).expect("our open").reset = true;
                }
                Event::Incoming { stream, .. } => {
                    assert!(self.started.insert(stream), "stream {stream} announced twice");
                    self.streams.insert(stream, AppStream::default());
                    self.incoming.push(stream);
                }
                Event::Data { stream, payload } => {
                    let s = self.streams.get_mut(&stream).expect("data for a known stream");
                    assert!(s.established && !s.fin_received && !s.reset, "data on stream {stream} in a wrong state");
                    for (i, b) in payload.iter().enumerate() {
                        assert_eq!(*b, pattern(peer_role, stream, s.received + i as u64), "stream {stream} corrupted");
                    }
                    s.received += payload.len() as u64;
                    s.unconsumed.push(payload.len());
                }
                Event::Fin(id) => {
                    let s = self.streams.get_mut(&id).expect("fin for a known stream");
                    assert!(!s.fin_received);
                    s.fin_received = true;
                }
                Event::Reset { stream, .. } => {
                    self.seen.resets += 1;
                    self.streams.get_mut(&stream).expect("known stream").reset = true;
                }
                Event::Credit(_) | Event::Control(_) | Event::UnreadableControl(_) => {}
                Event::Gone(id) => {
                    assert!(self.started.contains(&id), "stream {id} gone before it started");
                    assert!(self.ended.insert(id), "stream {id} gone twice");
                    self.incoming.retain(|s| *s != id);
                }
                Event::Closed(reason) => panic!("connection closed: {reason}"),
            }
        }
    }

    fn nth(&self, n: usize) -> Option<StreamId> {
        let live: Vec<_> = self.streams.keys().copied().filter(|id| !self.ended.contains(id)).collect();
        (!live.is_empty()).then(|| live[n % live.len()])
    }

    fn send(&mut self, id: StreamId, len: usize) {
        let role = self.role();
        let s = self.streams.get_mut(&id).expect("known");
        if !s.established || s.finished || s.reset {
            return;
        }
        let data: Vec<u8> = (0..len as u64).map(|i| pattern(role, id, s.sent + i)).collect();
        let mut data = Bytes::from(data);
        loop {
            match self.conn.send(id, &mut data) {
                Ok(Ok(0)) | Err(_) => break,
                Ok(Ok(n)) => s.sent += n as u64,
                Ok(Err(Blocked::Credit)) => {
                    self.seen.credit_waits += 1;
                    break;
                }
                Ok(Err(Blocked::Queue)) => {
                    self.seen.queue_waits += 1;
                    break;
                }
            }
        }
    }

    fn consume(&mut self, id: StreamId) {
        let s = self.streams.get_mut(&id).expect("known");
        for n in s.unconsumed.drain(..) {
            self.conn.consumed(id, n);
        }
    }

    fn finish(&mut self, id: StreamId) {
        let s = self.streams.get_mut(&id).expect("known");
        if s.established && !s.finished && !s.reset && self.conn.finish(id).is_ok() {
            s.finished = true;
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Open(bool),
    /// Widens a stream's receive window (as UDP flows do).
    Widen(bool, usize),
    Accept(bool, usize),
    Refuse(bool, usize),
    Send(bool, usize, usize),
    Consume(bool, usize),
    Finish(bool, usize),
    Reset(bool, usize),
    Deliver(bool, usize),
    Tick(u64),
    Settle,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => any::<bool>().prop_map(Op::Open),
        1 => (any::<bool>(), any::<usize>()).prop_map(|(s, n)| Op::Widen(s, n)),
        2 => (any::<bool>(), any::<usize>()).prop_map(|(s, n)| Op::Accept(s, n)),
        1 => (any::<bool>(), any::<usize>()).prop_map(|(s, n)| Op::Refuse(s, n)),
        4 => (any::<bool>(), any::<usize>(), 1usize..12_000).prop_map(|(s, n, l)| Op::Send(s, n, l)),
        3 => (any::<bool>(), any::<usize>()).prop_map(|(s, n)| Op::Consume(s, n)),
        2 => (any::<bool>(), any::<usize>()).prop_map(|(s, n)| Op::Finish(s, n)),
        1 => (any::<bool>(), any::<usize>()).prop_map(|(s, n)| Op::Reset(s, n)),
        6 => (any::<bool>(), 1usize..20_000).prop_map(|(s, n)| Op::Deliver(s, n)),
        2 => (0u64..40).prop_map(Op::Tick),
        1 => Just(Op::Settle),
    ]
}

struct Pair {
    host: Side,
    agent: Side,
    now: Instant,
}

impl Pair {
    fn new() -> Self {
        let now = Instant::now();
        Self { host: Side::new(Role::Host, now), agent: Side::new(Role::Agent, now), now }
    }

    fn sides(&mut self, host: bool) -> (&mut Side, &mut Side) {
        if host {
            (&mut self.host, &mut self.agent)
        } else {
            (&mut self.agent, &mut self.host)
        }
    }

    /// Delivers up to `n` bytes of what `from` wrote to its peer.
    fn deliver(&mut self, from_host: bool, n: usize) {
        let now = self.now;
        let (from, to) = self.sides(from_host);
        from.flush();
        let n = n.min(from.wire.len());
        let mut chunk = from.wire.split_to(n);
        to.conn.handle_bytes(&mut chunk, now);
        // A partial frame stays in `chunk`; put it back in front of the rest.
        let rest = from.wire.split();
        from.wire.unsplit(chunk);
        from.wire.unsplit(rest);
        assert_eq!(to.conn.failing(), None, "protocol error between correct peers");
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Open(host) => {
                let now = self.now;
                let (s, _) = self.sides(host);
                if let Ok(id) = s.conn.open(&Target::Unix("/x".into()), now) {
                    s.started.insert(id);
                    s.streams.insert(id, AppStream::default());
                }
            }
            Op::Widen(host, n) => {
                let (s, _) = self.sides(host);
                let open: Vec<StreamId> = s.streams.iter().filter(|(_, a)| a.established).map(|(id, _)| *id).collect();
                if !open.is_empty() {
                    let _ = s.conn.widen(open[n % open.len()], 3 * WINDOW);
                }
            }
            Op::Accept(host, n) => {
                let (s, _) = self.sides(host);
                if !s.incoming.is_empty() {
                    let id = s.incoming.remove(n % s.incoming.len());
                    s.conn.accept(id).expect("an Accepting stream can be accepted");
                    s.streams.get_mut(&id).unwrap().established = true;
                }
            }
            Op::Refuse(host, n) => {
                let (s, _) = self.sides(host);
                if !s.incoming.is_empty() {
                    let id = s.incoming.remove(n % s.incoming.len());
                    // Resetting an unanswered OPEN refuses it.
                    s.conn.reset(id, "no");
                    s.streams.get_mut(&id).unwrap().reset = true;
                }
            }
            Op::Send(host, n, len) => {
                let (s, _) = self.sides(host);
                if let Some(id) = s.nth(n) {
                    s.send(id, len);
                }
            }
            Op::Consume(host, n) => {
                let (s, _) = self.sides(host);
                if let Some(id) = s.nth(n) {
                    s.consume(id);
                }
            }
            Op::Finish(host, n) => {
                let (s, _) = self.sides(host);
                if let Some(id) = s.nth(n) {
                    s.finish(id);
                }
            }
            Op::Reset(host, n) => {
                let (s, _) = self.sides(host);
                if let Some(id) = s.nth(n) {
                    s.conn.reset(id, "app reset");
                    s.streams.get_mut(&id).unwrap().reset = true;
                    s.incoming.retain(|i| *i != id);
                }
            }
            Op::Deliver(host, n) => self.deliver(host, n),
            Op::Tick(ms) => {
                self.now += Duration::from_millis(ms);
                for s in [&mut self.host, &mut self.agent] {
                    if s.conn.poll_timeout().is_some_and(|t| t <= self.now) {
                        s.conn.handle_timeout(self.now);
                    }
                }
            }
            Op::Settle => self.settle(),
        }
        self.drain();
        self.check_bounds();
    }

    fn drain(&mut self) {
        self.host.drain_events(Role::Agent);
        self.agent.drain_events(Role::Host);
    }

    fn check_bounds(&self) {
        for s in [&self.host, &self.agent] {
            let cfg = s.conn.config();
            assert!(s.conn.urgent_bytes() <= cfg.max_urgent_bytes);
            assert!(s.conn.queued_data() <= cfg.max_queued_data);
            assert!(s.conn.stream_count() <= cfg.max_streams);
            // What the ceiling counts is exactly the live streams' windows.
            let windows: u64 = s.conn.streams.values().map(|st| st.recv.window() as u64).sum();
            assert_eq!(s.conn.pinned(), windows);
            assert!(s.conn.pinned() <= cfg.max_stream_memory);
            let widened: u64 = s.conn.streams.values().map(|st| (st.recv.window() - cfg.window) as u64).sum();
            assert_eq!(s.conn.widened, widened);
            assert!(s.conn.widened <= cfg.max_widened);
            assert_eq!(s.conn.closed_reason(), None);
        }
    }

    /// Delivers everything and consumes everything until nothing moves.
    fn settle(&mut self) {
        for _ in 0..1000 {
            for host in [true, false] {
                self.deliver(host, usize::MAX);
            }
            self.drain();
            for s in [&mut self.host, &mut self.agent] {
                let ids: Vec<_> = s.streams.keys().copied().collect();
                for id in ids {
                    s.consume(id);
                }
                s.flush();
            }
            if self.host.wire.is_empty() && self.agent.wire.is_empty() {
                self.check_agreement();
                return;
            }
        }
        panic!("the wires never drained");
    }

    /// With nothing in flight, both sides agree on every stream and credit
    /// is conserved.
    fn check_agreement(&self) {
        let ids: BTreeSet<StreamId> = [&self.host, &self.agent]
            .iter()
            .flat_map(|s| s.streams.keys().copied())
            .filter(|id| self.host.conn.stream_state(*id).is_some() || self.agent.conn.stream_state(*id).is_some())
            .collect();
        for id in ids {
            use StreamState::*;
            let (h, a) = (self.host.conn.stream_state(id), self.agent.conn.stream_state(id));
            let agree = matches!(
                (h, a),
                (Some(Open), Some(Open))
                    | (Some(SentFin), Some(ReceivedFin))
                    | (Some(ReceivedFin), Some(SentFin))
                    | (Some(Opening), Some(Accepting))
                    | (Some(Accepting), Some(Opening))
            );
            assert!(agree, "stream {id}: host {h:?}, agent {a:?}");
            let (hw, aw) = (self.host.conn.windows(id).unwrap(), self.agent.conn.windows(id).unwrap());
            // Credit matters while the receiver still expects data.
            let expecting = |s: Option<StreamState>| !matches!(s, Some(ReceivedFin));
            for ((send, _), (_, recv), _) in
                [(&hw, &aw, a), (&aw, &hw, h)].into_iter().filter(|(_, _, r)| expecting(*r))
            {
                assert_eq!(send.available(), recv.peer_credit(), "stream {id}: sender and receiver disagree on credit");
                assert_eq!(
                    recv.peer_credit() + recv.buffered() + recv.unreturned(),
                    recv.window() as u64,
                    "stream {id}: credit leaked"
                );
            }
        }
    }

    /// Ends every stream the way applications do (accept what waits, then
    /// finish everything), and checks that all streams ended on both sides
    /// with every byte of every cleanly ended stream delivered.
    fn wind_down(&mut self) -> Coverage {
        for _ in 0..20 {
            self.settle();
            for s in [&mut self.host, &mut self.agent] {
                for id in std::mem::take(&mut s.incoming) {
                    s.conn.accept(id).unwrap();
                    s.streams.get_mut(&id).unwrap().established = true;
                }
                let ids: Vec<_> = s.streams.keys().copied().collect();
                for id in ids {
                    s.finish(id);
                }
            }
            if self.host.conn.stream_count() == 0 && self.agent.conn.stream_count() == 0 {
                self.settle();
                break;
            }
        }
        for (s, peer) in [(&self.host, &self.agent), (&self.agent, &self.host)] {
            assert_eq!(s.conn.stream_count(), 0, "streams left: {:?}", s.streams.keys());
            assert_eq!(s.started, s.ended, "a stream started but never ended");
            for (id, st) in &s.streams {
                let theirs = &peer.streams.get(id);
                if let Some(p) = theirs {
                    if !st.reset && !p.reset && st.fin_received {
                        assert_eq!(st.received, p.sent, "stream {id} ended cleanly with bytes missing");
                    }
                }
            }
        }
        let mut seen = Coverage::default();
        for s in [&self.host, &self.agent] {
            seen.clean_ends_with_data +=
                s.streams.values().filter(|st| !st.reset && st.fin_received && st.received > 0).count() as u64;
            seen.resets += s.seen.resets;
            seen.refusals += s.seen.refusals;
            seen.open_timeouts += s.seen.open_timeouts;
            seen.credit_waits += s.seen.credit_waits;
            seen.queue_waits += s.seen.queue_waits;
            seen.late_frames += s.conn.late_frames();
        }
        seen
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_schedule_keeps_both_sides_consistent(ops in proptest::collection::vec(op(), 1..160)) {
        let mut pair = Pair::new();
        for op in ops {
            pair.apply(op);
        }
        pair.wind_down();
    }
}

#[test]
fn the_random_schedules_reach_every_path() {
    use proptest::{strategy::ValueTree, test_runner::TestRunner};
    let mut runner = TestRunner::deterministic();
    let strategy = proptest::collection::vec(op(), 1..160);
    let mut total = Coverage::default();
    for _ in 0..256 {
        let mut pair = Pair::new();
        for op in strategy.new_tree(&mut runner).unwrap().current() {
            pair.apply(op);
        }
        let seen = pair.wind_down();
        total.clean_ends_with_data += seen.clean_ends_with_data;
        total.resets += seen.resets;
        total.refusals += seen.refusals;
        total.open_timeouts += seen.open_timeouts;
        total.credit_waits += seen.credit_waits;
        total.queue_waits += seen.queue_waits;
        total.late_frames += seen.late_frames;
    }
    let c = total;
    let all =
        [c.clean_ends_with_data, c.resets, c.refusals, c.open_timeouts, c.credit_waits, c.queue_waits, c.late_frames];
    assert!(all.iter().all(|n| *n >= 10), "a path the property test hardly reaches: {c:?}");
}

#[test]
fn a_cancelled_open_leaves_no_orphan() {
    let mut p = Pair::new();
    p.apply(Op::Open(true));
    // The open times out before anything was delivered: its RESET follows
    // the OPEN, so the peer's stream ends as soon as it starts.
    p.apply(Op::Tick(200));
    p.deliver(true, usize::MAX);
    p.drain();
    assert_eq!(p.agent.conn.stream_count(), 0);
    assert_eq!(p.agent.started, p.agent.ended);
    // An OPEN_OK for an open cancelled earlier (by an older peer, or one
    // the RESET did not reach first) is answered with RESET.
    let now = p.now;
    let c = &mut p.host.conn;
    c.handle_frame(Frame::OpenOk { stream: 1 }).unwrap();
    let mut out = Vec::new();
    c.take_batch(&mut out, 10, 1 << 20);
    assert!(matches!(out[..], [Frame::Reset { stream: 1, .. }]), "{out:?}");
    let _ = now;
}

#[test]
fn a_peer_that_breaks_a_stream_loses_that_stream_only() {
    let now = Instant::now();
    let mut c = Connection::new(Role::Host, config(), now);
    let a = c.open(&Target::Unix("/a".into()), now).unwrap();
    let b = c.open(&Target::Unix("/b".into()), now).unwrap();
    c.handle_frame(Frame::OpenOk { stream: a }).unwrap();
    c.handle_frame(Frame::OpenOk { stream: b }).unwrap();
    // More data than the window on `a`, and a second FIN on `b`.
    c.handle_frame(Frame::Data { stream: a, payload: Bytes::from(vec![0; WINDOW as usize + 1]) }).unwrap();
    c.handle_frame(Frame::Fin { stream: b }).unwrap();
    c.handle_frame(Frame::Fin { stream: b }).unwrap();
    assert_eq!(c.stream_state(a), None);
    assert_eq!(c.stream_state(b), None);
    assert_eq!(c.closed_reason(), None);
    let mut out = Vec::new();
    c.take_batch(&mut out, 100, 1 << 20);
    let resets = out.iter().filter(|f| matches!(f, Frame::Reset { .. })).count();
    assert_eq!(resets, 2, "{out:?}");
}

#[test]
fn an_open_with_an_id_the_peer_may_not_use_ends_the_session_with_goaway() {
    let now = Instant::now();
    let mut c = Connection::new(Role::Host, config(), now);
    let mut bytes = BytesMut::new();
    // Odd ids are the host's own.
    Frame::Open { stream: 3, target: message::encode(&Target::Unix("/a".into())) }.encode(&mut bytes);
    c.handle_bytes(&mut bytes, now);
    assert!(c.failing().is_some());
    let mut out = Vec::new();
    assert!(c.take_batch(&mut out, 100, 1 << 20).goaway.is_some());
}

#[test]
fn the_memory_ceiling_refuses_streams_from_either_side() {
    let now = Instant::now();
    let cfg = Config { max_stream_memory: 2 * WINDOW as u64, ..config() };
    let mut c = Connection::new(Role::Host, cfg, now);
    c.open(&Target::Unix("/a".into()), now).unwrap();
    c.open(&Target::Unix("/b".into()), now).unwrap();
    assert!(matches!(c.open(&Target::Unix("/c".into()), now), Err(CommandError::Limit(_))));
    c.handle_frame(Frame::Open { stream: 2, target: message::encode(&Target::Unix("/d".into())) }).unwrap();
    let mut out = Vec::new();
    c.take_batch(&mut out, 100, 1 << 20);
    assert!(
        out.iter().any(|f| matches!(f, Frame::OpenRefused { stream: 2, reason } if reason.contains("memory ceiling"))),
        "{out:?}"
    );
}

#[test]
fn a_receiver_widens_a_stream_once_within_its_budget_and_the_ceiling() {
    let now = Instant::now();
    // Room for four windows; up to three windows' worth of widening.
    let cfg = Config { max_stream_memory: 4 * WINDOW as u64, max_widened: 3 * WINDOW as u64, ..config() };
    let mut host = Connection::new(Role::Host, cfg.clone(), now);
    let mut agent = Connection::new(Role::Agent, cfg, now);
    let wire = |from: &mut Connection, to: &mut Connection| {
        let mut frames = Vec::new();
        from.take_batch(&mut frames, 100, 1 << 30);
        for f in frames {
            to.handle_frame(f).unwrap();
        }
    };
    let d = host.open(&Target::Udp("127.0.0.1:53".parse().unwrap()), now).unwrap();
    wire(&mut host, &mut agent);
    // The acceptor widens at once: its grant travels behind its OPEN_OK.
    agent.accept(d).unwrap();
    assert_eq!(agent.widen(d, 2 * WINDOW), Ok(true));
    assert_eq!(agent.widen(d, WINDOW), Ok(false), "once per stream");
    wire(&mut agent, &mut host);
    assert_eq!(host.stream_state(d), Some(StreamState::Open));
    assert_eq!(host.send_credit(d).unwrap(), 3 * WINDOW as u64, "the window and the grant");
    // The wider window is the receiver's to enforce.
    agent.handle_frame(Frame::Data { stream: d, payload: Bytes::from(vec![0; 3 * WINDOW as usize]) }).unwrap();
    assert_eq!(agent.stream_state(d), Some(StreamState::Open));
    // The ceiling: `d` pins three windows, a new stream `e` the fourth, so
    // `e` cannot be widened (and not before it is open either).
    let e = agent.open(&Target::Unix("/e".into()), now).unwrap();
    assert_eq!(agent.widen(e, WINDOW), Err(CommandError::NotAllowed(e)), "not before the stream is open");
    wire(&mut agent, &mut host);
    host.accept(e).unwrap();
    wire(&mut host, &mut agent);
    assert_eq!(agent.widen(e, WINDOW), Ok(false), "past the memory ceiling");
    // The budget: three windows' worth, two spent on `d`.
    assert_eq!(agent.widen(e, 2 * WINDOW), Ok(false));
    // Once `d` ends, its window and its widening are free again.
    agent.reset(d, "done");
    assert_eq!(agent.widen(e, 2 * WINDOW), Ok(true));
}

#[test]
fn datagrams_never_wait_and_never_take_the_room_of_byte_streams() {
    let now = Instant::now();
    let mut c = Connection::new(Role::Host, config(), now);
    let d = c.open(&Target::Udp("127.0.0.1:53".parse().unwrap()), now).unwrap();
    let a = c.open(&Target::Unix("/a".into()), now).unwrap();
    c.handle_frame(Frame::OpenOk { stream: d }).unwrap();
    c.handle_frame(Frame::OpenOk { stream: a }).unwrap();
    // The one DATA slot of byte streams is taken: datagrams still go.
    let mut data = Bytes::from_static(b"bytes");
    assert!(matches!(c.send(a, &mut data), Ok(Ok(5))));
    assert!(!c.has_data_room());
    for _ in 0..4 {
        assert_eq!(c.send_datagram(d, Bytes::from_static(b"dgram")), Ok(true));
    }
    // The datagram queue (4 here) is full: the next is dropped at once.
    assert_eq!(c.send_datagram(d, Bytes::from_static(b"dgram")), Ok(false));
    assert_eq!(c.queued_datagrams().0, 4);
    let mut out = Vec::new();
    c.take_batch(&mut out, 100, 1 << 20);
    assert_eq!(out.iter().filter(|f| matches!(f, Frame::Data { .. })).count(), 5);
    assert_eq!(c.queued_datagrams(), (0, 0));
    assert!(c.has_data_room());
}

#[test]
fn a_peer_that_reads_nothing_cannot_grow_the_urgent_queue() {
    let now = Instant::now();
    let cfg = Config { max_urgent_bytes: 1000, ..config() };
    let mut c = Connection::new(Role::Host, cfg, now);
    for nonce in 0..1000 {
        c.handle_frame(Frame::Ping { nonce }).unwrap();
    }
    assert!(c.closed_reason().is_some_and(|r| r.contains("reads nothing")));
    assert!(c.urgent_bytes() <= 1000);
}

#[test]
fn a_silent_peer_is_declared_dead_by_the_keepalive() {
    let t0 = Instant::now();
    let cfg = Config {
        keepalive: Some(KeepaliveConfig { interval: Duration::from_secs(1), timeout: Duration::from_secs(5) }),
        ..config()
    };
    let mut c = Connection::new(Role::Agent, cfg, t0);
    let id = c.open(&Target::Unix("/a".into()), t0).unwrap();
    while c.closed_reason().is_none() {
        let t = c.poll_timeout().expect("a timer runs");
        c.handle_timeout(t);
    }
    let events: Vec<_> = std::iter::from_fn(|| c.poll_event()).collect();
    assert!(events.iter().any(|e| matches!(e, Event::OpenFailed { stream, .. } if *stream == id)));
    assert!(matches!(events.last(), Some(Event::Closed(r)) if r.contains("keepalive")));
}
