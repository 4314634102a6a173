//! Owned child processes and the agent + forwarder pair.

use std::{
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{bin_dir, wait_for, Guest};

/// A child process killed (by pid) and reaped on drop; its stderr goes to
/// a log file, its stdout to the same path with the extension `out`.
pub struct Proc {
    child: Option<Child>,
    /// Where the process's stderr is written.
    pub log: PathBuf,
    /// Stop with SIGTERM first (daemons that clean up after themselves).
    graceful: bool,
}

impl Proc {
    /// Spawns `cmd` with stderr to `log` and stdout next to it.
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).expect("log file");
        let out = std::fs::File::create(log.with_extension("out")).expect("stdout file");
        // The child dies with us even if we are killed before our guards run.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child =
            cmd.stdin(Stdio::null()).stdout(out).stderr(file).spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        Self { child: Some(child), log, graceful: false }
    }

    /// Like [`Proc::spawn`], but on drop the process gets SIGTERM and up to
    /// 15 s to exit before SIGKILL (dockerd stops its containerd that way).
    pub fn spawn_graceful(cmd: Command, log: PathBuf) -> Self {
        let mut p = Self::spawn(cmd, log);
        p.graceful = true;
        p
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What the process printed on stdout so far.
    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(self.log.with_extension("out")).unwrap_or_default()
    }

    /// Sends SIGTERM and waits (up to 15 s) for the process to exit; true if it did.
    pub fn terminate(&mut self) -> bool {
        let Some(c) = self.child.as_mut() else { return true };
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            if !matches!(c.try_wait(), Ok(None)) {
                self.child = None;
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.graceful {
            self.terminate();
        }
        self.kill();
    }
}

/// Open file descriptors of process `pid`.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Resident memory of `pids`, in bytes.
pub fn rss_bytes(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .sum::<u64>()
        * 1024
}

