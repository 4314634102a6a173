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

use ferry_tests::{
    bin_dir, free_port,
    ssh::{master_pid, MasterGuard},
    wait_for, Guest, Proc,
};

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
      cfg=; [ -f "$d/ssh.config" ] && cfg=",\"sshConfigFile\":\"$d/ssh.config\""
      printf '{"name":"%s","status":"%s","dir":"%s","vmType":"%s","sshLocalPort":0%s}\n' "$name" "$st" "$d" "${vm:-qemu}" "$cfg"
    done ;;
  copy) n=${3%%:*}; exec nsenter -t "$(cat "$home/$n/fake-holder")" -m cp "$2" "${3#*:}" ;;
  shell)
    shift; if [ "$1" = --workdir ]; then shift 2; fi
    n=$1; shift
    exec nsenter -t "$(cat "$home/$n/fake-holder")" -m -n env PATH="$FAKE_LIMA_SHIMS:$PATH" "$@" ;;
  start)
    d="$home/$2"
    # A new host agent: a new log, its pid (a live process: the test's own), then its events.
    : > "$d/ha.stdout.log"
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
        c.args(args).envs(self.env()).env_remove("XDG_CONFIG_HOME");
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

    /// `limactl ferry enable NAME FLAGS -- START START_OPTIONS` for instance
    /// `vm` (the start options name its guest directory); its stdout.
    fn enable(&self, vm: usize, flags: &[&str], start: &[&str]) -> String {
        let mut args = vec!["enable".to_string(), self.vms[vm].name.clone()];
        args.extend(flags.iter().map(|f| f.to_string()));
        args.push("--".into());
        args.extend(start.iter().map(|f| f.to_string()));
        args.extend(self.vms[vm].start_options());
        self.plugin(&args.iter().map(String::as_str).collect::<Vec<_>>())
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
    let said = w.enable(dev, &[], &[]);
    assert!(said.contains("ferry takes over at its next start"), "{said}");
    assert!(w.vms[dev].lima_yaml().contains("Lima's own port forwarding is off"), "edited before Lima reads it");
    assert!(w.vms[dev].forwarder_pid().is_none(), "nothing runs for a stopped instance");

    let running = w.limactl(dev, "start");
    let first = wait_forwarding(port, running, "first start");
    eprintln!("measured: forwarding up {} ms after Running (first start: agent installed)", first.as_millis());
    assert!(w.vms[dev]
        .guest
        .command("test")
        .arg("-x")
        .arg(w.vms[dev].guest_dir.join("bin/ferry-agent"))
        .status()
        .unwrap()
        .success());

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

/// What Colima writes as a profile's lima.yaml at every `colima start`
/// (abridged): its docker socket forwarded to `~/.colima/<profile>/docker.sock`.
fn colima_lima_yaml(colima: &Path, guest_sock: &Path, generation: u32) -> String {
    format!(
        "# generated by colima (start {generation})\nvmType: vz\nportForwards:\n- guestSocket: {}\n  hostSocket: {}\n  proto: tcp\n",
        guest_sock.display(),
        colima.join("default/docker.sock").display()
    )
}

/// A Unix stream echo server at `path` in `guest`, on a thread of its own.
fn guest_unix_echo(guest: &Guest, path: &Path) -> Proc {
    let mut c = guest.command("python3");
    c.args(["-c", ferry_tests::net::UNIX_ECHO_PY]).arg(path);
    Proc::spawn(c, path.with_extension("log"))
}

fn unix_echo_once(path: &Path, msg: &[u8]) -> Option<Vec<u8>> {
    let mut s = std::os::unix::net::UnixStream::connect(path).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(msg).ok()?;
    s.shutdown(std::net::Shutdown::Write).ok()?;
    let mut back = Vec::new();
    s.read_to_end(&mut back).ok()?;
    (back == msg).then_some(back)
}

#[test]
fn a_colima_instance_keeps_ferrys_rules_across_three_restarts_that_rewrite_lima_yaml() {
    let mut w = World::new();
    let port = free_port();
    let colima = w.dir.path().join("colima");
    let home = w.colima_home();
    // The user's own override.yaml, which must come back byte for byte.
    let override_path = home.join("_config/override.yaml");
    std::fs::create_dir_all(override_path.parent().unwrap()).unwrap();
    let users_override = "# mine\nportForwards:\n  - guestPort: 8888\n    hostPort: 18888\n";
    std::fs::write(&override_path, users_override).unwrap();
    let vm = w.add_vm(&home, "colima", "");
    let guest_sock = w.vms[vm].guest_dir.join("docker.sock");
    std::fs::write(w.vms[vm].dir.join("lima.yaml"), colima_lima_yaml(&colima, &guest_sock, 0)).unwrap();
    // A second profile, never enabled: override.yaml covers it too, and ferry says so.
    w.add_vm(&home, "colima-work", "vmType: vz\n");
    guest_echo(&w.vms[vm].guest, port);
    let _docker = guest_unix_echo(&w.vms[vm].guest, &guest_sock);
    w.start_daemon();

    let said = w.enable(vm, &[], &[]);
    assert!(said.contains("Lima's own forwarding is off for colima-work too"), "{said}");
    let edited = std::fs::read_to_string(&override_path).unwrap();
    assert!(edited.contains("Lima's own port forwarding is off"), "{edited}");
    assert!(edited.find("ignore: true").unwrap() < edited.find("guestPort: 8888").unwrap(), "ferry's rules first");

    let host_sock = colima.join("default/docker.sock");
    let mut generated = String::new();
    for generation in 1..=3 {
        // `colima start`: lima.yaml written afresh, then the instance started.
        generated = colima_lima_yaml(&colima, &guest_sock, generation);
        std::fs::write(w.vms[vm].dir.join("lima.yaml"), &generated).unwrap();
        let running = w.limactl(vm, "start");
        let took = wait_forwarding(port, running, &format!("colima start {generation}"));
        eprintln!("measured: Colima start {generation}: forwarding up {} ms after Running", took.as_millis());
        // ferry serves the docker socket at Colima's path, where its docker context points.
        wait_for(Duration::from_secs(30), "docker.sock at Colima's path", || unix_echo_once(&host_sock, b"docker"));
        assert_eq!(
            std::fs::read_to_string(w.vms[vm].dir.join("lima.yaml")).unwrap(),
            generated,
            "ferry leaves Colima's lima.yaml alone"
        );
        assert!(
            std::fs::read_to_string(&override_path).unwrap().contains("ignore: true"),
            "override.yaml keeps ferry's rules"
        );
        w.limactl(vm, "stop");
        wait_down(port, "forwarding down after colima stop");
        wait_for(Duration::from_secs(15), "the forwarder to exit", || {
            w.vms[vm].forwarder_pid().is_none().then_some(())
        });
    }

    let said = w.plugin(&["disable", "colima"]);
    assert!(said.contains("override.yaml restored"), "{said}");
    assert_eq!(std::fs::read_to_string(&override_path).unwrap(), users_override, "byte for byte");
    assert_eq!(std::fs::read_to_string(w.vms[vm].dir.join("lima.yaml")).unwrap(), generated);
}

#[test]
fn two_instances_at_once_and_a_sleeping_host() {
    /// How long the host "sleeps" (daemon and forwarders stopped with
    /// SIGSTOP). The issue asks for 60 s; a few seconds exercise the same
    /// path (timers and sessions that fall behind, events queued meanwhile)
    /// without holding CI for a minute.
    const SLEEP: Duration = Duration::from_secs(5);
    let mut w = World::new();
    let (port_a, port_b) = (free_port(), free_port());
    let a = w.add_vm(&w.lima_home(), "alpha", "vmType: qemu\n");
    let b = w.add_vm(&w.lima_home(), "beta", "vmType: vz\n");
    guest_echo(&w.vms[a].guest, port_a);
    guest_echo(&w.vms[b].guest, port_b);
    w.start_daemon();
    for vm in [a, b] {
        w.enable(vm, &[], &[]);
    }
    // Both start at once.
    let t_a = w.limactl(a, "start");
    let t_b = w.limactl(b, "start");
    let took_b = wait_forwarding(port_b, t_b, "beta");
    let took_a = wait_forwarding(port_a, t_a, "alpha");
    eprintln!("measured: two at once: forwarding up {} / {} ms after Running", took_a.as_millis(), took_b.as_millis());
    // Each port goes to its own guest only.
    assert!(w.vms[a].forwarder_pid().is_some() && w.vms[b].forwarder_pid().is_some());
    assert_ne!(w.vms[a].forwarder_pid(), w.vms[b].forwarder_pid());

    // The host sleeps: everything ferry runs on it stops, then resumes.
    let daemon_pid = w.daemon.as_ref().unwrap().pid();
    let forwarders: Vec<u32> = [a, b].iter().map(|&v| w.vms[v].forwarder_pid().unwrap()).collect();
    let everyone: Vec<u32> = forwarders.iter().copied().chain([daemon_pid]).collect();
    for &pid in &everyone {
        // SAFETY: kill(2) of the daemon and of the forwarders holding these instances' pid files.
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    }
    std::thread::sleep(SLEEP);
    for &pid in &everyone {
        // SAFETY: as above.
        unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    }
    let woke = Instant::now();
    wait_forwarding(port_a, woke, "alpha after the sleep");
    let recovered = wait_forwarding(port_b, woke, "beta after the sleep");
    eprintln!("measured: every port works again {} ms after a {SLEEP:?} sleep", recovered.as_millis());
    // No duplicate forwarders, no stale sockets: the same processes, their control sockets answering.
    std::thread::sleep(Duration::from_secs(3));
    let after: Vec<u32> = [a, b].iter().map(|&v| w.vms[v].forwarder_pid().unwrap()).collect();
    assert_eq!(after, forwarders, "the same forwarders, none started twice");
    for vm in [a, b] {
        let runs = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
            .filter(|c| {
                let c = String::from_utf8_lossy(c);
                c.contains("\0run\0") && c.contains(&format!("{}/ferry/ferry.sock", w.vms[vm].dir.display()))
            })
            .count();
        assert_eq!(runs, 1, "one forwarder for {}", w.vms[vm].name);
        let out = w.plugin(&["status", &w.vms[vm].name, "--json"]);
        assert!(out.contains("\"connected\":true"), "{out}");
    }
    // Stopping one leaves the other forwarded.
    w.limactl(a, "stop");
    wait_down(port_a, "alpha down");
    assert!(echo_once(port_b, b"beta still").is_some());
}

#[test]
fn enabling_a_running_instance_says_lima_keeps_its_forwards_and_restart_does_it_now() {
    let mut w = World::new();
    let port = free_port();
    let original = "vmType: vz\n";
    let dev = w.add_vm(&w.lima_home(), "dev", original);
    guest_echo(&w.vms[dev].guest, port);
    w.limactl(dev, "start");
    // No daemon yet: enable says how to get one.
    let said = w.enable(dev, &["--network"], &[]);
    assert!(said.contains("Lima keeps its own forwards until it restarts"), "{said}");
    assert!(said.contains("--restart"), "{said}");
    assert!(said.contains("ferry service install"), "{said}");
    let edited = w.vms[dev].lima_yaml();
    assert!(edited.contains("networks:\n- vzNAT: true\n"), "--network adds vzNAT: {edited}");

    w.start_daemon();
    wait_forwarding(port, Instant::now(), "an instance that was running when the daemon started");
    // `ferry doctor` names what is wrong: Lima still holds its forwards, and
    // a host port another process holds (this test process), by pid.
    let held_port = free_port();
    let holder = std::net::TcpListener::bind(("127.0.0.1", held_port)).unwrap();
    guest_echo(&w.vms[dev].guest, held_port);
    let doctor = || {
        let out = w.run(&bin_dir().join("ferry"), &["doctor", "dev"], None);
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let me = format!("(pid {})", std::process::id());
    let (ok, said) = wait_for(Duration::from_secs(15), "doctor naming the port's holder", || {
        let (ok, said) = doctor();
        said.contains(&me).then_some((ok, said))
    });
    assert!(!ok, "{said}");
    assert!(said.contains(&format!("127.0.0.1:{held_port}")) && said.contains("held by"), "{said}");
    assert!(said.contains("Lima's own forwarding is still on") && said.contains("--restart"), "{said}");
    assert!(said.contains("daemon running") && said.contains("not as a service"), "{said}");
    // `limactl ferry status` lists the ports still held and by whom.
    let status = w.plugin(&["status", "dev"]);
    assert!(
        status.contains("held by Lima (or another program)")
            && status.contains(&format!("127.0.0.1:{held_port} by"))
            && status.contains(&me),
        "{status}"
    );
    drop(holder);
    // --restart: limactl stop and start, forwarding back up.
    let said = w.plugin(&["enable", "dev", "--restart"]);
    assert!(said.contains("dev: restarted"), "{said}");
    wait_forwarding(port, Instant::now(), "after --restart");
    let said = wait_for(Duration::from_secs(15), "a clean bill of health", || {
        let (ok, said) = doctor();
        ok.then_some(said)
    });
    assert!(said.contains("Lima's own forwarding: off") && said.contains("connected over exec:"), "{said}");
    assert!(said.contains("secret private") && said.contains("transport ssh"), "{said}");
    // --network on a non-vz instance is refused with the reason.
    let other = w.add_vm(&w.lima_home(), "q", "vmType: qemu\n");
    let out = w.run(&w.dir.path().join("bin/limactl-ferry"), &["enable", "q", "--network"], None);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only vz instances"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(w.vms[other].lima_yaml(), "vmType: qemu\n", "untouched");

    w.plugin(&["disable", "--all"]);
    wait_down(port, "down after disable --all");
    assert_eq!(w.vms[dev].lima_yaml(), original, "both blocks gone, byte for byte");
}

#[test]
fn service_install_uninstall_and_status_with_launchd_and_systemd() {
    let w = World::new();
    // The managers' command-line tools, recording what they are asked.
    let calls = w.dir.path().join("calls.log");
    for tool in ["launchctl", "systemctl"] {
        write_exec(
            &w.dir.path().join("bin").join(tool),
            &format!(
                "#!/bin/sh\necho \"{tool} $*\" >> '{}'\ncase \"$*\" in\n  print*) printf '\\tstate = running\\n\\tpid = 77\\n' ;;\n  *show*) printf 'ActiveState=active\\nMainPID=78\\n' ;;\nesac\n",
                calls.display()
            ),
        );
    }
    let ferry = |args: &[&str]| {
        let out = w.run(&bin_dir().join("ferry"), args, None);
        assert!(out.status.success(), "ferry {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let home = w.dir.path().join("home");
    for (manager, file) in [
        ("launchd", home.join("Library/LaunchAgents/dev.ferry.daemon.plist")),
        ("systemd", home.join(".config/systemd/user/ferry.service")),
    ] {
        let _ = std::fs::remove_file(&calls);
        let st = ferry(&["service", "status", "--json", "--manager", manager]);
        assert_eq!(st["definition"], serde_json::Value::Null, "{st}");
        let done = ferry(&["service", "install", "--json", "--manager", manager]);
        assert_eq!((done["changed"].as_bool(), done["definition"].as_str()), (Some(true), file.to_str()));
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains(bin_dir().join("ferry").to_str().unwrap()) && text.contains("daemon"), "{text}");
        assert!(text.contains(w.lima_home().to_str().unwrap()), "LIMA_HOME travels into the service: {text}");
        // Idempotent: the same file, loaded again.
        let again = ferry(&["service", "install", "--json", "--manager", manager]);
        assert_eq!(again["changed"], false);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
        let st = ferry(&["service", "status", "--json", "--manager", manager]);
        assert_eq!((st["running"].as_bool(), st["definition"].as_str()), (Some(true), file.to_str()), "{st}");
        assert!(st["pid"].as_u64().is_some(), "{st}");
        let log = std::fs::read_to_string(&calls).unwrap();
        if manager == "launchd" {
            assert!(log.contains(&format!("launchctl bootstrap gui/0 {}", file.display())), "{log}");
            assert!(home.join("Library/Logs/ferry").is_dir(), "the log directory exists for launchd to write to");
        } else {
            assert!(
                log.contains("systemctl --user daemon-reload") && log.contains("systemctl --user enable ferry.service"),
                "{log}"
            );
        }
        let gone = ferry(&["service", "uninstall", "--json", "--manager", manager]);
        assert_eq!(gone["removed"], true);
        assert!(!file.exists(), "uninstall leaves nothing behind");
        let log = std::fs::read_to_string(&calls).unwrap();
        assert!(log.contains("bootout gui/0/dev.ferry.daemon") || log.contains("disable --now ferry.service"), "{log}");
        let again = ferry(&["service", "uninstall", "--json", "--manager", manager]);
        assert_eq!(again["removed"], false, "idempotent");
    }
}

#[test]
fn enable_all_covers_an_instance_created_later() {
    let mut w = World::new();
    let port = free_port();
    w.start_daemon();
    // The options name the guest directory the instance will have.
    let g = w.dir.path().join("guest-later");
    let opts: Vec<String> = [("--guest-bin", "bin"), ("--guest-etc", "etc"), ("--guest-state", "run")]
        .iter()
        .flat_map(|(k, v)| [k.to_string(), g.join(v).display().to_string()])
        .collect();
    let mut args = vec!["enable", "--all", "--"];
    args.extend(opts.iter().map(String::as_str));
    let said = w.plugin(&args);
    assert!(said.contains("those created later too"), "{said}");

    // `limactl create`: a new directory with a lima.yaml; the daemon edits it before its first start.
    let original = "vmType: qemu\n";
    let vm = w.add_vm(&w.lima_home(), "later", original);
    wait_for(Duration::from_secs(15), "the daemon's edit of the new instance", || {
        w.vms[vm].lima_yaml().contains("Lima's own port forwarding is off").then_some(())
    });
    guest_echo(&w.vms[vm].guest, port);
    let running = w.limactl(vm, "start");
    let took = wait_forwarding(port, running, "an instance created after enable --all");
    eprintln!("measured: new instance under --all: forwarding up {} ms after Running", took.as_millis());
    if took > Duration::from_secs(2) {
        eprintln!("--- slow: daemon log ---\n{}", w.daemon_log());
    }

    w.plugin(&["disable", "--all"]);
    wait_down(port, "down after disable --all");
    assert_eq!(w.vms[vm].lima_yaml(), original);
    assert!(!w.dir.path().join("state/enable-all.json").exists());
}

#[test]
fn after_a_sleep_ports_and_sockets_over_the_ssh_master_work_again() {
    /// How long the host "sleeps" (daemon, forwarder and ssh ControlMaster
    /// stopped with SIGSTOP); the issue's 60 s, shortened for CI.
    const SLEEP: Duration = Duration::from_secs(5);
    let mut w = World::new();
    let port = free_port();
    let vm = w.add_vm(&w.lima_home(), "sshvm", "");
    let guest_sock = w.vms[vm].guest_dir.join("app.sock");
    let original =
        format!("vmType: vz\nportForwards:\n- guestSocket: \"{}\"\n  hostSocket: app.sock\n", guest_sock.display());
    std::fs::write(w.vms[vm].dir.join("lima.yaml"), &original).unwrap();
    // An ssh.config as Lima writes it (ControlMaster auto, ControlPath in the
    // instance dir, ControlPersist yes), reaching a real sshd in the guest.
    let shims = w.dir.path().join("shims");
    let ssh = ferry_tests::ssh::SshGuest::with_sshd_options(
        w.dir.path(),
        &format!("SetEnv PATH={}:/usr/local/bin:/usr/bin:/bin\n", shims.display()),
    )
    .unwrap();
    let (config, control) = (w.vms[vm].dir.join("ssh.config"), w.vms[vm].dir.join("ssh.sock"));
    std::fs::write(
        &config,
        format!(
            "Host lima-sshvm\n  IdentityFile \"{}\"\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  \
             BatchMode yes\n  LogLevel ERROR\n  User root\n  ControlMaster auto\n  ControlPath \"{}\"\n  \
             ControlPersist yes\n  ProxyCommand {}\n",
            ssh.client_key().display(),
            control.display(),
            ssh.proxy_command(&w.vms[vm].guest)
        ),
    )
    .unwrap();
    let _master = MasterGuard(control.clone());
    guest_echo(&w.vms[vm].guest, port);
    let _app = guest_unix_echo(&w.vms[vm].guest, &guest_sock);
    w.start_daemon();
    w.enable(vm, &[], &[]);
    let running = w.limactl(vm, "start");
    let took = wait_forwarding(port, running, "over ssh");
    eprintln!("measured: over ssh with a ControlMaster: forwarding up {} ms after Running", took.as_millis());
    let host_sock = w.vms[vm].dir.join("sock/app.sock");
    wait_for(Duration::from_secs(30), "the socket rule", || unix_echo_once(&host_sock, b"app"));
    let status = w.plugin(&["status", "sshvm", "--json"]);
    assert!(status.contains("\"data_path\":\"ssh-master\""), "connections go through the master: {status}");

    let master = master_pid(&control).expect("a ControlMaster runs");
    let forwarder = w.vms[vm].forwarder_pid().unwrap();
    let daemon = w.daemon.as_ref().unwrap().pid();
    for pid in [daemon, forwarder, master] {
        // SAFETY: kill(2) of the daemon, the instance's forwarder and its ssh master, by pid.
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    }
    std::thread::sleep(SLEEP);
    for pid in [daemon, forwarder, master] {
        // SAFETY: as above.
        unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    }
    let woke = Instant::now();
    wait_forwarding(port, woke, "the port after the sleep");
    wait_for(Duration::from_secs(30), "the socket after the sleep", || unix_echo_once(&host_sock, b"woke"));
    eprintln!(
        "measured: port and socket over the ssh master work again {} ms after a {SLEEP:?} sleep",
        woke.elapsed().as_millis()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(w.vms[vm].forwarder_pid(), Some(forwarder), "the same forwarder, none started twice");
    // No stale socket files: the host socket is the live one, the control socket answers.
    assert!(unix_echo_once(&host_sock, b"again").is_some());
    assert!(w.plugin(&["status", "sshvm", "--json"]).contains("\"connected\":true"));

    w.plugin(&["disable", "sshvm"]);
    wait_down(port, "down after disable");
    assert_eq!(w.vms[vm].lima_yaml(), original, "the socket rule comes back byte for byte");
}

#[test]
fn doctor_says_when_the_tcp_route_fell_back_to_ssh() {
    let mut w = World::new();
    let (port, agent_port) = (free_port(), free_port());
    let vm = w.add_vm(&w.lima_home(), "nat", "vmType: vz\n");
    // The guest's NIC on a network the host reaches (vzNAT), named as Lima names it.
    let (_, guest_ip) = w.vms[vm].guest.link_to_host("lima0");
    guest_echo(&w.vms[vm].guest, port);
    w.start_daemon();
    w.enable(vm, &[], &["--agent-port", &agent_port.to_string()]);
    let running = w.limactl(vm, "start");
    let took = wait_forwarding(port, running, "over tcp");
    eprintln!("measured: tcp transport (agent service started): forwarding up {} ms after Running", took.as_millis());
    let doctor = || {
        let out = w.run(&bin_dir().join("ferry"), &["doctor", "nat"], None);
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let said = wait_for(Duration::from_secs(15), "doctor on the tcp route", || {
        let (ok, said) = doctor();
        (ok && said.contains("transport tcp")).then_some(said)
    });
    assert!(said.contains(&format!("connected over tcp:{guest_ip}:{agent_port}")), "{said}");

    // The agent service dies: the session falls back to ssh, and doctor says why.
    let pid = w.vms[vm].guest.command("cat").arg(w.vms[vm].guest_dir.join("run/agent.pid")).output().unwrap();
    let pid: i32 = String::from_utf8_lossy(&pid.stdout).trim().parse().unwrap();
    // SAFETY: kill(2) of the agent service's pid, read from its own pid file.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let said = wait_for(Duration::from_secs(30), "doctor on the fallback", || {
        let (ok, said) = doctor();
        (!ok && said.contains("does not answer") && said.contains("connected over exec:")).then_some(said)
    });
    assert!(said.contains(&format!("{guest_ip}:{agent_port}")) && said.contains("ferry uses ssh meanwhile"), "{said}");
    assert!(said.contains("`limactl ferry enable nat --restart`"), "{said}");
    w.plugin(&["disable", "nat"]);
    wait_down(port, "down after disable");
}
