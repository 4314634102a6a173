//! Install once, forget it: the `ferry daemon` follows Lima and Colima
//! instances by itself. A fake `limactl` (Lima cannot run here) keeps each
//! instance as a directory in a Lima home: `start` writes `ha.pid` and the
//! host agent's status events to `ha.stdout.log` as Lima's host agent does,
//! `stop` writes the exiting event and removes `ha.pid`; `copy` and `shell`
//! act inside the instance's namespace guest (a network and mount
//! namespace). Everything else is real: the daemon, `limactl ferry start`
//! as it runs from the daemon, the forwarder, the agent in the guest, bytes
//! checked end to end.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use ferry_tests::{bin_dir, free_port, wait_for, Guest, Proc};

const FAKE_LIMACTL: &str = r#"#!/bin/sh
# A fake limactl: instances are directories in $LIMA_HOME; each one's guest
# is the namespace whose holder pid is in <dir>/fake-holder.
home="${LIMA_HOME:?}"
case "$1" in
  list)
    shift; [ "$1" = --json ] && shift
    for name in "$@"; do
      d="$home/$name"; [ -f "$d/lima.yaml" ] || continue
      st=Stopped; [ -f "$d/ha.pid" ] && st=Running
      vm=$(sed -n 's/^vmType: *//p' "$d/lima.yaml" | head -n 1)
      printf '{"name":"%s","status":"%s","dir":"%s","vmType":"%s","sshLocalPort":0}\n' "$name" "$st" "$d" "${vm:-qemu}"
    done ;;
  copy) n=${3%%:*}; exec nsenter -t "$(cat "$home/$n/fake-holder")" -m cp "$2" "${3#*:}" ;;
  shell)
    shift; if [ "$1" = --workdir ]; then shift 2; fi
    n=$1; shift
    exec nsenter -t "$(cat "$home/$n/fake-holder")" -m -n env PATH="$FAKE_LIMA_SHIMS:$PATH" "$@" ;;
  start)
    d="$home/$2"
    # The host agent's pid (a live process: the test's own), then its events.
    echo "$FAKE_HA_PID" > "$d/ha.pid"
    printf '{"time":"t","status":{"running":false}}\n' >> "$d/ha.stdout.log"
    printf '{"time":"t","status":{"running":true,"sshLocalPort":0}}\n' >> "$d/ha.stdout.log" ;;
  stop)
    d="$home/$2"
    printf '{"time":"t","status":{"running":true,"exiting":true}}\n' >> "$d/ha.stdout.log"
    rm -f "$d/ha.pid" ;;
  *) echo "fake limactl: unsupported: $*" >&2; exit 2 ;;
esac
"#;

/// A host with Lima and Colima homes, a ferry state dir, and a fake limactl.
struct World {
    dir: tempfile::TempDir,
    vms: Vec<Vm>,
    daemon: Option<Proc>,
}

/// One instance: its directory, its home and its guest.
struct Vm {
    name: String,
    home: PathBuf,
    dir: PathBuf,
    guest: Guest,
    guest_dir: PathBuf,
}

impl Vm {
    /// `enable`'s `-- START_OPTIONS` putting the agent in the guest's private tmpfs.
    fn start_options(&self) -> Vec<String> {
        let g = &self.guest_dir;
        ["--guest-bin", "bin", "--guest-etc", "etc", "--guest-state", "run"]
            .chunks(2)
            .flat_map(|kv| [kv[0].to_string(), g.join(kv[1]).display().to_string()])
            .collect()
    }

    fn lima_yaml(&self) -> String {
        std::fs::read_to_string(self.dir.join("lima.yaml")).unwrap()
    }

