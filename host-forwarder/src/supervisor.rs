//! Keeps a session with the agent alive: connect, forward, and on loss tear
//! everything down and reconnect with backoff.

use std::{sync::Arc, time::Duration};

use ferry_mux::{udp_flows::UdpLimits, Address, Session, SessionConfig, SessionEvent, Transport};
use ferry_process::secret_file;
use ferry_protocol::{ControlMessage, Role};

use crate::{
    cli::RunArgs,
    config,
    files::{FileForwarder, FileOptions},
    ports::forwarder::{ForwarderOptions, PortForwarder},
    reverse::{ReverseForward, ReverseForwarder},
    routes::{dedicated::DataPath, ssh_master::MasterRoute, Routes},
    sockets::{SocketForward, SocketForwarder},
    status::{self, EventSink, StatusBoard},
};

/// What every session sets up: the ports channel's options, the socket
/// forwards and the reverse forwards.
struct Setup {
    ports: ForwarderOptions,
    sockets: Vec<SocketForward>,
    reverse: Vec<ReverseForward>,
    files: FileOptions,
    /// The guest's ssh ControlMaster, when connections go through it.
    master: Option<Arc<MasterRoute>>,
}

/// The status board's name for the route through the ssh ControlMaster.
const SSH_MASTER: &str = "ssh-master";

/// How long dialling the agent and authenticating may take (a TCP connect
/// to a guest that is gone would otherwise wait for SYN retries, minutes).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

const MIN_BACKOFF: Duration = Duration::from_millis(100);

/// How often waiting host ports are checked for their retry time.
const RETRY_TICK: Duration = Duration::from_millis(250);

/// Runs until interrupted.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let _pid_file = match &args.pid_file {
        Some(path) => Some(crate::pid_file::PidFile::hold(path).map_err(|e| anyhow::anyhow!("pid file: {e}"))?),
        None => None,
    };
    tracing::info!("data paths: {}", ferry_mux::platform::data_paths());
    let config = config::load(args.rules.as_deref(), args.ssh_local_port, &args.reverse)?;
    if let Some(file) = &args.rules {
        tracing::info!(
            "from {}: {} port rules, {} socket forwards, {} reverse forwards",
            file.display(),
            config.rules.user_rules().len(),
            config.sockets.len(),
            config.reverse.len()
        );
    }
    let rules = Arc::new(config.rules);
    tracing::debug!("effective rules: {:?}", rules.rules());
    let board = StatusBoard::new(args.agent.to_string());
    let control = args.control_socket.clone().unwrap_or_else(status::server::default_path);
    let listener = status::server::bind(&control)
        .await
        .map_err(|e| anyhow::anyhow!("control socket {}: {e}", control.display()))?;
    let _control = ControlSocket { path: control, task: tokio::spawn(status::server::serve(listener, board.clone())) };
    let udp =
        UdpLimits { idle_timeout: Duration::from_secs(args.udp_idle_timeout), max_flows: args.udp_max_flows as usize };
    let ports = ForwarderOptions {
        rules,
        max_retry: args.retry_busy(),
        board,
        events: EventSink::new(args.events),
        udp,
        pseudoloopback: args.pseudoloopback,
        restart_grace: Duration::from_millis(args.restart_grace_ms),
    };
    let mut files = FileOptions { mounts: args.watch.clone(), excludes: Vec::new() };
    if !args.no_file_events {
        files.mounts.extend(config.mounts);
    } else {
        files.mounts.clear();
    }
    files.excludes = crate::files::watcher::DEFAULT_EXCLUDES.iter().map(|s| s.to_string()).collect();
    files.excludes.extend(args.watch_exclude.iter().cloned());
    let master = args.ssh_control_path.as_deref().map(|path| {
        tracing::info!("TCP and Unix-socket connections go through the ssh ControlMaster at {}", path.display());
        let max = args.ssh_master_max_connections as usize;
        let route = MasterRoute::new(ferry_mux::ssh_master::SshMaster::new(path), max);
        Arc::new(match args.ssh_master_revive.as_deref() {
            Some([config, host]) => route.reviving_with(config.into(), host.clone()),
            _ => route,
        })
    });
    let setup = Setup { ports, sockets: config.sockets, reverse: config.reverse, files, master };
    let ended = tokio::select! {
        r = connect_forever(&args, &setup) => r,
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            Ok(())
        }
    };
    drop(setup);
    EventSink::finish(Duration::from_secs(1));
    ended
}

