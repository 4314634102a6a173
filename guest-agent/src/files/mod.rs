//! The files channel on the guest side: host file events replayed as real
//! inotify events through the guest's own view of the shared folder
//! ([`replay`]), and a report of which shared file systems guest processes
//! watch ([`watch_targets`]).

pub mod replay;
pub mod watch_targets;

use std::{sync::mpsc, time::Duration};

use ferry_mux::Session;
use ferry_protocol::{ControlMessage, FileEvent};

/// How often the watch targets are recomputed.
const TARGETS_EVERY: Duration = Duration::from_secs(2);

/// Event batches (each at most 256 KiB on the wire) waiting for the replay
/// thread; a guest whose shared folder stalls the thread drops further
/// batches (counted) rather than holding without bound what the host sends.
pub const REPLAY_QUEUE: usize = 64;

enum Command {
    Roots(Vec<String>),
    Events(Vec<FileEvent>),
}

/// The bounded queue of commands for the replay thread.
struct ReplayQueue {
    tx: mpsc::SyncSender<Command>,
    dropped: u64,
}

impl ReplayQueue {
    /// A queue of [`REPLAY_QUEUE`] commands and the replay thread's end of it.
    fn new() -> (Self, mpsc::Receiver<Command>) {
        let (tx, rx) = mpsc::sync_channel::<Command>(REPLAY_QUEUE);
        (Self { tx, dropped: 0 }, rx)
    }

    /// Queues new roots; never dropped: waits for room off the runtime's
    /// threads when the queue is full.
    fn roots(&self, roots: Vec<String>) {
        if let Err(mpsc::TrySendError::Full(cmd)) = self.tx.try_send(Command::Roots(roots)) {
            let tx = self.tx.clone();
            tokio::task::spawn_blocking(move || tx.send(cmd));
        }
    }

    /// Queues a batch; drops it (and counts it) while [`REPLAY_QUEUE`]
    /// commands already wait. Returns whether it was queued.
    fn events(&mut self, events: Vec<FileEvent>) -> bool {
        match self.tx.try_send(Command::Events(events)) {
            Err(mpsc::TrySendError::Full(_)) => {
                self.dropped += 1;
                if self.dropped.is_power_of_two() {
                    tracing::warn!(
                        "file replay is {REPLAY_QUEUE} batches behind (a stalled shared folder?); {} batches dropped",
                        self.dropped
                    );
                }
                false
            }
            // A replay thread that is gone only happens as the session ends.
            Err(mpsc::TrySendError::Disconnected(_)) => false,
            Ok(()) => true,
        }
    }
}

/// One session's files channel: a replay thread (file system calls on a
/// shared folder may block) and, once the host announces folders, a
/// watch-target reporter. Dropping it stops both.
pub struct Files {
    queue: ReplayQueue,
    session: Session,
    reporter: Option<tokio::task::JoinHandle<()>>,
}

impl Files {
    /// Starts the channel for `session`.
    pub fn start(session: Session) -> Self {
        let (queue, rx) = ReplayQueue::new();
        std::thread::Builder::new()
            .name("file-replay".into())
            .spawn(move || {
                let mut replayer = replay::Replayer::default();
                while let Ok(cmd) = rx.recv() {
                    match cmd {
                        Command::Roots(r) => replayer.set_roots(r),
                        Command::Events(e) => replayer.apply(&e),
                    }
                }
                tracing::debug!("file replays of the session: {:?}", replayer.stats);
            })
            .expect("file-replay thread");
        Self { queue, session, reporter: None }
    }

    /// Sets the guest directories events may name; the first folders start
    /// the watch-target reports (a host without folders gets none, and the
    /// agent scans nothing for it).
    pub fn set_roots(&mut self, roots: Vec<String>) {
        if !roots.is_empty() && self.reporter.is_none() {
            self.reporter = Some(tokio::spawn(report_targets(self.session.clone())));
        }
        self.queue.roots(roots);
    }

    /// Queues a batch for replay; drops it (and counts it) while
    /// [`REPLAY_QUEUE`] batches already wait.
    pub fn replay(&mut self, events: Vec<FileEvent>) {
        self.queue.events(events);
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        if let Some(r) = &self.reporter {
            r.abort();
        }
    }
}

/// Sends the shared mounts and their watch counts whenever they change.
async fn report_targets(session: Session) {
    let mut sent = None;
    loop {
        let Ok(now) = tokio::task::spawn_blocking(watch_targets::shared_mounts).await else { return };
        if sent.as_ref() != Some(&now) {
            if session.send_control(&ControlMessage::WatchTargets(now.clone())).is_err() {
                return;
            }
            sent = Some(now);
        }
        tokio::time::sleep(TARGETS_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stalled_replay_thread_holds_at_most_the_bound() {
        // Nobody reads: the replay thread is stuck on a shared folder.
        let (mut queue, rx) = ReplayQueue::new();
        let queued = (0..REPLAY_QUEUE + 10).filter(|_| queue.events(Vec::new())).count();
        assert_eq!(queued, REPLAY_QUEUE);
        assert_eq!(queue.dropped, 10);
        assert_eq!(rx.try_iter().count(), REPLAY_QUEUE);
        // Once it drains, batches are queued again.
        assert!(queue.events(Vec::new()));
    }
}
