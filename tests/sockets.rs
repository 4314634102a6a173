//! Unix socket forwarding (guest -> host) and reverse forwarding (host ->
//! guest), end to end. The guest has a private mount namespace: its sockets
//! live in a tmpfs the host cannot see, so only ferry connects the two.

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use ferry_tests::{free_port, net::GUARD, procs::Proc, wait_for, Bridge, Guest};

/// An HTTP/1.1 server on a Unix socket (`/small`, and a 1 GiB `/big`), or
/// with `echo`, a stream echo that says "bye" after the client's EOF.
const GUEST_SERVER: &str = r#"
import http.server, os, socketserver, sys
path, mode = sys.argv[1], sys.argv[2]
BLOCK = bytes(range(256)) * 256
class Http(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b"hello from the guest\n"
        n = (1 << 30) if self.path == "/big" else len(body)
        self.send_response(200)
        self.send_header("Content-Length", str(n))
        self.end_headers()
        if self.path == "/big":
            for _ in range(n // len(BLOCK)):
                self.wfile.write(BLOCK)
        else:
            self.wfile.write(body)
    def log_message(self, *a):
        pass
class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            d = self.request.recv(65536)
            if not d:
                break
            self.request.sendall(d)
        self.request.sendall(b"bye\n")
class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    def get_request(self):
        req, _ = super().get_request()
        return req, ("guest", 0)
Server(path, Http if mode == "http" else Echo).serve_forever()
"#;

struct Setup {
    bridge: Bridge,
    /// The guest's private directory (a tmpfs only the guest sees).
    guest_dir: PathBuf,
    /// Where the host sockets go.
    host_dir: tempfile::TempDir,
}

fn setup(rules: impl Fn(&Path, &Path) -> String, forwarder_args: &[&str]) -> Setup {
    let host_dir = tempfile::tempdir().unwrap();
    let guest_dir = host_dir.path().join("guest");
    let guest = Guest::with_private_dir(&guest_dir, host_dir.path().join("holder.log"));
    let rules_file = host_dir.path().join("ferry.yaml");
    std::fs::write(&rules_file, rules(&guest_dir, &host_dir.path().join("host"))).unwrap();
    let mut args = vec!["--rules", rules_file.to_str().unwrap(), "-v"];
    args.extend_from_slice(forwarder_args);
    let bridge = Bridge::start_in(guest, &["-v"], &args, &[]);
    Setup { bridge, guest_dir, host_dir }
}

fn guest_server(s: &Setup, path: &Path, mode: &str) -> Proc {
    let mut cmd = s.bridge.guest.command("python3");
    cmd.args(["-c", GUEST_SERVER]).arg(path).arg(mode);
    let p = Proc::spawn(cmd, s.host_dir.path().join(format!("server-{mode}.log")));
    let probe = path.to_path_buf();
    let guest = &s.bridge.guest;
    wait_for(GUARD, "the guest server's socket", || {
        guest.command("test").arg("-S").arg(&probe).status().ok()?.success().then_some(())
    });
    p
}

fn wait_row_state(bridge: &Bridge, host: &Path, state: &str) -> serde_json::Value {
    let host = host.display().to_string();
    wait_for(GUARD, &format!("{host} {state}"), || {
        let rows = bridge.status()["ports"].as_array()?.clone();
        rows.into_iter().find(|r| r["host"] == host.as_str() && r["state"] == state)
    })
}

fn curl(sock: &Path, url: &str) -> std::process::Output {
    curl_within(sock, url, 120)
}

/// `curl` through `sock`, giving up after `secs` seconds.
fn curl_within(sock: &Path, url: &str, secs: u32) -> std::process::Output {
    let limit = secs.to_string();
    Command::new("curl").args(["-sS", "--max-time", &limit, "--unix-socket"]).arg(sock).arg(url).output().unwrap()
}

#[test]
fn http_over_a_forwarded_unix_socket_with_curl_including_a_1_gib_response() {
    let s = setup(
        |g, h| {
            format!("portForwards:\n- guestSocket: {}/app.sock\n  hostSocket: {}/app.sock\n", g.display(), h.display())
        },
        &[],
    );
    let guest_sock = s.guest_dir.join("app.sock");
    assert!(!guest_sock.exists(), "the host must not see the guest's socket");
    let _server = guest_server(&s, &guest_sock, "http");
    let host_sock = s.host_dir.path().join("host/app.sock");
    wait_row_state(&s.bridge, &host_sock, "forwarding");
    // 0600 in a 0700 directory.
    let mode = |p: &Path| std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions()) & 0o777;
    assert_eq!((mode(&host_sock), mode(host_sock.parent().unwrap())), (0o600, 0o700));
    let out = curl(&host_sock, "http://guest/small");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from the guest\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 1 GiB, hashed on the fly.
    let mut child = Command::new("curl")
        .args(["-sS", "--max-time", "300", "--unix-socket"])
        .arg(&host_sock)
        .arg("http://guest/big")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut hasher = ferry_tests::data::Hasher::default();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = out.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    assert!(child.wait().unwrap().success());
    let block: Vec<u8> = (0..=255u8).collect::<Vec<u8>>().repeat(256);
    let mut want = ferry_tests::data::Hasher::default();
    for _ in 0..(1 << 30) / block.len() {
        want.update(&block);
    }
    assert_eq!(total, 1 << 30);
    assert_eq!(hasher.finish(), want.finish(), "the 1 GiB response arrived damaged");
}

#[test]
fn an_attach_like_session_is_bidirectional_and_half_closes() {
    let s = setup(
        |g, h| {
            format!(
                "portForwards:\n- guestSocket: {}/attach.sock\n  hostSocket: {}/attach.sock\n",
                g.display(),
                h.display()
            )
        },
        &[],
    );
    let _server = guest_server(&s, &s.guest_dir.join("attach.sock"), "echo");
    let host_sock = s.host_dir.path().join("host/attach.sock");
    wait_row_state(&s.bridge, &host_sock, "forwarding");
    let mut c = UnixStream::connect(&host_sock).unwrap();
    c.set_read_timeout(Some(GUARD)).unwrap();
    for i in 0..200 {
        let line = format!("keystroke {i}\n");
        c.write_all(line.as_bytes()).unwrap();
        let mut back = vec![0u8; line.len()];
        c.read_exact(&mut back).unwrap();
        assert_eq!(back, line.as_bytes());
    }
    // Half-close: the guest still answers after our EOF.
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = String::new();
    c.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "bye\n");
}

