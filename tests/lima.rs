//! The `limactl ferry` plugin end to end, against a faithful fake `limactl`
//! (Lima cannot run here): `list --json` describes one running instance,
//! `copy` and `shell` act inside a namespace guest with its own mount
//! namespace, as they would inside the VM.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use ferry_tests::{
    bin_dir, free_port,
    net::{connect_forwarded, spawn_echo, wait_released},
    ssh::{master_pid, MasterGuard},
    Guest,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FAKE_LIMACTL: &str = r#"#!/bin/sh
# A fake limactl: one instance, running in a namespace guest.
case "$1" in
  list) cat "$FAKE_LIMA_LIST" ;;
  copy)
    # A test's stand-in for the user saving lima.yaml while ferry works.
    if [ -n "$FAKE_LIMA_ON_COPY" ]; then sh -c "$FAKE_LIMA_ON_COPY"; fi
    exec nsenter -t "$FAKE_LIMA_HOLDER" -m cp "$2" "${3#*:}" ;;
  shell)
    shift
    if [ "$1" = "--workdir" ]; then shift 2; fi
    shift
    exec nsenter -t "$FAKE_LIMA_HOLDER" -m -n env PATH="$FAKE_LIMA_SHIMS:$PATH" "$@" ;;
  *) echo "fake limactl: unsupported: $*" >&2; exit 2 ;;
esac
"#;

struct Lima {
    /// Ended after `stop` (which runs in `drop`), before the instance
    /// directory goes: the ControlMaster a test's ssh.config keeps.
    master: Option<MasterGuard>,
    guest: Guest,
    dir: tempfile::TempDir,
    inst: PathBuf,
}

