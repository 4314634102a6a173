//! Unix sockets created with their final mode: no moment in which another
//! user could connect to a socket that is about to become private.
//!
//! bind(2) creates the socket file with the process's umask applied, so a
//! bind followed by chmod leaves a window with the default mode. Here the
//! socket is bound inside a fresh 0700 directory beside the target (nobody
//! else can reach it there), given mode 0600 and, if asked, its owner, and
//! only then hard-linked to its path (link(2) never replaces an existing
//! file) and unlinked from the staging directory.

use std::{
    io,
    os::unix::fs::DirBuilderExt,
    path::Path,
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Binds a listening Unix socket at `path` with mode 0600 (and owner
/// `owner`, a (uid, gid), if given) from the moment the path exists. Fails
/// if anything exists at `path` (remove a stale socket first).
pub fn bind(path: &Path, owner: Option<(u32, u32)>) -> io::Result<std::os::unix::net::UnixListener> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let staging = dir.join(format!(".ferry-bind-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
    std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
    let result = (|| {
        let inner = staging.join("s");
        let listener = std::os::unix::net::UnixListener::bind(&inner)?;
        std::fs::set_permissions(&inner, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::lchown(&inner, Some(uid), Some(gid))?;
        }
        std::fs::hard_link(&inner, path)?;
        std::fs::remove_file(&inner)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::sync::{atomic::AtomicBool, Arc};

    #[test]
    fn the_socket_is_never_seen_with_another_mode() {
        // A umask that would leave a plainly bound socket open to all.
        // SAFETY: umask(2) only sets this process's file-creation mask (each
        // test runs in a process of its own under nextest).
        unsafe { libc::umask(0) };
        let dir = tempfile::tempdir().unwrap();
        let path = Arc::new(dir.path().join("x.sock"));
        let (stop, bad) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let watcher = {
            let (path, stop, bad) = (path.clone(), stop.clone(), bad.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(m) = std::fs::symlink_metadata(&*path) {
                        if m.permissions().mode() & 0o777 != 0o600 {
                            bad.store(true, Ordering::Relaxed);
                        }
                    }
                }
            })
        };
        for _ in 0..300 {
            let l = bind(&path, None).unwrap();
            // It serves at its path.
            std::os::unix::net::UnixStream::connect(&*path).unwrap();
            drop(l);
            std::fs::remove_file(&*path).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        watcher.join().unwrap();
        assert!(!bad.load(Ordering::Relaxed), "the socket was visible with a mode other than 0600");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(leftovers.is_empty(), "no staging directory left behind");
    }

    #[test]
    fn an_existing_file_is_never_replaced_and_the_owner_is_set_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("taken");
        std::fs::write(&path, "mine").unwrap();
        assert_eq!(bind(&path, None).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "mine");
        let me = std::fs::metadata(dir.path()).unwrap();
        let sock = dir.path().join("owned.sock");
        let _l = bind(&sock, Some((me.uid(), me.gid()))).unwrap();
        let m = std::fs::symlink_metadata(&sock).unwrap();
        assert_eq!((m.uid(), m.gid(), m.permissions().mode() & 0o777), (me.uid(), me.gid(), 0o600));
    }
}
