//! Accepting host connections on every configured transport.

use std::sync::Arc;

use ferry_mux::{Address, Transport, TransportListener};

use crate::{cli::Args, ports::PortWatcher, session};

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
    let watcher = Arc::new(PortWatcher::start(args.scan_interval(), exclude)?);
    if args.stdio {
        session::serve(Transport::stdio(), watcher).await;
        return Ok(());
    }
    let mut tasks = tokio::task::JoinSet::new();
    for addr in &args.listen {
        let listener = TransportListener::bind(addr).map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        tracing::info!("listening on {addr}");
        let watcher = watcher.clone();
        tasks.spawn(async move {
            loop {
                match listener.accept().await {
                    Ok(t) => {
                        tokio::spawn(session::serve(t, watcher.clone()));
                    }
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
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

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
