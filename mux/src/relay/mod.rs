//! Relaying between two sockets, both directions at once, with half-close
//! carried through (EOF on one side becomes shutdown(SHUT_WR) on the other)
//! and an abort told apart from a clean end.
//!
//! Used for dedicated data connections, where each forwarded connection has
//! a transport connection of its own. Each direction moves its bytes through
//! a [`Conduit`]: on Linux a pipe filled and drained with splice(2)
//! ([`splice`]: the bytes never enter user space) once the connection
//! carries bulk, a user-space buffer until then ([`adaptive`]); elsewhere,
//! and on Linux in portable mode ([`crate::platform`]), a user-space buffer
//! filled with read(2) and drained with write(2) ([`copy`]). Both run the same
//! readiness-driven loop, so half-close, resets, the agent's answer and the
//! byte counters behave the same.

#[cfg(target_os = "linux")]
mod adaptive;
pub mod copy;
mod handover;
#[cfg(target_os = "linux")]
mod splice;

use std::{
    future::Future,
    io,
    os::fd::{AsRawFd, RawFd},
};

use tokio::{
    io::Interest,
    net::{TcpStream, UnixStream},
};

use crate::{buffer_share::BufferShare, data_end::EndTicket, placement::Metered, traffic::Traffic};
use handover::{Handover, Leg, LegEnd};
pub use handover::{Relayed, Resume};

/// The most spare pipes the Linux relay keeps for later relays (see
/// `relay::splice`); descriptors a test may see still open after relays end.
pub const SPARE_PIPES_MAX: usize = 64;

/// How a relay moves its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayKind {
    /// socket -> pipe -> socket with splice(2) (Linux only), once a
    /// connection carries bulk; until then copied, as small messages move
    /// faster that way (see `relay::adaptive`).
    #[cfg(target_os = "linux")]
    Splice,
    /// socket -> user-space buffer -> socket with read(2) and write(2).
    Copy,
}

impl RelayKind {
    /// The kind this process uses: [`RelayKind::Splice`] where
    /// [`crate::platform::linux_fast_paths`] allows, else [`RelayKind::Copy`].
    pub fn current() -> Self {
        #[cfg(target_os = "linux")]
        if crate::platform::linux_fast_paths() {
            return Self::Splice;
        }
        Self::Copy
    }

    /// Every kind this platform has (for tests that cover each).
    pub fn all() -> &'static [Self] {
        #[cfg(target_os = "linux")]
        return &[Self::Splice, Self::Copy];
        #[cfg(not(target_os = "linux"))]
        return &[Self::Copy];
    }
}

/// The agent's answer to a data connection's hello (see
/// `ferry_protocol::data_conn`), as each side's relay handles it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Answer {
    /// None travels: a plain relay.
    #[default]
    None,
    /// The host's side: the answer is read before anything flows down;
    /// the client's bytes flow up meanwhile (no round trip before the
    /// first byte), and a refusal ends the relay with `ConnectionRefused`.
    Read,
    /// The agent's side, once the target is connected: "connected" goes up
    /// in front of the target's first bytes (or its EOF), in the same
    /// write, so the host is woken once for both.
    Send,
}

/// How many batches (one pass of the relay loop: a read, a write, or both)
/// a busy stream moves in a crowd (see [`Conduit::crowded`]) before the
/// others take their turn: normally at most 256 KiB with a crowd's 32 KiB
/// buffers. Tokio's own budget lets a task go on for up to 128 batches, up
/// to 4 MiB: a thousand streams busy at about 10 Gbit/s have about 0.6 MB
/// each per half second. Measured with a thousand streams on the copy
/// relay (docs/performance.md, "A crowd's copy buffers"), Jain's median:
/// 0.08 with tokio's turns; 0.95 with these; 0.29 with turns of 256 KiB
/// written instead of 8 batches; 1.00 with one batch a turn, which halved
/// the aggregate. Counting batches bounds the system calls a turn makes,
/// which is what the streams share.
pub(crate) const CROWDED_TURN: usize = 8;

