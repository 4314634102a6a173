//! One host listener: accepts clients and forwards each over its own stream.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use ferry_mux::{
    pump::{pump, reset_tcp, PumpEnd},
    OpenError, Session,
};
use ferry_protocol::Target;
use tokio::net::{TcpListener, TcpStream};

/// The guest address a host listener forwards to; shared so that it can be
/// retargeted without closing the listener.
pub type SharedTarget = Arc<Mutex<SocketAddr>>;

/// Accepts on `listener` forever, forwarding each client to the current target.
pub async fn accept_loop(listener: TcpListener, session: Session, target: SharedTarget) {
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                let guest = *target.lock().unwrap();
                tokio::spawn(forward(tcp, session.clone(), guest));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("accept on {:?} failed: {e}", listener.local_addr());
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Forwards one client connection to `guest` through the session.
async fn forward(mut tcp: TcpStream, session: Session, guest: SocketAddr) {
    let _ = tcp.set_nodelay(true);
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
    if let PumpEnd::Reset(reason) = pump(r, w, stream).await {
        tracing::debug!("connection to guest {guest} reset: {reason}");
        reset_tcp(tcp);
    }
}
