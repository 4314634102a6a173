//! A host Unix socket that ferry owns: created 0600 (in a 0700 directory
//! when ferry creates the directory), replacing only a stale socket from an
//! earlier run, never following a symlink and never deleting anything that
//! is not a socket; removed when dropped, if it is still ours.

use std::{
    fs::DirBuilder,
    io,
    os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt},
    path::{Path, PathBuf},
};

use tokio::net::UnixListener;

/// A listening host socket and the identity of its file.
pub struct HostSocket {
    /// The socket's path.
    pub path: PathBuf,
    /// The listener.
    pub listener: UnixListener,
    file_id: (u64, u64),
}

impl HostSocket {
    /// Binds `path` safely (see the module documentation).
    pub fn bind(path: &Path) -> io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
            DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        }
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
            Ok(m) if m.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(io::Error::new(io::ErrorKind::AddrInUse, "another program is serving this socket"));
                }
                std::fs::remove_file(path)?; // stale, from an earlier run
            }
            Ok(m) => {
                let kind = if m.file_type().is_symlink() { "a symlink" } else { "not a socket" };
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("the path exists and is {kind}; ferry never replaces it"),
                ));
            }
        }
        let listener = ferry_mux::private_socket::bind(path, None)?;
        listener.set_nonblocking(true)?;
        let listener = UnixListener::from_std(listener)?;
        let m = std::fs::symlink_metadata(path)?;
        Ok(Self { path: path.to_path_buf(), listener, file_id: (m.dev(), m.ino()) })
    }
}

impl Drop for HostSocket {
    fn drop(&mut self) {
        // Remove the file only if it is still the socket we created.
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.file_id {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn creates_a_private_socket_in_a_private_directory_and_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock/docker.sock");
        let s = HostSocket::bind(&path).unwrap();
        let mode =
            |p: &Path| std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions()) & 0o777;
        assert_eq!((mode(&path), mode(path.parent().unwrap())), (0o600, 0o700));
        drop(s);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn replaces_a_stale_socket_but_not_a_live_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap()); // leaves a stale file
        let live = HostSocket::bind(&path).unwrap();
        let err = HostSocket::bind(&path).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        drop(live);
    }

    #[tokio::test]
    async fn never_touches_files_or_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("important");
        std::fs::write(&file, b"data").unwrap();
        let err = HostSocket::bind(&file).err().unwrap();
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), b"data");
        let link = dir.path().join("link.sock");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(HostSocket::bind(&link).err().unwrap().to_string().contains("symlink"));
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    }

    #[tokio::test]
    async fn a_socket_replaced_by_someone_else_is_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.sock");
        let s = HostSocket::bind(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"theirs").unwrap();
        drop(s);
        assert_eq!(std::fs::read(&path).unwrap(), b"theirs");
    }
}
