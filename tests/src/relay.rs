//! A TCP relay between `ferry` and the agent that records what the host
//! sends on every connection, and can flip one byte on the way: what an
//! attacker on the VM's network sees and can do.

use std::sync::{
    atomic::{AtomicBool, AtomicUsize, Ordering},
    Arc, Mutex,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// What the host sent on one connection.
type Recording = Arc<Mutex<Vec<u8>>>;

/// The relay; its task ends with the test's runtime.
#[derive(Clone)]
pub struct Relay {
    /// Where `ferry` should dial (`127.0.0.1:PORT`).
    pub addr: String,
    /// Host -> agent bytes of each connection, in accept order.
    recorded: Arc<Mutex<Vec<Recording>>>,
    /// When set, the next host -> agent chunk of a connection already past
    /// its first 256 bytes gets one byte flipped; then it clears.
    flip_next: Arc<AtomicBool>,
    /// Bytes flipped so far.
    pub flipped: Arc<AtomicUsize>,
    /// While set, new data connections (`FERRYD…`) are recorded but held
    /// back from the agent: an attacker on the path delaying them.
    hold_data: Arc<AtomicBool>,
    /// While set, data connections already past their proof hold back
    /// what follows it (the request of a connection kept warm).
    hold_requests: Arc<AtomicBool>,
}

impl Relay {
    /// Starts relaying connections on a loopback port to `target`.
    pub async fn start(target: String) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let relay = Self {
            addr: l.local_addr().unwrap().to_string(),
            recorded: Default::default(),
            flip_next: Default::default(),
            flipped: Default::default(),
            hold_data: Default::default(),
            hold_requests: Default::default(),
        };
        let r = relay.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = l.accept().await {
                let Ok(server) = TcpStream::connect(&target).await else { continue };
                let log = Arc::new(Mutex::new(Vec::new()));
                r.recorded.lock().unwrap().push(log.clone());
                let hold = Hold { data: r.hold_data.clone(), requests: r.hold_requests.clone() };
                tokio::spawn(pipe(client, server, log, r.flip_next.clone(), r.flipped.clone(), hold));
            }
        });
        relay
    }

    /// What the host sent on each connection so far.
    pub fn recorded(&self) -> Vec<Vec<u8>> {
        self.recorded.lock().unwrap().iter().map(|c| c.lock().unwrap().clone()).collect()
    }

    /// Flips one byte of the next host -> agent chunk past the handshake.
    pub fn flip_next_byte(&self) {
        self.flip_next.store(true, Ordering::SeqCst);
    }

    /// Holds back (`true`) or releases new data connections' bytes.
    pub fn hold_data_conns(&self, hold: bool) {
        self.hold_data.store(hold, Ordering::SeqCst);
    }

    /// Holds back (`true`) or releases what follows the proof of data
    /// connections.
    pub fn hold_requests(&self, hold: bool) {
        self.hold_requests.store(hold, Ordering::SeqCst);
    }
}

/// What the relay holds back from the agent.
struct Hold {
    data: Arc<AtomicBool>,
    requests: Arc<AtomicBool>,
}

async fn wait_while(flag: &AtomicBool) {
    while flag.load(Ordering::SeqCst) {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

async fn pipe(
    client: TcpStream,
    server: TcpStream,
    log: Recording,
    flip: Arc<AtomicBool>,
    flipped: Arc<AtomicUsize>,
    hold: Hold,
) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        let mut is_data = false;
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            log.lock().unwrap().extend_from_slice(&buf[..n]);
            if total == 0 {
                is_data = buf[..n].starts_with(b"FERRYD");
                if is_data {
                    wait_while(&hold.data).await;
                }
            } else if is_data && total >= ferry_protocol::data_conn::PROOF_LEN {
                wait_while(&hold.requests).await;
            }
            if total >= 256 && flip.swap(false, Ordering::SeqCst) {
                buf[n / 2] ^= 0x01;
                flipped.fetch_add(1, Ordering::SeqCst);
            }
            total += n;
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = sw.shutdown().await;
    };
    let down = async move {
        let _ = tokio::io::copy(&mut sr, &mut cw).await;
        let _ = cw.shutdown().await;
    };
    tokio::join!(up, down);
}