#[test]
fn a_guest_socket_that_goes_away_and_comes_back_is_followed() {
    let s = setup(
        |g, h| format!("portForwards:\n- guestSocket: {}/d.sock\n  hostSocket: {}/d.sock\n", g.display(), h.display()),
        &[],
    );
    let guest_sock = s.guest_dir.join("d.sock");
    let host_sock = s.host_dir.path().join("host/d.sock");
    // Not there yet: no host socket, and the status says why.
    let row = wait_row_state(&s.bridge, &host_sock, "waiting");
    assert!(row["reason"].as_str().unwrap().contains("does not exist"), "{row}");
    assert!(!host_sock.exists());
    let mut server = guest_server(&s, &guest_sock, "http");
    wait_row_state(&s.bridge, &host_sock, "forwarding");
    assert_eq!(curl(&host_sock, "http://guest/small").stdout, b"hello from the guest\n");
    // The daemon stops and its socket is removed (as dockerd does).
    server.kill();
    assert!(s.bridge.guest.command("rm").arg(&guest_sock).status().unwrap().success());
    wait_row_state(&s.bridge, &host_sock, "waiting");
    let t = Instant::now();
    assert!(UnixStream::connect(&host_sock).is_err(), "the host socket must be gone");
    assert!(t.elapsed() < Duration::from_secs(1), "an immediate error, not a hang");
    // Back again: the forward is restored.
    let _server = guest_server(&s, &guest_sock, "http");
    wait_row_state(&s.bridge, &host_sock, "forwarding");
    assert_eq!(curl(&host_sock, "http://guest/small").stdout, b"hello from the guest\n");
}