/// Where one direction's bytes wait between reading `src` and writing `dst`.
pub(crate) trait Conduit: Sized {
    /// Whether the conduit can refuse more bytes before it holds its
    /// capacity (a pipe of fragments), so that a read which would block says
    /// the socket is empty only when the conduit is empty too.
    fn full_short_of_capacity(&self) -> bool;
    /// A conduit for a new relay direction (perhaps a reused one).
    fn take() -> io::Result<Self>;
    /// How many more bytes it may take now.
    fn room(&self) -> usize;
    /// How many bytes wait in it.
    fn held(&self) -> usize;
    /// Moves bytes from the socket `src` in (non-blocking); 0 at EOF.
    fn fill(&mut self, src: RawFd) -> io::Result<usize>;
    /// Moves waiting bytes out to the socket `dst` (non-blocking).
    fn drain(&mut self, dst: RawFd) -> io::Result<usize>;
    /// Puts `bytes` in ahead of anything filled later (a conduit just
    /// taken, so that they leave with the first batch).
    fn put(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Ends its use by a relay; called only when it is empty.
    fn give_back(self);
    /// Called before waiting for the source: a chance to give back memory
    /// an empty conduit holds.
    fn idle(&mut self) {}
    /// Whether the last [`Conduit::fill`] is known to have left the source
    /// empty (a short read of a stream socket), so that the relay can wait
    /// for the source at once instead of making a read that would block.
    fn drained_source(&self) -> bool {
        false
    }
    /// Whether the process relays so many streams through conduits like
    /// this one that a busy stream should let the others take their turn
    /// after [`CROWDED_TURN`] batches.
    fn crowded(&self) -> bool {
        false
    }
}

/// A socket whose readiness tokio tracks and which can be half-closed.
pub trait RelaySocket: AsRawFd {
    /// Runs `f` if tokio believes the socket ready for `interest` (else
    /// fails with `WouldBlock`), clearing that readiness if `f` reports
    /// `WouldBlock`.
    fn try_op<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R>;
    /// Waits until the socket may be ready for `interest`.
    fn wait_ready(&self, interest: Interest) -> impl Future<Output = io::Result<()>>;
    /// Shuts down the write direction.
    fn shutdown_write(&self) -> io::Result<()> {
        // SAFETY: shutdown(2) on the socket's own descriptor.
        if unsafe { libc::shutdown(self.as_raw_fd(), libc::SHUT_WR) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

macro_rules! relay_socket {
    ($t:ty) => {
        impl RelaySocket for $t {
            fn try_op<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
                self.try_io(interest, f)
            }

            async fn wait_ready(&self, interest: Interest) -> io::Result<()> {
                self.ready(interest).await.map(|_| ())
            }
        }
    };
}
relay_socket!(TcpStream);
relay_socket!(UnixStream);

/// Moves bytes from `src` to `dst` through a conduit `C` until `src`
/// reaches EOF, then shuts down `dst`'s write side. Returns the number of
/// bytes moved. `at_eof`, given the bytes read from `src`, may turn the EOF
/// into an error (an abort to pass on instead of a half-close).
///
/// `greeting` goes out in front of the first bytes from `src` (or of its
/// EOF), in the same write: the peer is woken once for both. It is not
/// counted among the bytes moved.
///
/// Filling and draining overlap: while `dst` cannot take more, `src` keeps
/// filling the conduit, so the next write moves a large batch.
///
/// `from` is what an earlier run of this direction moved (the relay went on
/// after a move). With a `handover`, the direction parks there whenever its
/// conduit holds nothing but a held-back greeting and it waits for `src`
/// (or, while a move is wanted, at each empty conduit), for good once it has
/// ended, and stops when the relay does ([`LegEnd::Stopped`]).
async fn one_way<C: Conduit, A: RelaySocket, B: RelaySocket, E: Future<Output = io::Result<()>>>(
    src: &A,
    dst: &B,
    greeting: &[u8],
    count: impl Fn(usize),
    at_eof: impl FnOnce(u64) -> E,
    from: u64,
    handover: Option<&Handover<'_>>,
) -> io::Result<LegEnd> {
    let mut at_eof = Some(at_eof);
    let mut conduit = C::take()?;
    conduit.put(greeting)?;
    // The greeting's bytes not written yet; while `src` has given nothing,
    // the greeting waits for company.
    let (mut greeting_left, mut held_back) = (greeting.len(), !greeting.is_empty());
    let (mut total, mut eof) = (from, false);
    // Batches moved since this direction last counted a turn (a wait does
    // not end one: measured with the count as it is).
    let mut turn = 0;
    loop {
        let mut progress = false;
        // Tokio's readiness is cleared only when the read would block for
        // want of bytes (see `Conduit::full_short_of_capacity`).
        let mut read_blocked = false;
        // While a move is wanted, the conduit empties before more is read:
        // a stream whose destination is the bottleneck has an empty conduit
        // (a moment to move) only then.
        // (A held-back greeting waits for the source's bytes: never then.)
        let hold_off = conduit.held() > 0 && !held_back && handover.is_some_and(|h| h.wanted());
        if !eof && conduit.room() > 0 && !hold_off {
            // A held-back greeting is all the conduit holds: it cannot have
            // filled it, so a read that would block says the source is
            // empty (else nothing would wait and the loop would spin).
            let sure_empty = held_back || !conduit.full_short_of_capacity() || conduit.held() == 0;
            // A read that drained the source clears tokio's readiness as a
            // read that would block does (tokio keeps readiness that arrived
            // meanwhile), so a small message costs no extra read.
            let mut drained = None;
            let r = if sure_empty {
                src.try_op(Interest::READABLE, || match conduit.fill(src.as_raw_fd())? {
                    n if n > 0 && conduit.drained_source() => {
                        drained = Some(n);
                        Err(io::ErrorKind::WouldBlock.into())
                    }
                    n => Ok(n),
                })
            } else {
                conduit.fill(src.as_raw_fd())
            };
            match (r, drained) {
                (_, Some(_)) => {
                    progress = true;
                    read_blocked = true;
                    held_back = false;
                }
                (Ok(0), None) => {
                    if let Some(check) = at_eof.take() {
                        check(total + (conduit.held() - greeting_left) as u64).await?;
                    }
                    eof = true;
                    held_back = false;
                }
                (Ok(_), None) => {
                    progress = true;
                    held_back = false;
                }
                (Err(e), None) if e.kind() == io::ErrorKind::WouldBlock => read_blocked = sure_empty,
                (Err(e), None) => return Err(e),
            }
        }
        let drainable = conduit.held() > 0 && !held_back;
        if drainable {
            match dst.try_op(Interest::WRITABLE, || conduit.drain(dst.as_raw_fd())) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(m) => {
                    let greeted = m.min(greeting_left);
                    greeting_left -= greeted;
                    total += (m - greeted) as u64;
                    count(m - greeted);
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        if eof && conduit.held() == 0 {
            let _ = dst.shutdown_write();
            // Only an empty conduit is reused; on errors it is dropped instead.
            conduit.give_back();
            if let Some(h) = handover {
                h.done().await;
            }
            return Ok(LegEnd::Done(total));
        }
        let quiet = conduit.held() == 0 || held_back;
        let stop = |conduit: C| {
            if conduit.held() == 0 {
                conduit.give_back();
            }
            Ok(LegEnd::Stopped { moved: total, greeting: held_back })
        };
        if progress {
            // A bulk connection looks for a quiet moment to move at each
            // empty conduit (this goes on at once while `src` has more).
            if let Some(h) = handover.filter(|h| quiet && !eof && h.wanted()) {
                if h.park(src.wait_ready(Interest::READABLE)).await? {
                    return stop(conduit);
                }
            }
            // Busy streams still take turns with the runtime's other tasks:
            // tokio's budget ends a turn after up to 128 batches, and in a
            // crowd a turn ends after `CROWDED_TURN`. (Ending every turn after
            // 256 KiB cost a single stream 10-20% of its throughput and 40%
            // more CPU per GB, measured A/B: hence only in a crowd.)
            turn += 1;
            if turn >= CROWDED_TURN {
                turn = 0;
                if conduit.crowded() {
                    tokio::task::yield_now().await;
                    continue;
                }
            }
            tokio::task::consume_budget().await;
            continue;
        }
        // Neither side moved. With bytes waiting, draining them is what
        // unblocks everything; else wait for the source.
        if drainable {
            dst.wait_ready(Interest::WRITABLE).await?;
        } else if read_blocked {
            conduit.idle();
            match handover {
                // Parked while it waits: the other direction may be
                // about to decide a move.
                Some(h) if quiet => {
                    if h.park(src.wait_ready(Interest::READABLE)).await? {
                        return stop(conduit);
                    }
                }
                _ => src.wait_ready(Interest::READABLE).await?,
            }
        }
    }
}

/// The byte count a read(2)-like system call returned, or the error it set.
pub(crate) fn os_result(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Reads exactly `buf.len()` bytes from `s`.
pub(crate) async fn read_exact<S: RelaySocket>(s: &S, buf: &mut [u8]) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        let rest = &mut buf[got..];
        // SAFETY: `rest` is valid writable memory of its length.
        let read = || os_result(unsafe { libc::read(s.as_raw_fd(), rest.as_mut_ptr().cast(), rest.len()) });
        match s.try_op(Interest::READABLE, read) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => s.wait_ready(Interest::READABLE).await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads what is there from `s` (at least one byte, or 0 at EOF).
pub(crate) async fn read_some<S: RelaySocket>(s: &S, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid writable memory of its length.
        let read = || os_result(unsafe { libc::read(s.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) });
        match s.try_op(Interest::READABLE, read) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => s.wait_ready(Interest::READABLE).await?,
            other => return other,
        }
    }
}

/// Writes all of `buf` to `s`.
pub(crate) async fn write_all<S: RelaySocket>(s: &S, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is valid readable memory of its length.
        let write = || os_result(unsafe { libc::write(s.as_raw_fd(), buf.as_ptr().cast(), buf.len()) });
        match s.try_op(Interest::WRITABLE, write) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => s.wait_ready(Interest::WRITABLE).await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads the agent's answer to a data connection's hello: `Ok(true)` once
/// the guest target is connected, else its refusal as `ConnectionRefused`.
/// With a `handover`, it waits for the answer parked: `Ok(false)` if the
/// relay stopped for a move before any of it arrived.
async fn read_answer<S: RelaySocket>(conn: &S, handover: Option<&Handover<'_>>) -> io::Result<bool> {
    let mut status = [0u8; 1];
    loop {
        // SAFETY: `status` is valid writable memory of its length.
        let read = || os_result(unsafe { libc::read(conn.as_raw_fd(), status.as_mut_ptr().cast(), 1) });
        match conn.try_op(Interest::READABLE, read) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => match handover {
                Some(h) => {
                    if h.park(conn.wait_ready(Interest::READABLE)).await? {
                        return Ok(false);
                    }
                }
                None => conn.wait_ready(Interest::READABLE).await?,
            },
            Err(e) => return Err(e),
        }
    }
    if status[0] == ferry_protocol::data_conn::CONNECTED {
        return Ok(true);
    }
    let mut len = [0u8; 2];
    read_exact(conn, &mut len).await?;
    let mut reason = vec![0u8; u16::from_be_bytes(len) as usize];
    read_exact(conn, &mut reason).await?;
    Err(io::Error::new(io::ErrorKind::ConnectionRefused, String::from_utf8_lossy(&reason).into_owned()))
}

/// Whether the peer of `fd` has closed both directions (POLLHUP), as a
/// process does when it exits; a half-close (shutdown of its write side)
/// does not raise POLLHUP. Unix sockets tell the two apart, TCP does not.
/// POLLHUP is reported whatever events are asked for, so this asks only for
/// POLLIN (POLLRDHUP is Linux-only).
fn peer_gone(fd: RawFd) -> bool {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd, no waiting.
    let ready = unsafe { libc::poll(&mut p, 1, 0) };
    ready == 1 && p.revents & libc::POLLHUP != 0
}

/// What a relay of a data connection does besides moving bytes (see
/// [`relay_bidirectional`]); the default does nothing more.
#[derive(Clone, Copy, Default)]
pub struct Duties<'a> {
    /// Whether `conn` carries the agent's answer to its hello: read here
    /// before anything flows down, or sent ahead of the first bytes up
    /// ([`relay_from`] takes the answer still to handle from its [`Resume`]
    /// instead).
    pub answer: Answer,
    /// `conn`'s send buffer follows the process's bulk data connections
    /// (see [`crate::buffer_share`]), checked as bytes go up.
    pub share: Option<&'a BufferShare>,
    /// Each side's clean end is confirmed on the session (see
    /// [`crate::data_end`]): this side's after its half-close, the far
    /// side's before its EOF is passed on. Without it, a vanished far side
    /// is told from a half-close only by POLLHUP, which only Unix sockets
    /// raise.
    pub end: Option<&'a EndTicket>,
    /// The bytes moved either way also count towards the target's bulk
    /// history (see [`crate::placement`]).
    pub meter: Option<&'a Metered<'a>>,
}

/// Relays `client` and the data connection `conn` both ways until both have
/// reached EOF (or one fails), counting bytes in `traffic` as they move
/// (up: client -> conn), with `duties` on the way. Returns the bytes moved
/// client -> conn and conn -> client.
///
/// A clean end from the far side arrives as a half-close of `conn`. If
/// `conn` instead ends altogether while the client is still sending (the
/// far process died), that is an abort: an error is returned so the caller
/// resets the client instead of passing on a truncated stream as complete.
///
/// The bytes move as [`RelayKind::current`] says.
pub async fn relay_bidirectional<A: RelaySocket, B: RelaySocket>(
    client: &A,
    conn: &B,
    traffic: &Traffic,
    duties: Duties<'_>,
) -> io::Result<(u64, u64)> {
    relay_bidirectional_as(RelayKind::current(), client, conn, traffic, duties).await
}

/// [`relay_bidirectional`] with the bytes moved as `kind` says.
pub async fn relay_bidirectional_as<A: RelaySocket, B: RelaySocket>(
    kind: RelayKind,
    client: &A,
    conn: &B,
    traffic: &Traffic,
    duties: Duties<'_>,
) -> io::Result<(u64, u64)> {
    match relay_from(kind, client, conn, traffic, duties, Resume::start(duties.answer), false).await? {
        Relayed::Ended(up, down) => Ok((up, down)),
        Relayed::Stopped(_) => unreachable!("a relay without a handover never stops"),
    }
}

/// [`relay_bidirectional_as`] from where an earlier relay of the same
/// sockets stopped (`from`; the answer to handle is `from`'s, not
/// `duties`'). With `movable` (and `duties.meter`), the relay stops once the
/// connection carries bulk and another of the process does too
/// ([`crate::placement::bulk_crowd`]), at a moment when the relay holds no
/// byte either way, so that the sockets can move to another runtime
/// ([`Relayed::Stopped`]; see [`crate::placement::DataRelay`]).
pub async fn relay_from<A: RelaySocket, B: RelaySocket>(
    kind: RelayKind,
    client: &A,
    conn: &B,
    traffic: &Traffic,
    duties: Duties<'_>,
    from: Resume,
    movable: bool,
) -> io::Result<Relayed> {
    let handover = duties.meter.filter(|_| movable).map(Handover::new);
    let handover = handover.as_ref();
    match kind {
        #[cfg(target_os = "linux")]
        RelayKind::Splice => {
            relay_through::<adaptive::Adaptive, _, _>(client, conn, traffic, duties, from, handover).await
        }
        RelayKind::Copy => relay_through::<copy::CopyBuffer, _, _>(client, conn, traffic, duties, from, handover).await,
    }
}

/// Moves bytes from `src` to `dst` until `src` reaches EOF, then shuts down
/// `dst`'s write side: one direction of a relay, for a source that carries
/// nothing but the far side's bytes (see [`crate::ssh_master`]). `count`
/// sees each batch moved. The bytes move as [`RelayKind::current`] says.
pub async fn relay_one_way<A: RelaySocket, B: RelaySocket>(src: &A, dst: &B, count: impl Fn(usize)) -> io::Result<u64> {
    let end = match RelayKind::current() {
        #[cfg(target_os = "linux")]
        RelayKind::Splice => {
            one_way::<adaptive::Adaptive, _, _, _>(src, dst, &[], count, |_| async { Ok(()) }, 0, None).await?
        }
        RelayKind::Copy => {
            one_way::<copy::CopyBuffer, _, _, _>(src, dst, &[], count, |_| async { Ok(()) }, 0, None).await?
        }
    };
    match end {
        LegEnd::Done(n) => Ok(n),
        LegEnd::Stopped { .. } => unreachable!("a direction without a handover never stops"),
    }
}

async fn relay_through<C: Conduit, A: RelaySocket, B: RelaySocket>(
    client: &A,
    conn: &B,
    traffic: &Traffic,
    duties: Duties<'_>,
    from: Resume,
    handover: Option<&Handover<'_>>,
) -> io::Result<Relayed> {
    let Duties { answer: _, share, end, meter } = duties;
    let client_done = std::sync::atomic::AtomicBool::new(from.up.done);
    let client_done = &client_done;
    let sent_up = |n| {
        traffic.add_up(n);
        if let Some(share) = share {
            share.refresh(n);
        }
        if let Some(meter) = meter {
            meter.add(n);
        }
    };
    let sent_down = |n| {
        traffic.add_down(n);
        if let Some(meter) = meter {
            meter.add(n);
        }
    };
    let greeting: &[u8] = match from.answer {
        Answer::Send => &[ferry_protocol::data_conn::CONNECTED],
        Answer::None | Answer::Read => &[],
    };
    // Each direction comes back with its progress and whether the agent's
    // answer it handles is still to come.
    let up = async {
        if from.up.done {
            return ended_before(from.up, handover).await;
        }
        match one_way::<C, _, _, _>(client, conn, greeting, sent_up, |_| async { Ok(()) }, from.up.moved, handover)
            .await?
        {
            LegEnd::Done(n) => {
                client_done.store(true, std::sync::atomic::Ordering::Relaxed);
                if let Some(end) = end {
                    end.sent_all(n);
                }
                Ok((Leg { moved: n, done: true }, false))
            }
            LegEnd::Stopped { moved, greeting } => Ok((Leg { moved, done: false }, greeting)),
        }
    };
    let down = async {
        if from.down.done {
            return ended_before(from.down, handover).await;
        }
        if from.answer == Answer::Read && !read_answer(conn, handover).await? {
            return Ok((from.down, true));
        }
        let at_eof = |received| async move {
            let clean = match end {
                // The far side's word on the session decides.
                Some(end) => end.far_end(received).await,
                // Without it, only a Unix socket tells a vanished peer
                // (POLLHUP) from a half-close.
                None => client_done.load(std::sync::atomic::Ordering::Relaxed) || !peer_gone(conn.as_raw_fd()),
            };
            if clean {
                Ok(())
            } else {
                Err(io::Error::new(io::ErrorKind::ConnectionReset, "the data connection ended abruptly"))
            }
        };
        match one_way::<C, _, _, _>(conn, client, &[], sent_down, at_eof, from.down.moved, handover).await? {
            LegEnd::Done(n) => Ok((Leg { moved: n, done: true }, false)),
            LegEnd::Stopped { moved, .. } => Ok((Leg { moved, done: false }, false)),
        }
    };
    let ((up, greeting_left), (down, answer_left)) = tokio::try_join!(up, down)?;
    if up.done && down.done {
        return Ok(Relayed::Ended(up.moved, down.moved));
    }
    let answer = match from.answer {
        Answer::Send if greeting_left => Answer::Send,
        Answer::Read if answer_left => Answer::Read,
        _ => Answer::None,
    };
    Ok(Relayed::Stopped(Resume { up, down, answer }))
}

/// A direction that had ended before the relay stopped for a move: parked
/// for good from the start (its progress, and no answer still to come).
async fn ended_before(leg: Leg, handover: Option<&Handover<'_>>) -> io::Result<(Leg, bool)> {
    if let Some(h) = handover {
        h.done().await;
    }
    Ok((leg, false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_vanished_far_side_is_an_abort_not_a_half_close() {
        for &kind in RelayKind::all() {
            vanished_far_side(kind).await;
        }
    }

    async fn vanished_far_side(kind: RelayKind) {
        let (_client, a) = tcp_pair().await;
        let (b, far) = UnixStream::pair().unwrap();
        let relay =
            tokio::spawn(
                async move { relay_bidirectional_as(kind, &a, &b, &Traffic::default(), Duties::default()).await },
            );
        drop(far); // the far process "dies" while the client is still connected
        let err = relay.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{kind:?}");
    }

    /// A connected TCP pair on loopback: (client, accepted).
    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        (client, l.accept().await.unwrap().0)
    }

    /// A relay's client: writes `data`, half-closes, then reads to the end.
    fn send_half_close_read_back<S>(mut s: S, data: Vec<u8>) -> tokio::task::JoinHandle<Vec<u8>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        tokio::spawn(async move {
            s.write_all(&data).await.unwrap();
            s.shutdown().await.unwrap();
            let mut back = Vec::new();
            s.read_to_end(&mut back).await.unwrap();
            back
        })
    }

    #[tokio::test]
    async fn the_agents_answer_leaves_with_the_targets_first_bytes() {
        for &kind in RelayKind::all() {
            answer_with_first_bytes(kind).await;
        }
    }

    async fn answer_with_first_bytes(kind: RelayKind) {
        use std::os::unix::net::UnixStream as StdUnix;
        use std::time::Duration;
        // target <-> [relay: target | conn] <-> host (a blocking socket, so
        // each read(2) below shows exactly what one write delivered)
        let (target, mut target_far) = UnixStream::pair().unwrap();
        let (conn, host) = StdUnix::pair().unwrap();
        let conn = UnixStream::from_std({
            conn.set_nonblocking(true).unwrap();
            conn
        })
        .unwrap();
        let relay = spawn_agent_relay(kind, target, conn);
        let host = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut host = host;
            host.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
            let mut buf = [0u8; 64];
            let early = host.read(&mut buf).map_err(|e| e.kind());
            host.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let n = host.read(&mut buf).unwrap();
            let first = buf[..n].to_vec();
            host.shutdown(std::net::Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            host.read_to_end(&mut rest).unwrap();
            (early, first, rest)
        });
        tokio::time::sleep(Duration::from_millis(400)).await;
        target_far.write_all(b"hello").await.unwrap();
        target_far.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        target_far.write_all(b" again").await.unwrap();
        target_far.shutdown().await.unwrap();
        let mut upstream = Vec::new();
        target_far.read_to_end(&mut upstream).await.unwrap();
        let (early, first, rest) = host.await.unwrap();
        assert_eq!(early, Err(io::ErrorKind::WouldBlock), "{kind:?}: nothing before the target speaks");
        assert_eq!(first, b"\0hello", "{kind:?}: the answer and the first bytes in one read");
        assert_eq!(rest, b" again", "{kind:?}");
        let (up, down) = relay.await.unwrap().unwrap();
        assert_eq!((up, down), (11, 0), "{kind:?}: the answer is not counted");
    }

    /// While the greeting waits for a quiet source, the relay waits too:
    /// the other tasks of its thread run (a pipe conduit holding the
    /// greeting once made every read that would block look like a full
    /// pipe, and the loop spun without ever yielding).
    #[test]
    fn a_greeting_held_for_a_quiet_source_leaves_the_thread_to_other_tasks() {
        #[cfg(target_os = "linux")]
        held_greeting_waits::<splice::Pipe>("pipe");
        #[cfg(target_os = "linux")]
        held_greeting_waits::<adaptive::Adaptive>("adaptive");
        held_greeting_waits::<copy::CopyBuffer>("copy");
    }

    fn held_greeting_waits<C: Conduit>(what: &str) {
        use std::io::{Read, Write};
        use std::os::unix::net::UnixStream as StdUnix;
        use std::time::Duration;
        let (mut src_far, src) = StdUnix::pair().unwrap();
        let (dst, mut dst_far) = StdUnix::pair().unwrap();
        let (ran, other_task_ran) = std::sync::mpsc::channel();
        let relay = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let [src, dst] = [src, dst].map(|s| {
                    s.set_nonblocking(true).unwrap();
                    UnixStream::from_std(s).unwrap()
                });
                // Runs only when the relay lets the thread go.
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let _ = ran.send(());
                });
                one_way::<C, _, _, _>(&src, &dst, b"G", |_| {}, |_| async { Ok(()) }, 0, None).await
            })
        });
        let waited = other_task_ran.recv_timeout(Duration::from_secs(5)).is_ok();
        // The source speaks and ends: the relay finishes either way.
        src_far.write_all(b"hi").unwrap();
        src_far.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = Vec::new();
        dst_far.read_to_end(&mut got).unwrap();
        assert!(waited, "{what}: the relay held its thread while the source was quiet");
        assert_eq!(got, b"Ghi", "{what}");
        let end = relay.join().unwrap().unwrap();
        assert_eq!(end, LegEnd::Done(2), "{what}: the greeting is not counted");
    }

    thread_local! {
        /// Whether [`Endless`] conduits say they are in a crowd.
        static IN_A_CROWD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// A conduit whose source always has 32 KiB ready, up to 8 MiB, and
    /// whose destination takes all at once: a relay of it never waits, so
    /// only its turns let other tasks run.
    struct Endless {
        held: usize,
        left: usize,
    }

    const ENDLESS_BATCH: usize = 32 * 1024;
    const ENDLESS_TOTAL: usize = 8 << 20;

    impl Conduit for Endless {
        fn full_short_of_capacity(&self) -> bool {
            false
        }
        fn take() -> io::Result<Self> {
            Ok(Self { held: 0, left: ENDLESS_TOTAL })
        }
        fn room(&self) -> usize {
            ENDLESS_BATCH - self.held
        }
        fn held(&self) -> usize {
            self.held
        }
        fn fill(&mut self, _: RawFd) -> io::Result<usize> {
            let n = self.room().min(self.left);
            (self.held, self.left) = (self.held + n, self.left - n);
            Ok(n)
        }
        fn drain(&mut self, _: RawFd) -> io::Result<usize> {
            Ok(std::mem::take(&mut self.held))
        }
        fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
            self.held += bytes.len();
            Ok(())
        }
        fn give_back(self) {}
        fn crowded(&self) -> bool {
            IN_A_CROWD.with(|c| c.get())
        }
    }

    /// A socket that is always ready (the [`Endless`] conduit ignores it).
    struct AlwaysReady;

    impl AsRawFd for AlwaysReady {
        fn as_raw_fd(&self) -> RawFd {
            -1
        }
    }

    impl RelaySocket for AlwaysReady {
        fn try_op<R>(&self, _: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
            f()
        }
        async fn wait_ready(&self, _: Interest) -> io::Result<()> {
            Ok(())
        }
        fn shutdown_write(&self) -> io::Result<()> {
            Ok(())
        }
    }

    /// How often another task of the thread ran while a relay that never
    /// waits moved [`ENDLESS_TOTAL`] bytes.
    fn turns_given_while_relaying(in_a_crowd: bool) -> usize {
        use std::sync::{
            atomic::{AtomicBool, AtomicUsize, Ordering},
            Arc,
        };
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async move {
            IN_A_CROWD.with(|c| c.set(in_a_crowd));
            let (done, ran) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
            let other = tokio::spawn({
                let (done, ran) = (done.clone(), ran.clone());
                async move {
                    while !done.load(Ordering::Relaxed) {
                        ran.fetch_add(1, Ordering::Relaxed);
                        tokio::task::yield_now().await;
                    }
                }
            });
            // Let the other task start first.
            tokio::task::yield_now().await;
            let before = ran.load(Ordering::Relaxed);
            let end =
                one_way::<Endless, _, _, _>(&AlwaysReady, &AlwaysReady, b"", |_| {}, |_| async { Ok(()) }, 0, None)
                    .await
                    .unwrap();
            assert_eq!(end, LegEnd::Done(ENDLESS_TOTAL as u64));
            let turns = ran.load(Ordering::Relaxed) - before;
            done.store(true, Ordering::Relaxed);
            other.await.unwrap();
            turns
        })
    }

    #[test]
    fn in_a_crowd_a_busy_stream_lets_the_others_run_after_each_crowded_turn() {
        let alone = turns_given_while_relaying(false);
        let crowded = turns_given_while_relaying(true);
        let crowded_turns = ENDLESS_TOTAL / (CROWDED_TURN * ENDLESS_BATCH);
        // Alone, tokio's budget ends a turn every 128 batches: once or twice here.
        assert!(alone <= crowded_turns / 4, "alone, the relay gave {alone} turns");
        // In a crowd, one turn every `CROWDED_TURN` batches: no fewer (a
        // stream taking several shares), and no more (a turn every batch
        // halved the aggregate).
        assert!(
            (crowded_turns - 1..=crowded_turns + 1).contains(&crowded),
            "in a crowd, {crowded} turns for {crowded_turns} x CROWDED_TURN batches"
        );
    }

    /// The agent's relay of `target` with the data connection `conn`.
    fn spawn_agent_relay(
        kind: RelayKind,
        target: UnixStream,
        conn: UnixStream,
    ) -> tokio::task::JoinHandle<io::Result<(u64, u64)>> {
        tokio::spawn(async move {
            let duties = Duties { answer: Answer::Send, ..Duties::default() };
            relay_bidirectional_as(kind, &target, &conn, &Traffic::default(), duties).await
        })
    }

    #[tokio::test]
    async fn a_target_that_closes_at_once_still_gets_its_answer_sent() {
        for &kind in RelayKind::all() {
            let (target, target_far) = UnixStream::pair().unwrap();
            let (conn, mut host) = UnixStream::pair().unwrap();
            let relay = spawn_agent_relay(kind, target, conn);
            drop(target_far);
            let mut got = Vec::new();
            host.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, [ferry_protocol::data_conn::CONNECTED], "{kind:?}");
            host.shutdown().await.unwrap();
            assert_eq!(relay.await.unwrap().unwrap(), (0, 0), "{kind:?}");
        }
    }

    #[tokio::test]
    async fn reused_conduits_carry_the_next_relay_exactly() {
        for &kind in RelayKind::all() {
            for round in 0..3u8 {
                relay_round(kind, round).await;
            }
        }
    }

    async fn relay_round(kind: RelayKind, round: u8) {
        let (client, a) = UnixStream::pair().unwrap();
        let (b, mut server) = UnixStream::pair().unwrap();
        let relay = tokio::spawn(async move {
            relay_bidirectional_as(kind, &client, &b, &Traffic::default(), Duties::default()).await
        });
        let data: Vec<u8> = (0..300_000u32).map(|i| (i as u8).wrapping_add(round)).collect();
        let sender = send_half_close_read_back(a, data.clone());
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert!(got == data, "{kind:?} round {round}");
        server.write_all(&[round; 10]).await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(sender.await.unwrap(), vec![round; 10]);
        relay.await.unwrap().unwrap();
        #[cfg(target_os = "linux")]
        if kind == RelayKind::Splice {
            assert!(splice::spare_pipes() > 0, "a finished relay gives its pipes back");
        }
    }

    #[tokio::test]
    async fn relays_both_ways_with_half_close() {
        for &kind in RelayKind::all() {
            both_ways_with_half_close(kind).await;
        }
    }

    async fn both_ways_with_half_close(kind: RelayKind) {
        // client <-tcp-> [relay a | relay b] <-unix-> server
        let (client, a) = tcp_pair().await;
        let (b, mut server) = UnixStream::pair().unwrap();
        let traffic = std::sync::Arc::new(Traffic::default());
        let t2 = traffic.clone();
        let relay = tokio::spawn(async move { relay_bidirectional_as(kind, &a, &b, &t2, Duties::default()).await });
        let data: Vec<u8> = (0..5_000_000u32).map(|i| (i % 253) as u8).collect();
        let writer = send_half_close_read_back(client, data.clone());
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap(); // ends only if the FIN was relayed
        assert!(got == data, "{kind:?}");
        server.write_all(b"response after half-close").await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"response after half-close");
        let (up, down) = relay.await.unwrap().unwrap();
        assert_eq!((up, down), (data.len() as u64, 25));
        assert_eq!(traffic.snapshot(), (up, down));
    }
    /// The agent's side of a data connection to a target that says nothing
    /// until the host's upload ends (the answer waits all along): once 1 MiB
    /// has gone down, the relay stops with nothing in flight and the answer
    /// still to send; run again from there, it carries the rest, then the
    /// answer with the target's reply, and the half-closes, every byte in
    /// order and counted once.
    #[tokio::test]
    async fn a_relay_stops_for_a_move_with_nothing_in_flight_and_goes_on_from_there() {
        for &kind in RelayKind::all() {
            stop_and_go_on(kind).await;
        }
    }

    // Serial with the other bulk tests; each runs on one thread.
    #[allow(clippy::await_holding_lock)]
    async fn stop_and_go_on(kind: RelayKind) {
        let _serial = crate::placement::bulk_tests();
        use crate::placement::BulkHistory;
        let (target, mut target_far) = UnixStream::pair().unwrap();
        let (conn, mut host) = UnixStream::pair().unwrap();
        let upload: Vec<u8> = (0..4usize << 20).map(|i| (i % 251) as u8 ^ (i >> 16) as u8).collect();
        let (sent, back) = (upload.clone(), b"got it".to_vec());
        // The target reads the whole upload, then replies and ends.
        let target_task = tokio::spawn(async move {
            let mut got = Vec::new();
            target_far.read_to_end(&mut got).await.unwrap();
            target_far.write_all(b"got it").await.unwrap();
            target_far.shutdown().await.unwrap();
            got
        });
        let history = BulkHistory::default();
        let traffic = Traffic::default();
        let meter = Metered::new(&history);
        // Another connection of the process carries bulk: moves are wanted.
        let _other = another_bulk_connection(&history);
        let duties = Duties { answer: Answer::Send, meter: Some(&meter), ..Duties::default() };
        let (mut host_r, mut host_w) = host.split();
        let host_writes = async {
            host_w.write_all(&sent).await.unwrap();
            host_w.shutdown().await.unwrap();
        };
        let host_reads = async {
            let mut got = Vec::new();
            host_r.read_to_end(&mut got).await.unwrap();
            got
        };
        let relay = async {
            let first = relay_from(kind, &target, &conn, &traffic, duties, Resume::start(Answer::Send), true).await;
            let Ok(Relayed::Stopped(from)) = first else { panic!("{kind:?}: no stop for bulk: {first:?}") };
            assert_eq!(from.answer, Answer::Send, "{kind:?}: the answer is still to send");
            assert!(from.moved().1 >= crate::placement::BULK_BYTES, "{kind:?}: stopped after 1 MiB, at {from:?}");
            assert!(meter.carried_bulk());
            let rest = relay_from(kind, &target, &conn, &traffic, duties, from, false).await.unwrap();
            (from, rest)
        };
        let ((), got_back, (from, rest)) = tokio::join!(host_writes, host_reads, relay);
        let target_got = target_task.await.unwrap();
        assert!(target_got == upload, "{kind:?}: the target got the upload whole and in order");
        let mut expected = vec![ferry_protocol::data_conn::CONNECTED];
        expected.extend_from_slice(&back);
        assert_eq!(got_back, expected, "{kind:?}: the answer, then the reply");
        assert_eq!(
            rest,
            Relayed::Ended(back.len() as u64, upload.len() as u64),
            "{kind:?}: counted once (from {from:?})"
        );
        assert_eq!(traffic.snapshot(), (back.len() as u64, upload.len() as u64), "{kind:?}");
    }
    /// A direction that has ended before the move stays ended after it: the
    /// client sends a request and half-closes, then the far side sends bulk;
    /// the relay stops once (up ended, counted), goes on, and ends with every
    /// byte, the client's half-close passed on once.
    // Serial with the other bulk tests; each runs on one thread.
    #[allow(clippy::await_holding_lock)]
    #[tokio::test]
    async fn a_direction_that_ended_before_a_move_stays_ended() {
        let _serial = crate::placement::bulk_tests();
        for &kind in RelayKind::all() {
            use crate::placement::BulkHistory;
            let (client, mut client_far) = tcp_pair().await;
            let (conn, mut far) = UnixStream::pair().unwrap();
            let reply: Vec<u8> = (0..3usize << 20).map(|i| (i % 253) as u8).collect();
            let expected = reply.clone();
            let far_task = tokio::spawn(async move {
                let mut request = Vec::new();
                far.read_to_end(&mut request).await.unwrap();
                far.write_all(&reply).await.unwrap();
                far.shutdown().await.unwrap();
                request
            });
            client_far.write_all(b"GET /big").await.unwrap();
            client_far.shutdown().await.unwrap();
            let history = BulkHistory::default();
            let (traffic, meter) = (Traffic::default(), Metered::new(&history));
            let _other = another_bulk_connection(&history);
            let duties = Duties { meter: Some(&meter), ..Duties::default() };
            let relay = async {
                let first = relay_from(kind, &client, &conn, &traffic, duties, Resume::start(Answer::None), true).await;
                let Ok(Relayed::Stopped(from)) = first else { panic!("{kind:?}: no stop for bulk: {first:?}") };
                assert!(from.up.done && from.up.moved == 8, "{kind:?}: the request had ended: {from:?}");
                relay_from(kind, &client, &conn, &traffic, duties, from, false).await.unwrap()
            };
            let reads = async {
                let mut got = Vec::new();
                client_far.read_to_end(&mut got).await.unwrap();
                got
            };
            let (end, got) = tokio::join!(relay, reads);
            assert_eq!(far_task.await.unwrap(), b"GET /big", "{kind:?}");
            assert!(got == expected, "{kind:?}: the reply came whole and in order");
            assert_eq!(end, Relayed::Ended(8, expected.len() as u64), "{kind:?}");
        }
    }

    /// A metered connection that has carried bulk, live while it is held.
    fn another_bulk_connection(history: &crate::placement::BulkHistory) -> Metered<'_> {
        let other = Metered::new(history);
        other.add(crate::placement::BULK_BYTES as usize);
        other
    }

    /// A lone bulk connection keeps its thread: the relay does not stop.
    // Serial with the other bulk tests; each runs on one thread.
    #[allow(clippy::await_holding_lock)]
    #[tokio::test]
    async fn a_lone_bulk_connection_does_not_stop_for_a_move() {
        let _serial = crate::placement::bulk_tests();
        for &kind in RelayKind::all() {
            let history = crate::placement::BulkHistory::default();
            let (client, mut client_far) = tcp_pair().await;
            let (conn, mut far) = UnixStream::pair().unwrap();
            let (traffic, meter) = (Traffic::default(), Metered::new(&history));
            let duties = Duties { meter: Some(&meter), ..Duties::default() };
            let far_task = tokio::spawn(async move {
                far.write_all(&vec![7u8; 3 << 20]).await.unwrap();
                far.shutdown().await.unwrap();
                let mut rest = Vec::new();
                far.read_to_end(&mut rest).await.unwrap();
            });
            let reads = async {
                let mut got = Vec::new();
                client_far.read_to_end(&mut got).await.unwrap();
                client_far.shutdown().await.unwrap();
                got.len()
            };
            let relay = relay_from(kind, &client, &conn, &traffic, duties, Resume::start(Answer::None), true);
            let (end, got) = tokio::join!(relay, reads);
            far_task.await.unwrap();
            assert_eq!(got, 3 << 20, "{kind:?}");
            assert_eq!(end.unwrap(), Relayed::Ended(0, 3 << 20), "{kind:?}: a lone bulk connection ran to its end");
        }
    }
}
