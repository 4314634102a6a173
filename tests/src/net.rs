//! Async client/server helpers shared by the end-to-end tests.

use std::time::Duration;

use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
};

/// How long a helper waits before declaring a hang.
pub const GUARD: Duration = Duration::from_secs(30);

/// Connects to a host port once the forwarder publishes it.
pub async fn connect_forwarded(addr: &str) -> TcpStream {
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        if let Ok(s) = TcpStream::connect(addr).await {
            return s;
        }
        assert!(tokio::time::Instant::now() < deadline, "{addr} never became reachable");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until a host port refuses connections.
pub async fn wait_released(addr: &str) {
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        match TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
            _ => {}
        }
        assert!(tokio::time::Instant::now() < deadline, "{addr} was never released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Echoes every connection until the client half-closes, then half-closes back.
pub fn spawn_echo(l: TcpListener) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    })
}

/// A Unix-socket echo server in Python (`python3 -c UNIX_ECHO_PY PATH`),
/// for guests where a real program, not the test process, must serve.
pub const UNIX_ECHO_PY: &str = r#"
import socket, sys, threading
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1]); s.listen()
def serve(c):
    while True:
        d = c.recv(65536)
        if not d:
            break
        c.sendall(d)
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;
