//! The rules file of `ferry run --rules`: a Lima instance's lima.yaml or
//! ferry's own config file. Both carry Lima's `portForwards` list; only the
//! keys ferry uses are read, the rest of a lima.yaml is ignored.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

use crate::ports::rules::{Rule, RuleSet, RuleSpec};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ConfigFile {
    #[serde(rename = "portForwards")]
    port_forwards: Option<Vec<RuleSpec>>,
    ssh: Ssh,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Ssh {
    #[serde(rename = "localPort")]
    local_port: Option<u16>,
}

/// The effective rules from `path`, or the defaults without a file.
/// `ssh_local_port` overrides the file's `ssh.localPort`.
pub fn load_rules(path: Option<&Path>, ssh_local_port: Option<u16>) -> anyhow::Result<RuleSet> {
    let Some(path) = path else {
        return Ok(RuleSet::new(Vec::new(), ssh_local_port));
    };
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read rules file {}", path.display()))?;
    let file: ConfigFile = if text.trim().is_empty() {
        ConfigFile::default()
    } else {
        serde_saphyr::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
    };
    let socket_dir = socket_dir(path);
    let rules = file
        .port_forwards
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            Rule::from_spec(spec, &socket_dir)
                .map_err(|e| anyhow::anyhow!("{}: portForwards[{i}]: {e}", path.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(RuleSet::new(rules, ssh_local_port.or(file.ssh.local_port)))
}

/// Where relative `hostSocket` paths live: the instance's `sock/` for a
/// lima.yaml (as Lima does), else `STATE_DIR/sock/`.
fn socket_dir(rules_file: &Path) -> PathBuf {
    match (rules_file.file_name(), rules_file.parent()) {
        (Some(name), Some(dir)) if name == "lima.yaml" => dir.join("sock"),
        _ => ferry_mux::secret_file::state_dir().join("sock"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::rules::Decision;
    use ferry_protocol::{Listener, Proto};

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn reads_a_lima_yaml_and_ignores_everything_else() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "lima.yaml",
            r#"
vmType: qemu
images:
- location: "https://cloud-images.ubuntu.com/releases/24.04/release/ubuntu-24.04-server-cloudimg-amd64.img"
  arch: "x86_64"
mounts:
- location: "~"
- location: "/tmp/lima"
  writable: true
ssh:
  localPort: 60022
provision:
- mode: system
  script: |
    #!/bin/bash
    echo hi
portForwards:
- guestSocket: "/run/user/{{.UID}}/docker.sock"
  hostSocket: "{{.Dir}}/sock/docker.sock"
- guestPortRange: [8000, 8009]
  hostPortRange: [18000, 18009]
- guestIP: "0.0.0.0"
  proto: udp
  ignore: true
"#,
        );
        let rules = load_rules(Some(&p), None).unwrap();
        // 22, 60022, three user rules, the fallback.
        assert_eq!(rules.rules().len(), 6);
        let l = Listener { proto: Proto::Tcp, addr: "127.0.0.1:60022".parse().unwrap() };
        assert!(matches!(rules.decide(&l), Decision::Ignored { rule: 1 }));
        let l = Listener { proto: Proto::Tcp, addr: "0.0.0.0:8001".parse().unwrap() };
        assert_eq!(rules.decide(&l), Decision::Forward { host: "127.0.0.1:18001".parse().unwrap(), rule: 3 });
        let l = Listener { proto: Proto::Udp, addr: "0.0.0.0:53".parse().unwrap() };
        assert!(matches!(rules.decide(&l), Decision::Ignored { rule: 4 }));
    }

    #[test]
    fn relative_host_sockets_live_under_the_instance_sock_dir() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "lima.yaml", "portForwards:\n- guestPort: 2375\n  hostSocket: docker.sock\n");
        let rules = load_rules(Some(&p), None).unwrap();
        assert_eq!(rules.user_rules()[0].host_socket, Some(dir.path().join("sock/docker.sock")));
    }

    #[test]
    fn errors_name_the_file_and_the_rule() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "ferry.yaml", "portForwards:\n- guestPort: 80\n- proto: icmp\n");
        let e = load_rules(Some(&p), None).unwrap_err().to_string();
        assert!(e.contains("ferry.yaml") && e.contains("portForwards[1]") && e.contains("icmp"), "{e}");
        let p = write(dir.path(), "bad.yaml", "portForwards: [ {guestPort: 99999} ]\n");
        assert!(load_rules(Some(&p), None).is_err());
        assert!(load_rules(Some(&dir.path().join("missing.yaml")), None).is_err());
    }

    #[test]
    fn an_empty_file_means_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "ferry.yaml", "");
        assert_eq!(load_rules(Some(&p), Some(2222)).unwrap().rules().len(), 3);
    }
}
