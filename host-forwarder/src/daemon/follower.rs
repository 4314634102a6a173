//! The daemon's state: the instances it knows, what each is doing, and the
//! transitions between (down, starting, up).

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    process::Command,
    sync::mpsc::Sender,
    time::{Duration, Instant},
};

use notify::{RecursiveMode, Watcher};

use crate::lifecycle::{homes, homes::Home, marker, override_yaml, state};

/// What reaches the daemon's loop.
pub enum Msg {
    /// A file event.
    Fs(notify::Result<notify::Event>),
    /// A start finished: the instance directory and the error, if any.
    Started(PathBuf, Result<(), String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Down,
    Starting,
    Up,
}

struct Inst {
    home: Home,
    name: String,
    log: state::HaLog,
    /// The mtime of ha.pid when last looked at: a new host agent starts a new log.
    ha_pid_mtime: Option<std::time::SystemTime>,
    phase: Phase,
    /// When the daemon first saw it Running this time.
    running_since: Option<Instant>,
    failures: u32,
    retry_at: Option<Instant>,
}

/// Files in an instance directory whose changes never matter here.
const IGNORED: &[&str] = &["ferry.log", "ha.stderr.log", "serial.log", "serialp.log", "serialv.log", "start.json"];

/// The daemon's state.
pub struct Follower {
    watcher: notify::RecommendedWatcher,
    watched: HashSet<PathBuf>,
    insts: HashMap<PathBuf, Inst>,
    dirty: HashSet<PathBuf>,
    tx: Sender<Msg>,
    state_dir: PathBuf,
}

impl Follower {
    /// A follower reporting its starts on `tx`.
    pub fn new(watcher: notify::RecommendedWatcher, tx: Sender<Msg>, state_dir: PathBuf) -> Self {
        Self { watcher, watched: HashSet::new(), insts: HashMap::new(), dirty: HashSet::new(), tx, state_dir }
    }

    /// The homes, for the log.
    pub fn homes_text(&self) -> String {
        homes::homes().iter().map(|h| h.dir.display().to_string()).collect::<Vec<_>>().join(" and ")
    }

    fn watch(&mut self, dir: &Path) {
        if self.watched.contains(dir) || !dir.is_dir() {
            return;
        }
        match self.watcher.watch(dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                self.watched.insert(dir.to_path_buf());
            }
            Err(e) => tracing::warn!("cannot watch {}: {e}", dir.display()),
        }
    }

    /// Looks at every home again: new instances, vanished ones, and every
    /// known instance's files (also the safety net for lost events).
    pub fn rescan(&mut self) {
        self.watched.retain(|d| d.is_dir());
        let state_dir = self.state_dir.clone();
        self.watch(&state_dir);
        let mut seen = HashSet::new();
        for home in homes::homes() {
            self.watch(&home.dir);
            self.watch(&home.dir.join("_config"));
            for (name, dir) in home.instances() {
                self.watch(&dir);
                self.watch(&dir.join("ferry"));
                seen.insert(dir.clone());
                if !self.insts.contains_key(&dir) {
                    tracing::info!("following {name} ({})", dir.display());
                    self.insts.insert(
                        dir.clone(),
                        Inst {
                            home: home.clone(),
                            name,
                            log: state::HaLog::default(),
                            ha_pid_mtime: None,
                            phase: Phase::Down,
                            running_since: None,
                            failures: 0,
                            retry_at: None,
                        },
                    );
                }
                self.dirty.insert(dir);
            }
        }
        self.insts.retain(|dir, i| {
            let keep = seen.contains(dir);
            if !keep {
                tracing::info!("{} is gone", i.name);
            }
            keep
        });
        self.evaluate_dirty();
    }

    /// Takes one message.
    pub fn handle(&mut self, msg: Msg) {
        match msg {
            // Opens and closes (inotify reports them), the daemon's own
            // reads above all: acting on those would feed on itself.
            Msg::Fs(Ok(ev)) if matches!(ev.kind, notify::EventKind::Access(_)) => {}
            Msg::Fs(Ok(ev)) => {
                for p in &ev.paths {
                    self.touch(p);
                }
            }
            Msg::Fs(Err(e)) => {
                tracing::warn!("file events: {e}; looking at everything again");
                self.rescan();
            }
            Msg::Started(dir, result) => {
                tracing::debug!("start of {} finished", dir.display());
                self.started(&dir, result)
            }
        }
    }