    fn forwarder_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.dir.join("ferry/ferry.pid")).ok()?;
        let pid: u32 = text.trim().parse().ok()?;
        // Only while a live `ferry run` holds it.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        String::from_utf8_lossy(&cmdline).contains("run").then_some(pid)
    }
}

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for d in ["bin", "shims", "lima", "colima/_lima", "state", "home"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        write_exec(&dir.path().join("bin/limactl"), FAKE_LIMACTL);
        write_exec(&dir.path().join("shims/sudo"), "#!/bin/sh\nexec \"$@\"\n");
        std::os::unix::fs::symlink(bin_dir().join("ferry"), dir.path().join("bin/limactl-ferry")).unwrap();
        Self { dir, vms: Vec::new(), daemon: None }
    }

    fn lima_home(&self) -> PathBuf {
        self.dir.path().join("lima")
    }

    fn colima_home(&self) -> PathBuf {
        self.dir.path().join("colima/_lima")
    }

    fn env(&self) -> Vec<(String, String)> {
        let p = |s: &str| self.dir.path().join(s).display().to_string();
        vec![
            ("LIMACTL".into(), p("bin/limactl")),
            ("LIMA_HOME".into(), p("lima")),
            ("COLIMA_HOME".into(), p("colima")),
            ("FERRY_STATE_DIR".into(), p("state")),
            ("HOME".into(), p("home")),
            ("FAKE_LIMA_SHIMS".into(), p("shims")),
            ("FAKE_HA_PID".into(), std::process::id().to_string()),
            ("PATH".into(), format!("{}:{}", p("bin"), std::env::var("PATH").unwrap_or_default())),
        ]
    }

    /// Creates instance `name` in `home` with `lima_yaml`, stopped, in a guest of its own.
    fn add_vm(&mut self, home: &Path, name: &str, lima_yaml: &str) -> usize {
        let dir = home.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("lima.yaml"), lima_yaml).unwrap();
        let guest_dir = self.dir.path().join(format!("guest-{name}"));
        let guest = Guest::with_private_dir(&guest_dir, self.dir.path().join(format!("holder-{name}.log")));
        std::fs::write(dir.join("fake-holder"), guest.holder_pid().unwrap().to_string()).unwrap();
        self.vms.push(Vm { name: name.into(), home: home.into(), dir, guest, guest_dir });
        self.vms.len() - 1
    }

    fn run(&self, program: &Path, args: &[&str], home: Option<&Path>) -> Output {
        let mut c = Command::new(program);
        c.args(args).envs(self.env());
        if let Some(h) = home {
            c.env("LIMA_HOME", h);
        }
        c.output().unwrap()
    }

    /// `limactl ferry ARGS`, which must succeed; its stdout.
    fn plugin(&self, args: &[&str]) -> String {
        let out = self.run(&self.dir.path().join("bin/limactl-ferry"), args, None);
        assert!(
            out.status.success(),
            "limactl ferry {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `limactl VERB NAME` in the instance's home; returns when its last event is written.
    fn limactl(&self, vm: usize, verb: &str) -> Instant {
        let v = &self.vms[vm];
        let out = self.run(&self.dir.path().join("bin/limactl"), &[verb, &v.name], Some(&v.home));
        assert!(out.status.success(), "limactl {verb}: {}", String::from_utf8_lossy(&out.stderr));
        Instant::now()
    }

    fn start_daemon(&mut self) {
        let mut c = Command::new(bin_dir().join("ferry"));
        c.args(["daemon", "-v"]).envs(self.env());
        self.daemon = Some(Proc::spawn(c, self.dir.path().join("daemon.log")));
    }

    fn daemon_log(&self) -> String {
        self.daemon.as_ref().map(|d| d.log_text() + &d.stdout_text()).unwrap_or_default()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- daemon log ---\n{}", self.daemon_log());
            for v in &self.vms {
                let log = std::fs::read_to_string(v.dir.join("ferry/ferry.log")).unwrap_or_default();
                eprintln!("--- ferry log of {} ---\n{log}", v.name);
            }
        }
        // The daemon first (it would start forwarders again), then every forwarder, by its pid file.
        drop(self.daemon.take());
        for v in &self.vms {
            if let Some(pid) = v.forwarder_pid() {
                // SAFETY: kill(2) of the `ferry run` holding this instance's pid file.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
    }
}

fn write_exec(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

/// A TCP echo server on 127.0.0.1:`port` in `guest`, on a thread of its own.
fn guest_echo(guest: &Guest, port: u16) {
    let l = guest.run_in(move || std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind in guest"));
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf);
                let _ = s.write_all(&buf);
            });
        }
    });
}

