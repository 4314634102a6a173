//! Whether an instance runs, from what Lima's host agent leaves in the
//! instance directory: `ha.pid` (written when the host agent starts,
//! removed when it exits) and its status events, one JSON object per line
//! in `ha.stdout.log` (`{"time":..,"status":{"running":true,"exiting":false,..}}`).
//! Running means a live host agent whose last event says running and not
//! exiting (booting instances say `running: false` until ssh and the
//! essential requirements are up). No `limactl` is run.

use std::{
    io::{Read, Seek, SeekFrom},
    os::unix::fs::MetadataExt,
    path::Path,
};

use serde::Deserialize;

/// The part of a host agent status event ferry reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Status {
    /// The instance is up (ssh and essential requirements satisfied).
    #[serde(default)]
    pub running: bool,
    /// The host agent is shutting down.
    #[serde(default)]
    pub exiting: bool,
    /// Some optional requirement failed.
    #[serde(default)]
    pub degraded: bool,
    /// What went wrong, if anything.
    #[serde(default)]
    pub errors: Vec<String>,
}

#[derive(Deserialize)]
struct Event {
    status: Option<Status>,
}

/// The most a first read takes from the end of a log.
const FIRST_READ: u64 = 1 << 20;

/// Follows one `ha.stdout.log`: reads what was appended since the last
/// call (from the start again when the file was replaced or truncated).
#[derive(Debug, Default)]
pub struct HaLog {
    offset: u64,
    inode: u64,
    /// The last status event read.
    pub last: Option<Status>,
}

impl HaLog {
    /// Reads new events from `path`; true if the last status changed.
    pub fn update(&mut self, path: &Path) -> bool {
        let before = self.last.clone();
        let Ok(mut file) = std::fs::File::open(path) else {
            *self = Self::default();
            return before.is_some();
        };
        let Ok(meta) = file.metadata() else { return false };
        if meta.ino() != self.inode || meta.len() < self.offset {
            // A new log (the host agent restarted): only what it says counts.
            *self = Self { inode: meta.ino(), offset: meta.len().saturating_sub(FIRST_READ), last: None };
        }
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return false;
        }
        let mut buf = Vec::new();
        if file.take(FIRST_READ * 4).read_to_end(&mut buf).is_err() {
            return false;
        }
        // Only whole lines; a partial last line is read again next time.
        let Some(end) = buf.iter().rposition(|&b| b == b'\n') else { return false };
        self.offset += end as u64 + 1;
        for line in buf[..end].split(|&b| b == b'\n') {
            if let Ok(Event { status: Some(s) }) = serde_json::from_slice::<Event>(line) {
                self.last = Some(s);
            }
        }
        self.last != before
    }
}

/// Whether the pid in `<dir>/ha.pid` is a live process.
pub fn host_agent_alive(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join("ha.pid")) else { return false };
    let Ok(pid) = text.trim().parse::<libc::pid_t>() else { return false };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 sends nothing; it only asks whether the pid exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Whether the instance at `dir` runs, given its followed log.
pub fn is_running(dir: &Path, log: &HaLog) -> bool {
    match &log.last {
        Some(s) => s.running && !s.exiting && host_agent_alive(dir),
        // A log without a status event yet: the host agent is still booting
        // the instance. No log at all (a Lima that writes none): ha.pid decides.
        None => !dir.join("ha.stdout.log").exists() && host_agent_alive(dir),
    }
}

/// Whether the instance at `dir` runs, read once.
pub fn running_now(dir: &Path) -> bool {
    let mut log = HaLog::default();
    log.update(&dir.join("ha.stdout.log"));
    is_running(dir, &log)
}

/// The daemon's pid file (held locked while it runs): `<state dir>/daemon.pid`.
pub fn daemon_pid_file() -> std::path::PathBuf {
    ferry_process::secret_file::state_dir().join("daemon.pid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_status_event_decides_and_partial_lines_wait() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ha.stdout.log");
        let mut log = HaLog::default();
        assert!(!log.update(&path));
        std::fs::write(&path, "{\"time\":\"t\",\"status\":{\"running\":false}}\nnot json\n{\"status\":{\"running\":tr")
            .unwrap();
        assert!(log.update(&path));
        assert_eq!(log.last.as_ref().map(|s| s.running), Some(false));
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        std::io::Write::write_all(&mut f, b"ue,\"sshLocalPort\":60022}}\n").unwrap();
        assert!(log.update(&path));
        assert!(log.last.as_ref().unwrap().running);
        std::io::Write::write_all(&mut f, b"{\"status\":{\"running\":true,\"exiting\":true}}\n").unwrap();
        assert!(log.update(&path));
        assert!(log.last.as_ref().unwrap().exiting);
        // A new host agent writes a new log.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "{\"status\":{\"running\":true}}\n").unwrap();
        log.update(&path);
        assert_eq!(log.last, Some(Status { running: true, ..Status::default() }));
    }

    #[test]
    fn a_live_host_agent_pid_is_required() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!running_now(dir.path()));
        std::fs::write(dir.path().join("ha.pid"), format!("{}\n", std::process::id())).unwrap();
        assert!(running_now(dir.path()), "a Lima that writes no log: ha.pid decides");
        std::fs::write(dir.path().join("ha.stdout.log"), "").unwrap();
        assert!(!running_now(dir.path()), "a new log without an event yet: booting");
        std::fs::write(dir.path().join("ha.stdout.log"), "{\"status\":{\"running\":false}}\n").unwrap();
        assert!(!running_now(dir.path()), "still booting");
        std::fs::write(dir.path().join("ha.pid"), "999999999\n").unwrap();
        assert!(!host_agent_alive(dir.path()));
    }
}