#[test]
fn a_stale_host_socket_is_replaced_but_a_regular_file_is_never_touched() {
    let host_dir = tempfile::tempdir().unwrap();
    let stale = host_dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap()); // a dead socket file
    let precious = host_dir.path().join("precious.sock");
    std::fs::write(&precious, b"not a socket").unwrap();
    let (stale2, precious2) = (stale.clone(), precious.clone());
    let s = setup(
        move |g, _| {
            format!(
                "portForwards:\n- guestSocket: {g}/a.sock\n  hostSocket: {}\n- guestSocket: {g}/b.sock\n  hostSocket: {}\n",
                stale2.display(),
                precious2.display(),
                g = g.display()
            )
        },
        &[],
    );
    let _a = guest_server(&s, &s.guest_dir.join("a.sock"), "http");
    let _b = guest_server(&s, &s.guest_dir.join("b.sock"), "http");
    wait_row_state(&s.bridge, &stale, "forwarding");
    assert_eq!(curl(&stale, "http://guest/small").stdout, b"hello from the guest\n");
    let row = wait_row_state(&s.bridge, &precious, "failed");
    assert!(row["reason"].as_str().unwrap().contains("never replaces"), "{row}");
    assert_eq!(std::fs::read(&precious).unwrap(), b"not a socket");
    // On exit the forwarder removes its own socket, not the file.
    let mut s = s;
    assert!(s.bridge.forwarder.terminate(), "ferry must exit on SIGTERM");
    assert!(!stale.exists());
    assert_eq!(std::fs::read(&precious).unwrap(), b"not a socket");
}