/// One echo through host port `port`, if it works right now.
fn echo_once(port: u16, msg: &[u8]) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(msg).ok()?;
    s.shutdown(std::net::Shutdown::Write).ok()?;
    let mut back = Vec::new();
    s.read_to_end(&mut back).ok()?;
    (back == msg).then_some(back)
}

/// Waits (a hang guard of 30 s) until `port` echoes through the forwarder;
/// returns how long that took from `since`.
fn wait_forwarding(port: u16, since: Instant, what: &str) -> Duration {
    wait_for(Duration::from_secs(30), what, || echo_once(port, what.as_bytes()));
    since.elapsed()
}

/// Waits until nothing listens on the host's `port`.
fn wait_down(port: u16, what: &str) {
    wait_for(Duration::from_secs(30), what, || {
        TcpStream::connect(("127.0.0.1", port)).err().filter(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
    });
}

#[test]
fn an_enabled_instance_is_followed_through_starts_stops_and_a_lost_agent_then_disabled() {
    let mut w = World::new();
    let port = free_port();
    let original = "vmType: qemu\n# the user's file\nmounts: []\n";
    let dev = w.add_vm(&w.lima_home(), "dev", original);
    guest_echo(&w.vms[dev].guest, port);
    w.start_daemon();

    // Enabled while stopped: takes effect at the next start.
    let mut args = vec!["enable", "dev", "--"];
    let opts = w.vms[dev].start_options();
    args.extend(opts.iter().map(String::as_str));
    let said = w.plugin(&args);
    assert!(said.contains("ferry takes over at its next start"), "{said}");
    assert!(w.vms[dev].lima_yaml().contains("Lima's own port forwarding is off"), "edited before Lima reads it");
    assert!(w.vms[dev].forwarder_pid().is_none(), "nothing runs for a stopped instance");

    let running = w.limactl(dev, "start");
    let first = wait_forwarding(port, running, "first start");
    eprintln!("measured: forwarding up {} ms after Running (first start: agent installed)", first.as_millis());
    assert!(w.vms[dev].guest.command("test").arg("-x").arg(w.vms[dev].guest_dir.join("bin/ferry-agent")).status().unwrap().success());

    // Stop: forwarding goes down, the forwarder exits.
    w.limactl(dev, "stop");
    wait_down(port, "forwarding down after stop");
    wait_for(Duration::from_secs(15), "the forwarder to exit", || w.vms[dev].forwarder_pid().is_none().then_some(()));

    // The guest lost the agent (a new disk, say): it is installed again.
    let agent = w.vms[dev].guest_dir.join("bin/ferry-agent");
    assert!(w.vms[dev].guest.command("rm").arg(&agent).status().unwrap().success());
    let running = w.limactl(dev, "start");
    let second = wait_forwarding(port, running, "start without an agent");
    eprintln!("measured: forwarding up {} ms after Running (agent reinstalled)", second.as_millis());
    assert!(w.vms[dev].guest.command("test").arg("-x").arg(&agent).status().unwrap().success(), "reinstalled");
    wait_for(Duration::from_secs(30), "the daemon's second start", || {
        (w.daemon_log().matches("forwarding up,").count() == 2).then_some(())
    });

    // Disable: forwarding stops for good, lima.yaml is the user's again, byte for byte.
    let said = w.plugin(&["disable", "dev"]);
    assert!(said.contains("dev: disabled"), "{said}");
    wait_down(port, "forwarding down after disable");
    assert_eq!(w.vms[dev].lima_yaml(), original);
    assert!(!w.vms[dev].dir.join("ferry/enabled.json").exists());
    // And it stays down across the next start.
    w.limactl(dev, "stop");
    w.limactl(dev, "start");
    std::thread::sleep(Duration::from_secs(3));
    assert!(echo_once(port, b"disabled").is_none(), "a disabled instance is not forwarded");
    assert!(w.vms[dev].forwarder_pid().is_none());
}
