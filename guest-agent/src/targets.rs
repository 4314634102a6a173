//! Reaching what the host asks for inside the guest: a TCP address, or a
//! Unix socket the host announced for this session.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use ferry_mux::LocalConn;
use ferry_protocol::Target;
use tokio::net::{TcpStream, UnixStream};

/// How long the agent tries to reach a guest target before refusing.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The guest Unix sockets a session's host may open: those it announced
/// with `GuestSocketsWanted`, and nothing else.
#[derive(Clone, Default)]
pub struct Grants(Arc<Mutex<BTreeSet<String>>>);

impl Grants {
    /// Replaces the granted paths.
    pub fn set(&self, paths: impl IntoIterator<Item = String>) {
        *self.0.lock().unwrap() = paths.into_iter().collect();
    }

    fn allows(&self, path: &str) -> bool {
        self.0.lock().unwrap().contains(path)
    }
}

/// Connects to `target` inside the guest; the error is the refusal reason.
pub async fn connect(target: &Target, grants: &Grants) -> Result<LocalConn, String> {
    match target {
        Target::Tcp(addr) => {
            let tcp = with_timeout(TcpStream::connect(addr), &addr.to_string()).await?;
            let _ = tcp.set_nodelay(true);
            Ok(LocalConn::Tcp(tcp))
        }
        Target::Unix(path) => {
            if !grants.allows(path) {
                return Err(format!("guest socket {path} was not announced by the host"));
            }
            // connect(2) resolves the path itself: on the blocking pool, so
            // that a socket under a mount that stopped answering stalls that
            // thread (until the timeout gives up on it), not the agent's.
            let at = std::path::PathBuf::from(path);
            let connect = async move {
                let made = tokio::task::spawn_blocking(move || ferry_mux::unix_conn::connect_now(&at)).await;
                UnixStream::from_std(made.map_err(std::io::Error::other)??)
            };
            Ok(LocalConn::Unix(with_timeout(connect, path).await?))
        }
        Target::Udp(_) => Err("UDP flows travel over the session".into()),
        Target::Reverse(_) => Err("reverse streams go from the guest to the host".into()),
    }
}

async fn with_timeout<T>(f: impl std::future::Future<Output = std::io::Result<T>>, what: &str) -> Result<T, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, f).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!("connect to {what} in the guest: {e}")),
        Err(_) => Err(format!("connect to {what} in the guest: timed out")),
    }
}
