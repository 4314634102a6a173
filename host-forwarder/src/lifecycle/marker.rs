//! Which instances are enabled, kept beside what it concerns:
//! `<instance>/ferry/enabled.json` for one instance (it goes with the
//! instance when Lima deletes it), `<state dir>/enable-all.json` for
//! `enable --all` (every instance, present and future).

use std::{
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// What `enable` recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enabled {
    /// Options for `limactl ferry start` (after the instance name).
    #[serde(default)]
    pub start_args: Vec<String>,
    /// Whether `--network` added a vzNAT network to lima.yaml.
    #[serde(default)]
    pub network: bool,
}

/// `<instance>/ferry/enabled.json`.
pub fn instance_path(inst_dir: &Path) -> PathBuf {
    inst_dir.join("ferry/enabled.json")
}

/// `<state dir>/enable-all.json`.
pub fn all_path() -> PathBuf {
    ferry_process::secret_file::state_dir().join("enable-all.json")
}

/// Reads a marker; `None` if there is none (an unreadable one counts as
/// enabled with defaults, so that a damaged file never silently disables).
pub fn read(path: &Path) -> Option<Enabled> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(serde_json::from_str(&text).unwrap_or_else(|e| {
        tracing::warn!("{}: {e}; using the default start options", path.display());
        Enabled::default()
    }))
}

/// Writes a marker (its directory created 0700).
pub fn write(path: &Path, e: &Enabled) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    super::write_atomically(path, &serde_json::to_string_pretty(e)?)?;
    Ok(())
}

/// Whether (and with what) the instance at `inst_dir` is enabled: its own
/// marker, else `enable --all`'s.
pub fn effective(inst_dir: &Path) -> Option<Enabled> {
    read(&instance_path(inst_dir)).or_else(|| read(&all_path()))
}