    /// Marks what the event at `path` concerns.
    fn touch(&mut self, path: &Path) {
        if path.starts_with(&self.state_dir) {
            if path.file_name().is_some_and(|n| n == "enable-all.json") {
                self.rescan();
            }
            return;
        }
        if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| IGNORED.contains(&n)) {
            return;
        }
        for home in homes::homes() {
            let Ok(rel) = path.strip_prefix(&home.dir) else { continue };
            match rel.components().next().and_then(|c| c.as_os_str().to_str()) {
                // The home itself, or its _config (override.yaml): look at all of it.
                None | Some("_config") => return self.rescan(),
                Some(name) if homes::is_instance_name(name) => {
                    let dir = home.dir.join(name);
                    if self.insts.contains_key(&dir) {
                        if rel.components().count() <= 2 && path.is_dir() {
                            // A new subdirectory (ferry/) to watch.
                            self.watch(path);
                        }
                        self.dirty.insert(dir);
                    } else {
                        self.rescan();
                    }
                }
                Some(_) => {}
            }
            return;
        }
    }

    /// Acts on every instance marked since the last call.
    pub fn evaluate_dirty(&mut self) {
        let dirty: Vec<PathBuf> = self.dirty.drain().collect();
        for dir in dirty {
            self.evaluate(&dir);
        }
    }

    fn evaluate(&mut self, dir: &Path) {
        let tx = self.tx.clone();
        let Some(inst) = self.insts.get_mut(dir) else { return };
        if marker::read(&marker::instance_path(dir)).is_none() {
            if let Some(all) = marker::read(&marker::all_path()) {
                // `enable --all` covers instances created later (idempotent: no change once made).
                match crate::lifecycle::apply_edits(&inst.home, dir, all.network) {
                    Ok(changed) => changed.iter().for_each(|c| tracing::info!("{}: edited {c}", inst.name)),
                    Err(e) => tracing::warn!("{}: {e}", inst.name),
                }
            }
        }
        let ha_pid_mtime = std::fs::metadata(dir.join("ha.pid")).and_then(|m| m.modified()).ok();
        if ha_pid_mtime != inst.ha_pid_mtime && ha_pid_mtime.is_some() {
            // A host agent started: Lima truncates its log, read it afresh.
            inst.log = state::HaLog::default();
        }
        inst.ha_pid_mtime = ha_pid_mtime;
        inst.log.update(&dir.join("ha.stdout.log"));
        let running = state::is_running(dir, &inst.log);
        let enabled = marker::effective(dir).or_else(|| {
            (inst.home.colima && override_yaml::has_block(&inst.home.override_yaml())).then(marker::Enabled::default)
        });
        let state_dir = crate::lima::state_dir(dir);
        if inst.phase == Phase::Starting {
            // The start in flight decides; asking its pid file now would only race with it.
            return;
        }
        let forwarder = crate::pid_file::running(&state_dir.join("ferry.pid"));
        if !running {
            inst.running_since = None;
            inst.failures = 0;
            inst.retry_at = None;
        } else if inst.running_since.is_none() {
            inst.running_since = Some(Instant::now());
            tracing::info!("{} is running", inst.name);
        }
        match (running, &enabled, inst.phase) {
            (true, Some(e), Phase::Down) => {
                if forwarder.is_some() {
                    // Left by an earlier daemon or a `limactl ferry start`.
                    inst.phase = Phase::Up;
                    return;
                }
                if inst.retry_at.is_some_and(|t| Instant::now() < t) {
                    return;
                }
                inst.phase = Phase::Starting;
                spawn_start(inst, dir, e.start_args.clone(), tx);
            }
            (true, Some(_), Phase::Up) if forwarder.is_none() => {
                tracing::warn!("{}: the forwarder is gone; starting it again", inst.name);
                inst.phase = Phase::Down;
                self.dirty.insert(dir.to_path_buf());
            }
            (false, _, Phase::Up) | (_, None, Phase::Up) => {
                let why = if running { "is disabled" } else { "stopped" };
                crate::lima::stop_process(&state_dir);
                tracing::info!("{} {why}: forwarding down", inst.name);
                inst.phase = Phase::Down;
            }
            (false, Some(_), Phase::Down) if forwarder.is_some() => {
                // A forwarder for an instance that is not running (the daemon was not running when it stopped).
                crate::lima::stop_process(&state_dir);
                tracing::info!("{} is not running: forwarding down", inst.name);
            }
            _ => {}
        }
    }

    fn started(&mut self, dir: &Path, result: Result<(), String>) {
        let Some(inst) = self.insts.get_mut(dir) else { return };
        match result {
            Ok(()) => {
                let after = inst.running_since.map(|t| t.elapsed().as_millis()).unwrap_or_default();
                tracing::info!("{}: forwarding up, {after} ms after it was seen Running", inst.name);
                inst.phase = Phase::Up;
                inst.failures = 0;
                inst.retry_at = None;
            }
            Err(e) => {
                inst.failures += 1;
                let wait = Duration::from_secs(2u64.saturating_pow(inst.failures).min(60));
                tracing::warn!("{}: start failed (again in {wait:?}): {e}", inst.name);
                inst.phase = Phase::Down;
                inst.retry_at = Some(Instant::now() + wait);
            }
        }
        // The instance may have stopped meanwhile.
        self.dirty.insert(dir.to_path_buf());
    }
}

/// Runs `limactl ferry start` for `inst` on a thread of its own (it takes
/// seconds when the agent must be installed), in the instance's Lima home.
fn spawn_start(inst: &Inst, dir: &Path, start_args: Vec<String>, tx: Sender<Msg>) {
    let (name, home, dir) = (inst.name.clone(), inst.home.clone(), dir.to_path_buf());
    std::thread::spawn(move || {
        let t0 = Instant::now();
        let result = (|| {
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            let mut cmd = Command::new(exe);
            // `enable` made the edits Lima reads (lima.yaml, or override.yaml for
            // Colima, which writes lima.yaml afresh at every start); a start in
            // flight while `disable` restores them must not write them again.
            cmd.args(["lima", "start", &name, "--keep-lima-yaml"]).args(&start_args).env("LIMA_HOME", &home.dir);
            let out = cmd.output().map_err(|e| e.to_string())?;
            tracing::debug!("{name}: `limactl ferry start` took {} ms", t0.elapsed().as_millis());
            print!("{}", String::from_utf8_lossy(&out.stdout));
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
            }
        })();
        let _ = tx.send(Msg::Started(dir, result));
    });
}
