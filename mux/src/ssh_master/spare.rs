//! A control connection to the master kept ready, its hello exchanged, so
//! that the next client's forward costs the master one request instead of
//! an accept, a hello and the request on the client's path.
//!
//! One at most, readied in the background after a forward opened, dropped
//! when it has waited [`IDLE`] for a client or the master closed it. An
//! OpenSSH master keeps a control connection for as long as it is open and
//! says nothing on it unasked, so a ready one that has anything to read
//! (its close included) is stale.

use std::{
    io,
    os::fd::AsRawFd,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::{io::AsyncWriteExt, net::UnixStream};

use super::{messages, messages::Reply, next_reply};

/// How long a ready control connection waits for a client before it is
/// closed (a master whose `ControlPersist` has a time limit outlives its
/// last client by at most this much more).
pub const IDLE: Duration = Duration::from_secs(10);

/// The ready control connection of one master, if any.
#[derive(Debug)]
pub(super) struct Spare {
    control: PathBuf,
    /// How long a ready connection waits for a client ([`IDLE`]).
    idle: Duration,
    ready: Mutex<Option<Ready>>,
    readying: AtomicBool,
    generation: AtomicU64,
}

#[derive(Debug)]
struct Ready {
    conn: UnixStream,
    generation: u64,
}

impl Spare {
    /// None ready yet, for the master at `control`.
    pub(super) fn new(control: PathBuf) -> Arc<Self> {
        Self::waiting_at_most(control, IDLE)
    }

    /// [`Spare::new`], closing a ready connection after `idle`.
    fn waiting_at_most(control: PathBuf, idle: Duration) -> Arc<Self> {
        let (ready, readying) = (Mutex::new(None), AtomicBool::new(false));
        Arc::new(Self { control, idle, ready, readying, generation: 0.into() })
    }

    /// The ready control connection, if there is one and it is still open
    /// and silent.
    pub(super) fn take(&self) -> Option<UnixStream> {
        let ready = self.ready.lock().unwrap().take()?;
        still_open_and_silent(&ready.conn).then_some(ready.conn)
    }

    /// Readies the next control connection in the background (giving the
    /// master `limit` to greet it), unless one is ready or on its way.
    pub(super) fn replenish(self: &Arc<Self>, limit: Duration) {
        if self.ready.lock().unwrap().is_some() || self.readying.swap(true, Ordering::AcqRel) {
            return;
        }
        let spare = self.clone();
        tokio::spawn(async move {
            let greeted = tokio::time::timeout(limit, greet(&spare.control)).await;
            let Ok(Ok(conn)) = greeted else {
                spare.readying.store(false, Ordering::Release);
                return;
            };
            let generation = spare.generation.fetch_add(1, Ordering::Relaxed) + 1;
            *spare.ready.lock().unwrap() = Some(Ready { conn, generation });
            spare.readying.store(false, Ordering::Release);
            tokio::time::sleep(spare.idle).await;
            let mut ready = spare.ready.lock().unwrap();
            if ready.as_ref().is_some_and(|r| r.generation == generation) {
                *ready = None;
            }
        });
    }
}

/// A new control connection on which both hellos have been exchanged.
async fn greet(control: &PathBuf) -> io::Result<UnixStream> {
    let mut conn = UnixStream::connect(control).await?;
    conn.write_all(&messages::hello()).await?;
    let mut buf = Vec::new();
    match next_reply(&mut conn, &mut buf).await {
        Ok(Reply::Hello { version }) if version == messages::PROTOCOL_VERSION && buf.is_empty() => Ok(conn),
        _ => Err(io::Error::other("the ControlMaster did not greet as version 4")),
    }
}

/// Whether `conn` has nothing to read and is not closed: asked of the
/// kernel (a peek), not of the reactor's last word.
fn still_open_and_silent(conn: &UnixStream) -> bool {
    let mut byte = 0u8;
    // SAFETY: recv(2) peeks at most one byte into `byte`, which lives across
    // the call, from a descriptor `conn` owns.
    let n = unsafe {
        libc::recv(conn.as_raw_fd(), std::ptr::addr_of_mut!(byte).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT)
    };
    n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::{io::AsyncReadExt, net::UnixListener};

    /// A stand-in master: greets every control connection with its hello
    /// and hands the server ends over.
    fn fake_master(dir: &std::path::Path) -> (PathBuf, tokio::sync::mpsc::UnboundedReceiver<UnixStream>) {
        let control = dir.join("ssh.sock");
        let listener = UnixListener::bind(&control).unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = listener.accept().await {
                let mut hello = vec![0u8; messages::hello().len()];
                c.read_exact(&mut hello).await.unwrap();
                assert_eq!(hello, messages::hello());
                c.write_all(&messages::hello()).await.unwrap();
                let _ = tx.send(c);
            }
        });
        (control, rx)
    }

    async fn wait_ready(spare: &Spare) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while spare.ready.lock().unwrap().is_none() {
            assert!(tokio::time::Instant::now() < deadline, "no control connection was readied");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn one_greeted_connection_is_readied_and_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        let (control, mut served) = fake_master(dir.path());
        let spare = Spare::new(control);
        assert!(spare.take().is_none(), "nothing ready before a replenish");
        spare.replenish(Duration::from_secs(5));
        spare.replenish(Duration::from_secs(5));
        wait_ready(&spare).await;
        let mut master_end = served.recv().await.unwrap();
        let mut taken = spare.take().expect("the ready connection");
        assert!(spare.take().is_none(), "taken once");
        assert!(served.try_recv().is_err(), "two replenishes readied one connection");
        // It is the greeted connection: what is written next is what the
        // master reads next.
        taken.write_all(b"request").await.unwrap();
        let mut got = [0u8; 7];
        master_end.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"request");
    }

    #[tokio::test]
    async fn a_ready_connection_the_master_closed_or_spoke_on_is_not_taken() {
        let dir = tempfile::tempdir().unwrap();
        let (control, mut served) = fake_master(dir.path());
        let spare = Spare::new(control);
        spare.replenish(Duration::from_secs(5));
        wait_ready(&spare).await;
        drop(served.recv().await.unwrap());
        assert!(spare.take().is_none(), "the master closed it");
        spare.replenish(Duration::from_secs(5));
        wait_ready(&spare).await;
        let mut master_end = served.recv().await.unwrap();
        master_end.write_all(&[0u8; 4]).await.unwrap();
        assert!(spare.take().is_none(), "the master said something unasked");
    }

    #[tokio::test]
    async fn a_ready_connection_no_client_takes_is_closed_after_a_while() {
        let dir = tempfile::tempdir().unwrap();
        let (control, mut served) = fake_master(dir.path());
        let idle = Duration::from_millis(300);
        let spare = Spare::waiting_at_most(control, idle);
        spare.replenish(Duration::from_secs(5));
        let mut master_end = served.recv().await.unwrap();
        wait_ready(&spare).await;
        tokio::time::sleep(idle + Duration::from_millis(200)).await;
        assert!(spare.ready.lock().unwrap().is_none(), "still held after {idle:?}");
        let mut rest = [0u8; 1];
        assert_eq!(master_end.read(&mut rest).await.unwrap(), 0, "the master sees it closed");
    }

    #[tokio::test]
    async fn no_connection_is_readied_when_no_master_answers() {
        let dir = tempfile::tempdir().unwrap();
        let spare = Spare::new(dir.path().join("nobody.sock"));
        spare.replenish(Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(spare.take().is_none());
        assert!(!spare.readying.load(Ordering::Acquire), "a failed readying can be tried again");
    }
}