/// Creates a fresh instance secret in `dir` with `ferry secret` and returns its path.
pub fn make_secret(dir: &std::path::Path) -> PathBuf {
    let path = dir.join("secret");
    let out =
        Command::new(bin_dir().join("ferry")).args(["secret", "--file"]).arg(&path).output().expect("run ferry secret");
    assert!(out.status.success(), "ferry secret failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), path.display().to_string());
    path
}

/// A guest namespace with `ferry-agent` in it and `ferry run` on the host.
pub struct Bridge {
    /// The forwarder (host side). Declared first: dropped first.
    pub forwarder: Proc,
    /// The agent (guest side).
    pub agent: Proc,
    /// The guest namespace.
    pub guest: Guest,
    /// Holds the agent socket and the logs.
    pub dir: tempfile::TempDir,
    agent_args: Vec<String>,
    /// Environment both processes get (e.g. `FERRY_PORTABLE=1`).
    env: Vec<(String, String)>,
    /// Where the agent listens (`unix:` in the bridge's directory, or
    /// `tcp:` on the guest's end of a link).
    listen: String,
}

impl Bridge {
    /// Starts agent and forwarder (fast rescans, busy-port retries and
    /// debug logs, for tests) and waits until they are connected.
    /// Connections use dedicated (spliced) data connections.
    pub fn start() -> Self {
        let b = Self::start_with(&["-v"], &["--retry-busy-ms", "200", "-v"]);
        b.wait_log(1, "dedicated data connections");
        b
    }

    /// Like [`Bridge::start`], but every connection is multiplexed over the session.
    pub fn start_multiplexed() -> Self {
        let b = Self::start_with(&["-v"], &["--retry-busy-ms", "200", "--no-dedicated", "-v"]);
        b.wait_log(1, "multiplexed over the session");
        b
    }

    /// Like [`Bridge::start`], with the session and its dedicated data
    /// connections on TCP (the agent listening on the guest's end of a veth
    /// link to the host), as over Lima's vzNAT network with
    /// `--unsealed-data-conns`.
    pub fn start_over_tcp() -> Self {
        let b = Self::over_tcp(&["--unsealed-data-conns"]);
        b.wait_log(1, "dedicated data connections");
        b
    }

    /// Like [`Bridge::start_over_tcp`] with ferry's defaults: every
    /// connection inside the sealed session.
    pub fn start_over_tcp_sealed() -> Self {
        let b = Self::over_tcp(&[]);
        b.wait_log(1, "connections travel inside the sealed session");
        b
    }

    fn over_tcp(extra: &[&str]) -> Self {
        let guest = Guest::new();
        let (_, guest_ip) = guest.link_to_host("ftcp0");
        let listen = format!("tcp:{guest_ip}:{}", crate::free_port());
        let mut fwd = vec!["--retry-busy-ms", "200", "-v"];
        fwd.extend(extra);
        Self::start_full(guest, Some(&listen), &[], &["-v"], &fwd, &[])
    }

    /// Like [`Bridge::start_over_tcp`], without debug logs and with
    /// `forwarder_args` (for the bench): the session sealed on TCP.
    pub fn start_over_tcp_with(forwarder_args: &[&str]) -> Self {
        let guest = Guest::new();
        let (_, guest_ip) = guest.link_to_host("ftcp0");
        let listen = format!("tcp:{guest_ip}:{}", crate::free_port());
        Self::start_full(guest, Some(&listen), &[], &[], forwarder_args, &[])
    }

    /// Like [`Bridge::start_over_tcp`], but `ferry` dials whatever
    /// `via(agent address)` returns (e.g. a relay in between) and `extra`
    /// arguments go to the forwarder.
    pub fn start_over_tcp_via(via: impl FnOnce(&str) -> String, extra: &[&str]) -> Self {
        let guest = Guest::new();
        let (_, guest_ip) = guest.link_to_host("ftcp0");
        let listen = format!("tcp:{guest_ip}:{}", crate::free_port());
        let dial = format!("tcp:{}", via(&listen["tcp:".len()..]));
        let mut fwd = vec!["--retry-busy-ms", "200", "-v"];
        fwd.extend(extra);
        let b = Self::start_dialling(guest, &listen, &dial, &[], &["-v"], &fwd);
        b.wait_log(1, "connected to agent");
        b
    }

    /// Starts agent and forwarder with extra arguments each.
    pub fn start_with(agent_args: &[&str], forwarder_args: &[&str]) -> Self {
        Self::start_in(Guest::new(), agent_args, forwarder_args, &[])
    }

    /// Starts agent and forwarder in an existing guest; `forwarder_wrapper`
    /// (e.g. `prlimit --nofile=256:256`) runs the forwarder, exec'ing it.
    pub fn start_in(guest: Guest, agent_args: &[&str], forwarder_args: &[&str], forwarder_wrapper: &[&str]) -> Self {
        Self::start_env(guest, &[], agent_args, forwarder_args, forwarder_wrapper)
    }

    /// Like [`Bridge::start_in`], with `env` set for both processes.
    pub fn start_env(
        guest: Guest,
        env: &[(&str, &str)],
        agent_args: &[&str],
        forwarder_args: &[&str],
        forwarder_wrapper: &[&str],
    ) -> Self {
        Self::start_full(guest, None, env, agent_args, forwarder_args, forwarder_wrapper)
    }

    /// The general case: the agent listens on `listen` (`None`: a Unix
    /// socket in the bridge's directory).
    fn start_full(
        guest: Guest,
        listen: Option<&str>,
        env: &[(&str, &str)],
        agent_args: &[&str],
        forwarder_args: &[&str],
        forwarder_wrapper: &[&str],
    ) -> Self {
        Self::start_general(guest, listen, None, env, agent_args, forwarder_args, forwarder_wrapper)
    }

    fn start_dialling(
        guest: Guest,
        listen: &str,
        dial: &str,
        env: &[(&str, &str)],
        agent_args: &[&str],
        forwarder_args: &[&str],
    ) -> Self {
        Self::start_general(guest, Some(listen), Some(dial), env, agent_args, forwarder_args, &[])
    }

    #[allow(clippy::too_many_arguments)]
    fn start_general(
        guest: Guest,
        listen: Option<&str>,
        dial: Option<&str>,
        env: &[(&str, &str)],
        agent_args: &[&str],
        forwarder_args: &[&str],
        forwarder_wrapper: &[&str],
    ) -> Self {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = make_secret(dir.path());
        let mut agent_args: Vec<String> = agent_args.iter().map(|s| s.to_string()).collect();
        agent_args.extend(["--secret-file".to_string(), secret.display().to_string()]);
        let sock = dir.path().join("agent.sock");
        let listen = listen.map_or_else(|| format!("unix:{}", sock.display()), str::to_string);
        let agent = Self::spawn_agent(&guest, &dir, &listen, &agent_args, &env);
        if listen.starts_with("unix:") {
            wait_for(Duration::from_secs(10), "agent socket", || sock.exists().then_some(()));
        }
        let ferry = bin_dir().join("ferry");
        let mut fwd = match forwarder_wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&ferry);
                c
            }
            None => Command::new(&ferry),
        };
        fwd.args(["run", "--agent", dial.unwrap_or(&listen)]);
        fwd.arg("--secret-file").arg(&secret).args(forwarder_args);
        fwd.env("FERRY_STATE_DIR", dir.path().join("state")).envs(env.iter().cloned());
        let forwarder = Proc::spawn(fwd, dir.path().join("ferry.log"));
        let bridge = Self { forwarder, agent, guest, dir, agent_args, env, listen };
        bridge.wait_log(1, "connected to agent");
        bridge
    }

    fn spawn_agent(
        guest: &Guest,
        dir: &tempfile::TempDir,
        listen: &str,
        args: &[String],
        env: &[(String, String)],
    ) -> Proc {
        let mut cmd = guest.command(bin_dir().join("ferry-agent").to_str().unwrap());
        cmd.env("FERRY_STATE_DIR", dir.path().join("agent-state")).envs(env.iter().cloned());
        cmd.args(["--listen", listen]).args(args);
        Proc::spawn(cmd, dir.path().join("agent.log"))
    }

    /// Kills the agent (SIGKILL) and starts a new one on the same socket.
    pub fn restart_agent(&mut self) {
        self.agent.kill();
        self.agent = Self::spawn_agent(&self.guest, &self.dir, &self.listen, &self.agent_args, &self.env);
    }

    /// The forwarder's control socket.
    pub fn control_socket(&self) -> PathBuf {
        self.dir.path().join("state/ferry.sock")
    }

    /// `ferry status --json` of this bridge's forwarder, parsed.
    pub fn status(&self) -> serde_json::Value {
        let out = Command::new(bin_dir().join("ferry"))
            .args(["status", "--json", "--control-socket"])
            .arg(self.control_socket())
            .output()
            .expect("run ferry status");
        assert!(out.status.success(), "ferry status failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    /// `ferry status` (the table) of this bridge's forwarder.
    pub fn status_table(&self) -> String {
        let out = Command::new(bin_dir().join("ferry"))
            .args(["status", "--control-socket"])
            .arg(self.control_socket())
            .output()
            .expect("run ferry status");
        assert!(out.status.success(), "ferry status failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("a UTF-8 table")
    }

    /// The status row of the host address `host` ("127.0.0.1:8080"), if any.
    pub fn status_row(&self, proto: &str, host: &str) -> Option<serde_json::Value> {
        self.status()["ports"].as_array()?.iter().find(|r| r["proto"] == proto && r["host"] == host).cloned()
    }

    /// Waits until the forwarder has logged `needle` at least `count` times.
    pub fn wait_log(&self, count: usize, needle: &str) {
        wait_for(Duration::from_secs(15), &format!("forwarder log line {needle:?} x{count}"), || {
            (self.forwarder.log_text().matches(needle).count() >= count).then_some(())
        });
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        // A failing test shows what both ends logged.
        if std::thread::panicking() {
            eprintln!("--- ferry log ---\n{}", self.forwarder.log_text());
            eprintln!("--- ferry-agent log ---\n{}", self.agent.log_text());
        }
    }
}
