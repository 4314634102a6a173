//! Forwarding a client through the ssh ControlMaster of the guest (see
//! [`ferry_mux::ssh_master`]): TCP ports and guest Unix sockets, carried
//! the way `ssh -L` carries them, with the session as the fallback while
//! the master is unreachable or refuses.

use std::{
    os::fd::{AsFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use ferry_mux::{
    ssh_master::{Destination, NotTaken, Outcome, SshMaster},
    tcp_activity, LocalConn, Traffic,
};
use ferry_protocol::Target;

use crate::status::board::{Route, RouteCounts};

/// The ControlMaster route, whether it worked last time (to log its
/// changes once rather than per connection), and whether it can carry
/// Unix sockets.
pub struct MasterRoute {
    master: SshMaster,
    working: AtomicBool,
    /// Set when the master refused a Unix-socket forward that the session
    /// then carried: OpenSSH before 9.4 cannot ask for one, so guest
    /// sockets stop trying the master (until [`MasterRoute::reset`]).
    no_unix: AtomicBool,
    /// Connections the master carries now, and the most busy ones it is
    /// given: with more channels busy at once, OpenSSH's throughput
    /// collapses (measured: 8 uploads through `ssh -L` reach a fifth of
    /// what 4 do), while the session, one channel, stays fair; so while
    /// `max_busy` of its connections are busy, new ones go over the
    /// session. A quiet connection (see [`Carried::check_busy`]) holds no place.
    carried: Mutex<Vec<Carried>>,
    max_busy: usize,
    next_id: AtomicU64,
    /// Until when the master is left alone after it misbehaved (a master
    /// stuck after a Mac woke up would otherwise cost every new connection
    /// the whole answer timeout).
    suspended_until: Mutex<Option<Instant>>,
    /// How to bring a master that is gone back, if known.
    revival: Option<Revival>,
}

/// The ssh config and host that bring the master back (see
/// [`crate::lima::ssh_control::ensure_master`]), and when that was last
/// tried.
struct Revival {
    config: std::path::PathBuf,
    host: String,
    last_try: Mutex<Option<Instant>>,
}

/// How often a master that is gone is brought back at most.
const REVIVE_EVERY: Duration = Duration::from_secs(30);

/// How long a master that failed to answer is left alone.
const SUSPEND: Duration = Duration::from_secs(30);

/// The most connections the master carries at once, busy or quiet.
const MAX_CARRIED: usize = 64;

/// A connection that moves less than this many bytes a second is quiet:
/// an idle one, or one exchanging a few messages (iperf3's control
/// connection, `docker events`, a keep-alive HTTP client between pages). A
/// bulk transfer through ssh moves a thousand times more, from its first
/// milliseconds on.
const BULK_RATE: f64 = (1 << 20) as f64;

/// How long a connection to which nothing has come back yet counts as busy
/// (it may be about to turn bulk: a client that connected a moment ago and
/// sent its request or greeting), and how often the reading its rate is
/// judged against moves on.
const SETTLE: Duration = Duration::from_millis(500);

/// A connection the master carries, as the route's admission sees it.
struct Carried {
    id: u64,
    since: Instant,
    /// A duplicate of a TCP client's socket, whose kernel counts the bytes
    /// it received (read by the master) and sent (returned by the route);
    /// `None` for a Unix client, which has no such counts.
    socket: Option<OwnedFd>,
    /// The bytes the route returned to the client: whether the connection
    /// has been answered, and what a Unix client's activity is judged by
    /// (what it sends, the master reads unseen).
    returned: Arc<AtomicU64>,
    /// Two (bytes moved, when) readings: the rate is judged since the
    /// older, which is at least [`SETTLE`] old once the connection is (its
    /// start while it is younger).
    marks: [(u64, Instant); 2],
}

impl Carried {
    /// A connection admitted at `now`: `socket` is a duplicate of a TCP
    /// client's, `returned` what the route returns to the client.
    fn new(id: u64, now: Instant, socket: Option<OwnedFd>, returned: Arc<AtomicU64>) -> Self {
        Self { id, since: now, socket, returned, marks: [(0, now); 2] }
    }

    /// Takes a reading of the bytes the connection moved and says whether
    /// it holds a place at the master: it moves at least [`BULK_RATE`], or
    /// nothing has come back to its client yet while it is young. (A burst
    /// of uploads or downloads each sends a greeting or a request first and
    /// turns bulk only later: judged by their first bytes, every one would
    /// land on the master. A conversation such as iperf3's control
    /// connection has had its answers by the time the next client comes.)
    fn check_busy(&mut self, now: Instant) -> bool {
        let returned = self.returned.load(Ordering::Relaxed);
        if returned == 0 && now.duration_since(self.since) < SETTLE {
            return true;
        }
        let moved = match &self.socket {
            Some(s) => tcp_activity::bytes_moved(s.as_fd()),
            None => Some(returned),
        };
        let Some(moved) = moved else { return true };
        if moved == 0 {
            return false;
        }
        // Readings are taken when connections arrive; after a spell with
        // none, the last is too old to say when the bytes since moved: as
        // many as bulk moves in half a second count as moved now (a few
        // messages do not), and the readings start over.
        let newest = self.marks[1];
        if now.duration_since(newest.1) >= 2 * SETTLE {
            self.marks = [(moved, now); 2];
            return moved.saturating_sub(newest.0) as f64 >= BULK_RATE * SETTLE.as_secs_f64();
        }
        let (then, at) = self.marks[0];
        let span = now.duration_since(at).max(Duration::from_millis(1)).as_secs_f64();
        let busy = moved.saturating_sub(then) as f64 / span >= BULK_RATE;
        if now.duration_since(self.marks[1].1) >= SETTLE {
            self.marks = [self.marks[1], (moved, now)];
        }
        busy
    }
}

/// Holds a connection's place among those the master carries while it lives.
struct Place<'a> {
    route: &'a MasterRoute,
    id: u64,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.route.carried.lock().unwrap().retain(|c| c.id != self.id);
    }
}

