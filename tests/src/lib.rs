//! Test harness: a guest is a network namespace; the real `ferry-agent`
//! runs inside it on a Unix socket that crosses the namespace boundary (as a
//! VM's hybrid-vsock socket does), and the real `ferry` runs on the host.
//!
//! Every process and namespace a test starts is owned by a guard that kills
//! it by pid and deletes it on drop. The tests need root (network namespaces).

pub mod data;
pub mod forge;
pub mod guest;
pub mod net;
pub mod procs;
pub mod relay;
pub mod ssh;

pub use guest::Guest;
pub use procs::{Bridge, Proc};

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Directory holding the built `ferry` and `ferry-agent` binaries: the
/// profile directory this test binary was built into.
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("FERRY_BIN_DIR") {
        return dir.into();
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test binary>
    let dir = exe.parent().and_then(|p| p.parent()).expect("profile dir").to_path_buf();
    for b in ["ferry", "ferry-agent"] {
        assert!(
            dir.join(b).exists(),
            "{} is missing: build the binaries first (scripts/test.sh does: cargo build --release --bins)",
            dir.join(b).display()
        );
    }
    dir
}

/// Panics with a clear message unless running as root.
pub fn require_root() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "these tests create network namespaces and must run as root (scripts/test.sh under sudo)"
    );
}

/// Polls `f` until it returns `Some` or `limit` passes (a hang guard, not a
/// performance assertion: limits are generous).
pub fn wait_for<T>(limit: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    try_wait_for(limit, f).unwrap_or_else(|| panic!("timed out after {limit:?} waiting for {what}"))
}

/// Polls `f` until it returns `Some`, or gives up with `None` after `limit`.
pub fn try_wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() >= limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A TCP port for one test: outside the kernel's ephemeral range (so no
/// client socket can take it), free on the host's loopbacks right now, and
/// reserved against the other test processes by a lock file held until this
/// process exits.
pub fn free_port() -> u16 {
    use std::os::fd::AsRawFd;
    use std::sync::Mutex;
    static HELD: Mutex<Vec<std::fs::File>> = Mutex::new(Vec::new());
    let dir = std::env::temp_dir().join("ferry-test-ports");
    std::fs::create_dir_all(&dir).expect("port lock dir");
    let mut x = std::process::id() as u64
        ^ (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64)
        ^ 0x9e37_79b9_7f4a_7c15;
    loop {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = 10_000 + (x % 20_000) as u16;
        let file = std::fs::File::create(dir.join(port.to_string())).expect("port lock file");
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            continue;
        }
        let v4 = std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
        let v6 = std::net::TcpListener::bind(("::1", port)).is_ok();
        if v4 && v6 {
            HELD.lock().unwrap().push(file);
            return port;
        }
    }
}
