//! Keeps the host listeners in step with the guest's port set and the rules,
//! retries host ports that are taken, and reports every change (log, status
//! board, `--events`).

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ferry_mux::udp_flows::{self, UdpLimits};
use ferry_protocol::{ControlMessage, Listener, Proto, Target};
use tokio::{
    net::{TcpListener, TcpSocket, UdpSocket},
    task::JoinHandle,
};

use super::{
    host_sockets::PortSockets,
    listener::accept_loop,
    mapping::{self, Binding},
    restart_grace::{self, Gate, GuestState},
    rules::{Decision, RuleSet},
};
use crate::routes::Routes;
use crate::status::{
    board::{Row, Section, StatusBoard},
    events::EventKind,
    ConnStats, EventSink,
};

/// First wait before binding a taken host port again; doubles up to the
/// configured ceiling.
const FIRST_RETRY: Duration = Duration::from_millis(250);

type Key = (Proto, SocketAddr);

enum Slot {
    Active {
        target: Arc<Mutex<SocketAddr>>,
        task: JoinHandle<()>,
        stats: Arc<ConnStats>,
        /// Whether the guest listens (or, while it restarts, until when the
        /// port is kept); held connections wait on it.
        gate: Gate,
    },
    Waiting {
        error: String,
        state: &'static str,
        next: Instant,
        backoff: Duration,
    },
}

/// How the forwarder reports and retries.
#[derive(Clone)]
pub struct ForwarderOptions {
    /// The effective rules.
    pub rules: Arc<RuleSet>,
    /// Longest wait between attempts to bind a host port that was unavailable.
    pub max_retry: Duration,
    /// Where the status rows go.
    pub board: StatusBoard,
    /// Where forwarding changes are printed.
    pub events: EventSink,
    /// Publish loopback ports on the wildcard address, refusing peers that
    /// are not local, as macOS needs for privileged ports (see `bind_tcp`).
    pub pseudoloopback: bool,
    /// Bounds of UDP flows.
    pub udp: UdpLimits,
    /// How long a TCP host port outlives its guest listener, holding new
    /// connections, in case the listener returns (a dev server restarting);
    /// zero releases it at once.
    pub restart_grace: Duration,
}

/// The host listeners of one session. Dropping it closes them all.
pub struct PortForwarder {
    routes: Arc<Routes>,
    opts: ForwarderOptions,
    guest: BTreeSet<Listener>,
    /// What `static` rules forward whether or not the guest listens.
    statics: Vec<Listener>,
    slots: BTreeMap<Key, (Binding, Slot)>,
    skipped: Vec<(Listener, Decision)>,
    sockets: PortSockets,
}

impl PortForwarder {
    /// A forwarder with no ports yet, forwarding over `routes`.
    pub fn new(routes: Arc<Routes>, opts: ForwarderOptions) -> Self {
        let statics = opts.rules.static_listeners();
        Self {
            routes,
            opts,
            guest: BTreeSet::new(),
            statics,
            slots: BTreeMap::new(),
            skipped: Vec::new(),
            sockets: PortSockets::default(),
        }
    }

    /// Applies a port message from the agent.
    pub fn apply(&mut self, msg: ControlMessage) {
        match msg {
            ControlMessage::PortSnapshot(all) => self.guest = all.into_iter().collect(),
            ControlMessage::PortsChanged { added, removed } => {
                for l in removed {
                    self.guest.remove(&l);
                }
                self.guest.extend(added);
            }
            _ => return,
        }
        self.reconcile();
    }

    /// Tries again to bind host ports whose retry time has come.
    pub fn retry_due(&mut self) {
        let now = Instant::now();
        let due = |s: &Slot| match s {
            Slot::Waiting { next, .. } => *next <= now,
            Slot::Active { gate, .. } => restarting_until(gate).is_some_and(|t| t <= now),
        };
        if self.slots.values().any(|(_, s)| due(s)) {
            self.reconcile();
        }
    }

    fn reconcile(&mut self) {
        let mut wanted = self.guest.clone();
        wanted.extend(self.statics.iter().copied());
        let plan = mapping::plan(&wanted, &self.opts.rules);
        let events = self.opts.events;
        let (now, grace) = (Instant::now(), self.opts.restart_grace);
        self.slots.retain(|key, (binding, slot)| {
            if plan.bindings.contains_key(key) {
                return true;
            }
            if let Slot::Active { task, gate, .. } = slot {
                match restarting_until(gate) {
                    None if key.0 == Proto::Tcp && !grace.is_zero() => {
                        let until = now + grace;
                        gate.send_replace(GuestState::Restarting { until: until.into() });
                        tracing::info!("guest {} closed; keeping {} for {grace:?} (restarting)", binding.guest, key.1);
                        return true;
                    }
                    Some(until) if until > now => return true,
                    _ => {}
                }
                gate.send_replace(GuestState::Gone);
                task.abort();
                tracing::info!("released {} ({})", key.1, proto_name(key.0));
                events.emit(
                    EventKind::NotForwarding,
                    proto_name(key.0),
                    &binding.listener.addr.to_string(),
                    &key.1.to_string(),
                    None,
                );
            }
            false
        });
        let now = Instant::now();
        for (key, binding) in plan.bindings {
            match self.slots.get_mut(&key) {
                Some((b, Slot::Active { target, gate, .. })) => {
                    *b = binding;
                    *target.lock().unwrap() = binding.guest;
                    if gate.send_if_modified(|s| std::mem::replace(s, GuestState::Listening) != GuestState::Listening) {
                        tracing::info!("guest {} is back; {} forwards to it again", binding.guest, key.1);
                    }
                }
                Some((_, Slot::Waiting { next, .. })) if *next > now => {}
                _ => self.open(key, binding),
            }
        }
        self.sockets.reconcile(&plan.skipped, &self.routes, &self.opts.events);
        self.skipped = plan.skipped;
        self.publish();
    }