impl MasterRoute {
    /// The route through the master at `master`'s control socket, for at
    /// most `max_busy` busy connections at a time.
    pub fn new(master: SshMaster, max_busy: usize) -> Self {
        Self {
            master,
            working: AtomicBool::new(true),
            no_unix: AtomicBool::new(false),
            carried: Mutex::new(Vec::new()),
            max_busy,
            next_id: AtomicU64::new(0),
            suspended_until: Mutex::new(None),
            revival: None,
        }
    }

    /// This route, bringing a master that is gone back with `ssh -F config
    /// host true` (in the background, at most every [`REVIVE_EVERY`]).
    pub fn reviving_with(self, config: std::path::PathBuf, host: String) -> Self {
        Self { revival: Some(Revival { config, host, last_try: Mutex::new(None) }), ..self }
    }

    /// Starts bringing the master back, unless that was tried lately.
    fn revive(&self) {
        let Some(r) = &self.revival else { return };
        {
            let mut last = r.last_try.lock().unwrap();
            if last.is_some_and(|t| t.elapsed() < REVIVE_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        let (config, host) = (r.config.clone(), r.host.clone());
        tracing::info!("no ssh ControlMaster answers; bringing it back with ssh -F {} {host}", config.display());
        tokio::task::spawn_blocking(move || crate::lima::ssh_control::ensure_master(&config, &host));
    }

    /// A place for `local` at the master, unless `max_busy` of the
    /// connections it carries are busy (or it carries [`MAX_CARRIED`]);
    /// `returned` counts what the route returns to the client.
    fn admit(&self, local: &LocalConn, returned: &Arc<AtomicU64>) -> Option<Place<'_>> {
        let now = Instant::now();
        let mut carried = self.carried.lock().unwrap();
        let busy = carried.iter_mut().map(|c| c.check_busy(now)).filter(|&b| b).count();
        if busy >= self.max_busy || carried.len() >= MAX_CARRIED {
            return None;
        }
        let socket = match local {
            LocalConn::Tcp(s) => s.as_fd().try_clone_to_owned().ok(),
            LocalConn::Unix(_) => None,
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        carried.push(Carried::new(id, now, socket, returned.clone()));
        Some(Place { route: self, id })
    }

    /// Forgets what was learnt of the master (a new session may come with a
    /// new master).
    pub fn reset(&self) {
        self.no_unix.store(false, Ordering::Relaxed);
    }

    /// Forwards `local` to `target` through the master. Gives the connection
    /// back, untouched, if the master did not take it (no master, a target
    /// ssh cannot reach such as UDP, or a refused forward), so the caller
    /// can carry it another way.
    pub async fn forward(
        &self,
        local: LocalConn,
        target: &Target,
        traffic: &Traffic,
        counts: &RouteCounts,
    ) -> Result<(), LocalConn> {
        let host;
        let to = match target {
            Target::Tcp(addr) => {
                host = addr.ip().to_string();
                Destination::Tcp(&host, addr.port())
            }
            Target::Unix(_) if self.no_unix.load(Ordering::Relaxed) => return Err(local),
            Target::Unix(path) => Destination::Unix(path),
            Target::Udp(_) | Target::Reverse(_) => return Err(local),
        };
        if self.suspended_until.lock().unwrap().is_some_and(|t| Instant::now() < t) {
            return Err(local);
        }
        let returned = Arc::new(AtomicU64::new(0));
        let Some(_place) = self.admit(&local, &returned) else { return Err(local) };
        // Counted as soon as the master takes the connection, so that status
        // shows it while it is carried (and right after it ends).
        match self.master.forward(local, to, traffic, &returned, || counts.count(Route::SshMaster)).await {
            Outcome::Carried(end) => {
                if !self.working.swap(true, Ordering::Relaxed) {
                    tracing::info!("the ssh ControlMaster carries connections again");
                }
                if let Some(reason) = end {
                    tracing::debug!("connection to guest {target:?} through the ControlMaster ended: {reason}");
                }
                Ok(())
            }
            Outcome::Failed(why) => {
                tracing::warn!("{why}; the client was reset, and new connections skip the master for {SUSPEND:?}");
                *self.suspended_until.lock().unwrap() = Some(Instant::now() + SUSPEND);
                self.working.store(false, Ordering::Relaxed);
                Ok(())
            }
            Outcome::NotTaken(local, NotTaken::Refused(why)) if matches!(target, Target::Unix(_)) => {
                if !self.no_unix.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        "{why}: guest Unix sockets go over the session (an OpenSSH ControlMaster forwards \
                         to Unix sockets from 9.4 on)"
                    );
                }
                Err(local)
            }
            Outcome::NotTaken(local, why) => {
                if matches!(why, NotTaken::Unreachable(_)) {
                    self.revive();
                }
                // A refusal is often only a closed guest port: the session
                // then says so authoritatively (and resets the client).
                if self.working.swap(false, Ordering::Relaxed) {
                    tracing::info!("{why}; {target:?} goes over the session instead");
                } else {
                    tracing::debug!("{why}; {target:?} goes over the session instead");
                }
                Err(local)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use tokio::io::AsyncReadExt;

    /// A TCP connection (client end, served end) and the served end as the
    /// route would carry it, admitted now.
    fn carried() -> (std::net::TcpStream, std::net::TcpStream, Carried, Instant) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (served, _) = l.accept().unwrap();
        let t0 = Instant::now();
        let c = Carried::new(0, t0, Some(served.as_fd().try_clone_to_owned().unwrap()), Default::default());
        (client, served, c, t0)
    }

    /// [`carried`], after the client sent 300 bytes, they were read and
    /// answered with 20 (a few messages, as iperf3's control connection),
    /// which the route counts as returned.
    fn carried_after_a_few_messages() -> (std::net::TcpStream, std::net::TcpStream, Carried, Instant) {
        let (mut client, mut served, c, t0) = carried();
        client.write_all(&[1u8; 300]).unwrap();
        served.read_exact(&mut [0u8; 300]).unwrap();
        served.write_all(&[2u8; 20]).unwrap();
        c.returned.fetch_add(20, Ordering::Relaxed);
        client.read_exact(&mut [0u8; 20]).unwrap();
        (client, served, c, t0)
    }

    #[test]
    fn a_young_connection_holds_a_place_until_something_comes_back_to_it() {
        // A burst of uploads (the bench's 100 streams, a parallel upload
        // tool): each sends a greeting, then waits. Judged by those bytes
        // alone, each would look quiet and all would land on the master.
        let (mut client, mut served, mut c, t0) = carried();
        client.write_all(&[1u8; 8]).unwrap();
        served.read_exact(&mut [0u8; 8]).unwrap();
        assert!(c.check_busy(t0 + Duration::from_millis(5)), "a greeting, no answer yet, 5 ms old");
        assert!(c.check_busy(t0 + SETTLE / 2), "still no answer");
        assert!(!c.check_busy(t0 + SETTLE + Duration::from_millis(10)), "old, 8 bytes: quiet");
        // Answered the moment the route returns a byte, before the client
        // has read or acknowledged it; then judged by its rate.
        let (_client, mut served, mut answered, t1) = carried();
        served.write_all(&[2u8; 20]).unwrap();
        answered.returned.fetch_add(20, Ordering::Relaxed);
        assert!(!answered.check_busy(t1 + Duration::from_millis(5)), "answered, 20 bytes in 5 ms");
        let (.., mut conversation, t2) = carried_after_a_few_messages();
        assert!(!conversation.check_busy(t2 + Duration::from_millis(5)), "answered, 320 bytes in 5 ms");
    }

    #[test]
    fn a_connection_is_busy_while_new_and_silent_or_moving_bulk_and_quiet_otherwise() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _silent = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (silent, _) = l.accept().unwrap();
        let mut new =
            Carried::new(0, Instant::now(), Some(silent.as_fd().try_clone_to_owned().unwrap()), Default::default());
        assert!(new.check_busy(Instant::now()), "a new connection that moved nothing may be about to");
        // A few messages (iperf3's control connection): quiet at once.
        let (mut client, mut served, mut c, t0) = carried_after_a_few_messages();
        assert!(!c.check_busy(t0 + Duration::from_millis(5)), "320 bytes in 5 ms");
        // Bulk: busy.
        let chunk = vec![2u8; 4 << 20];
        let reader = std::thread::spawn(move || std::io::copy(&mut served, &mut std::io::sink()).unwrap());
        client.write_all(&chunk).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !c.check_busy(Instant::now()) {
            assert!(Instant::now() < deadline, "4 MiB moved and the connection is not busy");
            std::thread::sleep(Duration::from_millis(1));
        }
        // Then idle for two spans: quiet again.
        std::thread::sleep(SETTLE);
        c.check_busy(Instant::now());
        std::thread::sleep(SETTLE);
        c.check_busy(Instant::now());
        assert!(!c.check_busy(Instant::now()), "idle for a second");
        drop(client);
        reader.join().unwrap();
        // A Unix client has no kernel counts: it is judged by what the route
        // returned to it.
        let returned = Arc::new(AtomicU64::new(0));
        let mut unix = Carried::new(1, t0, None, returned.clone());
        assert!(unix.check_busy(t0), "new, nothing yet");
        assert!(!unix.check_busy(t0 + SETTLE), "nothing for half a second: idle (docker events)");
        returned.fetch_add(4 << 20, Ordering::Relaxed);
        assert!(unix.check_busy(t0 + SETTLE + Duration::from_millis(10)), "4 MiB returned just now");
    }

    #[test]
    fn a_connection_that_turns_to_bulk_after_a_quiet_spell_is_busy() {
        // A connection exchanges a few messages, then nothing is admitted
        // for ten minutes (no reading is taken), then it uploads 4 MiB at
        // once: it is busy now, whatever it did ten minutes ago.
        let (mut client, mut served, mut c, t0) = carried_after_a_few_messages();
        assert!(!c.check_busy(t0 + SETTLE + Duration::from_millis(100)), "a few messages: quiet");
        let reader = std::thread::spawn(move || std::io::copy(&mut served, &mut std::io::sink()).unwrap());
        let start = Instant::now();
        client.write_all(&vec![2u8; 4 << 20]).unwrap();
        let took = start.elapsed();
        let later = Duration::from_secs(600);
        assert!(
            c.check_busy(start + later + took),
            "4 MiB moved in the last {took:?} and the connection is not busy (judged over ten minutes)"
        );
        drop(client);
        reader.join().unwrap();
    }

    #[test]
    fn a_few_messages_over_a_quiet_spell_leave_a_connection_quiet() {
        // A keep-alive client: a request now and then, no new connection
        // (so no reading) for ten minutes. It stays quiet.
        let (mut client, mut served, mut c, t0) = carried_after_a_few_messages();
        assert!(!c.check_busy(t0 + SETTLE + Duration::from_millis(100)));
        client.write_all(&[1u8; 4000]).unwrap();
        served.read_exact(&mut [0u8; 4000]).unwrap();
        assert!(!c.check_busy(t0 + Duration::from_secs(600)), "4 KB in ten minutes");
    }

    #[tokio::test]
    async fn an_idle_unix_client_like_docker_events_holds_no_place_at_the_master() {
        // `docker events` on a forwarded docker.sock: a Unix client that sits
        // idle for as long as it lives. The docs and --help name it as one
        // that holds no place; a TCP client arriving a second later must
        // still be admitted to the master (one busy place, the default).
        let dir = tempfile::tempdir().unwrap();
        let route = MasterRoute::new(SshMaster::new(&dir.path().join("ssh.sock")), 1);
        let (events, _docker_cli) = tokio::net::UnixStream::pair().unwrap();
        let events = LocalConn::Unix(events);
        let _carried = route.admit(&events, &Default::default()).expect("the first connection is admitted");
        tokio::time::sleep(SETTLE + Duration::from_millis(100)).await;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = tokio::net::TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (served, _) = l.accept().await.unwrap();
        assert!(
            route.admit(&LocalConn::Tcp(served), &Default::default()).is_some(),
            "an idle Unix client keeps every other connection off the master"
        );
    }

    #[tokio::test]
    async fn a_master_that_does_not_answer_is_left_alone_after_one_client() {
        // A control socket that accepts and then says nothing: a stuck master.
        let dir = tempfile::tempdir().unwrap();
        let control = dir.path().join("ssh.sock");
        let stuck = tokio::net::UnixListener::bind(&control).unwrap();
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = stuck.accept().await {
                conns.push(c);
            }
        });
        let master = SshMaster::with_open_timeout(&control, Duration::from_millis(200));
        let route = MasterRoute::new(master, 1);
        let target = Target::Tcp("127.0.0.1:9".parse().unwrap());
        let (counts, traffic) = (RouteCounts::default(), Traffic::default());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (served, _) = l.accept().await.unwrap();
        // The first client waits out the timeout and is reset.
        assert!(route.forward(LocalConn::Tcp(served), &target, &traffic, &counts).await.is_ok());
        let mut buf = [0u8; 1];
        let end = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf)).await;
        assert!(matches!(end, Ok(Ok(0)) | Ok(Err(_))), "the client was ended: {end:?}");
        // The next one is handed back at once, for the session to carry.
        let client2 = tokio::net::TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (served2, _) = l.accept().await.unwrap();
        let t0 = Instant::now();
        assert!(route.forward(LocalConn::Tcp(served2), &target, &traffic, &counts).await.is_err());
        assert!(t0.elapsed() < Duration::from_millis(100), "a suspended master is not asked");
        drop((client, client2));
        held.abort();
    }
}