#[test]
fn docker_cli_on_the_host_talks_to_dockerd_in_the_guest() {
    for tool in ["/usr/sbin/dockerd", "/usr/bin/docker"] {
        assert!(Path::new(tool).exists(), "{tool} is missing: apt-get install docker.io");
    }
    let s = setup(
        |g, h| {
            format!(
                "portForwards:\n- guestSocket: {}/docker.sock\n  hostSocket: {}/docker.sock\n",
                g.display(),
                h.display()
            )
        },
        &[],
    );
    let g = s.guest_dir.display().to_string();
    let mut cmd = s.bridge.guest.command("/usr/sbin/dockerd");
    cmd.args(["--iptables=false", "--ip6tables=false", "--bridge=none", "--storage-driver=vfs"])
        .arg(format!("--data-root={g}/data"))
        .arg(format!("--exec-root={g}/exec"))
        .arg(format!("--pidfile={g}/docker.pid"))
        .arg(format!("--host=unix://{g}/docker.sock"));
    let _dockerd = Proc::spawn_graceful(cmd, s.host_dir.path().join("dockerd.log"));
    let host_sock = s.host_dir.path().join("host/docker.sock");
    wait_row_state(&s.bridge, &host_sock, "forwarding");
    let docker = |what: &str| {
        let out = Command::new("/usr/bin/docker")
            .arg("-H")
            .arg(format!("unix://{}", host_sock.display()))
            .args([what, "--format", "{{json .}}"])
            .output()
            .unwrap();
        assert!(out.status.success(), "docker {what}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let version = docker("version");
    assert!(version["Server"]["ApiVersion"].as_str().is_some_and(|v| v.starts_with("1.")), "{version}");
    let info = docker("info");
    assert_eq!(info["Driver"], "vfs", "{info}");
    assert_eq!(info["DockerRootDir"], format!("{g}/data"), "the daemon in the guest answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_tcp_service_is_reachable_inside_the_guest() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (host_port, guest_port) = (free_port(), free_port());
    let db = tokio::net::TcpListener::bind(("127.0.0.1", host_port)).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = db.accept().await {
            tokio::spawn(async move {
                let mut q = Vec::new();
                let _ = c.read_to_end(&mut q).await;
                let _ = c.write_all(&[b"host says: ".as_slice(), &q].concat()).await;
            });
        }
    });
    let spec = format!("127.0.0.1:{guest_port}=127.0.0.1:{host_port}");
    let bridge = Bridge::start_with(&["-v"], &["--reverse", &spec, "-v"]);
    wait_for(GUARD, "the reverse listener", || {
        let rows = bridge.status()["ports"].as_array()?.clone();
        rows.into_iter().find(|r| r["proto"] == "reverse-tcp" && r["state"] == "listening")
    });
    let answer = bridge.guest.run_in(move || {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", guest_port)).expect("connect in the guest");
        c.write_all(b"SELECT 1").unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut a = String::new();
        c.read_to_string(&mut a).unwrap();
        a
    });
    assert_eq!(answer, "host says: SELECT 1");
    // The agent's own reverse listener is not forwarded back to the host.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rows = bridge.status()["ports"].as_array().unwrap().clone();
    assert!(!rows.iter().any(|r| r["proto"] == "tcp" && r["guest"] == format!("127.0.0.1:{guest_port}")), "{rows:?}");
}

#[test]
fn a_host_unix_socket_is_served_inside_the_guest() {
    let host_dir = tempfile::tempdir().unwrap();
    let agent_sock = host_dir.path().join("ssh-agent.sock");
    let l = std::os::unix::net::UnixListener::bind(&agent_sock).unwrap();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut q = Vec::new();
            let _ = c.read_to_end(&mut q);
            let _ = c.write_all(&[b"agent: ".as_slice(), &q].concat());
        }
    });
    let a = agent_sock.clone();
    let s = setup(
        move |g, _| {
            format!(
                "portForwards:\n- guestSocket: {}/ssh.sock\n  hostSocket: {}\n  reverse: true\n",
                g.display(),
                a.display()
            )
        },
        &[],
    );
    let guest_sock = s.guest_dir.join("ssh.sock");
    wait_for(GUARD, "the reverse socket in the guest", || {
        let rows = s.bridge.status()["ports"].as_array()?.clone();
        rows.into_iter().find(|r| r["proto"] == "reverse-unix" && r["state"] == "listening")
    });
    let client = "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\ns.sendall(b'list keys')\ns.shutdown(socket.SHUT_WR)\nprint(s.makefile('rb').read().decode(),end='')";
    let out = s.bridge.guest.command("python3").args(["-c", client]).arg(&guest_sock).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "agent: list keys", "{}", String::from_utf8_lossy(&out.stderr));
    let mode = s.bridge.guest.command("stat").args(["-c", "%a"]).arg(&guest_sock).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&mode.stdout).trim(), "600");
}

#[test]
fn ferry_status_lists_sockets_and_reverse_forwards() {
    let port = free_port();
    let s = setup(
        |g, h| format!("portForwards:\n- guestSocket: {}/x.sock\n  hostSocket: {}/x.sock\n", g.display(), h.display()),
        &["--reverse", &port.to_string()],
    );
    wait_row_state(&s.bridge, &s.host_dir.path().join("host/x.sock"), "waiting");
    let table = s.bridge.status_table();
    assert!(table.lines().any(|l| l.starts_with("unix") && l.contains("x.sock") && l.contains("waiting")), "{table}");
    assert!(table.lines().any(|l| l.starts_with("reverse-tcp") && l.contains(&format!("127.0.0.1:{port}"))), "{table}");
}