    /// Binds one host address, or records why it could not.
    fn open(&mut self, key: Key, binding: Binding) {
        let (proto, host) = key;
        let guest = binding.listener.addr.to_string();
        let target = Arc::new(Mutex::new(binding.guest));
        let stats = Arc::new(ConnStats::default());
        let gate = restart_grace::gate();
        let started = match proto {
            Proto::Tcp => bind_tcp(host, self.opts.pseudoloopback).map(|(l, loopback_only)| {
                let (routes, guest) = (self.routes.clone(), gate.subscribe());
                tokio::spawn(accept_loop(l, routes, target.clone(), stats.clone(), loopback_only, guest))
            }),
            Proto::Udp => bind_udp(host).map(|socket| {
                let session = self.routes.session.clone();
                let guest = target.clone();
                let target = move || Target::Udp(*guest.lock().unwrap());
                tokio::spawn(udp_flows::serve_clients(socket, session, target, stats.clone(), self.opts.udp))
            }),
        };
        match started {
            Ok(task) => {
                let recovered = matches!(self.slots.get(&key), Some((_, Slot::Waiting { .. })));
                tracing::info!(
                    "forwarding {host} -> guest {} ({}){}",
                    binding.guest,
                    proto_name(proto),
                    if recovered { " (the host port is free now)" } else { "" }
                );
                self.opts.events.emit(EventKind::Forwarding, proto_name(proto), &guest, &host.to_string(), None);
                let slot = Slot::Active { target, task, stats, gate };
                self.slots.insert(key, (binding, slot));
            }
            Err(e) => {
                let (state, error) = describe_bind_error(&e, host);
                let backoff = match self.slots.get(&key) {
                    Some((_, Slot::Waiting { backoff, error: old, .. })) if *old == error => {
                        (*backoff * 2).min(self.opts.max_retry)
                    }
                    _ => {
                        // Reported once per change of state, not on every retry.
                        tracing::warn!(
                            "cannot forward guest {guest} ({}): host {host}: {error}; will retry",
                            proto_name(proto)
                        );
                        self.opts.events.emit(
                            EventKind::Failed,
                            proto_name(proto),
                            &guest,
                            &host.to_string(),
                            Some(&error),
                        );
                        FIRST_RETRY.min(self.opts.max_retry)
                    }
                };
                let slot = Slot::Waiting { error, state, next: Instant::now() + backoff, backoff };
                self.slots.insert(key, (binding, slot));
            }
        }
    }

    /// Writes the current rows to the status board.
    fn publish(&self) {
        let mut rows: Vec<Row> = self
            .slots
            .iter()
            .map(|((proto, host), (binding, slot))| {
                let (state, reason, stats) = match slot {
                    Slot::Active { stats, gate, .. } => match restarting_until(gate) {
                        Some(until) => {
                            let left = until.saturating_duration_since(Instant::now()).as_millis();
                            let why = format!("the guest listener closed; kept {left} ms more in case it returns");
                            ("restarting", Some(why), Some(stats.clone()))
                        }
                        None => ("forwarding", None, Some(stats.clone())),
                    },
                    Slot::Waiting { error, state, .. } => (*state, Some(error.clone()), None),
                };
                Row {
                    proto: proto_name(*proto),
                    guest: binding.listener.addr.to_string(),
                    host: host.to_string(),
                    state,
                    reason,
                    stats,
                }
            })
            .collect();
        rows.extend(self.sockets.rows());
        for (l, decision) in self.skipped.iter().filter(|(l, _)| !self.sockets.serves(l)) {
            let (state, reason) = match decision {
                Decision::Ignored { rule } => ("ignored", format!("rule {rule}")),
                Decision::HostSocket { path, .. } if l.proto == Proto::Udp => {
                    ("not-forwarded", format!("a UDP port cannot be the Unix stream socket {}", path.display()))
                }
                Decision::HostSocket { path, .. } => {
                    ("not-forwarded", format!("{} already serves another guest address", path.display()))
                }
                _ => ("not-forwarded", "no rule matches this address".to_string()),
            };
            rows.push(Row {
                proto: proto_name(l.proto),
                guest: l.addr.to_string(),
                host: "-".into(),
                state,
                reason: Some(reason),
                stats: None,
            });
        }
        self.opts.board.set_rows(Section::Ports, rows);
    }
}

