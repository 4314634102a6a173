//! Keeps a session with the agent alive: connect, forward, and on loss tear
//! everything down and reconnect with backoff.

use std::time::Duration;

use ferry_mux::{secret_file, Session, SessionConfig, SessionEvent, Transport};
use ferry_protocol::{ControlMessage, Role};

use crate::{
    cli::RunArgs,
    ports::{dedicated::DataPath, PortForwarder},
};

const MIN_BACKOFF: Duration = Duration::from_millis(100);

/// Runs until interrupted.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    tokio::select! {
        r = connect_forever(&args) => r,
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            Ok(())
        }
    }
}

async fn connect_forever(args: &RunArgs) -> anyhow::Result<()> {
    let cfg = session_config(args)?;
    let mut backoff = MIN_BACKOFF;
    let mut last_error = String::new();
    loop {
        match connect(args, &cfg).await {
            Ok((session, events)) => {
                backoff = MIN_BACKOFF;
                last_error.clear();
                tracing::info!("connected to agent at {} (protocol v{})", args.agent, session.negotiated().version);
                let reason = serve(session, events, args).await;
                tracing::warn!("session with agent ended: {reason}; reconnecting");
            }
            Err(e) => {
                // Log a repeating failure once, not on every attempt.
                if e != last_error {
                    tracing::warn!("cannot reach agent at {}: {e}; retrying", args.agent);
                    last_error = e;
                }
            }
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

async fn connect(
    args: &RunArgs,
    cfg: &SessionConfig,
) -> Result<(Session, tokio::sync::mpsc::Receiver<SessionEvent>), String> {
    let transport = Transport::dial(&args.agent).await.map_err(|e| e.to_string())?;
    Session::start(transport, Role::Host, cfg.clone()).await.map_err(|e| e.to_string())
}

/// Forwards the session's ports until it ends; returns why it ended.
async fn serve(session: Session, mut events: tokio::sync::mpsc::Receiver<SessionEvent>, args: &RunArgs) -> String {
    let mut ports = PortForwarder::new(session.clone());
    let mut retry = tokio::time::interval(args.retry_busy());
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(SessionEvent::Control(ControlMessage::DataToken(token))) => {
                    match DataPath::new(&args.agent, token).filter(|_| !args.no_dedicated) {
                        Some(data) => {
                            tracing::info!("connections get dedicated data connections (spliced)");
                            ports.set_data_path(data);
                        }
                        None => tracing::info!("connections are multiplexed over the session"),
                    }
                }
                Some(SessionEvent::Control(msg)) => ports.apply(msg),
                Some(SessionEvent::Open(open)) => open.refuse("the host accepts no streams from the guest yet"),
                None => break,
            },
            _ = retry.tick() => ports.retry_busy(),
        }
    }
    // Dropping the forwarder closes every host listener; in-flight
    // connections see the session close and are reset.
    drop(ports);
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