#[test]
fn a_guest_tcp_port_is_published_as_a_host_unix_socket() {
    let port = free_port();
    let s = setup(|_, h| format!("portForwards:\n- guestPort: {port}\n  hostSocket: {}/api.sock\n", h.display()), &[]);
    let host_sock = s.host_dir.path().join("host/api.sock");
    let site = s.host_dir.path().join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("hello.txt"), b"tcp in the guest, unix on the host\n").unwrap();
    // Nothing listens in the guest yet: no host socket.
    assert!(!host_sock.exists());
    let mut cmd = s.bridge.guest.command("python3");
    cmd.args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1", "--directory"]).arg(&site);
    let mut server = Proc::spawn(cmd, s.host_dir.path().join("http.log"));
    wait_row_state(&s.bridge, &host_sock, "forwarding");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&host_sock).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let out = curl(&host_sock, "http://guest/hello.txt");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "tcp in the guest, unix on the host\n", "{out:?}");
    // The guest port closes: the host socket goes, as a host port would.
    server.kill();
    wait_for(GUARD, "the host socket removed", || (!host_sock.exists()).then_some(()));
}

/// Rules forwarding the guest socket `hung/d.sock` (under the mount
/// [`bindfs_mount`] makes) to the host socket `d.sock`, and the guest port
/// `port` to the host socket `api.sock`.
fn hung_mount_setup(port: u16) -> Setup {
    setup(
        |g, h| {
            format!(
                "portForwards:\n- guestSocket: {g}/hung/d.sock\n  hostSocket: {h}/d.sock\n- guestPort: {port}\n  hostSocket: {h}/api.sock\n",
                g = g.display(),
                h = h.display()
            )
        },
        &[],
    )
}

/// Mounts `dir/backing` at `dir/hung` in `guest` with bindfs (`options`
/// passed on; its log in `logs`): (bindfs, backing, hung). Stopping bindfs
/// with SIGSTOP makes the mount hang.
fn bindfs_mount(guest: &Guest, dir: &Path, logs: &Path, options: &[&str]) -> (Proc, PathBuf, PathBuf) {
    let (backing, hung) = (dir.join("backing"), dir.join("hung"));
    assert!(guest.command("mkdir").arg(&backing).arg(&hung).status().unwrap().success());
    let mut cmd = guest.command("bindfs");
    cmd.arg("-f").args(options).arg(&backing).arg(&hung);
    let bindfs = Proc::spawn(cmd, logs.join("bindfs.log"));
    wait_for(GUARD, "the FUSE mount in the guest", || {
        guest.command("mountpoint").arg("-q").arg(&hung).status().ok()?.success().then_some(())
    });
    (bindfs, backing, hung)
}

/// Python's `http.server` in `guest` on `port`, serving "still served" at
/// `/hello.txt` (its files and log in `dir`).
fn still_served(guest: &Guest, dir: &Path, port: u16) -> Proc {
    let site = dir.join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("hello.txt"), b"still served\n").unwrap();
    let mut cmd = guest.command("python3");
    cmd.args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1", "--directory"]).arg(&site);
    Proc::spawn(cmd, dir.join("http.log"))
}

