//! ferry across a real VM boundary: a Debian kernel booted under QEMU (TCG,
//! no KVM needed) with virtio-vsock served by vhost-device-vsock, and a 9p
//! shared folder. The guest runs the static `ferry-agent --listen
//! vsock:any:1024`; the host runs `ferry run --agent hvsock:<uds>:1024`.
//!
//! Needs `scripts/vm-setup.sh` (QEMU, kernel, backend, static binaries, cached
//! in $FERRY_VM_CACHE); fails (never skips) without them.

use std::{
    io::{Read, Write},
    net::{Shutdown, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use ferry_tests::{
    bin_dir,
    data::{pattern, sha256},
    free_port,
    procs::{make_secret, Proc},
    try_wait_for, wait_for,
};

/// Guest ports of the guest's test services (see tests/vm-guest).
const ECHO: u16 = 8080;
const SHA: u16 = 8082;
const SOURCE: u16 = 8084; // and 8085: its checksum
const CTL: u16 = 8090;
/// A guest echo server started while ferry runs.
const LATE: u16 = 8086;
/// Where the guest reaches the host's service (reverse forward).
const REVERSE: u16 = 7000;
const SOURCE_BYTES: usize = 32 << 20;
const BOOT: Duration = Duration::from_secs(120);

/// A guest architecture the suite boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arch {
    /// q35, PVH direct boot of Debian's amd64 kernel.
    X86_64,
    /// `virt` with a Cortex-A72 (an Apple Silicon Mac's guests are aarch64).
    Aarch64,
}

impl Arch {
    /// Where scripts/vm-setup.sh left this guest's kernel, modules and binaries.
    fn cache(self) -> PathBuf {
        match self {
            Arch::X86_64 => cache(),
            Arch::Aarch64 => cache().join("aarch64"),
        }
    }

    fn kernel(self) -> &'static str {
        match self {
            Arch::X86_64 => "vmlinux",
            Arch::Aarch64 => "Image",
        }
    }

    fn qemu(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Aarch64 => "qemu-system-aarch64",
        }
    }

    /// The machine, CPU and serial console.
    fn machine(self) -> (&'static [&'static str], &'static str) {
        match self {
            Arch::X86_64 => (&["-M", "q35"], "ttyS0"),
            Arch::Aarch64 => (&["-M", "virt", "-cpu", "cortex-a72"], "ttyAMA0"),
        }
    }
}

fn cache() -> PathBuf {
    std::env::var_os("FERRY_VM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/ferry-vm"))
}

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio-rng \
         vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport netfs fscache 9pnet 9pnet_virtio 9p \
         inet_diag tcp_diag udp_diag; do
  [ -f /mods/$m.ko ] && insmod /mods/$m.ko
done
ip link set lo up
mkdir -p /share /tmp && mount -t 9p -o trans=virtio,version=9p2000.L share /share
G=/ferry-vm-guest
$G echo 8080 & $G sha 8082 & $G source 8084 33554432 & $G ctl 8090 &
$G watch /share > /dev/console &
echo "GUEST READY"
while true; do /ferry-agent -v --listen vsock:any:1024 --secret-file /secret > /dev/console 2>&1; sleep 0.2; done
"#;

struct Vm {
    dir: tempfile::TempDir,
    _procs: Vec<Proc>,
    console: PathBuf,
}

impl Drop for Vm {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- guest console ---\n{}", self.console_text());
            let backend = std::fs::read_to_string(self.dir.path().join("backend.log")).unwrap_or_default();
            eprintln!("--- vhost-device-vsock ---\n{backend}");
        }
    }
}