impl Lima {
    fn new(lima_yaml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let inst = dir.path().join("instances/dev");
        std::fs::create_dir_all(&inst).unwrap();
        std::fs::write(inst.join("lima.yaml"), lima_yaml).unwrap();
        let guest = Guest::with_private_dir(&dir.path().join("guest"), dir.path().join("holder.log"));
        let bin = dir.path().join("bin");
        let shims = dir.path().join("shims");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&shims).unwrap();
        write_exec(&bin.join("limactl"), FAKE_LIMACTL);
        write_exec(&shims.join("sudo"), "#!/bin/sh\nexec \"$@\"\n");
        // The guest's architecture as `uname -m` reports it: the real one
        // unless a test names another.
        write_exec(
            &shims.join("uname"),
            "#!/bin/sh\nif [ \"$1\" = -m ] && [ -n \"$FAKE_LIMA_ARCH\" ]; then echo \"$FAKE_LIMA_ARCH\"; else exec /bin/uname \"$@\"; fi\n",
        );
        std::os::unix::fs::symlink(bin_dir().join("ferry"), bin.join("limactl-ferry")).unwrap();
        let list = serde_json::json!({
            "name": "dev", "status": "Running", "dir": inst, "vmType": "qemu", "arch": "x86_64",
            "sshLocalPort": 60022, "sshConfigFile": inst.join("ssh.config"), "hostAgentPID": 1,
        });
        std::fs::write(dir.path().join("list.json"), format!("{list}\n")).unwrap();
        Self { master: None, guest, dir, inst }
    }

    fn guest_dir(&self) -> PathBuf {
        self.dir.path().join("guest")
    }

    fn plugin(&self, args: &[&str]) -> Output {
        self.plugin_with(args, &[])
    }

    /// [`Lima::plugin`] with more environment (e.g. `FAKE_LIMA_ARCH`).
    fn plugin_with(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let bin = self.dir.path().join("bin");
        let holder = self.guest.holder_pid().expect("a guest with a mount namespace");
        Command::new(bin.join("limactl-ferry"))
            .args(args)
            .env("LIMACTL", bin.join("limactl"))
            .env("FAKE_LIMA_LIST", self.dir.path().join("list.json"))
            .env("FAKE_LIMA_HOLDER", holder.to_string())
            .env("FAKE_LIMA_SHIMS", self.dir.path().join("shims"))
            .envs(env.iter().copied())
            .output()
            .unwrap()
    }

    fn start(&self) -> serde_json::Value {
        self.start_with(&[])
    }

    /// `start dev --json` with the guest's directories in its private tmpfs,
    /// `extra` arguments and more environment; its output, whatever it is.
    fn try_start(&self, extra: &[&str], env: &[(&str, &str)]) -> Output {
        let g = self.guest_dir();
        let (gbin, getc, grun) = (g.join("bin"), g.join("etc"), g.join("run"));
        let mut args = vec![
            "start",
            "dev",
            "--json",
            "--guest-bin",
            gbin.to_str().unwrap(),
            "--guest-etc",
            getc.to_str().unwrap(),
            "--guest-state",
            grun.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        self.plugin_with(&args, env)
    }

    /// `start dev --json` with the guest's directories in its private tmpfs,
    /// and `extra` arguments.
    fn start_with(&self, extra: &[&str]) -> serde_json::Value {
        let out = self.try_start(extra, &[]);
        assert!(
            out.status.success(),
            "start failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Lima {
    fn drop(&mut self) {
        // Never leave a background forwarder behind, whatever happened.
        let _ = self.plugin(&["stop", "dev"]);
    }
}

fn write_exec(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_status_logs_stop_against_a_fake_limactl() {
    let (guest_port, host_port) = (free_port(), free_port());
    let original = format!(
        "vmType: qemu\nssh:\n  localPort: 60022\nportForwards:\n- guestPort: {guest_port}\n  hostPort: {host_port}\n"
    );
    let lima = Lima::new(&original);

    let started = lima.start();
    assert_eq!(started["agent_installed"], true, "{started}");
    assert!(started["agent"].as_str().unwrap().starts_with("exec:"), "{started}");
    // The agent and secret are in the guest, and only there.
    let agent = lima.guest_dir().join("bin/ferry-agent");
    assert!(!agent.exists());
    let out = lima.guest.command(agent.to_str().unwrap()).arg("--version").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("ferry-agent {}", env!("CARGO_PKG_VERSION")));
    // Lima's own forwarding is switched off in lima.yaml.
    let edited = std::fs::read_to_string(lima.inst.join("lima.yaml")).unwrap();
    assert!(edited.contains("ferry: Lima's own port forwarding is off"), "{edited}");

    // The user's rule keeps its meaning: guest port -> the rule's host port.
    spawn_echo(lima.guest.tcp_listener(&format!("127.0.0.1:{guest_port}")));
    assert_eq!(echo_through(host_port, b"through lima").await, b"through lima");

    let status = lima.plugin(&["status", "dev", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["connected"], true, "{status}");
    let row =
        status["ports"].as_array().unwrap().iter().find(|r| r["host"] == format!("127.0.0.1:{host_port}")).cloned();
    assert_eq!(row.unwrap()["state"], "forwarding");
    let table = String::from_utf8(lima.plugin(&["status", "dev"]).stdout).unwrap();
    assert!(table.contains(&format!("127.0.0.1:{host_port}")), "{table}");
    let logs = String::from_utf8(lima.plugin(&["logs", "dev"]).stdout).unwrap();
    assert!(logs.contains("connected to agent"), "{logs}");
    // The state lives in the instance directory, private.
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(lima.inst.join("ferry")).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700);
    let again = lima.plugin(&["start", "dev"]);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("already runs"));

    // Stop: the forwarder goes, the port is released, lima.yaml is as it was.
    let stopped = lima.plugin(&["stop", "dev", "--json"]);
    let stopped: serde_json::Value = serde_json::from_slice(&stopped.stdout).unwrap();
    assert_eq!((stopped["stopped"].as_bool(), stopped["lima_yaml_restored"].as_bool()), (Some(true), Some(true)));
    wait_released(&format!("127.0.0.1:{host_port}")).await;
    assert_eq!(std::fs::read_to_string(lima.inst.join("lima.yaml")).unwrap(), original);
    let status = lima.plugin(&["status", "dev", "--json"]);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&status.stdout).unwrap()["running"], false);

    // A second start finds the agent current and installs nothing.
    let restarted = lima.start();
    assert_eq!(restarted["agent_installed"], false, "{restarted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_instances_ssh_connections_go_through_its_controlmaster() {
    let guest_port = free_port();
    let mut lima = Lima::new("vmType: vz\n");
    // An ssh.config as Lima writes it (ControlMaster auto, ControlPath in
    // the instance dir, ControlPersist yes), reaching a real sshd in the guest.
    let shims = lima.dir.path().join("shims");
    let ssh = ferry_tests::ssh::SshGuest::with_sshd_options(
        lima.dir.path(),
        &format!("SetEnv PATH={}:/usr/local/bin:/usr/bin:/bin\n", shims.display()),
    )
    .unwrap();
    let control = lima.inst.join("ssh.sock");
    let config = lima.inst.join("ssh.config");
    std::fs::write(
        &config,
        format!(
            "Host lima-dev\n  IdentityFile \"{}\"\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  \
             BatchMode yes\n  LogLevel ERROR\n  User root\n  ControlMaster auto\n  ControlPath \"{}\"\n  \
             ControlPersist yes\n  ProxyCommand {}\n",
            ssh.client_key().display(),
            control.display(),
            ssh.proxy_command(&lima.guest)
        ),
    )
    .unwrap();
    lima.master = Some(MasterGuard(control.clone()));

    let started = lima.start();
    assert_eq!(started["ssh_master"], control.display().to_string(), "{started}");
    assert!(started["agent"].as_str().unwrap().starts_with("exec:ssh -F"), "{started}");
    // The session has an ssh connection of its own; the start brought the
    // master up for the connections.
    assert!(started["agent"].as_str().unwrap().contains("-o ControlMaster=no -o ControlPath=none"), "{started}");
    assert!(master_pid(&control).is_some(), "the start left a ControlMaster");

    spawn_echo(lima.guest.tcp_listener(&format!("127.0.0.1:{guest_port}")));
    assert_eq!(echo_through(guest_port, b"through the master").await, b"through the master");

    let status = lima.plugin(&["status", "dev", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["data_path"], "ssh-master", "{status}");
    assert_eq!(status["connections_by_route"]["ssh_master"], 1, "{status}");
    let table = String::from_utf8(lima.plugin(&["status", "dev"]).stdout).unwrap();
    assert!(table.contains("1 through the ssh master"), "{table}");
}

/// Sends `msg` through the host port `port`, half-closes, and returns the echo.
async fn echo_through(port: u16, msg: &[u8]) -> Vec<u8> {
    let mut s = connect_forwarded(&format!("127.0.0.1:{port}")).await;
    s.write_all(msg).await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_vznat_address_the_agent_serves_on_tcp_and_ssh_is_the_fallback() {
    let (guest_port, agent_port) = (free_port(), free_port());
    let lima = Lima::new("vmType: vz\n");
    // The guest's NIC on a network the host reaches (vzNAT), named as Lima names it.
    let (_, guest_ip) = lima.guest.link_to_host("lima0");
    let started = lima.start_with(&["--agent-port", &agent_port.to_string()]);
    assert_eq!(started["transport"], "tcp", "{started}");
    assert_eq!(started["agent"], format!("tcp:{guest_ip}:{agent_port}"), "{started}");
    assert!(started["fallback_agent"].as_str().unwrap().starts_with("exec:"), "{started}");

    spawn_echo(lima.guest.tcp_listener(&format!("127.0.0.1:{guest_port}")));
    assert_eq!(echo_through(guest_port, b"over vznat").await, b"over vznat");
    let status = || {
        let out = lima.plugin(&["status", "dev", "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let s = status();
    assert_eq!(s["transport"], format!("tcp:{guest_ip}:{agent_port}"), "{s}");
    // Over the network every connection travels inside the sealed session.
    assert_eq!(
        (s["data_path"].as_str(), s["connections_by_route"]["multiplexed"].as_u64()),
        (Some("sealed"), Some(1)),
        "{s}"
    );

    // The service dies (killed by its pid): ferry falls back to the agent over the instance's shell.
    let pid_file = lima.guest_dir().join("run/agent.pid");
    let pid = lima.guest.command("cat").arg(&pid_file).output().unwrap();
    let pid: i32 = String::from_utf8_lossy(&pid.stdout).trim().parse().unwrap();
    // SAFETY: kill(2) of the agent service's pid, read from its own pid file.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let s = ferry_tests::wait_for(std::time::Duration::from_secs(30), "the fallback session", || {
        let s = status();
        (s["connected"] == true && s["transport"].as_str().is_some_and(|t| t.starts_with("exec:"))).then_some(s)
    });
    assert_eq!(s["agent"], format!("tcp:{guest_ip}:{agent_port}"), "{s}");
    assert_eq!(echo_through(guest_port, b"over the fallback").await, b"over the fallback");
    let table = String::from_utf8(lima.plugin(&["status", "dev"]).stdout).unwrap();
    assert!(table.contains("connected over exec:"), "{table}");

    // Stop ends the service the next start began, and forgets it.
    let again = lima.plugin(&["stop", "dev"]);
    assert!(again.status.success());
    let restarted = lima.start_with(&["--agent-port", &agent_port.to_string()]);
    assert_eq!(restarted["transport"], "tcp", "{restarted}");
    let pid = lima.guest.command("cat").arg(&pid_file).output().unwrap();
    let pid: i32 = String::from_utf8_lossy(&pid.stdout).trim().parse().unwrap();
    let stopped = lima.plugin(&["stop", "dev"]);
    assert!(stopped.status.success());
    assert!(!lima.inst.join("ferry/agent-service.json").exists());
    // SAFETY: signal 0 only asks whether that pid still exists.
    assert_ne!(unsafe { libc::kill(pid, 0) }, 0, "the agent service was stopped");
}

#[test]
fn socket_rules_move_from_lima_to_ferry_at_the_same_host_path_and_come_back() {
    let lima = Lima::new("");
    let guest_sock = lima.guest_dir().join("docker.sock");
    let original =
        format!("vmType: vz\nportForwards:\n- guestSocket: \"{}\"\n  hostSocket: docker.sock\n", guest_sock.display());
    std::fs::write(lima.inst.join("lima.yaml"), &original).unwrap();
    lima.start();
    let edited = std::fs::read_to_string(lima.inst.join("lima.yaml")).unwrap();
    assert!(edited.contains("#ferry-moved# - guestSocket:"), "Lima no longer sees the rule: {edited}");

    // ferry serves it at the path Lima used (docker contexts point there).
    let mut server = lima.guest.command("python3");
    server.args(["-c", ferry_tests::net::UNIX_ECHO_PY]).arg(&guest_sock);
    let _server = ferry_tests::Proc::spawn(server, lima.dir.path().join("unix-echo.log"));
    let host_sock = lima.inst.join("sock/docker.sock");
    let back = ferry_tests::wait_for(std::time::Duration::from_secs(30), "the moved socket rule", || {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&host_sock).ok()?;
        s.write_all(b"ping").ok()?;
        s.shutdown(std::net::Shutdown::Write).ok()?;
        let mut back = Vec::new();
        s.read_to_end(&mut back).ok()?;
        (!back.is_empty()).then_some(back)
    });
    assert_eq!(back, b"ping");

    let status = |lima: &Lima| {
        let out = lima.plugin(&["status", "dev", "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["lima"].clone()
    };
    let s = status(&lima);
    assert_eq!(s["socket_rules_moved"], 1, "{s}");
    assert_eq!(s["lima_forwarding_off"], false, "Lima has not restarted since: {s}");
    assert_eq!(s["agent_version"], format!("ferry-agent {}", env!("CARGO_PKG_VERSION")), "{s}");
    // Lima's host agent (re)starts and reads the edited lima.yaml.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(lima.inst.join("ha.pid"), "1\n").unwrap();
    assert_eq!(status(&lima)["lima_forwarding_off"], true);
    let table = String::from_utf8(lima.plugin(&["status", "dev"]).stdout).unwrap();
    assert!(table.contains("own forwarding off; 1 socket rule(s) served by ferry"), "{table}");

    let stopped = lima.plugin(&["stop", "dev"]);
    assert!(stopped.status.success());
    assert_eq!(std::fs::read_to_string(lima.inst.join("lima.yaml")).unwrap(), original, "byte for byte");
}

/// A Unix stream echo server on argv[1].

#[test]
fn the_tcp_transport_needs_a_vznat_or_shared_address() {
    let text = "vmType: qemu\n";
    let lima = Lima::new(text);
    let gbin = lima.guest_dir().join("bin");
    let out = lima.plugin(&["start", "dev", "--transport", "tcp", "--guest-bin", gbin.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no lima0 address") && err.contains("--transport ssh"), "{err}");
    // Refused before anything changed: no agent in the guest, lima.yaml as it was.
    let installed = lima.guest.command("test").arg("-e").arg(gbin.join("ferry-agent")).status().unwrap();
    assert!(!installed.success(), "nothing is installed");
    assert_eq!(std::fs::read_to_string(lima.inst.join("lima.yaml")).unwrap(), text);
}

#[test]
fn start_refuses_a_stopped_instance_and_an_unknown_one() {
    let lima = Lima::new("vmType: qemu\n");
    let list = lima.dir.path().join("list.json");
    let text = std::fs::read_to_string(&list).unwrap().replace("\"Running\"", "\"Stopped\"");
    std::fs::write(&list, text).unwrap();
    let out = lima.plugin(&["start", "dev"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("limactl start dev"));
    let out = lima.plugin(&["status", "nope"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no Lima instance named \"nope\""));
}

#[test]
fn start_on_a_guest_architecture_with_no_agent_says_what_is_missing() {
    // Only this machine's x86_64 ferry-agent sits next to ferry; the guest says aarch64.
    let lima = Lima::new("vmType: vz\n");
    let g = lima.guest_dir();
    let (gbin, getc) = (g.join("bin"), g.join("etc"));
    let args = ["start", "dev", "--guest-bin", gbin.to_str().unwrap(), "--guest-etc", getc.to_str().unwrap()];
    let out = lima.plugin_with(&args, &[("FAKE_LIMA_ARCH", "aarch64")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "start must fail: {err}");
    assert!(err.contains("no ferry-agent for this Linux aarch64 guest"), "{err}");
    assert!(err.contains("ferry-agent (not a Linux aarch64 ELF)"), "{err}");
    assert!(err.contains("aarch64-unknown-linux-musl"), "says how to get one: {err}");
    let installed = lima.guest.command("test").arg("-e").arg(g.join("bin/ferry-agent")).status().unwrap();
    assert!(!installed.success(), "nothing may be installed in the guest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_host_secret_reaches_the_guest_on_the_next_start() {
    let (guest_port, host_port) = (free_port(), free_port());
    let lima = Lima::new(&format!("vmType: vz\nportForwards: []\n# guest {guest_port} -> host {host_port}\n"));
    assert_eq!(lima.start()["agent_installed"], true);
    let stopped = lima.plugin(&["stop", "dev"]);
    assert!(stopped.status.success());
    // `portForwards: []` was edited as a block and given back byte for byte.
    let yaml = std::fs::read_to_string(lima.inst.join("lima.yaml")).unwrap();
    assert_eq!(yaml, format!("vmType: vz\nportForwards: []\n# guest {guest_port} -> host {host_port}\n"));
    // The host's secret changes (rotated, or the state dir was recreated).
    let secret = lima.inst.join("ferry/secret");
    let old = std::fs::read_to_string(&secret).unwrap();
    std::fs::remove_file(&secret).unwrap();
    let restarted = lima.start();
    assert_ne!(std::fs::read_to_string(&secret).unwrap(), old, "a new secret was made");
    assert_eq!(restarted["agent_installed"], true, "the new secret must be installed: {restarted}");
    // And the session authenticates with it: a guest port is forwarded.
    spawn_echo(lima.guest.tcp_listener(&format!("127.0.0.1:{guest_port}")));
    let mut s = connect_forwarded(&format!("127.0.0.1:{guest_port}")).await;
    s.write_all(b"new secret").await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"new secret");
}

#[test]
fn a_lima_yaml_form_ferry_does_not_edit_is_refused_and_left_alone() {
    let text = "vmType: vz\nportForwards: [{guestPort: 80, hostPort: 8080}]\n";
    let lima = Lima::new(text);
    let out = lima.plugin(&["start", "dev"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("flow sequence") && err.contains("limactl ferry start"), "says what to change: {err}");
    assert_eq!(std::fs::read_to_string(lima.inst.join("lima.yaml")).unwrap(), text, "untouched");
    let installed =
        lima.guest.command("test").arg("-e").arg(lima.guest_dir().join("bin/ferry-agent")).status().unwrap();
    assert!(!installed.success(), "nothing installed before the refusal");
    assert!(!lima.inst.join("ferry/ferry.pid").exists() || lima.plugin(&["status", "dev"]).status.success());
}

/// Whether something accepts TCP connections at `addr`.
fn listening(addr: &str) -> bool {
    std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), std::time::Duration::from_secs(1)).is_ok()
}

#[test]
fn a_rule_the_user_adds_while_ferry_runs_survives_stop_and_the_file_parses() {
    let original = "vmType: vz\nportForwards: [] # none yet\nmounts: []\n";
    let lima = Lima::new(original);
    lima.start();
    let path = lima.inst.join("lima.yaml");
    let edited = std::fs::read_to_string(&path).unwrap();
    // The user adds a rule after ferry's block, the way they would add one to a list.
    let changed = edited.replace("# <<< ferry\n", "# <<< ferry\n- guestPort: 8080\n  hostPort: 18080\n");
    assert_ne!(changed, edited);
    std::fs::write(&path, &changed).unwrap();
    let stopped = lima.plugin(&["stop", "dev"]);
    assert!(stopped.status.success(), "{}", String::from_utf8_lossy(&stopped.stderr));
    let back = std::fs::read_to_string(&path).unwrap();
    assert_eq!(back, "vmType: vz\nportForwards: # none yet\n- guestPort: 8080\n  hostPort: 18080\nmounts: []\n");
    // ferry reads it again (as Lima would): a second start and stop give the same file back.
    lima.start();
    assert!(lima.plugin(&["stop", "dev"]).status.success());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), back);
}

#[test]
fn an_edit_the_user_saves_while_start_installs_the_agent_is_kept() {
    let original = "vmType: vz\nportForwards:\n- guestPort: 80\n  hostPort: 8080\n";
    let lima = Lima::new(original);
    let path = lima.inst.join("lima.yaml");
    // While the agent is copied into the guest, the user saves a change.
    // (Once: the agent and the secret are two copies.)
    let hook = format!("grep -q memory '{0}' || printf 'memory: 4GiB\\n' >> '{0}'", path.display());
    let out = lima.try_start(&[], &[("FAKE_LIMA_ON_COPY", &hook)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let edited = std::fs::read_to_string(&path).unwrap();
    assert!(edited.ends_with("memory: 4GiB\n") && edited.contains("# >>> ferry"), "{edited}");
    assert!(lima.plugin(&["stop", "dev"]).status.success());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{original}memory: 4GiB\n"));
}

#[test]
fn a_symlinked_lima_yaml_stays_a_symlink() {
    let original = "vmType: vz\n";
    let lima = Lima::new(original);
    let path = lima.inst.join("lima.yaml");
    let target = lima.dir.path().join("dotfiles/dev.yaml");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::rename(&path, &target).unwrap();
    std::os::unix::fs::symlink("../../dotfiles/dev.yaml", &path).unwrap();
    lima.start();
    assert!(std::fs::symlink_metadata(&path).unwrap().file_type().is_symlink(), "still a symlink");
    assert!(std::fs::read_to_string(&target).unwrap().contains("# >>> ferry"), "its target was edited");
    assert!(lima.plugin(&["stop", "dev"]).status.success());
    assert!(std::fs::symlink_metadata(&path).unwrap().file_type().is_symlink(), "still a symlink");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), original);
}

#[test]
fn a_failed_start_leaves_the_instance_as_it_found_it() {
    let agent_port = free_port();
    let original = "vmType: vz\nportForwards:\n- guestPort: 80\n  hostPort: 8080\n";
    let lima = Lima::new(original);
    let (_, guest_ip) = lima.guest.link_to_host("lima0");
    // The agent service starts, then ferry gives up waiting for the forwarder (no time at all).
    let out = lima.try_start(&["--agent-port", &agent_port.to_string(), "--timeout", "0"], &[]);
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("did not connect"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(lima.inst.join("lima.yaml")).unwrap(), original, "lima.yaml restored");
    assert!(!lima.inst.join("ferry/agent-service.json").exists(), "no service left on record");
    assert!(!listening(&format!("{guest_ip}:{agent_port}")), "the agent service no longer listens");
    let status = lima.plugin(&["status", "dev", "--json"]);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&status.stdout).unwrap()["running"], false, "no forwarder");
}

#[test]
fn start_with_a_given_agent_stops_the_service_an_earlier_start_left() {
    let agent_port = free_port();
    let lima = Lima::new("vmType: vz\n");
    let (_, guest_ip) = lima.guest.link_to_host("lima0");
    let started = lima.start_with(&["--agent-port", &agent_port.to_string()]);
    assert_eq!(started["transport"], "tcp", "{started}");
    let service = format!("{guest_ip}:{agent_port}");
    assert!(listening(&service));
    // ferry dies without `stop`: the service stays, on record.
    let pid = started["pid"].as_i64().unwrap() as libc::pid_t;
    // SAFETY: kill(2) of the forwarder start reported.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    ferry_tests::wait_for(std::time::Duration::from_secs(10), "the forwarder's end", || {
        let out = lima.plugin(&["status", "dev", "--json"]);
        (serde_json::from_slice::<serde_json::Value>(&out.stdout).ok()?["running"] == false).then_some(())
    });
    // The next start names its own agent (the same agent, over the instance's shell).
    let given = started["fallback_agent"].as_str().unwrap().to_string();
    let restarted = lima.start_with(&["--agent", &given]);
    assert_eq!(restarted["transport"], "given", "{restarted}");
    assert!(!listening(&service), "the earlier start's service was stopped");
    assert!(!lima.inst.join("ferry/agent-service.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_on_the_agent_port_is_not_taken_for_the_agent() {
    let (guest_port, agent_port) = (free_port(), free_port());
    let lima = Lima::new("vmType: vz\n");
    let (_, guest_ip) = lima.guest.link_to_host("lima0");
    // Something else holds the agent's port in the guest: it accepts, and answers nothing.
    let _imposter = lima.guest.tcp_listener(&format!("{guest_ip}:{agent_port}"));
    let started = lima.start_with(&["--agent-port", &agent_port.to_string()]);
    assert_eq!(started["transport"], "ssh", "a bare connect is no hello: {started}");
    assert!(!lima.inst.join("ferry/agent-service.json").exists());
    spawn_echo(lima.guest.tcp_listener(&format!("127.0.0.1:{guest_port}")));
    assert_eq!(echo_through(guest_port, b"over ssh").await, b"over ssh");
}

#[test]
fn stop_kills_an_agent_service_that_ignores_sigterm() {
    let lima = Lima::new("vmType: vz\n");
    let grun = lima.guest_dir().join("run");
    // A stand-in for a stuck agent service: named like one, deaf to SIGTERM.
    let stub = lima.dir.path().join("ferry-agent-stuck");
    let pid_file = lima.dir.path().join("stuck.pid");
    std::fs::write(&stub, format!("trap '' TERM\necho $$ > '{}'\nwhile :; do sleep 1; done\n", pid_file.display()))
        .unwrap();
    let _stuck = ferry_tests::Proc::spawn(
        {
            let mut c = lima.guest.command("sh");
            c.arg(&stub);
            c
        },
        lima.dir.path().join("stuck.log"),
    );
    let pid: i32 = ferry_tests::wait_for(std::time::Duration::from_secs(10), "the stub's pid", || {
        std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok()
    });
    let ok = lima
        .guest
        .command("sh")
        .arg("-c")
        .arg(format!("mkdir -p '{0}' && echo {pid} > '{0}/agent.pid'", grun.display()))
        .status()
        .unwrap();
    assert!(ok.success());
    std::fs::create_dir_all(lima.inst.join("ferry")).unwrap();
    let record = serde_json::json!({"addr": "127.0.0.1:1", "guest_state": grun});
    std::fs::write(lima.inst.join("ferry/agent-service.json"), record.to_string()).unwrap();

    let stopped = lima.plugin(&["stop", "dev"]);
    assert!(stopped.status.success(), "{}", String::from_utf8_lossy(&stopped.stderr));
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let alive = stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z'));
    // SAFETY: kill(2) of the stub this test started, whatever happened.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(!alive, "SIGKILL follows SIGTERM's grace: {stat}");
    assert!(!lima.inst.join("ferry/agent-service.json").exists());
}
