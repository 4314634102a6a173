//! Talking to `limactl`: the instance list, `copy` and `shell`. ferry never
//! starts or stops a VM; it only reads Lima's state and runs commands in a
//! running guest.

use std::{
    fs::File,
    io::Read,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde::Deserialize;

/// The `limactl` to run: $LIMACTL, else `limactl` on PATH.
pub fn program() -> PathBuf {
    std::env::var_os("LIMACTL").map(PathBuf::from).unwrap_or_else(|| "limactl".into())
}

/// An instance as `limactl list --json` describes it (the fields ferry uses).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    /// The instance name.
    pub name: String,
    /// Running, Stopped, Broken ...
    pub status: String,
    /// The instance directory (lima.yaml, ssh.config, sock/ ...).
    pub dir: PathBuf,
    /// qemu, vz, krunkit, wsl2 ...
    #[serde(default)]
    pub vm_type: String,
    /// The host port of the guest's sshd.
    #[serde(default)]
    pub ssh_local_port: u16,
    /// The ssh config for `ssh -F FILE lima-NAME`.
    #[serde(default)]
    pub ssh_config_file: Option<PathBuf>,
}

/// Finds instance `name` in `limactl list --json` output (one object per line).
pub fn parse_list(output: &str, name: &str) -> anyhow::Result<Instance> {
    for line in output.lines().filter(|l| !l.trim().is_empty()) {
        let inst: Instance = serde_json::from_str(line).map_err(|e| anyhow::anyhow!("limactl list --json: {e}"))?;
        if inst.name == name {
            return Ok(inst);
        }
    }
    anyhow::bail!("no Lima instance named {name:?} (see `limactl list`)")
}

/// The instance `name`.
pub fn instance(name: &str) -> anyhow::Result<Instance> {
    let out = run(Command::new(program()).args(["list", "--json", name]))?;
    parse_list(&String::from_utf8_lossy(&out.stdout), name)
}

/// Copies a host file into the guest.
pub fn copy_in(inst: &str, src: &Path, dst: &str) -> anyhow::Result<()> {
    run(Command::new(program()).arg("copy").arg(src).arg(format!("{inst}:{dst}"))).map(drop)
}

/// Runs a shell command line in the guest.
pub fn shell(inst: &str, script: &str) -> anyhow::Result<Output> {
    run(Command::new(program()).args(["shell", "--workdir", "/", inst, "sh", "-c", script]))
}

/// `s` quoted for a POSIX shell: in single quotes, each `'` written as `'\''`.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// How long one `limactl` command may take (a copy of the agent into a
/// slow guest included) before it is killed and the command fails.
const LIMACTL_TIMEOUT: Duration = Duration::from_secs(120);

fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    run_with_timeout(cmd, LIMACTL_TIMEOUT, " (is Lima installed? set $LIMACTL)")
}

