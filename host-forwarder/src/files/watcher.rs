//! Watching the host folders with `notify` (inotify on Linux, FSEvents on
//! macOS), leaving out directories nobody wants watched deeply.
//!
//! inotify is not recursive and each directory costs a watch (bounded by
//! fs.inotify.max_user_watches), so on Linux every directory is watched on
//! its own and excluded ones (node_modules, .git, target ...) are never
//! entered; new directories are added as they appear. FSEvents watches a
//! whole tree at no cost per directory, so there the root is watched
//! recursively and events under excluded directories are dropped.

use std::path::{Path, PathBuf};

use ferry_protocol::FileEventKind;
use notify::{
    event::{EventKind, ModifyKind, RenameMode},
    Event, RecursiveMode, Watcher,
};

/// Directory names not watched deeply by default.
pub const DEFAULT_EXCLUDES: &[&str] =
    &[".git", ".hg", ".svn", "node_modules", "target", "__pycache__", ".venv", ".tox", ".cache", ".next"];

/// Whether any component of `path` below `root` is an excluded name.
pub fn excluded(path: &Path, root: &Path, excludes: &[String]) -> bool {
    path.strip_prefix(root)
        .map(|rel| rel.components().any(|c| excludes.iter().any(|e| c.as_os_str() == e.as_str())))
        .unwrap_or(false)
}

/// What a notify event means for the guest: (host path, kind) pairs.
/// Attribute changes and opens/closes are not forwarded: they are what the
/// guest's replays look like from the host, and forwarding them would loop.
pub fn translate(ev: &Event) -> Vec<(PathBuf, FileEventKind)> {
    use FileEventKind::*;
    let all = |k: FileEventKind| ev.paths.iter().map(|p| (p.clone(), k)).collect();
    match &ev.kind {
        EventKind::Create(_) => all(Created),
        EventKind::Remove(_) => all(Removed),
        EventKind::Modify(ModifyKind::Data(_)) | EventKind::Modify(ModifyKind::Any) => all(Modified),
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) => all(Removed),
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => all(Created),
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
            let mut out = Vec::new();
            if let Some(from) = ev.paths.first() {
                out.push((from.clone(), Removed));
            }
            if let Some(to) = ev.paths.get(1) {
                out.push((to.clone(), Created));
            }
            out
        }
        EventKind::Modify(ModifyKind::Name(_)) => {
            ev.paths.iter().map(|p| (p.clone(), if p.exists() { Created } else { Removed })).collect()
        }
        _ => Vec::new(),
    }
}

/// Starts watching `root`; returns how many directories are watched.
pub fn watch_tree(w: &mut impl Watcher, root: &Path, excludes: &[String]) -> notify::Result<usize> {
    if cfg!(target_os = "linux") {
        let mut n = 0;
        watch_dirs(w, root, root, excludes, &mut n)?;
        Ok(n)
    } else {
        w.watch(root, RecursiveMode::Recursive)?;
        Ok(1)
    }
}

/// On Linux, watches `dir` and every directory below it that is not excluded.
pub fn watch_dirs(
    w: &mut impl Watcher,
    root: &Path,
    dir: &Path,
    excludes: &[String],
    n: &mut usize,
) -> notify::Result<()> {
    if !cfg!(target_os = "linux") || excluded(dir, root, excludes) {
        return Ok(());
    }
    w.watch(dir, RecursiveMode::NonRecursive)?;
    *n += 1;
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for e in entries.flatten() {
        // file_type() does not follow symlinks: a link to a directory is not entered.
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            watch_dirs(w, root, &e.path(), excludes, n)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, MetadataKind};

    #[test]
    fn only_content_and_name_changes_are_forwarded() {
        let ev = |kind, paths: &[&str]| Event {
            kind,
            paths: paths.iter().map(PathBuf::from).collect(),
            attrs: Default::default(),
        };
        assert_eq!(
            translate(&ev(EventKind::Create(CreateKind::File), &["/a"])),
            vec![("/a".into(), FileEventKind::Created)]
        );
        assert_eq!(
            translate(&ev(EventKind::Modify(ModifyKind::Data(DataChange::Any)), &["/a"])),
            vec![("/a".into(), FileEventKind::Modified)]
        );
        assert_eq!(
            translate(&ev(EventKind::Modify(ModifyKind::Name(RenameMode::Both)), &["/a", "/b"])),
            vec![("/a".into(), FileEventKind::Removed), ("/b".into(), FileEventKind::Created)]
        );
        assert!(translate(&ev(EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)), &["/a"])).is_empty());
        assert!(translate(&ev(EventKind::Access(notify::event::AccessKind::Any), &["/a"])).is_empty());
    }

    #[test]
    fn excludes_apply_below_the_root_only() {
        let ex = vec!["node_modules".to_string()];
        assert!(excluded(Path::new("/p/app/node_modules/x/y.js"), Path::new("/p"), &ex));
        assert!(!excluded(Path::new("/p/app/src/y.js"), Path::new("/p"), &ex));
        assert!(!excluded(Path::new("/node_modules/p/a"), Path::new("/node_modules/p"), &ex));
    }
}
