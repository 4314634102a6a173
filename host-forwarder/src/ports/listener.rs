//! One host TCP listener: accepts clients and forwards each one to the
//! current guest target over the session's routes.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use ferry_mux::{
    placement::{self, BulkHistory},
    pump::reset_tcp,
    LocalConn,
};
use ferry_protocol::Target;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};

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
///
/// Each client is served on this thread, or on the bulk runtime when the
/// port's recent connections carried bulk ([`ferry_mux::placement`]).
pub async fn accept_loop(
    listener: TcpListener,
    routes: Arc<Routes>,
    target: SharedTarget,
    stats: Arc<ConnStats>,
    loopback_only: bool,
    guest: watch::Receiver<GuestState>,
) {
    let mut errors = ferry_mux::accept_errors::AcceptErrors::default();
    let history = Arc::new(BulkHistory::default());
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                if loopback_only && !peer.ip().to_canonical().is_loopback() {
                    tracing::warn!("refused {peer}: this port is published on loopback only");
                    reset_tcp(tcp);
                    continue;
                }
                let client = Client {
                    peer,
                    routes: routes.clone(),
                    target: target.clone(),
                    stats: stats.clone(),
                    guest: guest.clone(),
                    history: history.clone(),
                };
                placement::spawn_served(history.expects_bulk(), tcp, |tcp| client.serve(tcp));
            }
            Err(e) => {
                let at = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
                errors.pause_after(&at, &e).await;
            }
        }
    }
}

/// One accepted client and what serving it needs.
struct Client {
    peer: SocketAddr,
    routes: Arc<Routes>,
    target: SharedTarget,
    stats: Arc<ConnStats>,
    guest: watch::Receiver<GuestState>,
    history: Arc<BulkHistory>,
}

impl Client {
    /// Forwards the client's connection `tcp` until it ends.
    async fn serve(mut self, tcp: TcpStream) {
        if !wait_listening(&mut self.guest).await {
            tracing::debug!("reset {}: the guest listener did not come back in time", self.peer);
            reset_tcp(tcp);
            return;
        }
        let guest = *self.target.lock().unwrap();
        let _active = self.stats.open();
        let _ = tcp.set_nodelay(true);
        self.routes.forward(LocalConn::Tcp(tcp), Target::Tcp(guest), &self.stats.traffic, &self.history).await;
    }
}
