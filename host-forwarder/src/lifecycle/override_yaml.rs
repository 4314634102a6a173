//! Colima's instances: ferry's rules in the Lima home's
//! `_config/override.yaml`, which Lima reads at every start of every
//! instance in that home, its `portForwards` first. Colima writes each
//! profile's lima.yaml afresh at every `colima start` (an edit there would
//! be lost) and documents override.yaml as the way to change what it
//! generates. The edit is the one ferry makes to a lima.yaml
//! ([`crate::lima::lima_yaml`]), undone byte for byte; a file ferry created
//! is removed again (a `override.yaml.ferry-created` file beside it says so).

use std::path::{Path, PathBuf};

use crate::lima::lima_yaml;

fn created_marker(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".ferry-created");
    path.with_file_name(name)
}

/// Whether `path` holds ferry's block.
pub fn has_block(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| lima_yaml::has_ferry_block(&t))
}

/// Adds ferry's block to the override file at `path` (creating it, and its
/// directory, if missing); true if the file changed.
pub fn add(path: &Path) -> anyhow::Result<bool> {
    let existing = match std::fs::read_to_string(path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => anyhow::bail!("{}: {e}", path.display()),
    };
    let text = existing.clone().unwrap_or_default();
    let edited = lima_yaml::disable_lima_forwarding(&text)
        .map_err(|e| anyhow::anyhow!("{} cannot be edited: {e}", path.display()))?;
    if existing.as_deref() == Some(edited.as_str()) {
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if existing.is_none() {
        std::fs::write(created_marker(path), b"")?;
    }
    super::write_atomically(path, &edited)?;
    Ok(true)
}

/// Takes ferry's block out of `path` again: the file as it was, or no file
/// if ferry created it; true if anything changed.
pub fn remove(path: &Path) -> anyhow::Result<bool> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(false) };
    let back = lima_yaml::restore(&text);
    let created = created_marker(path);
    if created.exists() && back.trim().is_empty() {
        std::fs::remove_file(path)?;
        std::fs::remove_file(&created)?;
        return Ok(true);
    }
    let _ = std::fs::remove_file(&created);
    if back == text {
        return Ok(false);
    }
    super::write_atomically(path, &back)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_existing_override_comes_back_byte_for_byte_and_a_new_one_goes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("_config/override.yaml");
        assert!(add(&path).unwrap());
        assert!(has_block(&path));
        assert!(!add(&path).unwrap(), "idempotent");
        assert!(remove(&path).unwrap());
        assert!(!path.exists() && !created_marker(&path).exists(), "ferry's own file is gone");

        let mine = "# my overrides\ncpus: 4\nportForwards:\n  - guestPort: 80\n    hostPort: 8080\n";
        std::fs::write(&path, mine).unwrap();
        assert!(add(&path).unwrap());
        let edited = std::fs::read_to_string(&path).unwrap();
        assert!(edited.find(lima_yaml::BEGIN).unwrap() < edited.find("guestPort: 80").unwrap(), "{edited}");
        assert!(remove(&path).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), mine);
        assert!(!remove(&path).unwrap());
    }
}
