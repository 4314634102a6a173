//! The instance's ssh ControlMaster: where its control socket is, as ssh
//! itself resolves the instance's ssh.config (`ssh -G`). Lima writes
//! `ControlMaster auto`, `ControlPath "<instance>/ssh.sock"` and
//! `ControlPersist yes`, so a master serves every ssh to the guest.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use super::limactl;

/// The control socket path ssh would use for `host` under `config`, if
/// connection sharing is configured there with a plain path.
pub fn control_path(config: &Path, host: &str) -> Option<PathBuf> {
    let out = Command::new("ssh").arg("-F").arg(config).args(["-G", host]).stdin(Stdio::null()).output().ok()?;
    if !out.status.success() {
        return None;
    }
    parse_control_path(&String::from_utf8_lossy(&out.stdout))
}

/// How long asking whether the master runs may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// How long bringing a master up may take.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Brings up the ControlMaster of `host` under `config` if none answers:
/// with Lima's ssh.config (`ControlMaster auto`, `ControlPersist yes`) any
/// ssh to the guest leaves one running, so a `true` run there does. Best
/// effort, and bounded (a master stuck after a Mac woke up answers
/// nothing, and an ssh to it would wait forever): without a master,
/// connections go over the session.
pub fn ensure_master(config: &Path, host: &str) {
    let ssh = |options: &[&str], remote: &[&str], limit: Duration| {
        let mut cmd = Command::new("ssh");
        cmd.arg("-F").arg(config).args(["-o", "BatchMode=yes"]).args(options).arg(host).args(remote);
        limactl::run_with_timeout(&mut cmd, limit, "")
    };
    if ssh(&["-O", "check"], &[], CHECK_TIMEOUT).is_ok() {
        return;
    }
    if let Err(e) = ssh(&["-o", "ConnectTimeout=10"], &["true"], START_TIMEOUT) {
        tracing::warn!("no ssh ControlMaster for {host} ({e:#}): connections go over the session");
    }
}

/// The ControlPath in `ssh -G` output, unless sharing is off (`controlmaster
/// no` with no path, or `controlpath none`) or the path still holds `%`
/// tokens or `~` that only ssh expands.
pub fn parse_control_path(ssh_g: &str) -> Option<PathBuf> {
    let value = |key: &str| {
        ssh_g.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            k.eq_ignore_ascii_case(key).then(|| v.trim().trim_matches('"'))
        })
    };
    let path = value("controlpath")?;
    if path.eq_ignore_ascii_case("none") || path.contains('%') || !path.starts_with('/') {
        return None;
    }
    Some(PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_limas_control_path_and_nothing_else() {
        let lima = "user me\nhostname 127.0.0.1\nport 60022\ncontrolmaster auto\ncontrolpath /Users/me/.lima/dev/ssh.sock\ncontrolpersist yes\n";
        assert_eq!(parse_control_path(lima), Some(PathBuf::from("/Users/me/.lima/dev/ssh.sock")));
        assert_eq!(parse_control_path("controlmaster false\nport 22\n"), None);
        assert_eq!(parse_control_path("controlpath none\n"), None);
        assert_eq!(parse_control_path("controlpath ~/.ssh/cm-%C\n"), None);
        assert_eq!(parse_control_path("controlpath \"/tmp/a b/ssh.sock\"\n"), Some(PathBuf::from("/tmp/a b/ssh.sock")));
    }

    #[test]
    fn a_stuck_master_does_not_hang_the_start() {
        // A control socket that accepts and then says nothing: a master
        // stuck after a Mac woke up (the master route leaves such a master
        // alone after 10 s). Bringing the master up must not wait forever.
        use std::{
            os::unix::net::{UnixListener, UnixStream},
            sync::{Arc, Mutex},
            time::Duration,
        };
        let dir = tempfile::tempdir().unwrap();
        let control = dir.path().join("ssh.sock");
        let listener = UnixListener::bind(&control).unwrap();
        let held: Arc<Mutex<Vec<UnixStream>>> = Arc::default();
        let keep = held.clone();
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                keep.lock().unwrap().push(s);
            }
        });
        let config = dir.path().join("ssh.config");
        std::fs::write(
            &config,
            format!(
                "Host lima-stuck\n  HostName 127.0.0.1\n  Port 9\n  ControlMaster auto\n  ControlPath \"{}\"\n  \
                 ControlPersist yes\n",
                control.display()
            ),
        )
        .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let cfg = config.clone();
        std::thread::spawn(move || {
            ensure_master(&cfg, "lima-stuck");
            let _ = tx.send(());
        });
        let returned = rx.recv_timeout(Duration::from_secs(30));
        // Let the ssh processes go (they read EOF), whatever happened.
        for s in held.lock().unwrap().iter() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        assert!(returned.is_ok(), "ensure_master still waits on a master that never answers after 30 s");
    }
}
