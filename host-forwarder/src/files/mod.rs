//! The files channel on the host side: watch the shared folders, coalesce
//! events per path over a short window, and send them to the agent, which
//! replays them as real inotify events in the guest.

pub mod coalesce;
pub mod echo_filter;
pub mod watcher;

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use ferry_mux::Session;
use ferry_protocol::{ControlMessage, FileEvent, FileEventKind, SharedMount};
use tokio::sync::mpsc;

use crate::status::{
    board::{Row, Section},
    ConnStats, StatusBoard,
};
pub use coalesce::Mount;

/// How long events are gathered before a batch goes out.
pub const COALESCE_WINDOW: Duration = Duration::from_millis(20);

/// The most watcher events taken in by one trip to the blocking pool.
const INTAKE_BATCH: usize = 256;

/// Largest batch message, in bytes of paths (well under a frame).
const BATCH_BYTES: usize = 256 * 1024;

/// What the files channel watches.
#[derive(Debug, Clone, Default)]
pub struct FileOptions {
    /// The shared folders.
    pub mounts: Vec<Mount>,
    /// Directory names not watched deeply.
    pub excludes: Vec<String>,
}

/// One session's file forwarding; dropping it stops the watcher.
pub struct FileForwarder {
    task: Option<tokio::task::JoinHandle<()>>,
    shown: Arc<Shown>,
}

/// What the status board shows of the files channel.
struct Shown {
    mounts: Vec<Mount>,
    sent: Arc<ConnStats>,
    board: StatusBoard,
    /// Host directories watched; `None` while the walk runs.
    watched_dirs: std::sync::Mutex<Option<Result<usize, ()>>>,
    /// The agent's last report on the guest's shared mounts.
    targets: std::sync::Mutex<Vec<SharedMount>>,
}

impl FileForwarder {
    /// Starts watching (nothing happens without mounts). The host folders
    /// are walked on a blocking thread, so a large tree (Lima shares `~`)
    /// does not hold up the session.
    pub fn start(session: Session, opts: &FileOptions, board: StatusBoard) -> Self {
        let sent = Arc::new(ConnStats::default());
        let shown = Arc::new(Shown {
            mounts: opts.mounts.clone(),
            sent: sent.clone(),
            board,
            watched_dirs: Default::default(),
            targets: Default::default(),
        });
        if opts.mounts.is_empty() {
            return Self { task: None, shown };
        }
        let roots = opts.mounts.iter().map(|m| m.guest.clone()).collect();
        let _ = session.send_control(&ControlMessage::FileRoots(roots));
        shown.publish();
        let (mounts, excludes, shown2) = (opts.mounts.clone(), opts.excludes.clone(), shown.clone());
        let task = tokio::spawn(async move {
            let (tx, rx) = mpsc::channel::<notify::Result<notify::Event>>(8192);
            let overflow = Arc::new(AtomicBool::new(false));
            let flag = overflow.clone();
            let handler = move |ev: notify::Result<notify::Event>| {
                if tx.try_send(ev).is_err() {
                    flag.store(true, Ordering::Relaxed);
                }
            };
            let (m, x) = (mounts.clone(), excludes.clone());
            let made = tokio::task::spawn_blocking(move || watch_all(handler, &m, &x)).await;
            let Ok(Some((w, dirs))) = made else {
                *shown2.watched_dirs.lock().unwrap() = Some(Err(()));
                shown2.publish();
                return;
            };
            *shown2.watched_dirs.lock().unwrap() = Some(Ok(dirs));
            shown2.publish();
            run(session, w, rx, overflow, mounts, excludes, sent).await;
        });
        Self { task: Some(task), shown }
    }

    /// Records the agent's report on the guest's shared mounts.
    pub fn set_targets(&self, targets: &[SharedMount]) {
        for t in targets {
            tracing::info!("guest shared mount {} ({}): {} inotify watches", t.mount_point, t.fs_type, t.watches);
        }
        *self.shown.targets.lock().unwrap() = targets.to_vec();
        self.shown.publish();
    }
}

/// Makes the watcher and adds every folder's directories; `None` if no
/// watcher can be made.
fn watch_all(
    handler: impl notify::EventHandler,
    mounts: &[Mount],
    excludes: &[String],
) -> Option<(notify::RecommendedWatcher, usize)> {
    let mut w = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!("cannot watch host files: {e}");
            return None;
        }
    };
    let mut dirs = 0;
    for m in mounts {
        match watcher::watch_tree(&mut w, &m.host, excludes) {
            Ok(n) => {
                tracing::info!("watching {} -> guest {} ({n} directories)", m.host.display(), m.guest);
                dirs += n;
            }
            Err(e) => tracing::warn!("cannot watch {}: {e}", m.host.display()),
        }
    }
    Some((w, dirs))
}

