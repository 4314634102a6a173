//! Accepting host connections on every configured transport.

use std::{sync::Arc, time::Duration};

use ferry_mux::{
    refusals::Refusals,
    transport::{Incoming, Pending},
    Address, SessionConfig, Transport, TransportListener,
};
use ferry_process::secret_file;

use crate::{
    cli::{Args, KubernetesMode, PortEventsMode},
    dedicated::{self, DataSessions},
    ports::{filter::UdpFilter, kubernetes::KubernetesServices, scanner::SocketScanner, watcher::Source, PortWatcher},
    pre_auth::{PreAuth, Ticket},
    session::{self, Ports},
};

/// Runs the agent until it is killed (or, with `--stdio`, until the session ends).
pub async fn run(args: Args) -> anyhow::Result<()> {
    let exclude = args
        .listen
        .iter()
        .filter_map(|a| match a {
            Address::Tcp(s) => s.parse().ok(),
            _ => None,
        })
        .collect();
    let cfg = session_config(&args)?;
    let watcher = Arc::new(PortWatcher::start(sources(&args, exclude)?)?);
    let filter = UdpFilter::new(&args.udp_ignore_ports()?);
    let ports = Ports { watcher, filter };
    if args.stdio {
        // A single pipe: streams travel as frames, no data connections.
        session::serve(Transport::stdio(), ports, cfg, None, None, Refusals::default()).await;
        return Ok(());
    }
    let sessions = DataSessions::default();
    let pre_auth = PreAuth::default();
    let refusals = Refusals::default();
    let mut tasks = tokio::task::JoinSet::new();
    for addr in &args.listen {
        let listener = TransportListener::bind(addr).map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        tracing::info!("listening on {addr}; data paths: {}", ferry_mux::platform::data_paths());
        let (ports, cfg, sessions, pre_auth) = (ports.clone(), cfg.clone(), sessions.clone(), pre_auth.clone());
        let refusals = refusals.clone();
        let name = addr.to_string();
        tasks.spawn(async move {
            let mut errors = ferry_mux::accept_errors::AcceptErrors::default();
            loop {
                match listener.accept().await {
                    Ok(pending) => {
                        let (ports, cfg, sessions) = (ports.clone(), cfg.clone(), sessions.clone());
                        let refusals = refusals.clone();
                        pre_auth.spawn(move |ticket| dispatch(pending, ports, cfg, sessions, ticket, refusals));
                    }
                    Err(e) => errors.pause_after(&name, &e).await,
                }
            }
        });
    }
    tokio::select! {
        _ = tasks.join_next() => {}
        _ = shutdown_signal() => tracing::info!("shutting down"),
    }
    Ok(())
}

/// How long a new connection may take to send its first bytes (a host
/// sends them at once); a silent one is closed, so idle connections cannot
/// pile up.
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(5);

/// Tells sessions from data connections and serves each; `ticket` is given
/// up once the connection has authenticated.
async fn dispatch(
    pending: Pending,
    ports: Ports,
    cfg: SessionConfig,
    sessions: DataSessions,
    ticket: Ticket,
    refusals: Refusals,
) {
    // Every listener (Unix, TCP, vsock) takes data connections as well.
    match tokio::time::timeout(FIRST_BYTES_TIMEOUT, pending.classify()).await {
        Ok(Ok(Incoming::Session(t))) => session::serve(t, ports, cfg, Some(sessions), Some(ticket), refusals).await,
        Ok(Ok(Incoming::Data(conn))) => dedicated::serve(conn, sessions, ticket, refusals).await,
        Ok(Err(e)) => refusals.record("connection", &format!("closed before its first bytes: {e}")),
        Err(_) => refusals.record("connection", &format!("sent nothing within {FIRST_BYTES_TIMEOUT:?}")),
    }
}

/// The discovery sources the options ask for.
fn sources(args: &Args, exclude: Vec<std::net::SocketAddr>) -> anyhow::Result<Vec<Box<dyn Source>>> {
    let mut sources: Vec<Box<dyn Source>> =
        vec![Box::new(SocketScanner::new(args.scan_interval(), args.port_events == PortEventsMode::Auto, exclude)?)];
    if args.kubernetes == KubernetesMode::Auto {
        sources.push(Box::new(KubernetesServices::new(args.kubectl.clone())));
    }
    Ok(sources)
}

/// The session settings: a named secret file must exist; the default one
/// is created if missing.
fn session_config(args: &Args) -> anyhow::Result<SessionConfig> {
    let secret = secret_file::session_secret(args.secret_file.as_deref(), args.insecure_no_auth, false)?;
    Ok(SessionConfig { secret, ..SessionConfig::default() })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
