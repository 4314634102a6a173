//! The instance's lima.yaml on disk: changed from the file as it is at
//! the moment of writing (never from an older read, so an edit the user
//! saves meanwhile is kept), atomically (Lima never reads a half-written
//! file), and through a symlink (the link stays, its target changes).

use std::path::{Path, PathBuf};

/// How often [`update`] recomputes its change when the file keeps changing under it.
const ATTEMPTS: usize = 5;

/// Applies `change` to the file at `path` as it is now and writes the
/// result atomically beside the file's real location (a symlink is
/// followed and stays a symlink). The text is read again just before the
/// temporary file is renamed over it: if it changed meanwhile, `change` is
/// computed again from the new text. Returns the new text, or `None` when
/// `change` left the file as it was (nothing is written) or it does not
/// exist.
pub fn update(path: &Path, change: impl Fn(&str) -> anyhow::Result<String>) -> anyhow::Result<Option<String>> {
    let target = match std::fs::canonicalize(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(anyhow::anyhow!("{}: {e}", path.display())),
    };
    for _ in 0..ATTEMPTS {
        let text = std::fs::read_to_string(&target).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let new = change(&text)?;
        if new == text {
            return Ok(None);
        }
        let tmp = staged(&target, &new)?;
        if std::fs::read_to_string(&target).ok().as_deref() != Some(text.as_str()) {
            continue; // the user saved meanwhile: start again from their text
        }
        tmp.persist(&target).map_err(|e| anyhow::anyhow!("{}: {}", target.display(), e.error))?;
        return Ok(Some(new));
    }
    anyhow::bail!("{} keeps changing; try again when it is saved", path.display())
}

/// A synced temporary file beside `target` holding `text`, with `target`'s permissions.
fn staged(target: &Path, text: &str) -> std::io::Result<tempfile::NamedTempFile> {
    let dir = target.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, text.as_bytes())?;
    if let Ok(meta) = std::fs::metadata(target) {
        tmp.as_file().set_permissions(meta.permissions())?;
    }
    tmp.as_file().sync_all()?;
    Ok(tmp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlinked_file_stays_a_symlink_and_its_target_changes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::fs::write(dir.path().join("real/dev.yaml"), "a: 1\n").unwrap();
        let link = dir.path().join("lima.yaml");
        std::os::unix::fs::symlink("real/dev.yaml", &link).unwrap();
        let new = update(&link, |t| Ok(format!("{t}b: 2\n"))).unwrap();
        assert_eq!(new.as_deref(), Some("a: 1\nb: 2\n"));
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_to_string(dir.path().join("real/dev.yaml")).unwrap(), "a: 1\nb: 2\n");
        assert_eq!(update(&link, |t| Ok(t.to_string())).unwrap(), None, "no change, no write");
        assert_eq!(update(&dir.path().join("none.yaml"), |t| Ok(t.to_string())).unwrap(), None);
    }

    #[test]
    fn a_change_saved_while_computing_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lima.yaml");
        std::fs::write(&path, "a: 1\n").unwrap();
        let calls = std::cell::Cell::new(0);
        update(&path, |t| {
            calls.set(calls.get() + 1);
            if calls.get() == 1 {
                // The user saves while ferry works.
                std::fs::write(&path, "a: 1\nmine: yes\n").unwrap();
            }
            Ok(format!("{t}ferry: 1\n"))
        })
        .unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a: 1\nmine: yes\nferry: 1\n");
        assert_eq!(calls.get(), 2);
    }
}
