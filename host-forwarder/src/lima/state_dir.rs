//! ferry's files for one instance, in `<instance dir>/ferry/` (0700).

use std::path::{Path, PathBuf};

/// `<instance dir>/ferry`.
pub fn state_dir(inst_dir: &Path) -> PathBuf {
    inst_dir.join("ferry")
}

/// The pid file `ferry run` holds in the state dir.
pub const PID_FILE: &str = "ferry.pid";
/// The file in the state dir whose mtime is when ferry last edited lima.yaml.
pub const YAML_EDITED: &str = "lima-yaml-edited";
/// The file in the state dir that keeps `start`'s report for `status`.
pub const START_REPORT: &str = "start.json";
/// The forwarder's control socket in the state dir.
pub const CONTROL_SOCKET: &str = "ferry.sock";
/// The forwarder's log in the state dir.
pub const LOG: &str = "ferry.log";
/// The instance secret in the state dir.
pub const SECRET: &str = "secret";
