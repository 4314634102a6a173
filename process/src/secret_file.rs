//! Reading and creating the per-instance secret file: 64 hex digits, mode
//! 0600, in a 0700 directory. A file that others can read is refused.

use std::{
    fs::{DirBuilder, OpenOptions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use ferry_protocol::auth::Secret;

/// ferry's state directory: $FERRY_STATE_DIR, else $XDG_STATE_HOME/ferry,
/// else ~/.local/state/ferry.
pub fn state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("FERRY_STATE_DIR") {
        return d.into();
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(d).join("ferry");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
    PathBuf::from(home).join(".local/state/ferry")
}

/// The secret file both binaries use when none is named: STATE_DIR/secret.
/// On one machine (a namespace guest) agent and forwarder thus share it; a
/// VM's agent needs the host's secret copied to it.
pub fn default_path() -> PathBuf {
    state_dir().join("secret")
}

/// Reads the secret at `path`.
pub fn load(path: &Path) -> io::Result<Secret> {
    let meta = std::fs::metadata(path)
        .map_err(|e| io::Error::new(e.kind(), format!("secret file {}: {e}", path.display())))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("secret file {} is accessible by others (mode {mode:o}); run chmod 600 on it", path.display()),
        ));
    }
    let text = std::fs::read_to_string(path)?;
    Secret::from_hex(&text)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("secret file {}: {e}", path.display())))
}

/// Reads the secret at `path`, creating a new random one (and its 0700
/// directory) if there is none yet.
pub fn load_or_create(path: &Path) -> io::Result<Secret> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    let secret = Secret::generate().map_err(io::Error::other)?;
    match OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(mut f) => {
            writeln!(f, "{}", secret.to_hex())?;
            Ok(secret)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => load_settled(path),
        Err(e) => Err(io::Error::new(e.kind(), format!("creating secret file {}: {e}", path.display()))),
    }
}

/// The secret a session runs with, as both binaries choose it: `None` with
/// `insecure` (said loudly in the log), else the file `named`, or the
/// default file when none is named. A missing default file is created; a
/// missing named file is created only with `create_named`.
pub fn session_secret(named: Option<&Path>, insecure: bool, create_named: bool) -> io::Result<Option<Arc<Secret>>> {
    if insecure {
        tracing::warn!("running WITHOUT authentication (--insecure-no-auth): for development only");
        return Ok(None);
    }
    let secret = match named {
        Some(path) if !create_named => load(path)?,
        Some(path) => load_or_create(path)?,
        None => load_or_create(&default_path())?,
    };
    let path = named.map(Path::to_path_buf).unwrap_or_else(default_path);
    tracing::info!("authenticating with the secret in {}", path.display());
    Ok(Some(Arc::new(secret)))
}

/// Loads a secret another process may be writing right now (it won the
/// race to create the file): an empty file is given a moment to fill.
fn load_settled(path: &Path) -> io::Result<Secret> {
    for _ in 0..50 {
        if std::fs::metadata(path)?.len() > 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    load(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_private_then_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/secret");
        let s = load_or_create(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(load_or_create(&path).unwrap(), s, "an existing secret is kept");
        assert_eq!(load(&path).unwrap(), s);
    }

    #[test]
    fn readable_by_others_or_malformed_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        load_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("chmod 600"));
        std::fs::write(&path, "not hex").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(load(&path).is_err());
    }
}