impl Shown {
    fn publish(&self) {
        let watched = *self.watched_dirs.lock().unwrap();
        let targets = self.targets.lock().unwrap().clone();
        let rows = self
            .mounts
            .iter()
            .map(|m| {
                let guest =
                    targets.iter().filter(|t| m.guest.starts_with(&t.mount_point)).max_by_key(|t| t.mount_point.len());
                let host_side = match watched {
                    None => "walking the host folder".to_string(),
                    Some(Ok(n)) => format!("{n} host directories"),
                    Some(Err(())) => "cannot watch host files".to_string(),
                };
                let reason = match guest {
                    Some(t) => format!("{host_side}; guest {} mount, {} inotify watches", t.fs_type, t.watches),
                    None => host_side,
                };
                Row {
                    proto: "files",
                    guest: m.guest.clone(),
                    host: m.host.display().to_string(),
                    state: if watched == Some(Err(())) { "failed" } else { "watching" },
                    reason: Some(reason),
                    stats: Some(self.sent.clone()),
                }
            })
            .collect();
        self.board.set_rows(Section::Files, rows);
    }
}

impl Drop for FileForwarder {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Gathers events, closes a batch [`COALESCE_WINDOW`] after its first event
/// and sends it; keeps the watcher alive meanwhile.
///
/// Each event is taken in on the blocking pool ([`Intake::take`]): it looks
/// at the host's files, and a folder may hold a mount that stops answering
/// (a hung network or FUSE file system), which must not hold up the
/// process's thread and every connection with it.
async fn run(
    session: Session,
    w: notify::RecommendedWatcher,
    mut rx: mpsc::Receiver<notify::Result<notify::Event>>,
    overflow: Arc<AtomicBool>,
    mounts: Vec<Mount>,
    excludes: Vec<String>,
    sent: Arc<ConnStats>,
) {
    let co = coalesce::Coalescer::new(mounts.clone());
    let mut intake = Intake { w, co, echoes: echo_filter::EchoFilter::default(), mounts, excludes };
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let flush = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else { return };
                // With what else is there: a storm crosses in a few hops.
                let mut evs = vec![ev];
                while evs.len() < INTAKE_BATCH {
                    let Ok(ev) = rx.try_recv() else { break };
                    evs.push(ev);
                }
                let taken = tokio::task::spawn_blocking(move || {
                    let first = evs.into_iter().fold(false, |first, ev| intake.take(ev) | first);
                    (intake, first)
                });
                let Ok((back, mut first)) = taken.await else { return };
                intake = back;
                if overflow.swap(false, Ordering::Relaxed) {
                    first |= intake.co.rescan_all();
                }
                if first && deadline.is_none() {
                    deadline = Some(tokio::time::Instant::now() + COALESCE_WINDOW);
                }
            }
            _ = flush => {
                deadline = None;
                let batch = intake.co.take();
                let n = batch.len() as u64;
                for chunk in chunks(batch) {
                    if session.send_control(&ControlMessage::FileEvents(chunk)).is_err() {
                        return;
                    }
                }
                sent.total.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

/// The watcher and what the event loop knows between events.
struct Intake {
    w: notify::RecommendedWatcher,
    co: coalesce::Coalescer,
    echoes: echo_filter::EchoFilter,
    mounts: Vec<Mount>,
    excludes: Vec<String>,
}

impl Intake {
    /// Takes one event in: its paths into the batch (new directories are
    /// watched too). Returns whether it started a batch. Looks at the
    /// host's files, so it may block.
    fn take(&mut self, ev: notify::Result<notify::Event>) -> bool {
        let mut first = false;
        match ev {
            Ok(ev) => {
                if ev.need_rescan() {
                    first |= self.co.rescan_all();
                }
                for (path, kind) in watcher::translate(&ev) {
                    let Some(m) = self.mounts.iter().find(|m| path.starts_with(&m.host)) else { continue };
                    if watcher::excluded(&path, &m.host, &self.excludes) || !self.echoes.admit(&path, kind) {
                        continue;
                    }
                    if kind == FileEventKind::Created && path.is_dir() {
                        let mut n = 0;
                        let _ = watcher::watch_dirs(&mut self.w, &m.host, &path, &self.excludes, &mut n);
                    }
                    first |= self.co.add(&path, kind);
                }
            }
            Err(e) => {
                tracing::warn!("file watcher: {e}; asking the guest to rescan");
                first |= self.co.rescan_all();
            }
        }
        first
    }
}

/// Splits a batch into messages of bounded size.
fn chunks(batch: Vec<FileEvent>) -> Vec<Vec<FileEvent>> {
    let mut out = vec![Vec::new()];
    let mut bytes = 0;
    for ev in batch {
        if bytes + ev.path.len() > BATCH_BYTES && !out.last().unwrap().is_empty() {
            out.push(Vec::new());
            bytes = 0;
        }
        bytes += ev.path.len();
        out.last_mut().unwrap().push(ev);
    }
    out
}

/// Parses `HOST=GUEST` or a bare directory shared at the same path.
pub fn parse_watch(s: &str) -> Result<Mount, String> {
    let (host, guest) = s.split_once('=').unwrap_or((s, s));
    if !host.starts_with('/') || !guest.starts_with('/') {
        return Err(format!("{s:?}: both sides must be absolute paths"));
    }
    let guest = if guest == "/" { guest } else { guest.trim_end_matches('/') };
    Ok(Mount { host: PathBuf::from(host), guest: guest.to_string() })
}
