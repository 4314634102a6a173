//! One host TCP listener: accepts clients and forwards each one to the
//! current guest target over the session's routes.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use ferry_mux::{pump::reset_tcp, LocalConn};
use ferry_protocol::Target;
use tokio::{net::TcpListener, sync::watch};

use super::restart_grace::{wait_listening, GuestState};
use crate::{routes::Routes, status::ConnStats};

/// The guest address a host listener forwards to; shared so that it can be
/// retargeted without closing the listener.
pub type SharedTarget = Arc<Mutex<SocketAddr>>;

/// Accepts on `listener` forever, forwarding each client to the current
/// target and counting it in `stats`. With `loopback_only`, peers that are
/// not on this machine are refused (a wildcard listener standing in for a
/// loopback one).
///
/// A client that arrives while the guest listener is restarting (see
/// [`super::restart_grace`]) is held until it returns, and reset if it
/// does not return in time.
pub async fn accept_loop(
    listener: TcpListener,
    routes: Arc<Routes>,
    target: SharedTarget,
    stats: Arc<ConnStats>,
    loopback_only: bool,
    guest: watch::Receiver<GuestState>,
) {
    let mut errors = ferry_mux::accept_errors::AcceptErrors::default();
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                if loopback_only && !peer.ip().to_canonical().is_loopback() {
                    tracing::warn!("refused {peer}: this port is published on loopback only");
                    reset_tcp(tcp);
                    continue;
                }
                let (routes, stats, target) = (routes.clone(), stats.clone(), target.clone());
                let mut state = guest.clone();
                tokio::spawn(async move {
                    if !wait_listening(&mut state).await {
                        tracing::debug!("reset {peer}: the guest listener did not come back in time");
                        reset_tcp(tcp);
                        return;
                    }
                    let guest = *target.lock().unwrap();
                    let _active = stats.open();
                    let _ = tcp.set_nodelay(true);
                    routes.forward(LocalConn::Tcp(tcp), Target::Tcp(guest), &stats.traffic).await;
                });
            }
            Err(e) => {
                let at = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
                errors.pause_after(&at, &e).await;
            }
        }
    }
}
