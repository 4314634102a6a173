//! Host file events -> coalesced guest file events (pure logic): map each
//! host path into the guest with the mounts, keep one pending event per
//! guest path, and hand out the batch when the coalescing window closes.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use ferry_protocol::{FileEvent, FileEventKind};

/// A shared folder: a host directory and where the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The host directory.
    pub host: PathBuf,
    /// Its path in the guest.
    pub guest: String,
}

/// Pending events, one per guest path.
#[derive(Debug, Default)]
pub struct Coalescer {
    mounts: Vec<Mount>,
    pending: BTreeMap<String, FileEventKind>,
}

impl Coalescer {
    /// A coalescer for `mounts` (the longest matching host prefix wins).
    pub fn new(mut mounts: Vec<Mount>) -> Self {
        mounts.sort_by_key(|m| std::cmp::Reverse(m.host.as_os_str().len()));
        Self { mounts, pending: BTreeMap::new() }
    }

    /// The guest path of `host`, if it lies in a mount.
    pub fn to_guest(&self, host: &Path) -> Option<String> {
        let m = self.mounts.iter().find(|m| host.starts_with(&m.host))?;
        let rel = host.strip_prefix(&m.host).ok()?.to_str()?;
        Some(if rel.is_empty() { m.guest.clone() } else { format!("{}/{rel}", m.guest.trim_end_matches('/')) })
    }

    /// Adds an event; returns whether it is the first of a new batch.
    pub fn add(&mut self, host: &Path, kind: FileEventKind) -> bool {
        let Some(guest) = self.to_guest(host) else { return false };
        let first = self.pending.is_empty();
        let merged = match self.pending.get(&guest) {
            Some(old) => merge(*old, kind),
            None => kind,
        };
        self.pending.insert(guest, merged);
        first
    }

    /// Asks every mount's guest root to be rescanned (the host watcher overflowed).
    pub fn rescan_all(&mut self) -> bool {
        let first = self.pending.is_empty();
        for m in &self.mounts {
            self.pending.insert(m.guest.clone(), FileEventKind::Rescan);
        }
        first
    }

    /// The pending batch, emptied.
    pub fn take(&mut self) -> Vec<FileEvent> {
        std::mem::take(&mut self.pending).into_iter().map(|(path, kind)| FileEvent { path, kind }).collect()
    }
}

/// One event for a path that had `old` pending.
fn merge(old: FileEventKind, new: FileEventKind) -> FileEventKind {
    use FileEventKind::*;
    match (old, new) {
        (Rescan, _) | (_, Rescan) => Rescan,
        (Created, Modified) => Created,
        (_, new) => new,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use FileEventKind::*;

    fn c() -> Coalescer {
        Coalescer::new(vec![
            Mount { host: "/Users/me".into(), guest: "/Users/me".into() },
            Mount { host: "/Users/me/work".into(), guest: "/work/".into() },
        ])
    }

    #[test]
    fn maps_with_the_longest_prefix_and_drops_the_rest() {
        let c = c();
        assert_eq!(c.to_guest(Path::new("/Users/me/work/app/a.js")).unwrap(), "/work/app/a.js");
        assert_eq!(c.to_guest(Path::new("/Users/me/notes.txt")).unwrap(), "/Users/me/notes.txt");
        assert_eq!(c.to_guest(Path::new("/Users/me/work")).unwrap(), "/work/");
        assert_eq!(c.to_guest(Path::new("/Users/meh/x")), None);
        assert_eq!(c.to_guest(Path::new("/etc/passwd")), None);
    }

    #[test]
    fn a_burst_becomes_one_event_per_path() {
        let mut c = c();
        assert!(c.add(Path::new("/Users/me/work/a"), Created));
        for _ in 0..10_000 {
            assert!(!c.add(Path::new("/Users/me/work/a"), Modified));
        }
        c.add(Path::new("/Users/me/work/b"), Modified);
        c.add(Path::new("/Users/me/work/b"), Removed);
        c.add(Path::new("/tmp/elsewhere"), Modified);
        let batch = c.take();
        assert_eq!(
            batch,
            vec![
                FileEvent { path: "/work/a".into(), kind: Created },
                FileEvent { path: "/work/b".into(), kind: Removed }
            ]
        );
        assert!(c.take().is_empty());
    }

    #[test]
    fn rescan_wins() {
        let mut c = c();
        c.add(Path::new("/Users/me/x"), Modified);
        c.rescan_all();
        c.add(Path::new("/Users/me"), Modified);
        let batch = c.take();
        assert!(batch.iter().any(|e| e.path == "/Users/me" && e.kind == Rescan));
        assert!(batch.iter().any(|e| e.path == "/work/" && e.kind == Rescan));
    }
}
