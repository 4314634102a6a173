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

enum Command {
    Roots(Vec<String>),
    Events(Vec<FileEvent>),
}

/// One session's files channel: a replay thread (file system calls on a
/// shared folder may block) and, once the host announces folders, a
/// watch-target reporter. Dropping it stops both.
pub struct Files {
    tx: mpsc::Sender<Command>,
    session: Session,
    reporter: Option<tokio::task::JoinHandle<()>>,
}

impl Files {
    /// Starts the channel for `session`.
    pub fn start(session: Session) -> Self {
        let (tx, rx) = mpsc::channel::<Command>();
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
        Self { tx, session, reporter: None }
    }

    /// Sets the guest directories events may name; the first folders start
    /// the watch-target reports (a host without folders gets none, and the
    /// agent scans nothing for it).
    pub fn set_roots(&mut self, roots: Vec<String>) {
        if !roots.is_empty() && self.reporter.is_none() {
            self.reporter = Some(tokio::spawn(report_targets(self.session.clone())));
        }
        let _ = self.tx.send(Command::Roots(roots));
    }

    /// Queues a batch for replay.
    pub fn replay(&self, events: Vec<FileEvent>) {
        let _ = self.tx.send(Command::Events(events));
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