impl Vm {
    /// Boots an `arch` guest; fails the test (never skips) if this machine
    /// cannot: scripts/vm-setup.sh installs what it needs.
    fn boot(arch: Arch, share: &Path, secret: &Path) -> Self {
        let c = arch.cache();
        assert!(
            Command::new(arch.qemu()).arg("--version").output().is_ok(),
            "{} is not installed: run scripts/vm-setup.sh",
            arch.qemu()
        );
        for f in [arch.kernel(), "ferry-agent", "ferry-vm-guest", "busybox", "modules"] {
            assert!(c.join(f).exists(), "{} missing: run scripts/vm-setup.sh", c.join(f).display());
        }
        let backend_bin = cache().join("bin/vhost-device-vsock");
        assert!(backend_bin.exists(), "{} missing: run scripts/vm-setup.sh", backend_bin.display());
        let dir = tempfile::Builder::new().prefix("fvm").tempdir_in("/tmp").unwrap();
        let d = dir.path();
        let root = d.join("initrd");
        for sub in ["bin", "proc", "sys", "dev", "tmp", "mods"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        for (from, to) in
            [("busybox", "bin/busybox"), ("ferry-agent", "ferry-agent"), ("ferry-vm-guest", "ferry-vm-guest")]
        {
            std::fs::copy(c.join(from), root.join(to)).unwrap();
        }
        for m in std::fs::read_dir(c.join("modules")).unwrap().flatten() {
            std::fs::copy(m.path(), root.join("mods").join(m.file_name())).unwrap();
        }
        std::fs::copy(secret, root.join("secret")).unwrap();
        std::fs::write(root.join("init"), INIT).unwrap();
        std::fs::set_permissions(root.join("init"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let ok = Command::new("sh")
            .arg("-c")
            .arg("cd initrd && find . | cpio -o -H newc 2>/dev/null | gzip -1 > ../initrd.gz")
            .current_dir(d)
            .status()
            .unwrap();
        assert!(ok.success());

        let (vhu, uds) = (d.join("vhu.sock"), d.join("v.sock"));
        let mut backend = Command::new(backend_bin);
        backend.args(["--guest-cid", "42", "--socket"]).arg(&vhu).arg("--uds-path").arg(&uds);
        let backend = Proc::spawn(backend, d.join("backend.log"));
        wait_for(Duration::from_secs(10), "the vsock backend", || vhu.exists().then_some(()));
        let console = d.join("console.log");
        let (machine, console_dev) = arch.machine();
        let mut qemu = Command::new(arch.qemu());
        qemu.args(["-accel", "tcg"])
            .args(machine)
            .args(["-m", "512M", "-smp", "1"])
            .args(["-object", "memory-backend-memfd,id=mem,size=512M,share=on", "-numa", "node,memdev=mem"])
            .arg("-chardev")
            .arg(format!("socket,id=vsk,path={}", vhu.display()))
            .args(["-device", "vhost-user-vsock-pci,chardev=vsk"])
            // Entropy at once: without it getrandom() blocks until the CRNG is
            // seeded, which under TCG can take minutes.
            .args(["-device", "virtio-rng-pci"])
            .arg("-virtfs")
            .arg(format!("local,path={},mount_tag=share,security_model=none,id=fs0", share.display()))
            .arg("-kernel")
            .arg(c.join(arch.kernel()))
            .arg("-initrd")
            .arg(d.join("initrd.gz"))
            .arg("-append")
            .arg(format!("console={console_dev} panic=-1 quiet"))
            .args(["-display", "none", "-no-reboot", "-nodefaults"])
            .arg("-serial")
            .arg(format!("file:{}", console.display()));
        let qemu = Proc::spawn(qemu, d.join("qemu.log"));
        let vm = Self { dir, _procs: vec![qemu, backend], console };
        wait_for(BOOT, "the guest to boot", || vm.console_text().contains("GUEST READY").then_some(()));
        vm
    }

    fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    fn uds(&self) -> PathBuf {
        self.dir.path().join("v.sock")
    }
}

/// One request through a forwarded port: send `data`, half-close, read all.
fn try_exchange(port: u16, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.write_all(data)?;
    s.shutdown(Shutdown::Write)?;
    let mut back = Vec::new();
    s.read_to_end(&mut back)?;
    Ok(back)
}

/// [`try_exchange`], which must succeed.
fn exchange(port: u16, data: &[u8]) -> Vec<u8> {
    try_exchange(port, data).unwrap_or_else(|e| panic!("exchange through host port {port}: {e}"))
}

fn status(control: &Path) -> serde_json::Value {
    let out = Command::new(bin_dir().join("ferry"))
        .args(["status", "--json", "--control-socket"])
        .arg(control)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// Prints the forwarder's log if the test fails.
struct LogOnPanic(Proc);

impl std::ops::Deref for LogOnPanic {
    type Target = Proc;
    fn deref(&self) -> &Proc {
        &self.0
    }
}

impl Drop for LogOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- ferry ---\n{}", self.0.log_text());
        }
    }
}

#[test]
fn ferry_across_a_real_x86_64_vm_over_vsock_with_a_9p_shared_folder() {
    scenario(Arch::X86_64);
}

#[test]
fn ferry_across_a_real_aarch64_vm_over_vsock_with_a_9p_shared_folder() {
    scenario(Arch::Aarch64);
}

/// Everything one guest must do, whatever its architecture.
fn scenario(arch: Arch) {
    let work = tempfile::tempdir().unwrap();
    let share = work.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    let secret = make_secret(work.path());
    let boot = std::time::Instant::now();
    let vm = Vm::boot(arch, &share, &secret);
    eprintln!("VM BOOT ({arch:?}): {:.1} s to GUEST READY", boot.elapsed().as_secs_f64());
    if let Some(secs) = std::env::var_os("FERRY_VM_HOLD") {
        eprintln!("HOLD {} {}", vm.dir.path().display(), secret.display());
        std::thread::sleep(Duration::from_secs(secs.to_string_lossy().parse().unwrap_or(300)));
    }

    // Control: a host edit in the 9p folder raises no inotify event in the guest.
    wait_for(Duration::from_secs(30), "the guest watcher", || {
        vm.console_text().contains("INOTIFY watching").then_some(())
    });
    std::fs::write(share.join("control.txt"), b"no ferry yet").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(!vm.console_text().contains("control.txt"), "the 9p mount raised events by itself:\n{}", vm.console_text());

    // A host service for the reverse direction.
    let host_port = free_port();
    let host_service = std::net::TcpListener::bind(("127.0.0.1", host_port)).unwrap();
    std::thread::spawn(move || {
        for mut c in host_service.incoming().flatten() {
            let _ = c.write_all(b"hello from the host\n");
        }
    });

    // ferry, with every guest port at a free host port.
    let ports: Vec<(u16, u16)> = [ECHO, SHA, SOURCE, SOURCE + 1, CTL, LATE].iter().map(|g| (*g, free_port())).collect();
    let rules: String = ports.iter().map(|(g, h)| format!("- guestPort: {g}\n  hostPort: {h}\n")).collect();
    std::fs::write(work.path().join("ferry.yaml"), format!("portForwards:\n{rules}")).unwrap();
    let host = |g: u16| ports.iter().find(|(p, _)| *p == g).unwrap().1;
    let control = work.path().join("ferry.sock");
    let mut fwd = Command::new(bin_dir().join("ferry"));
    fwd.arg("run")
        .arg("--agent")
        .arg(format!("hvsock:{}:1024", vm.uds().display()))
        .arg("--secret-file")
        .arg(&secret)
        .arg("--rules")
        .arg(work.path().join("ferry.yaml"))
        .arg("--control-socket")
        .arg(&control)
        .arg("--watch")
        .arg(format!("{}=/share", share.display()))
        .arg("--reverse")
        .arg(format!("127.0.0.1:{REVERSE}=127.0.0.1:{host_port}"))
        .arg("-v");
    let ferry = Proc::spawn(fwd, work.path().join("ferry.log"));
    let ferry = LogOnPanic(ferry);
    let forwarded = |g: u16| {
        let h = host(g).to_string();
        let control = &control;
        move || {
            let st = status(control);
            st["ports"]
                .as_array()?
                .iter()
                .any(|r| r["host"] == format!("127.0.0.1:{h}") && r["state"] == "forwarding")
                .then_some(())
        }
    };
    for (g, _) in ports.iter().filter(|(g, _)| *g != LATE) {
        wait_for(Duration::from_secs(60), &format!("guest port {g} discovered and forwarded"), forwarded(*g));
    }
    // The agent finds new ports through the guest kernel's bind/listen
    // tracepoints, not by polling; a port opened now is forwarded.
    assert!(
        vm.console_text().contains("port discovery: woken by bind/listen tracepoints"),
        "the agent polls in the guest:\n{}",
        vm.console_text()
    );
    let _ = try_exchange(host(CTL), format!("/ferry-vm-guest echo {LATE} >/dev/null 2>&1 &").as_bytes());
    wait_for(Duration::from_secs(60), "a port opened later discovered and forwarded", forwarded(LATE));
    assert_eq!(exchange(host(LATE), b"late"), b"late");

    // Echo, and a half-closed upload whose checksum comes back.
    assert_eq!(exchange(host(ECHO), b"over vsock"), b"over vsock");
    // Over hvsock, connections stay on the session by default: this
    // backend does not carry a host's half-close (see the dedicated part below).
    assert!(ferry.log_text().contains("multiplexed over the session"), "{}", ferry.log_text());
    assert_eq!(status(&control)["data_path"], "multiplexed", "{}", status(&control));
    let up = pattern(11, 32 << 20);
    assert_eq!(String::from_utf8(exchange(host(SHA), &up)).unwrap(), sha256(&up), "host -> guest bulk damaged");
    // Bulk guest -> host, checked against the guest's own checksum.
    let down = exchange(host(SOURCE), b"");
    assert_eq!(down.len(), SOURCE_BYTES);
    assert_eq!(
        sha256(&down),
        String::from_utf8(exchange(host(SOURCE + 1), b"")).unwrap(),
        "guest -> host bulk damaged"
    );

    // 50 concurrent connections.
    let workers: Vec<_> = (0..50u64)
        .map(|i| {
            let p = host(ECHO);
            std::thread::spawn(move || {
                let d = pattern(i, 64 << 10);
                assert_eq!(exchange(p, &d), d, "connection {i}");
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a concurrent connection failed");
    }

    // Reverse: the guest reaches the host's service at its own 127.0.0.1:7000.
    let out = exchange(host(CTL), format!("nc 127.0.0.1 {REVERSE} </dev/null").as_bytes());
    assert_eq!(String::from_utf8_lossy(&out), "hello from the host\n");

    // File events through the real 9p mount.
    std::fs::write(share.join("edited.txt"), b"with ferry").unwrap();
    wait_for(Duration::from_secs(20), "the guest watcher to see the host edit", || {
        vm.console_text().lines().any(|l| l.starts_with("INOTIFY") && l.ends_with("edited.txt")).then_some(())
    });

    dedicated_route_over_vsock(arch, &vm, &secret, work.path(), host(SOURCE));

    // The agent restarted inside the guest: ferry reconnects and forwards again.
    // (Killed a moment later, so that this very connection, which the agent
    // carries, can end first.)
    let _ = try_exchange(host(CTL), b"(sleep 0.3; kill $(pidof ferry-agent)) >/dev/null 2>&1 &");
    wait_for(Duration::from_secs(60), "ferry to reconnect", || {
        (ferry.log_text().matches("connected to agent").count() >= 2).then_some(())
    });
    let again = try_wait_for(Duration::from_secs(60), || {
        try_exchange(host(ECHO), b"after restart").ok().filter(|b| b == b"after restart")
    });
    assert!(again.is_some(), "no echo after the agent restart; ferry log:\n{}", ferry.log_text());
}

/// CPU seconds (user + system) `pid` has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = after.split_whitespace().map(|x| x.parse().unwrap_or(0.0)).collect();
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

/// Reads `len` bytes from the guest service behind `port`, sending nothing;
/// returns them and the seconds it took. (Reads a known length instead of
/// to the end: vhost-device-vsock does not pass a guest's half-close on to
/// the host's socket, so on the dedicated route the end never arrives.)
fn download(port: u16, len: usize) -> (Vec<u8>, f64) {
    let start = std::time::Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut got = vec![0u8; len];
    s.read_exact(&mut got).unwrap();
    (got, start.elapsed().as_secs_f64())
}

/// A second forwarder that gives each connection a vsock connection of its
/// own (`--hvsock-data-connections`): the agent's AF_VSOCK listener tells
/// them from sessions and relays them. Downloads of a known length arrive
/// whole (this backend carries no half-close either way, which is why
/// hvsock keeps connections on the session by default); the times of both
/// routes are printed for the record, never asserted.
fn dedicated_route_over_vsock(arch: Arch, vm: &Vm, secret: &Path, work: &Path, multiplexed_source: u16) {
    let (source, sum) = (free_port(), free_port());
    let rules = format!("portForwards:\n- guestPort: {SOURCE}\n  hostPort: {source}\n- guestPort: {}\n  hostPort: {sum}\n- guestPortRange: [1, 65535]\n  ignore: true\n", SOURCE + 1);
    std::fs::write(work.join("dedicated.yaml"), rules).unwrap();
    let control = work.join("dedicated.sock");
    let mut fwd = Command::new(bin_dir().join("ferry"));
    fwd.arg("run")
        .arg("--agent")
        .arg(format!("hvsock:{}:1024", vm.uds().display()))
        .arg("--secret-file")
        .arg(secret)
        .arg("--rules")
        .arg(work.join("dedicated.yaml"))
        .arg("--control-socket")
        .arg(&control)
        .arg("--hvsock-data-connections")
        .arg("-v");
    let ferry = LogOnPanic(Proc::spawn(fwd, work.join("dedicated.log")));
    wait_for(Duration::from_secs(60), "the second forwarder's route", || {
        (status(&control)["data_path"] == "dedicated").then_some(())
    });
    wait_for(Duration::from_secs(60), "the source port on the dedicated route", || {
        TcpStream::connect(("127.0.0.1", source)).ok().map(drop)
    });
    let want = String::from_utf8(download(sum, 64).0).unwrap();
    let mut times = (Vec::new(), Vec::new());
    let cpu = |p: &Proc| cpu_seconds(p.pid());
    let mut cpu_ded = 0.0;
    for _ in 0..3 {
        let before = cpu(&ferry);
        let (got, t) = download(source, SOURCE_BYTES);
        cpu_ded += cpu(&ferry) - before;
        assert_eq!(got.len(), SOURCE_BYTES, "dedicated download cut short");
        assert_eq!(sha256(&got), want, "dedicated download damaged");
        times.0.push(t);
        let (got, t) = download(multiplexed_source, SOURCE_BYTES);
        assert_eq!(sha256(&got), want, "multiplexed download damaged");
        times.1.push(t);
    }
    assert!(!ferry.log_text().contains("no data connection"), "a connection fell back:\n{}", ferry.log_text());
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (ded, mux) = (median(&mut times.0), median(&mut times.1));
    let mbit = |t: f64| SOURCE_BYTES as f64 * 8.0 / t / 1e6;
    eprintln!(
        "VM ROUTES ({:?} guest, TCG): guest->host 32 MiB, median of 3: dedicated {:.0} Mbit/s, multiplexed {:.0} Mbit/s ({:.2}x); host ferry CPU on the dedicated route {:.2} s/GB",
        arch,
        mbit(ded),
        mbit(mux),
        mux / ded,
        cpu_ded / (3.0 * SOURCE_BYTES as f64 / 1e9)
    );
}
