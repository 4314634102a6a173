//! The sockets channel on the guest side: which of the Unix sockets the
//! host wants (docker.sock, containerd.sock ...) exist right now.
//!
//! A daemon that restarts removes and re-creates its socket; the host
//! publishes its side only while the guest side exists, so a host client
//! gets an immediate error rather than a hang while the daemon is away.

use std::{os::unix::fs::FileTypeExt, time::Duration};

use ferry_mux::Session;
use ferry_protocol::ControlMessage;
use tokio::sync::watch;

/// How often the wanted paths are checked.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// Reports the present subset of the wanted paths whenever it changes,
/// until the session ends.
pub async fn report_presence(session: Session, mut wanted: watch::Receiver<Vec<String>>) {
    let mut sent: Option<Vec<String>> = None;
    let mut tick = tokio::time::interval(CHECK_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            r = wanted.changed() => if r.is_err() { return },
        }
        let paths = wanted.borrow_and_update().clone();
        if paths.is_empty() && sent.is_none() {
            continue;
        }
        // Off the agent's thread: a path under a mount that stops
        // answering (FUSE, NFS) would hold it in lstat(2), and with it
        // every connection. One check at a time: a hung one stalls only
        // these reports.
        let check = tokio::task::spawn_blocking(move || paths.into_iter().filter(|p| is_socket(p)).collect());
        let Ok(present): Result<Vec<String>, _> = check.await else { return };
        if sent.as_ref() != Some(&present) {
            if session.send_control(&ControlMessage::GuestSocketsPresent(present.clone())).is_err() {
                return;
            }
            sent = Some(present);
        }
    }
}

/// Whether `path` is a Unix socket (not following a final symlink).
fn is_socket(path: &str) -> bool {
    std::fs::symlink_metadata(path).map(|m| m.file_type().is_socket()).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_socket_files_count() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        assert!(is_socket(sock.to_str().unwrap()));
        assert!(!is_socket(file.to_str().unwrap()));
        assert!(!is_socket(dir.path().join("missing").to_str().unwrap()));
    }
}
