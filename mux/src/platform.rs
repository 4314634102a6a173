//! Which implementation of the OS-specific data paths this process runs.
//!
//! Linux has system calls that make ferry fast (splice(2) for dedicated data
//! connections, recvmmsg/sendmmsg for UDP, the FORCE socket-buffer options).
//! Every one of them sits behind an interface with a portable
//! implementation that macOS (and any other Unix) runs instead. On Linux,
//! setting [`PORTABLE_ENV`] to `1` makes a process use the portable
//! implementations too, so that the code only a Mac would run is exercised
//! by the test suites here.

use std::sync::OnceLock;

/// The environment variable that selects the portable data paths on Linux
/// (`FERRY_PORTABLE=1`); child processes inherit it.
pub const PORTABLE_ENV: &str = "FERRY_PORTABLE";

/// Whether this process uses the Linux-only fast paths (splice relay, UDP
/// batches by recvmmsg/sendmmsg, forced buffer sizes). Always `false`
/// outside Linux; on Linux `true` unless [`PORTABLE_ENV`] is `1`. Read once.
pub fn linux_fast_paths() -> bool {
    static FAST: OnceLock<bool> = OnceLock::new();
    *FAST.get_or_init(|| cfg!(target_os = "linux") && std::env::var(PORTABLE_ENV).as_deref() != Ok("1"))
}

/// A one-line description of the data paths in use, for logs and status.
pub fn data_paths() -> &'static str {
    if linux_fast_paths() {
        "linux (splice relay, recvmmsg/sendmmsg)"
    } else {
        "portable (copy relay, one datagram per call)"
    }
}
