//! Installing `ferry-agent` and the instance secret in the guest, over
//! `limactl shell` and `limactl copy`, only when missing or outdated.

use std::path::Path;

use sha2::Digest;

use super::{agent_binary, limactl, limactl::quote};

/// Where the agent goes in the guest, and which binary.
pub struct AgentInstall<'a> {
    /// The agent's path in the guest.
    pub agent_bin: &'a str,
    /// The secret's path in the guest.
    pub guest_secret: &'a str,
    /// The host's secret file.
    pub secret: &'a Path,
    /// The ferry-agent binary to install (`--agent-binary`), if named.
    pub agent_binary: Option<&'a Path>,
}

/// Installs the agent and the secret in `name` unless the guest has this
/// version already; returns whether it installed anything.
pub fn install_agent(name: &str, i: &AgentInstall) -> anyhow::Result<bool> {
    let want = format!("ferry-agent {}", env!("CARGO_PKG_VERSION"));
    let have = limactl::shell(name, &format!("sudo {} --version 2>/dev/null || true", quote(i.agent_bin)))?;
    let current = String::from_utf8_lossy(&have.stdout).trim() == want;
    // The guest's copy must be the host's secret, not merely present: a
    // secret rotated on the host reaches the guest on the next start.
    let host_digest: String =
        sha2::Sha256::digest(std::fs::read(i.secret)?).iter().map(|b| format!("{b:02x}")).collect();
    let guest_digest = limactl::shell(name, &format!("sudo sha256sum {} 2>/dev/null || true", quote(i.guest_secret)))?;
    let secret_ok = String::from_utf8_lossy(&guest_digest.stdout).split_whitespace().next() == Some(&host_digest);
    if current && secret_ok {
        return Ok(false);
    }
    // Files travel through a fresh private directory (mktemp -d: 0700, a
    // new name), never a fixed /tmp path another guest user could claim.
    let staging = limactl::shell(name, "mktemp -d /tmp/ferry.XXXXXXXX")?;
    let staging = String::from_utf8_lossy(&staging.stdout).trim().to_string();
    if !staging.starts_with("/tmp/ferry.") {
        anyhow::bail!("instance {name}: mktemp -d printed {staging:?}");
    }
    let result = install_files(name, i, current, &staging);
    let _ = limactl::shell(name, &format!("rm -rf {}", quote(&staging)));
    result.map(|()| true)
}

/// Copies what is missing through `staging` in the guest and installs it.
fn install_files(name: &str, i: &AgentInstall, current: bool, staging: &str) -> anyhow::Result<()> {
    if !current {
        let machine = limactl::shell(name, "uname -m")?;
        let arch = agent_binary::GuestArch::from_uname(&String::from_utf8_lossy(&machine.stdout))
            .map_err(|e| anyhow::anyhow!("instance {name}: {e}"))?;
        let local = agent_binary::find(i.agent_binary, &std::env::current_exe()?, arch)
            .map_err(|e| anyhow::anyhow!("instance {name}: {e}"))?;
        tracing::info!("installing {} into {name} ({} guest)", local.display(), arch.name());
        let tmp = format!("{staging}/ferry-agent");
        limactl::copy_in(name, &local, &tmp)?;
        limactl::shell(name, &format!("sudo install -D -m 0755 {} {}", quote(&tmp), quote(i.agent_bin)))?;
    }
    // The secret always goes with a (re)install: the host's file is the truth.
    let tmp = format!("{staging}/secret");
    limactl::copy_in(name, i.secret, &tmp)?;
    limactl::shell(name, &format!("sudo install -D -m 0600 {} {}", quote(&tmp), quote(i.guest_secret)))?;
    Ok(())
}