/// A wanted guest socket under a mount that stops answering (a hung FUSE
/// or network file system) stalls only the check of that socket: the agent,
/// which runs on one thread, serves everything else meanwhile.
#[test]
fn a_hung_mount_under_a_wanted_guest_socket_stalls_nothing_else() {
    let port = free_port();
    let s = hung_mount_setup(port);
    let guest = &s.bridge.guest;
    let (bindfs, _, _) = bindfs_mount(guest, &s.guest_dir, s.host_dir.path(), &[]);
    let _server = still_served(guest, s.host_dir.path(), port);
    let host_sock = s.host_dir.path().join("host/api.sock");
    wait_row_state(&s.bridge, &host_sock, "forwarding");
    assert_eq!(curl(&host_sock, "http://guest/hello.txt").stdout, b"still served\n");
    // The mount stops answering: the agent's next look at d.sock (every
    // 100 ms) waits in lstat(2) for as long as it stays stopped.
    // SAFETY: signals to the bindfs process this test started.
    assert_eq!(unsafe { libc::kill(bindfs.pid() as i32, libc::SIGSTOP) }, 0);
    std::thread::sleep(Duration::from_millis(500));
    let out = curl_within(&host_sock, "http://guest/hello.txt", 10);
    // SAFETY: as above.
    unsafe { libc::kill(bindfs.pid() as i32, libc::SIGCONT) };
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "still served\n",
        "a hung mount held up the agent: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A client of a forwarded guest socket that sits under a mount which
/// stops answering: the agent's connect(2) resolves the path, and waits, on
/// its blocking pool, so its one thread goes on serving everything else
/// (curl through another forwarded socket) while that client waits.
#[test]
fn connecting_to_a_guest_socket_under_a_hung_mount_stalls_nothing_else() {
    let port = free_port();
    let s = hung_mount_setup(port);
    let guest = &s.bridge.guest;
    // No cached lookups: each path resolution asks bindfs.
    let (bindfs, backing, _) = bindfs_mount(
        guest,
        &s.guest_dir,
        s.host_dir.path(),
        &["-o", "entry_timeout=0,attr_timeout=0,negative_timeout=0"],
    );
    // A socket under the mount (bound in the backing directory): the host
    // socket appears for it.
    let _socket_owner = guest_server(&s, &backing.join("d.sock"), "echo");
    let stuck_sock = s.host_dir.path().join("host/d.sock");
    wait_row_state(&s.bridge, &stuck_sock, "forwarding");
    let _server = still_served(guest, s.host_dir.path(), port);
    let host_sock = s.host_dir.path().join("host/api.sock");
    wait_row_state(&s.bridge, &host_sock, "forwarding");
    assert_eq!(curl(&host_sock, "http://guest/hello.txt").stdout, b"still served\n");
    // SAFETY: signals to the bindfs process this test started.
    assert_eq!(unsafe { libc::kill(bindfs.pid() as i32, libc::SIGSTOP) }, 0);
    // A client of the socket under the stopped mount: the agent's connect
    // to it waits for as long as the mount stays stopped.
    let mut stuck = UnixStream::connect(&stuck_sock).unwrap();
    stuck.write_all(b"hello?").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let out = curl_within(&host_sock, "http://guest/hello.txt", 10);
    // The stuck client's connection really waits on the mount meanwhile
    // (neither an answer nor an end).
    stuck.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let waited = stuck.read(&mut [0u8; 16]).map_err(|e| e.kind());
    // SAFETY: as above.
    unsafe { libc::kill(bindfs.pid() as i32, libc::SIGCONT) };
    assert!(
        matches!(waited, Err(std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "the client under the stopped mount was answered ({waited:?}): nothing hung"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "still served\n",
        "a connect under a hung mount held up the agent: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(stuck);
}

/// A bridge whose forwarder asks for a reverse Unix socket (to a host
/// service that answers "pong") under a guest mount that was stopped
/// before it started (bindfs with SIGSTOP).
struct ReverseUnderStoppedMount {
    /// Sends bindfs on at the latest when dropped, before anything else is
    /// (a stopped process would hold up the clean-up).
    stopped: Stopped,
    bridge: Bridge,
    _bindfs: Proc,
    /// The mount's backing directory, in the guest's mount namespace.
    backing: PathBuf,
    /// The reverse socket's path in the guest, under the mount.
    guest_sock: PathBuf,
    dir: tempfile::TempDir,
}

/// A process stopped with SIGSTOP until [`Stopped::resume`] or drop.
struct Stopped(i32);

impl Stopped {
    fn resume(&self) {
        // SAFETY: a signal to a process the test started.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        self.resume();
    }
}

impl ReverseUnderStoppedMount {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let guest_dir = dir.path().join("guest");
        let guest = Guest::with_private_dir(&guest_dir, dir.path().join("holder.log"));
        let (bindfs, backing, hung) = bindfs_mount(&guest, &guest_dir, dir.path(), &[]);
        let service_path = dir.path().join("service.sock");
        let service = std::os::unix::net::UnixListener::bind(&service_path).unwrap();
        std::thread::spawn(move || {
            for mut c in service.incoming().flatten() {
                let _ = c.write_all(b"pong");
            }
        });
        // SAFETY: a signal to the bindfs process this test started.
        assert_eq!(unsafe { libc::kill(bindfs.pid() as i32, libc::SIGSTOP) }, 0);
        let stopped = Stopped(bindfs.pid() as i32);
        let guest_sock = hung.join("sub/reverse.sock");
        let spec = format!("{}={}", guest_sock.display(), service_path.display());
        let bridge = Bridge::start_in(guest, &["-v"], &["--reverse", &spec, "-v"], &[]);
        Self { stopped, bridge, _bindfs: bindfs, backing, guest_sock, dir }
    }
}

/// A reverse Unix listener asked for under a guest mount that stops
/// answering: the agent binds it on its blocking pool, so its one thread
/// goes on forwarding meanwhile (curl through a forwarded port), and the
/// listener is bound and reported once the mount answers again.
#[test]
fn a_reverse_socket_under_a_hung_mount_stalls_nothing_else() {
    let s = ReverseUnderStoppedMount::start();
    let port = free_port();
    let _server = still_served(&s.bridge.guest, s.dir.path(), port);
    let url = format!("http://127.0.0.1:{port}/hello.txt");
    let deadline = Instant::now() + Duration::from_secs(15);
    let served = loop {
        let out = Command::new("curl").args(["-sS", "--max-time", "2", &url]).output().unwrap();
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // The bind really waits on the mount meanwhile.
    let listening = |b: &Bridge| {
        let rows = b.status()["ports"].as_array()?.clone();
        rows.into_iter().find(|r| r["proto"] == "reverse-unix" && r["state"] == "listening")
    };
    let listening_while_hung = listening(&s.bridge).is_some();
    s.stopped.resume();
    assert!(!listening_while_hung, "the reverse socket was bound while the mount was stopped: nothing hung");
    assert_eq!(
        String::from_utf8_lossy(&served.stdout),
        "still served\n",
        "a reverse socket under a hung mount held up the agent: {}",
        String::from_utf8_lossy(&served.stderr)
    );
    wait_for(GUARD, "the reverse socket listening once the mount answers", || listening(&s.bridge));
    // (A socket bound on a FUSE mount cannot be connected to through it,
    // which bindfs shows as a refusal: the listening state is the check.)
}

#[test]
fn a_reverse_socket_given_up_while_its_bind_hangs_leaves_no_file_behind() {
    // The host goes away while the agent's bind of a reverse socket waits
    // on a hung mount: the listener is closed before it ever listened. When
    // the mount answers, the bind goes on and makes no socket (it used to
    // make one that nobody listened on or removed).
    let mut s = ReverseUnderStoppedMount::start();
    let binding = format!("reverse listener {}: binding", s.guest_sock.display());
    wait_for(GUARD, "the agent to start the bind", || s.bridge.agent.log_text().contains(&binding).then_some(()));
    // The host goes: the agent's session ends, and its reverse listeners
    // with it.
    let ended = |log: String| log.lines().filter(|l| l.contains("host session via") && l.contains(" ended: ")).count();
    let ended_before = ended(s.bridge.agent.log_text());
    s.bridge.forwarder.kill();
    wait_for(GUARD, "the agent to see the session end", || {
        (ended(s.bridge.agent.log_text()) > ended_before).then_some(())
    });
    s.stopped.resume();
    // The bind goes on once the mount answers, and stops short.
    let not_bound = format!("reverse listener {}: closed before it was bound", s.guest_sock.display());
    wait_for(GUARD, "the bind to go on once the mount answers", || {
        s.bridge.agent.log_text().contains(&not_bound).then_some(())
    });
    let socket = s.backing.join("sub/reverse.sock");
    assert!(
        !s.bridge.guest.command("test").arg("-e").arg(&socket).status().unwrap().success(),
        "a socket was made for a listener that was closed: {}",
        s.bridge.agent.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reverse_listener_survives_running_out_of_descriptors() {
    use tokio::io::AsyncWriteExt;
    let (host_port, guest_port) = (free_port(), free_port());
    let service = tokio::net::TcpListener::bind(("127.0.0.1", host_port)).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = service.accept().await {
            tokio::spawn(async move {
                let _ = c.write_all(b"pong").await;
            });
        }
    });
    let spec = format!("127.0.0.1:{guest_port}=127.0.0.1:{host_port}");
    let bridge = Bridge::start_with(&["-v"], &["--reverse", &spec, "-v"]);
    wait_for(GUARD, "the reverse listener", || {
        let rows = bridge.status()["ports"].as_array()?.clone();
        rows.into_iter().find(|r| r["proto"] == "reverse-tcp" && r["state"] == "listening")
    });
    let ask = move || -> std::io::Result<Vec<u8>> {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", guest_port))?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut answer = vec![0u8; 4];
        c.read_exact(&mut answer)?;
        Ok(answer)
    };
    assert_eq!(bridge.guest.run_in(ask).unwrap(), b"pong");
    // Leave the agent a handful of spare descriptors, then hold more guest
    // connections than that: its accept() fails with EMFILE meanwhile.
    let agent = bridge.agent.pid().to_string();
    let limit = ferry_tests::procs::fd_count(bridge.agent.pid()) + 4;
    // The soft limit only: raising it back needs no privilege.
    let set_limit = |n: usize| {
        let out = Command::new("prlimit").args(["--pid", &agent, &format!("--nofile={n}:")]).output().unwrap();
        assert!(out.status.success(), "prlimit: {}", String::from_utf8_lossy(&out.stderr));
    };
    set_limit(limit);
    let held = bridge.guest.run_in(move || {
        let connect = || std::net::TcpStream::connect(("127.0.0.1", guest_port));
        (0..32).map(|_| connect().expect("the reverse listener closed when out of descriptors")).collect::<Vec<_>>()
    });
    wait_for(GUARD, "the agent to report failing accepts", || {
        bridge.agent.log_text().contains("Too many open files").then_some(())
    });
    // Descriptors free again: the listener still serves.
    drop(held);
    set_limit(1024);
    assert_eq!(bridge.guest.run_in(ask).expect("the reverse listener stopped accepting"), b"pong");
}

#[test]
fn a_reverse_socket_path_another_user_holds_is_not_replaced() {
    let host_dir = tempfile::tempdir().unwrap();
    let guest_dir = host_dir.path().join("guest");
    let guest = Guest::with_private_dir(&guest_dir, host_dir.path().join("holder.log"));
    // A stale socket of another user (uid 4321) where the reverse socket
    // would go, in a directory root owns.
    let path = guest_dir.join("agent.sock");
    let script =
        "import socket,os,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); os.chown(sys.argv[1], 4321, 4321)";
    let st = guest.command("python3").args(["-c", script]).arg(&path).status().unwrap();
    assert!(st.success());
    let host_sock = host_dir.path().join("host.sock");
    let _host = std::os::unix::net::UnixListener::bind(&host_sock).unwrap();
    let reverse = format!("{}={}", path.display(), host_sock.display());
    let bridge = Bridge::start_in(guest, &["-v"], &["--reverse", &reverse, "-v"], &[]);
    // Until the agent answers, the row says it is waiting for it.
    let row = wait_for(GUARD, "the agent's answer on the reverse forward", || {
        let rows = bridge.status()["ports"].as_array()?.clone();
        rows.into_iter().find(|r| r["proto"] == "reverse-unix" && r["reason"] != "waiting for the agent")
    });
    assert_eq!(row["state"], "failed", "the agent must refuse the other user's socket: {row}");
    assert!(row["reason"].as_str().unwrap().contains("belongs to uid 4321"), "{row}");
    // Still the other user's file.
    let out = bridge.guest.command("stat").args(["-c", "%u"]).arg(&path).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "4321");
}
