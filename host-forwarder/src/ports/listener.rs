//! One host listener: accepts clients and forwards each one, over a
//! dedicated data connection where there is one, else as a stream of the session.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use ferry_mux::{
    pump::{pump, reset_tcp, PumpEnd},
    OpenError, Session, Traffic,
};
use ferry_protocol::Target;
use tokio::net::{TcpListener, TcpStream};

use super::dedicated::DataPath;
use crate::status::ConnStats;

/// The guest address a host listener forwards to; shared so that it can be
/// retargeted without closing the listener.
pub type SharedTarget = Arc<Mutex<SocketAddr>>;

/// The ways a host listener can reach the guest.
pub struct Routes {
    /// The session: streams as frames (always available).
    pub session: Session,
    /// Dedicated data connections, when the transport allows them.
    pub data: Option<Arc<DataPath>>,
}

/// Accepts on `listener` forever, forwarding each client to the current
/// target and counting it in `stats`. With `loopback_only`, peers that are
/// not on this machine are refused (a wildcard listener standing in for a
/// loopback one).
pub async fn accept_loop(
    listener: TcpListener,
    routes: Arc<Routes>,
    target: SharedTarget,
    stats: Arc<ConnStats>,
    loopback_only: bool,
) {
    let mut errors = ErrorLog::default();
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                if loopback_only && !peer.ip().to_canonical().is_loopback() {
                    tracing::warn!("refused {peer}: this port is published on loopback only");
                    reset_tcp(tcp);
                    continue;
                }
                let guest = *target.lock().unwrap();
                let routes = routes.clone();
                let stats = stats.clone();
                tokio::spawn(async move {
                    let _active = stats.open();
                    let _ = tcp.set_nodelay(true);
                    let tcp = match &routes.data {
                        Some(data) => match data.forward(tcp, guest, &stats.traffic).await {
                            Ok(()) => return,
                            Err(tcp) => tcp,
                        },
                        None => tcp,
                    };
                    forward(tcp, routes.session.clone(), guest, &stats.traffic).await;
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning, and say so
                // without flooding the log.
                let at = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
                errors.report(&format!("accept on {at} failed: {e}"));
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Logs a repeating error at most every few seconds, with the count of repeats.
#[derive(Default)]
struct ErrorLog {
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl ErrorLog {
    fn report(&mut self, msg: &str) {
        let due = self.last.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(5));
        if due {
            if self.suppressed > 0 {
                tracing::warn!("{msg} (and {} more times since the last report)", self.suppressed);
            } else {
                tracing::warn!("{msg}");
            }
            self.last = Some(std::time::Instant::now());
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
    }
}

/// Forwards one client connection to `guest` as a stream of the session.
async fn forward(mut tcp: TcpStream, session: Session, guest: SocketAddr, traffic: &Traffic) {
    let stream = match session.open(&Target::Tcp(guest)).await {
        Ok(s) => s,
        Err(e) => {
            match &e {
                OpenError::Refused(r) => tracing::debug!("guest refused {guest}: {r}"),
                other => tracing::debug!("cannot forward to {guest}: {other}"),
            }
            // The client sees a reset, as it would from a closed port.
            reset_tcp(tcp);
            return;
        }
    };
    let (r, w) = tcp.split();
    if let PumpEnd::Reset(reason) = pump(r, w, stream, traffic).await {
        tracing::debug!("connection to guest {guest} reset: {reason}");
        reset_tcp(tcp);
    }
}