/// Runs `cmd` (`limactl`, or the ssh it runs) and returns its output,
/// failing if it fails or runs past `limit` (then it is killed with
/// everything it started). `hint` follows the error when `cmd` cannot be
/// started at all.
pub(super) fn run_with_timeout(cmd: &mut Command, limit: Duration, hint: &str) -> anyhow::Result<Output> {
    // Its own process group, so that the ssh and scp it starts are killed with it.
    cmd.process_group(0);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run {:?}: {e}{hint}", cmd.get_program()))?;
    let out = wait_with_timeout(child, limit)?.ok_or_else(|| {
        anyhow::anyhow!("{:?} did not finish within {limit:?}; killed it", cmd.get_args().collect::<Vec<_>>())
    })?;
    if !out.status.success() {
        anyhow::bail!(
            "{:?} failed ({}): {}",
            cmd.get_args().collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// How long output is still read after the command exited (or was killed)
/// while something it started keeps its output pipes open.
const PIPE_GRACE: Duration = Duration::from_secs(1);

/// The child's output once it exits, or `None` if it ran past `limit`
/// (then its whole process group is killed and it is reaped). Its output
/// is read meanwhile, so a chatty child never blocks on a full pipe; what
/// it started and left holding the pipes is waited for [`PIPE_GRACE`] at
/// most, never forever.
fn wait_with_timeout(mut child: Child, limit: Duration) -> std::io::Result<Option<Output>> {
    let mut pipes = [
        child.stdout.take().map(|p| File::from(OwnedFd::from(p))),
        child.stderr.take().map(|p| File::from(OwnedFd::from(p))),
    ];
    let mut bufs = [Vec::new(), Vec::new()];
    let deadline = Instant::now() + limit;
    let mut status = None;
    let mut timed_out = false;
    let mut stop_reading_at = None;
    loop {
        if status.is_none() {
            status = child.try_wait()?;
            if status.is_none() && Instant::now() > deadline {
                kill_group(&mut child);
                status = Some(child.wait()?);
                timed_out = true;
            }
            if status.is_some() {
                stop_reading_at = Some(Instant::now() + PIPE_GRACE);
            }
        }
        let open = pipes.iter().any(Option::is_some);
        if status.is_some() && (!open || stop_reading_at.is_some_and(|t| Instant::now() > t)) {
            break;
        }
        // (With both pipes at their end, this only sleeps while the child finishes.)
        read_ready(&mut pipes, &mut bufs, Duration::from_millis(10))?;
    }
    let [stdout, stderr] = bufs;
    Ok(status.filter(|_| !timed_out).map(|status| Output { status, stdout, stderr }))
}

/// Kills `child`'s process group (it leads one: see `run_with_timeout`), or the child alone.
fn kill_group(child: &mut Child) {
    match libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) of the group the unreaped child leads; its id cannot have been reused.
        Ok(pid) if unsafe { libc::kill(-pid, libc::SIGKILL) } == 0 => {}
        _ => {
            let _ = child.kill();
        }
    }
}

/// Waits up to `wait` for output on the open pipes and appends what is
/// there; a pipe at its end is closed (set to `None`).
fn read_ready(pipes: &mut [Option<File>; 2], bufs: &mut [Vec<u8>; 2], wait: Duration) -> std::io::Result<()> {
    let mut fds: Vec<libc::pollfd> = pipes
        .iter()
        .flatten()
        .map(|fd| libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 })
        .collect();
    let ms = libc::c_int::try_from(wait.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: poll(2) on `fds`, a live array of `fds.len()` entries whose descriptors `pipes` owns.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return if e.kind() == std::io::ErrorKind::Interrupted { Ok(()) } else { Err(e) };
    }
    for (pipe, buf) in pipes.iter_mut().zip(bufs.iter_mut()) {
        let Some(fd) = pipe else { continue };
        let ready = fds.iter().any(|p| p.fd == fd.as_raw_fd() && p.revents != 0);
        if !ready {
            continue;
        }
        let mut chunk = [0u8; 16 * 1024];
        match fd.read(&mut chunk) {
            Ok(0) => *pipe = None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_limactl_list_json() {
        let out = r#"{"name":"default","status":"Running","dir":"/Users/me/.lima/default","vmType":"vz","arch":"aarch64","cpuType":"","cpus":4,"memory":4294967296,"disk":107374182400,"sshLocalPort":60022,"sshConfigFile":"/Users/me/.lima/default/ssh.config","hostAgentPID":123,"driverPID":123,"config":{}}
{"name":"colima","status":"Stopped","dir":"/Users/me/.colima/_lima/colima","vmType":"qemu","sshLocalPort":0}"#;
        let i = parse_list(out, "default").unwrap();
        assert_eq!((i.status.as_str(), i.vm_type.as_str(), i.ssh_local_port), ("Running", "vz", 60022));
        assert_eq!(i.ssh_config_file.unwrap(), PathBuf::from("/Users/me/.lima/default/ssh.config"));
        assert_eq!(parse_list(out, "colima").unwrap().status, "Stopped");
        assert!(parse_list(out, "nope").unwrap_err().to_string().contains("no Lima instance"));
    }

    /// Whether process `pid` is gone (or a zombie nobody reaped yet).
    fn gone(pid: i32) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.is_empty() || stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z'))
    }

    /// A fake limactl script in `dir` with `body`, and the file its children's pids go to.
    fn fake_limactl(dir: &Path, body: &str) -> (PathBuf, PathBuf) {
        let script = dir.join("limactl");
        std::fs::write(&script, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        (script, dir.join("pids"))
    }

    #[test]
    fn a_hung_limactl_is_killed_with_the_children_that_hold_its_output() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        // Like limactl shell: an ssh child holding stdout, and limactl waiting on a stuck guest.
        let (script, _) = fake_limactl(
            dir.path(),
            &format!("sleep 60 & echo $! > {0}; echo started; sleep 60 & echo $! >> {0}; wait", pids.display()),
        );
        let t0 = Instant::now();
        let err = run_with_timeout(&mut Command::new(&script), Duration::from_millis(300), "").unwrap_err().to_string();
        assert!(t0.elapsed() < Duration::from_secs(5), "the bound holds: {:?}", t0.elapsed());
        assert!(err.contains("did not finish within"), "{err}");
        let pids: Vec<i32> =
            std::fs::read_to_string(&pids).unwrap().lines().map(|l| l.trim().parse().unwrap()).collect();
        assert_eq!(pids.len(), 2);
        let t1 = Instant::now();
        while !pids.iter().all(|&p| gone(p)) && t1.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(pids.iter().all(|&p| gone(p)), "the whole process group was killed: {pids:?}");
    }

    #[test]
    fn output_pipes_held_by_a_process_that_left_the_group_do_not_hang_a_finished_command() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        // A ControlMaster-like daemon in its own session keeps stdout open after limactl exits.
        let (script, _) =
            fake_limactl(dir.path(), &format!("setsid sleep 60 & echo $! > {}; echo done", pids.display()));
        let t0 = Instant::now();
        let out = run_with_timeout(&mut Command::new(&script), Duration::from_secs(30), "");
        let elapsed = t0.elapsed();
        let pid: i32 = std::fs::read_to_string(&pids).unwrap().trim().parse().unwrap();
        // SAFETY: kill(2) of the sleep this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        assert_eq!(out.unwrap().stdout, b"done\n");
        assert!(elapsed < Duration::from_secs(5), "not waiting for the daemon: {elapsed:?}");
    }

    #[test]
    fn a_command_past_its_time_is_killed_and_a_quick_one_gives_its_output() {
        let slow = Command::new("sleep").arg("30").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let t0 = Instant::now();
        assert!(wait_with_timeout(slow, Duration::from_millis(200)).unwrap().is_none());
        assert!(t0.elapsed() < Duration::from_secs(5));
        let quick = Command::new("sh")
            .args(["-c", "echo out; echo err >&2"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = wait_with_timeout(quick, Duration::from_secs(10)).unwrap().unwrap();
        assert!(out.status.success());
        assert_eq!((&out.stdout[..], &out.stderr[..]), (&b"out\n"[..], &b"err\n"[..]));
    }
}
