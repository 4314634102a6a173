//! ferry over ssh as `limactl ferry start` runs it: the agent's session is a
//! client of an OpenSSH ControlMaster (a real sshd in the guest namespace),
//! and connections go through that master as stdio forwards
//! (`--ssh-control-path`), falling back to the session when it cannot.

use std::{path::PathBuf, process::Command, time::Duration};

use ferry_tests::{
    bin_dir,
    data::pattern,
    free_port,
    net::{connect_forwarded, spawn_echo, GUARD},
    procs::make_secret,
    ssh::{MasterGuard, SshGuest},
    wait_for, Guest, Proc,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A guest reached over ssh, its ControlMaster, and `ferry run` using both.
struct SshBridge {
    forwarder: Proc,
    master: Option<Proc>,
    /// A master ferry brought back runs on its own (ControlPersist): it is
    /// ended after the forwarder and the test's own master.
    _revived: MasterGuard,
    guest: Guest,
    control: PathBuf,
    dir: tempfile::TempDir,
}

impl SshBridge {
    /// `sshd_options` go into the guest's sshd_config; `rules` (if any) is
    /// the forwarder's rules file text.
    fn start(guest: Guest, dir: tempfile::TempDir, sshd_options: &str, rules: Option<String>) -> Self {
        let ssh = SshGuest::with_sshd_options(dir.path(), sshd_options).unwrap();
        let control = dir.path().join("ssh.sock");
        let master = ssh.start_master(&guest, &control, dir.path().join("master.log"));
        let secret = make_secret(dir.path());
        let quote = |a: &str| format!("'{}'", a.replace('\'', "'\\''"));
        // The session has an ssh connection of its own, as `limactl ferry
        // start` gives it: the master carries only the connections.
        let mut remote: Vec<String> =
            ["ssh", "-o", "ControlMaster=no", "-o", "ControlPath=none"].map(String::from).to_vec();
        remote.extend(ssh.client_args(&guest).iter().map(|a| quote(a)));
        remote.push("root@guest".into());
        remote.push(quote(&bin_dir().join("ferry-agent").display().to_string()));
        remote.extend(["--stdio".into(), "-v".into(), "--secret-file".into(), quote(&secret.display().to_string())]);
        // An ssh config as Lima writes one (ControlMaster auto, ControlPersist
        // yes), with which ferry brings a master that died back.
        let config = dir.path().join("ssh.config");
        std::fs::write(
            &config,
            format!(
                "Host guest\n  User root\n  IdentityFile \"{}\"\n  StrictHostKeyChecking no\n  \
                 UserKnownHostsFile /dev/null\n  LogLevel ERROR\n  BatchMode yes\n  ControlMaster auto\n  \
                 ControlPath \"{}\"\n  ControlPersist yes\n  ProxyCommand {}\n",
                ssh.client_key().display(),
                control.display(),
                ssh.proxy_command(&guest)
            ),
        )
        .unwrap();
        let mut cmd = Command::new(bin_dir().join("ferry"));
        cmd.args(["run", "-v", "--retry-busy-ms", "200", "--agent", &format!("exec:{}", remote.join(" "))])
            .arg("--secret-file")
            .arg(&secret)
            .arg("--ssh-control-path")
            .arg(&control)
            .arg("--ssh-master-revive")
            .arg(&config)
            .arg("guest")
            .env("FERRY_STATE_DIR", dir.path().join("state"));
        if let Some(rules) = rules {
            std::fs::write(dir.path().join("rules.yaml"), rules).unwrap();
            cmd.arg("--rules").arg(dir.path().join("rules.yaml"));
        }
        let forwarder = Proc::spawn(cmd, dir.path().join("ferry.log"));
        let b = Self { forwarder, master: Some(master), _revived: MasterGuard(control.clone()), guest, control, dir };
        b.wait_log(1, "connected to agent");
        b
    }

    fn wait_log(&self, count: usize, needle: &str) {
        wait_for(Duration::from_secs(30), &format!("forwarder log line {needle:?} x{count}"), || {
            (self.forwarder.log_text().matches(needle).count() >= count).then_some(())
        });
    }

    fn status(&self) -> serde_json::Value {
        let out = Command::new(bin_dir().join("ferry"))
            .args(["status", "--json", "--control-socket"])
            .arg(self.dir.path().join("state/ferry.sock"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for SshBridge {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- ferry log ---\n{}", self.forwarder.log_text());
            if let Some(m) = &self.master {
                eprintln!("--- master log ---\n{}", m.log_text());
            }
        }
    }
}

/// Sends `data`, half-closes, reads the echo to EOF and checks it.
async fn echo_round(addr: &str, data: &[u8]) {
    let s = connect_forwarded(addr).await;
    let (mut r, mut w) = s.into_split();
    let sent = data.to_vec();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    tokio::time::timeout(GUARD, r.read_to_end(&mut back)).await.expect("echo hung").unwrap();
    writer.await.unwrap();
    assert!(back == data, "echo through {addr}: {} bytes back of {}", back.len(), data.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_go_through_the_controlmaster_with_half_close_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let guest_dir = dir.path().join("guest");
    let guest = Guest::with_private_dir(&guest_dir, dir.path().join("holder.log"));
    let guest_sock = guest_dir.join("docker.sock");
    let host_sock = dir.path().join("host/docker.sock");
    let rules =
        format!("portForwards:\n- guestSocket: {}\n  hostSocket: {}\n", guest_sock.display(), host_sock.display());
    let b = SshBridge::start(guest, dir, "", Some(rules));
    assert_eq!(b.status()["data_path"], "ssh-master");

    // Client half-closes first: 4 MiB out, echoed back whole.
    let echo_port = free_port();
    spawn_echo(b.guest.tcp_listener(&format!("127.0.0.1:{echo_port}")));
    echo_round(&format!("127.0.0.1:{echo_port}"), &pattern(7, 4 << 20)).await;
    // Until its relay has ended, the bulk echo holds the master's one place
    // (on a loaded machine that can outlast the client's last read).
    wait_for(GUARD, "the echo connection to end", || {
        (b.status()["ports"].as_array()?.iter().all(|r| r["active_connections"] == 0)).then_some(())
    });

    // The server ends first while the client keeps its side open (HTTP/1.0
    // style): the client must see EOF, not wait forever.
    let talk_port = free_port();
    let l = b.guest.tcp_listener(&format!("127.0.0.1:{talk_port}"));
    let body = pattern(9, 1 << 20);
    let sent = body.clone();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        s.write_all(&sent).await.unwrap();
        // Dropping closes both ways.
    });
    let mut s = connect_forwarded(&format!("127.0.0.1:{talk_port}")).await;
    let mut got = Vec::new();
    tokio::time::timeout(GUARD, s.read_to_end(&mut got)).await.expect("no EOF from a server that closed").unwrap();
    assert!(got == body, "{} bytes of {}", got.len(), body.len());
    drop(s);

    let routes = b.status()["connections_by_route"].clone();
    assert_eq!(routes["ssh_master"], 2, "both TCP connections went through the master: {routes}");
    assert_eq!(routes["multiplexed"], 0, "{routes}");

    // A guest Unix socket (docker.sock's place), with curl as the client;
    // the socket lives in a tmpfs only the guest sees. A master from
    // OpenSSH 9.4 on carries it; an older one refuses once, and from then on
    // guest sockets go over the session without asking it again.
    let mut server = b.guest.command("python3");
    server.args(["-c", UNIX_HTTP]).arg(&guest_sock);
    let _server = Proc::spawn(server, b.dir.path().join("server.log"));
    wait_for(GUARD, "host socket", || host_sock.exists().then_some(()));
    for _ in 0..3 {
        let out = wait_for(GUARD, "curl through the host socket", || {
            let out = Command::new("curl")
                .args(["-sS", "--unix-socket"])
                .arg(&host_sock)
                .arg("http://guest/")
                .output()
                .ok()?;
            out.status.success().then_some(out)
        });
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hello over docker.sock\n");
    }
    let refusals = b.forwarder.log_text().matches("guest Unix sockets go over the session").count();
    let routes = b.status()["connections_by_route"].clone();
    if openssh_version() >= (9, 4) {
        assert_eq!(refusals, 0, "OpenSSH {:?} forwards Unix sockets", openssh_version());
        assert_eq!(routes["ssh_master"], 5, "{routes}");
    } else {
        assert_eq!(routes["multiplexed"], 3, "{routes}");
        assert_eq!(refusals, 1, "an older master is asked once");
        assert_eq!(b.forwarder.log_text().matches("forward failed").count(), 1, "and never again");
    }
}

/// The ssh client's (major, minor) version, from `ssh -V`.
fn openssh_version() -> (u32, u32) {
    let out = Command::new("ssh").arg("-V").output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    let v = text.split("OpenSSH_").nth(1).unwrap_or_else(|| panic!("ssh -V: {text}"));
    let mut nums = v.split(|c: char| !c.is_ascii_digit()).map(|n| n.parse().unwrap());
    (nums.next().unwrap(), nums.next().unwrap())
}

/// An HTTP/1.0 server on the Unix socket argv[1].
const UNIX_HTTP: &str = r#"
import http.server, socketserver, sys, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hello over docker.sock\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(socketserver.UnixStreamServer):
    def get_request(self):
        req, _ = super().get_request()
        return req, ("guest", 0)
S(sys.argv[1], H).serve_forever()
"#;

impl SshBridge {
    /// Waits until the forwarder publishes TCP port `port` on the host.
    fn wait_forwarded(&self, port: u16) {
        let host = format!("127.0.0.1:{port}");
        wait_for(GUARD, &format!("{host} forwarded"), || {
            let ports = self.status()["ports"].as_array()?.clone();
            ports.iter().any(|r| r["proto"] == "tcp" && r["host"] == host && r["state"] == "forwarding").then_some(())
        });
    }

    /// Connections carried by the master and by the session so far.
    fn routes(&self) -> (u64, u64) {
        let routes = self.status()["connections_by_route"].clone();
        (routes["ssh_master"].as_u64().unwrap(), routes["multiplexed"].as_u64().unwrap())
    }
}

#[test]
fn iperf3s_bulk_connection_goes_through_the_master_beside_its_idle_control_connection() {
    // iperf3 opens a control connection first (a few messages, then idle
    // for the whole test) and the bulk one after it. The control
    // connection is quiet, so it holds no place at the master: both go
    // through it (with one place for a busy connection, the default).
    let b = SshBridge::start(Guest::new(), tempfile::tempdir().unwrap(), "", None);
    let port = free_port();
    let mut server = b.guest.command("iperf3");
    server.args(["-s", "-1", "-B", "127.0.0.1", "-p", &port.to_string()]);
    let _server = Proc::spawn(server, b.dir.path().join("iperf3-server.log"));
    b.wait_forwarded(port);
    let out =
        Command::new("iperf3").args(["-c", "127.0.0.1", "-p", &port.to_string(), "-n", "16M", "-J"]).output().unwrap();
    assert!(out.status.success(), "iperf3: {}", String::from_utf8_lossy(&out.stdout));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // (The server stops counting when the control connection says the
    // test ended, which may overtake the last bytes in flight.)
    let sent = report["end"]["sum_sent"]["bytes"].as_u64().unwrap();
    assert!(sent >= 16 << 20, "iperf3 sent {sent} bytes of 16 MiB");
    assert!(report["end"]["sum_received"]["bytes"].as_u64().unwrap() > 0, "the server received nothing");
    assert_eq!(b.routes(), (2, 0), "control and bulk connection both through the master");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_master_carries_a_bulk_transfer_new_connections_go_over_the_session() {
    let b = SshBridge::start(Guest::new(), tempfile::tempdir().unwrap(), "", None);
    let (sink, echo) = (free_port(), free_port());
    let sink_listener = b.guest.tcp_listener(&format!("127.0.0.1:{sink}"));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = sink_listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 16];
                while s.read(&mut buf).await.is_ok_and(|n| n > 0) {}
            });
        }
    });
    spawn_echo(b.guest.tcp_listener(&format!("127.0.0.1:{echo}")));
    b.wait_forwarded(sink);
    b.wait_forwarded(echo);
    // A bulk upload through the master, kept going.
    let mut bulk = connect_forwarded(&format!("127.0.0.1:{sink}")).await;
    let chunk = pattern(5, 1 << 20);
    for _ in 0..8 {
        bulk.write_all(&chunk).await.unwrap();
    }
    let uploading = tokio::spawn(async move {
        loop {
            if bulk.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    assert_eq!(b.routes(), (1, 0));
    // A new connection meanwhile goes over the session, every byte intact.
    echo_round(&format!("127.0.0.1:{echo}"), &pattern(6, 256 << 10)).await;
    assert_eq!(b.routes(), (1, 1), "the master's one place is taken by the bulk transfer");
    // Once the transfer has ended, the master takes connections again.
    uploading.abort();
    let _ = uploading.await;
    wait_for(GUARD, "the bulk connection to end", || {
        (b.status()["ports"].as_array()?.iter().all(|r| r["active_connections"] == 0)).then_some(())
    });
    echo_round(&format!("127.0.0.1:{echo}"), &pattern(7, 256 << 10)).await;
    assert_eq!(b.routes(), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_uploads_that_greet_first_puts_one_on_the_master_and_the_rest_on_the_session() {
    // Eight clients connect at once, each sends a greeting and waits (as the
    // bench's 100 streams, or a parallel upload tool, do) before it turns
    // bulk. Judged by the greeting alone each looked quiet, and all eight
    // landed on the master, whose throughput collapses with many busy
    // channels. Nothing has come back to them yet, so each holds a place.
    let b = SshBridge::start(Guest::new(), tempfile::tempdir().unwrap(), "", None);
    // The rule holds for half a second after a connection arrives: a burst
    // that took longer to open (a machine too busy) says nothing and is
    // tried again, on a port of its own.
    let mut attempts = 0;
    let (clients, mut received) = loop {
        attempts += 1;
        let port = free_port();
        let listener = b.guest.tcp_listener(&format!("127.0.0.1:{port}"));
        let (got, received) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let got = got.clone();
                tokio::spawn(async move {
                    let mut all = Vec::new();
                    let _ = s.read_to_end(&mut all).await;
                    let _ = got.send(all);
                });
            }
        });
        b.wait_forwarded(port);
        let before = b.routes();
        let greeting = |i: u8| async move {
            let mut c = connect_forwarded(&format!("127.0.0.1:{port}")).await;
            c.write_all(&[i; 8]).await.unwrap();
            c
        };
        let t0 = std::time::Instant::now();
        // The first client's greeting is counted by the kernel before the
        // others come (judged by it, the first looked quiet at once).
        let mut clients = vec![greeting(0).await];
        tokio::time::sleep(Duration::from_millis(20)).await;
        let connecting: Vec<_> = (1..8u8).map(|i| tokio::spawn(greeting(i))).collect();
        for c in connecting {
            clients.push(c.await.unwrap());
        }
        let took = t0.elapsed();
        let carried = wait_for(GUARD, "all eight carried", || {
            let now = b.routes();
            let carried = (now.0 - before.0, now.1 - before.1);
            (carried.0 + carried.1 == 8).then_some(carried)
        });
        if took < Duration::from_millis(400) || attempts == 3 {
            assert!(took < Duration::from_millis(400), "three bursts of eight connections took over 400 ms each");
            assert_eq!(carried, (1, 7), "one place at the master, the rest over the session");
            break (clients, received);
        }
    };
    // Then every one uploads, and every byte arrives, in order.
    for (i, mut c) in clients.into_iter().enumerate() {
        c.write_all(&pattern(i as u64, 1 << 20)).await.unwrap();
        c.shutdown().await.unwrap();
    }
    let mut seen = Vec::new();
    for _ in 0..8 {
        let all = tokio::time::timeout(GUARD, received.recv()).await.expect("an upload hung").unwrap();
        assert_eq!(all.len(), 8 + (1 << 20));
        let i = all[0];
        assert!(all[..8].iter().all(|&b| b == i) && all[8..] == pattern(i as u64, 1 << 20)[..], "upload {i} damaged");
        seen.push(i);
    }
    seen.sort();
    assert_eq!(seen, (0..8).collect::<Vec<u8>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_the_master_refuses_goes_over_the_session_with_every_byte() {
    // sshd allows no forwarding to anywhere: the master answers each
    // request with a failure, after which the client is carried by the
    // session, its first bytes included.
    let b = SshBridge::start(Guest::new(), tempfile::tempdir().unwrap(), "PermitOpen none\n", None);
    let port = free_port();
    spawn_echo(b.guest.tcp_listener(&format!("127.0.0.1:{port}")));
    echo_round(&format!("127.0.0.1:{port}"), &pattern(3, 1 << 20)).await;
    b.wait_log(1, "goes over the session instead");
    assert!(b.forwarder.log_text().contains("forward failed"), "the master's refusal is logged");
    let routes = b.status()["connections_by_route"].clone();
    assert_eq!((routes["ssh_master"].as_u64(), routes["multiplexed"].as_u64()), (Some(0), Some(1)), "{routes}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_outlives_the_controlmaster_and_returns_to_it() {
    let mut b = SshBridge::start(Guest::new(), tempfile::tempdir().unwrap(), "", None);
    let port = free_port();
    spawn_echo(b.guest.tcp_listener(&format!("127.0.0.1:{port}")));
    let addr = format!("127.0.0.1:{port}");
    echo_round(&addr, &pattern(1, 256 << 10)).await;
    assert_eq!(b.status()["connections_by_route"]["ssh_master"], 1);

    // The master dies (as it does when a Mac sleeps): the session, on an
    // ssh connection of its own, lives on, and connections go over it.
    b.master.take().unwrap().kill();
    let _ = std::fs::remove_file(&b.control);
    echo_round(&addr, &pattern(2, 256 << 10)).await;
    b.wait_log(1, "goes over the session instead");
    assert_eq!(b.status()["connections_by_route"]["multiplexed"], 1);
    assert_eq!(b.forwarder.log_text().matches("connected to agent").count(), 1, "the session did not reconnect");

    // ferry brings the master back (as Lima's ssh.config makes any ssh
    // do): connections use it again.
    b.wait_log(1, "bringing it back");
    let mut n = 3;
    wait_for(GUARD, "a connection through the revived master", || {
        n += 1;
        let addr = addr.clone();
        let data = pattern(n, 64 << 10);
        tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(echo_round(&addr, &data)));
        (b.status()["connections_by_route"]["ssh_master"] == 2).then_some(())
    });
    b.wait_log(1, "carries connections again");
}