/// The control socket's server task; the socket file goes when it does.
struct ControlSocket {
    path: std::path::PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn connect_forever(args: &RunArgs, setup: &Setup) -> anyhow::Result<()> {
    let cfg = session_config(args)?;
    // The agent's address first, then the fallback (if any): each
    // connection attempt goes down the list, so a fast transport that
    // failed is tried again first at every reconnection.
    let addrs: Vec<&Address> = std::iter::once(&args.agent).chain(args.fallback_agent.as_ref()).collect();
    let mut backoff = MIN_BACKOFF;
    let mut last_errors = vec![String::new(); addrs.len()];
    loop {
        let mut connected = None;
        for (i, addr) in addrs.iter().enumerate() {
            match connect(addr, &cfg).await {
                Ok(session) => {
                    connected = Some((i, *addr, session));
                    break;
                }
                Err(e) => {
                    // Log a repeating failure once, not on every attempt.
                    if e != last_errors[i] {
                        let next = if i + 1 < addrs.len() { "trying the fallback" } else { "retrying" };
                        tracing::warn!("cannot reach agent at {addr}: {e}; {next}");
                        last_errors[i] = e;
                    }
                }
            }
        }
        if let Some((i, addr, (session, events))) = connected {
            backoff = MIN_BACKOFF;
            last_errors[i].clear();
            let via = if i > 0 { " (fallback)" } else { "" };
            tracing::info!(
                "connected to agent at {addr}{via} (protocol v{}{})",
                session.negotiated().version,
                if session.is_sealed() { ", sealed" } else { "" }
            );
            let board = &setup.ports.board;
            board.set_transport(&addr.to_string());
            if let Some(master) = &setup.master {
                master.reset();
            }
            let reason = serve(session, events, addr, args, setup).await;
            board.set_session(false, "-");
            tracing::warn!("session with agent ended: {reason}; reconnecting");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(args.max_backoff());
    }
}

/// The session settings, with the secret loaded or created.
fn session_config(args: &RunArgs) -> anyhow::Result<SessionConfig> {
    let secret = secret_file::session_secret(args.secret_file.as_deref(), args.insecure_no_auth, true)?;
    Ok(SessionConfig { secret, ..SessionConfig::default() })
}

/// Dials `addr` and authenticates, within [`CONNECT_TIMEOUT`].
async fn connect(
    addr: &Address,
    cfg: &SessionConfig,
) -> Result<(Session, tokio::sync::mpsc::Receiver<SessionEvent>), String> {
    let attempt = async {
        let transport = Transport::dial(addr).await.map_err(|e| e.to_string())?;
        Session::start(transport, Role::Host, cfg.clone()).await.map_err(|e| e.to_string())
    };
    tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .map_err(|_| format!("no session within {CONNECT_TIMEOUT:?}"))?
}

/// Runs every channel over the session until it ends; returns why it ended.
async fn serve(
    session: Session,
    mut events: tokio::sync::mpsc::Receiver<SessionEvent>,
    addr: &Address,
    args: &RunArgs,
    setup: &Setup,
) -> String {
    let board = &setup.ports.board;
    let wanted = setup.ports.rules.udp_wanted();
    if !wanted.is_empty() {
        let _ = session.send_control(&ControlMessage::UdpPortsWanted(wanted));
    }
    // A sealed session (over a network) carries connections itself:
    // faster than a ControlMaster's channels and as private.
    let master = setup.master.clone().filter(|_| !session.is_sealed());
    board.set_session(
        true,
        match (&master, session.is_sealed()) {
            (Some(_), _) => SSH_MASTER,
            (None, true) => "sealed",
            (None, false) => "multiplexed",
        },
    );
    let routes = Routes::new(session.clone(), master, board.route_counts());
    let mut ports = PortForwarder::new(routes.clone(), setup.ports.clone());
    let mut sockets = SocketForwarder::start(routes.clone(), &setup.sockets, board.clone(), setup.ports.events);
    let mut reverse = ReverseForwarder::start(&session, &setup.reverse, board.clone());
    let files = FileForwarder::start(session.clone(), &setup.files, board.clone());
    let mut retry = tokio::time::interval(RETRY_TICK);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(SessionEvent::Control(ControlMessage::DataConnsAccepted)) => {
                    // Over a network, a data connection's bytes would travel
                    // in clear and unbound to it: one on the path could take
                    // it over. The sealed session carries them instead,
                    // unless the user says the network is theirs alone.
                    let exposed = session.is_sealed() && !args.unsealed_data_conns;
                    if exposed && !args.no_dedicated {
                        tracing::info!(
                            "connections travel inside the sealed session: over {addr} a data connection \
                             would cross the network in clear (--unsealed-data-conns allows them)"
                        );
                    }
                    let data = DataPath::new(addr, &session, args.hvsock_data_connections, args.warm_data_conns.into());
                    match data.filter(|_| !args.no_dedicated && !exposed) {
                        Some(data) => {
                            tracing::info!(
                                "connections get dedicated data connections (relayed by {:?})",
                                ferry_mux::relay::RelayKind::current()
                            );
                            routes.set_data_path(data);
                            board.set_session(true, "dedicated");
                        }
                        None if setup.master.is_some() => {
                            tracing::info!("connections go through the ssh ControlMaster, else over the session")
                        }
                        None => tracing::info!("connections are multiplexed over the session"),
                    }
                }
                Some(SessionEvent::Control(ControlMessage::GuestSocketsPresent(present))) => {
                    sockets.apply_present(&present);
                }
                Some(SessionEvent::Control(ControlMessage::ReverseState { id, error })) => reverse.set_state(id, error),
                Some(SessionEvent::Control(ControlMessage::WatchTargets(targets))) => files.set_targets(&targets),
                Some(SessionEvent::Control(msg)) => ports.apply(msg),
                Some(SessionEvent::Open(open)) => reverse.serve(open),
                None => break,
            },
            _ = retry.tick() => ports.retry_due(),
        }
    }
    // Dropping the channels closes every host listener and socket; in-flight
    // connections see the session close and are reset.
    drop((ports, sockets, reverse, files));
    session.closed().await
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
