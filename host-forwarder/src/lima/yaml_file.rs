//! The instance's lima.yaml on disk: written atomically, so Lima never
//! reads a half-written file.

use std::path::Path;

/// Replaces `path` with `text` atomically: a temporary file beside it with
/// the same permissions, synced, then renamed over it, so Lima never reads a
/// half-written lima.yaml.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, text.as_bytes())?;
    tmp.as_file().sync_all()?;
    if let Ok(meta) = std::fs::metadata(path) {
        tmp.as_file().set_permissions(meta.permissions())?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
