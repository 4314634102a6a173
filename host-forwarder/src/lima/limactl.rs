//! Talking to `limactl`: the instance list, `copy` and `shell`. ferry never
//! starts or stops a VM; it only reads Lima's state and runs commands in a
//! running guest.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
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
    let child =
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(|e| {
            anyhow::anyhow!("cannot run {:?}: {e} (is Lima installed? set $LIMACTL)", cmd.get_program())
        })?;
    let out = wait_with_timeout(child, LIMACTL_TIMEOUT)?.ok_or_else(|| {
        anyhow::anyhow!("{:?} did not finish within {LIMACTL_TIMEOUT:?}; killed it", cmd.get_args().collect::<Vec<_>>())
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

/// The child's output once it exits, or `None` if it ran past `limit`
/// (then it is killed and reaped). Its output is read meanwhile, so a
/// chatty child never blocks on a full pipe.
fn wait_with_timeout(mut child: std::process::Child, limit: Duration) -> std::io::Result<Option<Output>> {
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (stdout, stderr) = (stdout.join().unwrap_or_default(), stderr.join().unwrap_or_default());
    Ok(status.map(|status| Output { status, stdout, stderr }))
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

    #[test]
    fn a_command_past_its_time_is_killed_and_a_quick_one_gives_its_output() {
        let slow = Command::new("sleep").arg("30").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let t0 = std::time::Instant::now();
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
