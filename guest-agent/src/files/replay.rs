//! Replaying host file events so that guest watchers wake up.
//!
//! A shared folder (virtiofs, 9p, FUSE such as sshfs or bindfs, NFS) shows
//! the host's changes to guest readers but raises no inotify event in the
//! guest. User space cannot inject inotify events; only real operations
//! through the guest's mount produce them. The agent performs operations
//! that produce events and never change a byte of content or size:
//!
//! | host event | guest operation | inotify events the guest's watchers get |
//! |---|---|---|
//! | created, modified (file) | `open(O_WRONLY)`, `fchmod` to the mode it already has, `close` | `IN_OPEN`, `IN_ATTRIB`, `IN_CLOSE_WRITE` on the file (named in its directory's watch) |
//! | created, modified (directory) | `chmod` to the mode it already has | `IN_ATTRIB \| IN_ISDIR`, named in the parent's watch |
//! | removed (or renamed away) | `chmod` of the parent directory to its own mode | `IN_ATTRIB \| IN_ISDIR` on the parent (and named in the grandparent's watch) |
//! | rescan (the host's watcher overflowed) | `chmod` of that directory to its own mode | as above |
//!
//! On a read-only mount the file is opened read-only instead (`IN_OPEN`,
//! `IN_CLOSE_NOWRITE`). Symlinks are never followed and only regular files
//! and directories are touched. Content can never change: nothing is written,
//! truncated or allocated, the open has no `O_TRUNC`, and a mode is only
//! ever set to the value it has. `IN_MODIFY` is deliberately not produced:
//! the only operations that raise it write, truncate or allocate, and through
//! a caching shared file system (FUSE attribute caches, 9p, NFS) the guest's
//! idea of the size can be stale, so a "truncate to the current size" could
//! cut off what the host just appended. The operations above come back to
//! the host only as open, close and attribute events, which the host does
//! not forward, so a replay can never loop.

use std::{
    io,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Component, Path, PathBuf},
};

use ferry_protocol::{FileEvent, FileEventKind};

/// Counters of one replayer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplayStats {
    /// Events turned into guest operations.
    pub replayed: u64,
    /// Events for paths outside the roots, or not absolute and clean.
    pub rejected: u64,
    /// Events whose path was gone by the time of the replay (not an error).
    pub missing: u64,
}

/// Replays events under a set of allowed guest roots.
#[derive(Debug, Default)]
pub struct Replayer {
    roots: Vec<PathBuf>,
    /// What happened so far.
    pub stats: ReplayStats,
}

impl Replayer {
    /// Sets the guest directories events may name.
    pub fn set_roots(&mut self, roots: Vec<String>) {
        self.roots = roots.into_iter().map(PathBuf::from).filter(|p| is_clean_absolute(p)).collect();
    }

    /// Replays a batch, one guest operation (or none) per event.
    pub fn apply(&mut self, events: &[FileEvent]) {
        for ev in events {
            let path = Path::new(&ev.path);
            if !is_clean_absolute(path) || !self.roots.iter().any(|r| path.starts_with(r)) {
                self.stats.rejected += 1;
                continue;
            }
            let result = match ev.kind {
                FileEventKind::Created | FileEventKind::Modified => touch(path),
                FileEventKind::Removed => path.parent().map_or(Ok(()), touch_dir),
                FileEventKind::Rescan => touch_dir(path),
            };
            match result {
                Ok(()) => self.stats.replayed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => self.stats.missing += 1,
                Err(e) => tracing::debug!("replaying {:?} for {}: {e}", ev.kind, ev.path),
            }
        }
    }
}

/// Absolute, and no `.` or `..` components.
fn is_clean_absolute(p: &Path) -> bool {
    p.is_absolute() && p.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

/// Raises events on a file or directory without changing it.
fn touch(path: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        return touch_dir(path);
    }
    if !meta.is_file() {
        return Ok(()); // symlinks, fifos, devices, sockets: leave alone
    }
    let flags = libc::O_NOFOLLOW | libc::O_NONBLOCK;
    match std::fs::OpenOptions::new().write(true).custom_flags(flags).open(path) {
        Ok(file) => {
            let mode = file.metadata()?.permissions().mode() & 0o7777;
            let _ = file.set_permissions(std::fs::Permissions::from_mode(mode));
            Ok(())
        }
        // A read-only mount or file: an open and a close still say "look here".
        Err(e) if matches!(e.raw_os_error(), Some(libc::EROFS) | Some(libc::EACCES) | Some(libc::EPERM)) => {
            std::fs::OpenOptions::new().read(true).custom_flags(flags).open(path).map(drop)
        }
        Err(e) => Err(e),
    }
}

/// `IN_ATTRIB` on a directory: chmod to the mode it has.
fn touch_dir(dir: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Ok(());
    }
    let mode = meta.permissions().mode() & 0o7777;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(path: &Path, kind: FileEventKind) -> FileEvent {
        FileEvent { path: path.display().to_string(), kind }
    }

    #[test]
    fn replays_never_change_content_mode_or_size() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.txt");
        std::fs::write(&f, b"content").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        let mut r = Replayer::default();
        r.set_roots(vec![dir.path().display().to_string()]);
        for kind in [FileEventKind::Created, FileEventKind::Modified, FileEventKind::Removed, FileEventKind::Rescan] {
            r.apply(&[ev(&f, kind), ev(dir.path(), kind)]);
        }
        assert_eq!(std::fs::read(&f).unwrap(), b"content");
        assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o7777, 0o640);
        assert_eq!(r.stats.rejected, 0);
    }

    #[test]
    fn paths_outside_the_roots_or_unclean_are_rejected_and_missing_ones_are_fine() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Replayer::default();
        r.set_roots(vec![dir.path().display().to_string()]);
        r.apply(&[
            ev(Path::new("/etc/passwd"), FileEventKind::Modified),
            FileEvent { path: format!("{}/../../etc/passwd", dir.path().display()), kind: FileEventKind::Modified },
            FileEvent { path: "relative".into(), kind: FileEventKind::Modified },
            ev(&dir.path().join("gone"), FileEventKind::Modified),
        ]);
        assert_eq!(r.stats, ReplayStats { replayed: 0, rejected: 3, missing: 1 });
    }

    #[test]
    fn fifos_and_symlinks_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("p");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let link = dir.path().join("l");
        std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
        let mut r = Replayer::default();
        r.set_roots(vec![dir.path().display().to_string()]);
        r.apply(&[ev(&fifo, FileEventKind::Modified), ev(&link, FileEventKind::Modified)]);
        assert_eq!(r.stats.replayed, 2); // handled, without blocking on the fifo or following the link
    }
}
