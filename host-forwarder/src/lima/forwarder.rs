//! The background `ferry run` of an instance: started detached (its own
//! session, pid file, log and control socket in the state dir), found by
//! its locked pid file, stopped with SIGTERM then SIGKILL.

use std::os::unix::fs::OpenOptionsExt;
use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use super::state_dir::{CONTROL_SOCKET, LOG, PID_FILE, SECRET};
use crate::status::client;

/// What the forwarder is started with.
pub struct Launch<'a> {
    /// The instance's name (for messages).
    pub instance: &'a str,
    /// The instance's state dir.
    pub dir: &'a Path,
    /// The agent's transport address.
    pub agent: &'a str,
    /// Where to go when `agent` cannot be reached.
    pub fallback: Option<&'a str>,
    /// The rules file (the instance's lima.yaml).
    pub rules: &'a Path,
    /// The host port of the guest's sshd (0: unknown).
    pub ssh_local_port: u16,
    /// The ssh ControlMaster to carry connections through, if any.
    pub ssh_master: Option<&'a Path>,
    /// The instance's ssh.config, which brings the master back if it dies.
    pub ssh_config: Option<&'a Path>,
    /// How long to wait for it to connect.
    pub timeout: Duration,
}

/// Starts `ferry run` in the background and waits until it is connected to
/// the agent; returns its pid. On failure it is stopped again and the
/// error carries the last lines of its log.
pub fn launch(l: &Launch) -> anyhow::Result<u32> {
    let control = l.dir.join(CONTROL_SOCKET);
    let log = l.dir.join(LOG);
    let mut cmd = Command::new(std::env::current_exe()?);
    // The log rotates at its cap; stdout and stderr (a panic's message,
    // nothing else) go to a file beside it.
    cmd.arg("--log-file").arg(&log);
    cmd.args(["run", "--agent", l.agent, "--rules"])
        .arg(l.rules)
        .arg("--control-socket")
        .arg(&control)
        .arg("--secret-file")
        .arg(l.dir.join(SECRET))
        .arg("--pid-file")
        .arg(l.dir.join(PID_FILE));
    if l.ssh_local_port != 0 {
        cmd.args(["--ssh-local-port", &l.ssh_local_port.to_string()]);
    }
    if let Some(path) = l.ssh_master {
        cmd.arg("--ssh-control-path").arg(path);
        if let Some(config) = l.ssh_config {
            cmd.arg("--ssh-master-revive").arg(config).arg(format!("lima-{}", l.instance));
        }
    }
    if let Some(fallback) = l.fallback {
        cmd.args(["--fallback-agent", fallback]);
    }
    let out = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(log.with_extension("stderr"))?;
    // Its own session: the forwarder outlives this command and its terminal.
    // SAFETY: setsid(2) is async-signal-safe, as a pre_exec hook must be.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out).spawn()?;
    let pid = child.id();
    let deadline = Instant::now() + l.timeout;
    loop {
        if client::query(&control).is_ok_and(|r| r.connected) {
            return Ok(pid);
        }
        if child.try_wait()?.is_some() || Instant::now() > deadline {
            // By its pid file if it holds one by now, else as the child it is.
            let _ = stop(l.dir);
            end_child(&mut child);
            anyhow::bail!(
                "ferry did not connect to the agent of {}; last log lines:\n{}",
                l.instance,
                log_tail(&log, 15)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Ends `child` (SIGTERM, then SIGKILL after 5 s) and reaps it.
fn end_child(child: &mut std::process::Child) {
    if child.try_wait().is_ok_and(|s| s.is_none()) {
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill(2) of our own child, not yet reaped, so its pid is still its own.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while child.try_wait().is_ok_and(|s| s.is_none()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// The last `n` lines of the log at `path`.
fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(n).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// The pid of the instance's running `ferry run`, from the pid file it
/// holds locked (see [`crate::pid_file`]; no /proc needed).
pub fn running_pid(dir: &Path) -> Option<u32> {
    crate::pid_file::running(&dir.join(PID_FILE))
}

/// The forwarder's log in `dir`.
pub fn log_path(dir: &Path) -> PathBuf {
    dir.join(LOG)
}

/// Stops the forwarder of `dir` (SIGTERM, then SIGKILL after 10 s); true
/// if one ran.
pub fn stop(dir: &Path) -> bool {
    let Some(pid) = running_pid(dir) else {
        let _ = std::fs::remove_file(dir.join(PID_FILE));
        return false;
    };
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: kill(2) of the pid that holds the pid file's lock.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while running_pid(dir).is_some() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if running_pid(dir).is_some() {
        // SAFETY: as above; it still holds the lock, so it is still that process.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        while running_pid(dir).is_some() && Instant::now() < deadline + Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let _ = std::fs::remove_file(dir.join(PID_FILE));
    true
}
