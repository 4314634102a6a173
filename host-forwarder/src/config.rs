//! The rules file of `ferry run --rules`: a Lima instance's lima.yaml or
//! ferry's own config file. Both carry Lima's `portForwards` list (port
//! rules, socket rules, reverse socket rules); ferry's file may also list
//! `reverseForwards` (`{guest, host}`, each an IP:PORT or an absolute socket
//! path; a `udp:IP:PORT` guest for UDP, its host an IP:PORT). Only the keys ferry uses are read; the rest of a lima.yaml is ignored.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

use crate::{
    files::Mount,
    ports::rules::{Rule, RuleSet, RuleSpec},
    reverse::{self, ReverseForward},
    sockets::SocketForward,
};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ConfigFile {
    #[serde(rename = "portForwards")]
    port_forwards: Option<Vec<RuleSpec>>,
    #[serde(rename = "reverseForwards")]
    reverse_forwards: Vec<ReverseSpec>,
    mounts: Vec<MountSpec>,
    ssh: Ssh,
}

/// A Lima `mounts` entry: a host directory and, optionally, where the guest
/// sees it (Lima's default: the same path).
#[derive(Debug, Default, Deserialize)]
struct MountSpec {
    location: String,
    #[serde(rename = "mountPoint")]
    mount_point: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ReverseSpec {
    guest: String,
    host: String,
}

/// Everything the forwarder is configured to do.
#[derive(Debug, Default)]
pub struct Config {
    /// The effective port rules.
    pub rules: RuleSet,
    /// Guest sockets published on the host.
    pub sockets: Vec<SocketForward>,
    /// Host services reachable in the guest.
    pub reverse: Vec<ReverseForward>,
    /// Shared folders whose file events go to the guest.
    pub mounts: Vec<Mount>,
}

/// The configuration from `path` (or the defaults without one), plus the
/// command line's reverse forwards.
pub fn load(
    path: Option<&Path>,
    ssh_local_port: Option<u16>,
    extra_reverse: &[ReverseForward],
) -> anyhow::Result<Config> {
    let file = match path {
        Some(p) => read(p)?,
        None => ConfigFile::default(),
    };
    let socket_dir = path.map(socket_dir).unwrap_or_else(|| ferry_process::secret_file::state_dir().join("sock"));
    let name = |i: usize| format!("{}: portForwards[{i}]", path.map(|p| p.display().to_string()).unwrap_or_default());
    let mut rules = Vec::new();
    let mut config = Config::default();
    let vars = path.map(TemplateVars::for_file).unwrap_or_default();
    let specs = file.port_forwards.unwrap_or_default();
    // Leading "ignore everything" rules switch Lima's own forwarding off so
    // that ferry does it (`limactl ferry start` and the ferry template add
    // them); they are not meant for ferry.
    let skip = specs.iter().take_while(|s| disables_lima(s)).count();
    for (i, spec) in specs.iter().enumerate().skip(skip) {
        let mut spec = spec.clone();
        spec.guest_socket = spec.guest_socket.map(|s| vars.expand(&s));
        spec.host_socket = spec.host_socket.map(|s| vars.expand(&s));
        let rule = Rule::from_spec(&spec, &socket_dir).map_err(|e| anyhow::anyhow!("{}: {e}", name(i)))?;
        match (&rule.guest_socket, &rule.host_socket) {
            (Some(guest), Some(host)) if rule.reverse => config.reverse.push(ReverseForward {
                guest: reverse::guest_endpoint(guest).map_err(|e| anyhow::anyhow!("{}: guestSocket {e}", name(i)))?,
                host: reverse::HostEndpoint::Unix(host.clone()),
            }),
            (Some(guest), Some(host)) if !rule.ignore => {
                config.sockets.push(SocketForward { guest: guest.clone(), host: host.clone() })
            }
            (Some(_), None) => anyhow::bail!("{}: guestSocket needs a hostSocket", name(i)),
            _ => {}
        }
        rules.push(rule);
    }
    for (i, r) in file.reverse_forwards.iter().enumerate() {
        let at = |e: String| anyhow::anyhow!("reverseForwards[{i}]: {e}");
        config.reverse.push(reverse::forward(&r.guest, &r.host).map_err(at)?);
    }
    config.reverse.extend_from_slice(extra_reverse);
    for m in &file.mounts {
        let host = expand_home(&m.location);
        let guest = m.mount_point.as_deref().map(expand_home).unwrap_or_else(|| host.clone());
        config.mounts.push(Mount { host: host.into(), guest });
    }
    config.rules = RuleSet::new(rules, ssh_local_port.or(file.ssh.local_port));
    Ok(config)
}

/// Whether a rule is one of Lima's "disable all forwarding" rules: ignore,
/// every port, no socket.
pub fn disables_lima(s: &RuleSpec) -> bool {
    s.ignore && s.guest_socket.is_none() && s.guest_port == 0 && s.guest_port_range == Some([1, 65535])
}

/// The values of Lima's template variables in socket paths.
#[derive(Debug, Default)]
struct TemplateVars {
    dir: String,
    name: String,
    user: String,
    uid: String,
    home: String,
}

impl TemplateVars {
    /// For a lima.yaml at `file`: the instance is its directory.
    fn for_file(file: &Path) -> Self {
        let dir = file.parent().unwrap_or(Path::new("."));
        let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
        Self {
            dir: dir.display().to_string(),
            name: dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            home: format!("/home/{user}.linux"),
            uid: unsafe { libc::getuid() }.to_string(),
            user,
        }
    }

