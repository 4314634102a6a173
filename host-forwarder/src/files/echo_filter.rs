//! Forward a file event only when something a watcher cares about changed.
//!
//! FSEvents (macOS) reports flags that are sticky and coalesced per path: a
//! guest's replay of an event (a same-mode chmod, an open and close through
//! a writable virtiofs mount) can come back marked created or modified. Sent
//! to the guest again, it would be replayed again: an echo, perhaps a loop.
//! So a created or modified path is forwarded only if its metadata that
//! watchers act on (existence, kind, inode, size, mtime) differs from what
//! was last forwarded for it; a removal only if it was not already sent as
//! removed. inotify (Linux) does not report such events as changes, so
//! there the filter only drops true duplicates; both hosts run it.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use ferry_protocol::FileEventKind;

/// Most paths remembered; past it the memory is cleared (forgetting only
/// means the next event of a path is forwarded).
pub const MAX_REMEMBERED: usize = 65_536;

/// What was last forwarded about a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// It existed with this identity, size and mtime (in nanoseconds).
    Present { dir: bool, ino: u64, size: u64, mtime_ns: i128 },
    /// It was forwarded as removed.
    Absent,
}

fn look(path: &Path) -> Seen {
    match std::fs::symlink_metadata(path) {
        Ok(m) => Seen::Present {
            dir: m.is_dir(),
            ino: m.ino(),
            size: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        },
        Err(_) => Seen::Absent,
    }
}

/// Remembers what was forwarded per host path, to drop events that change nothing.
#[derive(Debug, Default)]
pub struct EchoFilter {
    seen: HashMap<PathBuf, Seen>,
}

impl EchoFilter {
    /// Whether the event `kind` for `path` is worth forwarding; if so, it is
    /// remembered as forwarded. Rescans always pass.
    pub fn admit(&mut self, path: &Path, kind: FileEventKind) -> bool {
        let now = match kind {
            FileEventKind::Rescan => return true,
            FileEventKind::Removed => Seen::Absent,
            FileEventKind::Created | FileEventKind::Modified => look(path),
        };
        if self.seen.get(path) == Some(&now) {
            return false;
        }
        if self.seen.len() >= MAX_REMEMBERED {
            self.seen.clear();
        }
        self.seen.insert(path.to_path_buf(), now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::watcher::translate;
    use notify::{
        event::{CreateKind, EventKind, ModifyKind},
        Event,
    };
    use std::os::unix::fs::PermissionsExt;

    /// What FSEvents delivers for any change of `path`: sticky created and
    /// modified flags, whatever happened.
    fn fsevents_like(path: &Path) -> Vec<Event> {
        [EventKind::Create(CreateKind::Any), EventKind::Modify(ModifyKind::Any)]
            .into_iter()
            .map(|kind| Event { kind, paths: vec![path.to_path_buf()], attrs: Default::default() })
            .collect()
    }

    /// The events of `evs` the host side would forward.
    fn forwarded(filter: &mut EchoFilter, evs: &[Event]) -> Vec<FileEventKind> {
        evs.iter().flat_map(translate).filter(|(p, k)| filter.admit(p, *k)).map(|(_, k)| k).collect()
    }

    #[test]
    fn metadata_only_events_are_not_echoed_but_changes_are_forwarded() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("app.js");
        let mut f = EchoFilter::default();
        std::fs::write(&file, b"one").unwrap();
        assert_eq!(forwarded(&mut f, &fsevents_like(&file)), vec![FileEventKind::Created], "a new file goes once");
        // The guest replays it: a same-mode chmod, and an open/close with no write.
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        drop(std::fs::OpenOptions::new().append(true).open(&file).unwrap());
        assert!(forwarded(&mut f, &fsevents_like(&file)).is_empty(), "a metadata-only change is no event");
        // A save that changes the size, and one that keeps it but moves the mtime.
        std::fs::write(&file, b"two!").unwrap();
        assert_eq!(forwarded(&mut f, &fsevents_like(&file)), vec![FileEventKind::Created]);
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::write(&file, b"thr!").unwrap();
        std::fs::File::options().write(true).open(&file).unwrap().set_modified(later).unwrap();
        assert_eq!(forwarded(&mut f, &fsevents_like(&file)), vec![FileEventKind::Created]);
        // An atomic save (write elsewhere, rename over) is a new inode.
        let tmp = dir.path().join("app.js.tmp");
        std::fs::write(&tmp, b"thr!").unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        assert_eq!(forwarded(&mut f, &fsevents_like(&file)), vec![FileEventKind::Created]);
        // A removal goes once, a stale one not again; a re-creation goes.
        std::fs::remove_file(&file).unwrap();
        assert!(f.admit(&file, FileEventKind::Removed));
        assert!(!f.admit(&file, FileEventKind::Removed));
        std::fs::write(&file, b"back").unwrap();
        assert!(f.admit(&file, FileEventKind::Created));
        assert!(f.admit(&file, FileEventKind::Rescan), "rescans always pass");
    }

    #[test]
    fn memory_is_bounded() {
        let mut f = EchoFilter::default();
        for i in 0..MAX_REMEMBERED + 10 {
            assert!(f.admit(Path::new(&format!("/nowhere/{i}")), FileEventKind::Removed));
        }
        assert!(f.seen.len() <= MAX_REMEMBERED);
    }
}
