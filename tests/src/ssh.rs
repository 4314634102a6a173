//! A real sshd for a namespace guest: throwaway keys, `sshd -i` started in
//! the guest namespace by each client's ProxyCommand, and an OpenSSH
//! ControlMaster on the host as Lima keeps one for every instance.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::{Guest, Proc};

/// Keys and an sshd configuration for reaching a guest over ssh.
pub struct SshGuest {
    sshd: &'static str,
    dir: PathBuf,
}

impl SshGuest {
    /// Sets up keys and sshd_config under `dir/ssh` (once; reused after).
    pub fn new(dir: &Path) -> Result<Self, String> {
        Self::with_sshd_options(dir, "")
    }

    /// [`SshGuest::new`] with more sshd_config lines (e.g. `PermitOpen none`);
    /// they come first, so they override the defaults (sshd keeps a
    /// keyword's first value).
    pub fn with_sshd_options(dir: &Path, extra: &str) -> Result<Self, String> {
        let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"].into_iter().find(|p| Path::new(p).exists());
        let Some(sshd) = sshd else { return Err("sshd not installed (apt-get install openssh-server)".into()) };
        for tool in ["ssh", "ssh-keygen"] {
            let found = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output();
            if !found.is_ok_and(|o| o.status.success()) {
                return Err(format!("{tool} not installed (apt-get install openssh-client)"));
            }
        }
        let d = dir.join("ssh");
        if d.join("sshd_config").exists() {
            return Ok(Self { sshd, dir: d });
        }
        std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
        for key in ["host", "client"] {
            let st = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(d.join(key))
                .status()
                .map_err(|e| e.to_string())?;
            if !st.success() {
                return Err("ssh-keygen failed".into());
            }
        }
        std::fs::copy(d.join("client.pub"), d.join("authorized_keys")).map_err(|e| e.to_string())?;
        std::fs::create_dir_all("/run/sshd").map_err(|e| e.to_string())?;
        let config = format!(
            "{extra}HostKey {d}/host\nAuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n\
             StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
             AllowTcpForwarding yes\nAllowStreamLocalForwarding yes\nPidFile none\nLogLevel ERROR\n",
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), config).map_err(|e| e.to_string())?;
        Ok(Self { sshd, dir: d })
    }

    /// The client's arguments up to the destination `root@guest`: key,
    /// no host-key prompts, batch mode, and the ProxyCommand that runs
    /// `sshd -i` in `guest`'s namespaces (its mount namespace too, if it has
    /// a private one).
    pub fn client_args(&self, guest: &Guest) -> Vec<String> {
        let mut args: Vec<String> = [
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "BatchMode=yes",
            "-i",
        ]
        .map(String::from)
        .to_vec();
        args.push(self.client_key().display().to_string());
        args.push("-o".into());
        args.push(format!("ProxyCommand={}", self.proxy_command(guest)));
        args
    }

    /// The client's private key.
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client")
    }

    /// The ProxyCommand that runs `sshd -i` in `guest`'s namespaces.
    pub fn proxy_command(&self, guest: &Guest) -> String {
        let enter = match guest.holder_pid() {
            Some(pid) => format!("nsenter -t {pid} -m -n"),
            None => format!("ip netns exec {}", guest.name),
        };
        format!("{enter} {} -i -e -f {}", self.sshd, self.dir.join("sshd_config").display())
    }

    /// Starts a ControlMaster to `guest` whose control socket is `control`
    /// (as Lima's hostagent keeps `<instance>/ssh.sock`), and waits until it
    /// answers.
    pub fn start_master(&self, guest: &Guest, control: &Path, log: PathBuf) -> Proc {
        let mut cmd = Command::new("ssh");
        cmd.args(["-M", "-N", "-o", "ControlPersist=no", "-S"]).arg(control).args(self.client_args(guest));
        cmd.arg("root@guest");
        let mut master = Proc::spawn(cmd, log);
        let up = crate::try_wait_for(Duration::from_secs(20), || {
            let check = Command::new("ssh").args(["-S"]).arg(control).args(["-O", "check", "root@guest"]).output();
            check.is_ok_and(|o| o.status.success()).then_some(())
        });
        assert!(up.is_some() && master.is_running(), "the ControlMaster did not come up: {}", master.log_text());
        master
    }
}

/// The pid of the ssh ControlMaster answering on `control`, as `ssh -O
/// check` reports it.
pub fn master_pid(control: &Path) -> Option<u32> {
    let out = Command::new("ssh").arg("-S").arg(control).args(["-O", "check", "guest"]).output();
    let text = String::from_utf8_lossy(&out.ok()?.stderr).into_owned();
    text.split("pid=").nth(1)?.split(')').next()?.parse().ok()
}

/// Ends, when dropped, the ControlMaster answering on its control socket
/// (one that `ControlPersist yes` left running in the background), by the
/// pid the master reports for itself.
pub struct MasterGuard(pub PathBuf);

impl Drop for MasterGuard {
    fn drop(&mut self) {
        if let Some(pid) = master_pid(&self.0) {
            // SAFETY: kill(2) of the pid the master reported for itself.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
    }
}