    /// Replaces `{{.Dir}}`, `{{.Name}}`, `{{.User}}`, `{{.UID}}` and `{{.Home}}`.
    fn expand(&self, s: &str) -> String {
        let mut out = s.to_string();
        for (key, value) in
            [("Dir", &self.dir), ("Name", &self.name), ("User", &self.user), ("UID", &self.uid), ("Home", &self.home)]
        {
            for pattern in [format!("{{{{.{key}}}}}"), format!("{{{{ .{key} }}}}")] {
                out = out.replace(&pattern, value);
            }
        }
        out
    }
}

/// `~` and `~/x` as the host user's home (as Lima reads `location`).
fn expand_home(p: &str) -> String {
    let home = std::env::var("HOME").unwrap_or_default();
    match p.strip_prefix('~') {
        Some("") => home,
        Some(rest) if rest.starts_with('/') => format!("{home}{rest}"),
        _ => p.to_string(),
    }
}

fn read(path: &Path) -> anyhow::Result<ConfigFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read rules file {}", path.display()))?;
    if text.trim().is_empty() {
        return Ok(ConfigFile::default());
    }
    // A lima.yaml `limactl ferry start` edited is read as the user wrote it:
    // the socket rules it moved out of Lima's sight are ferry's to serve.
    let text = crate::lima::lima_yaml::restore(&text);
    serde_saphyr::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Ssh {
    #[serde(rename = "localPort")]
    local_port: Option<u16>,
}

/// The effective port rules from `path`, or the defaults without a file.
#[cfg(test)]
fn load_rules(path: Option<&Path>, ssh_local_port: Option<u16>) -> anyhow::Result<RuleSet> {
    Ok(load(path, ssh_local_port, &[])?.rules)
}

/// Where relative `hostSocket` paths live: the instance's `sock/` for a
/// lima.yaml (as Lima does), else `STATE_DIR/sock/`.
fn socket_dir(rules_file: &Path) -> PathBuf {
    match (rules_file.file_name(), rules_file.parent()) {
        (Some(name), Some(dir)) if name == "lima.yaml" => dir.join("sock"),
        _ => ferry_process::secret_file::state_dir().join("sock"),
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
        let c = load(Some(&p), None, &[]).unwrap();
        let home = std::env::var("HOME").unwrap();
        assert_eq!(c.mounts[0], Mount { host: home.clone().into(), guest: home });
        assert_eq!(c.mounts[1], Mount { host: "/tmp/lima".into(), guest: "/tmp/lima".into() });
        let rules = c.rules;
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
    fn socket_rules_and_reverse_forwards_are_collected() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "lima.yaml",
            "portForwards:
- guestSocket: /var/run/docker.sock
  hostSocket: docker.sock
- guestSocket: /run/host-services/ssh-auth.sock
  hostSocket: /tmp/ssh-agent.sock
  reverse: true
reverseForwards:
- guest: 127.0.0.1:15432
  host: 127.0.0.1:5432
- guest: udp:127.0.0.1:53
  host: 127.0.0.1:5353
",
        );
        let extra = crate::reverse::parse_reverse("6379").unwrap();
        let c = load(Some(&p), None, &[extra]).unwrap();
        assert_eq!(
            c.sockets,
            vec![SocketForward { guest: "/var/run/docker.sock".into(), host: dir.path().join("sock/docker.sock") }]
        );
        assert_eq!(c.reverse.len(), 4);
        assert_eq!(c.reverse[2].host, reverse::HostEndpoint::Udp("127.0.0.1:5353".parse().unwrap()));
        assert_eq!(c.reverse[0].host, reverse::HostEndpoint::Unix("/tmp/ssh-agent.sock".into()));
        assert_eq!(c.reverse[1].guest, ferry_protocol::GuestEndpoint::Tcp("127.0.0.1:15432".parse().unwrap()));
        let p = write(dir.path(), "bad.yaml", "reverseForwards:\n- {guest: nowhere, host: 127.0.0.1:1}\n");
        assert!(load(Some(&p), None, &[]).unwrap_err().to_string().contains("reverseForwards[0]"));
    }

    #[test]
    fn lima_disabling_rules_are_skipped_and_templates_expanded() {
        let dir = tempfile::tempdir().unwrap();
        let inst = dir.path().join("myvm");
        std::fs::create_dir_all(&inst).unwrap();
        let p = write(
            &inst,
            "lima.yaml",
            "portForwards:
- {guestIP: 0.0.0.0, guestIPMustBeZero: false, guestPortRange: [1, 65535], proto: tcp, ignore: true}
- {guestIP: 0.0.0.0, guestIPMustBeZero: false, guestPortRange: [1, 65535], proto: udp, ignore: true}
- guestSocket: /run/user/{{.UID}}/docker.sock
  hostSocket: '{{.Dir}}/sock/{{.Name}}-docker.sock'
",
        );
        let c = load(Some(&p), None, &[]).unwrap();
        assert_eq!(c.rules.user_rules().len(), 1, "the two disabling rules are Lima's, not ferry's");
        let uid = unsafe { libc::getuid() };
        assert_eq!(c.sockets[0].guest, format!("/run/user/{uid}/docker.sock"));
        assert_eq!(c.sockets[0].host, inst.join("sock/myvm-docker.sock"));
    }

    #[test]
    fn an_empty_file_means_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "ferry.yaml", "");
        assert_eq!(load_rules(Some(&p), Some(2222)).unwrap().rules().len(), 3);
    }
}