/// While the guest listener behind `gate` restarts: when the port is released.
fn restarting_until(gate: &Gate) -> Option<Instant> {
    match *gate.borrow() {
        GuestState::Restarting { until } => Some(until.into_std()),
        GuestState::Listening | GuestState::Gone => None,
    }
}

/// "tcp" or "udp".
pub fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    }
}

/// The status and the message for a failed bind.
fn describe_bind_error(e: &io::Error, host: SocketAddr) -> (&'static str, String) {
    match e.kind() {
        io::ErrorKind::AddrInUse => ("retrying", "host port in use (by another program or another ferry)".into()),
        io::ErrorKind::PermissionDenied if host.port() < 1024 => (
            "failed",
            format!(
                "port {} is privileged: give ferry CAP_NET_BIND_SERVICE, lower \
                 net.ipv4.ip_unprivileged_port_start, or map it to a hostPort of 1024 or more",
                host.port()
            ),
        ),
        io::ErrorKind::AddrNotAvailable => ("failed", format!("the host has no address {}", host.ip())),
        _ => ("failed", e.to_string()),
    }
}

/// Binds a host listener; SO_REUSEADDR lets a port be re-bound at once
/// after its guest server restarts, despite old connections in TIME_WAIT.
/// Returns whether the listener must refuse non-loopback peers.
///
/// A loopback port takes the pseudoloopback path (the wildcard address,
/// refusing peers that are not local) where macOS forbids binding it on
/// loopback (a privileged port: Mojave and later allow those only on the
/// wildcard address), or always with `pseudoloopback` (`ferry run
/// --pseudoloopback`, which tests the path on Linux).
fn bind_tcp(addr: SocketAddr, pseudoloopback: bool) -> io::Result<(TcpListener, bool)> {
    let wildcard = |addr: SocketAddr| {
        let any: std::net::IpAddr = if addr.is_ipv4() {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        };
        SocketAddr::new(any, addr.port())
    };
    if pseudoloopback && addr.ip().is_loopback() {
        return Ok((listen_tcp(wildcard(addr))?, true));
    }
    match listen_tcp(addr) {
        Ok(l) => Ok((l, false)),
        Err(e)
            if cfg!(target_os = "macos") && e.kind() == io::ErrorKind::PermissionDenied && addr.ip().is_loopback() =>
        {
            Ok((listen_tcp(wildcard(addr))?, true))
        }
        Err(e) => Err(e),
    }
}

/// Binds a host UDP socket (IPv6 sockets are IPv6-only, like TCP ones).
fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let domain = if addr.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    ferry_mux::udp_buffers::enlarge(&socket);
    UdpSocket::from_std(socket.into())
}

fn listen_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    if !ferry_mux::platform::linux_fast_paths() {
        refuse_if_served(addr)?;
    }
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    if addr.is_ipv6() {
        // [::] must not also take the IPv4 port that 0.0.0.0 gets on its own.
        socket2::SockRef::from(&socket).set_only_v6(true)?;
    }
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Fails with `AddrInUse` if another program serves `addr`'s port there
/// (for a wildcard address: on the loopback address of its family).
///
/// With BSD semantics of SO_REUSEADDR (macOS), a bind to 127.0.0.1:P can
/// succeed beside another program's *:P, and the two would then share the
/// port silently; Linux refuses such a bind. So where the portable paths run
/// (macOS, and Linux in portable mode, which tests this), a port that
/// accepts a connection counts as taken: it is reported and retried as on
/// Linux. The probe connects over loopback and closes at once.
fn refuse_if_served(addr: SocketAddr) -> io::Result<()> {
    let probe = match addr.ip() {
        ip if ip.is_unspecified() && addr.is_ipv4() => {
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        ip if ip.is_unspecified() => SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), addr.port()),
        _ => addr,
    };
    match std::net::TcpStream::connect_timeout(&probe, PROBE_TIMEOUT) {
        Ok(_) => Err(io::Error::new(io::ErrorKind::AddrInUse, format!("{probe} is served by another program"))),
        Err(_) => Ok(()),
    }
}

/// How long the "is this port served?" probe waits: a loopback connect is
/// answered at once, accepted or refused.
const PROBE_TIMEOUT: Duration = Duration::from_millis(200);

impl Drop for PortForwarder {
    fn drop(&mut self) {
        for ((proto, host), (binding, slot)) in std::mem::take(&mut self.slots) {
            if let Slot::Active { task, gate, .. } = slot {
                gate.send_replace(GuestState::Gone);
                task.abort();
                tracing::info!("released {host} ({})", proto_name(proto));
                self.opts.events.emit(
                    EventKind::NotForwarding,
                    proto_name(proto),
                    &binding.listener.addr.to_string(),
                    &host.to_string(),
                    None,
                );
            }
        }
    }
}
