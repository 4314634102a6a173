//! The control socket: a Unix socket (0600, in a 0700 directory) on which
//! the running forwarder answers each connection with its status as JSON.

use std::{
    fs::DirBuilder,
    io,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
};

use tokio::{io::AsyncWriteExt, net::UnixListener};

use super::StatusBoard;

/// The control socket used when none is named: STATE_DIR/ferry.sock.
pub fn default_path() -> PathBuf {
    ferry_process::secret_file::state_dir().join("ferry.sock")
}

/// Binds the control socket at `path`. A stale socket from a dead
/// forwarder is replaced; a live one is an error (another ferry runs).
pub async fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    if tokio::net::UnixStream::connect(path).await.is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("another ferry is serving {}; give this one its own --control-socket", path.display()),
        ));
    }
    ferry_mux::transport::remove_stale_socket(path)?;
    let listener = ferry_mux::private_socket::bind(path, None)?;
    listener.set_nonblocking(true)?;
    UnixListener::from_std(listener)
}

/// Answers status requests until the task is dropped.
pub async fn serve(listener: UnixListener, board: StatusBoard) {
    let mut errors = ferry_mux::accept_errors::AcceptErrors::default();
    loop {
        let mut conn = match listener.accept().await {
            Ok((conn, _)) => conn,
            Err(e) => {
                errors.pause_after("the control socket", &e).await;
                continue;
            }
        };
        let json = serde_json::to_vec(&board.report()).expect("a report serialises");
        tokio::spawn(async move {
            let _ = conn.write_all(&json).await;
            let _ = conn.shutdown().await;
        });
    }
}
