//! Talking to `limactl`: the instance list, `copy` and `shell`. ferry never
//! starts or stops a VM; it only reads Lima's state and runs commands in a
//! running guest.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
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

fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run {:?}: {e} (is Lima installed? set $LIMACTL)", cmd.get_program()))?;
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
}
