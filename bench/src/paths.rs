//! The forwarding paths under comparison, all reaching the same guest servers.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    process::Command,
    sync::Arc,
    time::Duration,
};

use ferry_tests::{free_port, wait_for, Bridge, Guest, Proc};

use crate::{load::Endpoint, servers::GuestServers};

/// One way of reaching the guest's servers from a client.
pub struct ForwardPath {
    /// Short name used in the report.
    pub name: &'static str,
    /// The guest servers this path reaches.
    pub servers: Arc<GuestServers>,
    /// Guest port -> the port a client dials.
    pub ports: HashMap<u16, u16>,
    /// Clients dial from inside this namespace (direct path only).
    pub netns: Option<String>,
    /// The processes that make up the path, for CPU and memory accounting.
    pub pids: Vec<u32>,
    procs: Vec<Proc>,
}

impl ForwardPath {
    /// A path named `name` whose clients dial from the host, with no ports
    /// or processes yet.
    fn host_side(name: &'static str, servers: &Arc<GuestServers>) -> Self {
        Self { name, servers: servers.clone(), ports: HashMap::new(), netns: None, pids: vec![], procs: vec![] }
    }

    /// The endpoint of the guest's sink (uploads).
    pub fn sink(&self) -> Endpoint {
        self.endpoint(self.servers.sink)
    }

    /// The endpoint of the guest's source (downloads).
    pub fn source(&self) -> Endpoint {
        self.endpoint(self.servers.source)
    }

    /// The endpoint of the guest's echo server.
    pub fn echo(&self) -> Endpoint {
        self.endpoint(self.servers.echo)
    }

    /// The endpoint clients use for a guest port.
    pub fn endpoint(&self, guest_port: u16) -> Endpoint {
        Endpoint {
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.ports[&guest_port]),
            netns: self.netns.clone(),
        }
    }

    /// Adds processes that belong to the path.
    pub fn adopt(&mut self, p: Proc) {
        self.pids.push(p.pid());
        self.procs.push(p);
    }
}

fn ports_of(s: &GuestServers) -> [u16; 3] {
    [s.sink, s.source, s.echo]
}

/// The limit: the client runs inside the guest namespace.
pub fn direct(guest: &Guest, servers: &Arc<GuestServers>) -> ForwardPath {
    let guest_ports = ports_of(servers);
    ForwardPath {
        name: "direct",
        servers: servers.clone(),
        ports: guest_ports.iter().map(|p| (*p, *p)).collect(),
        netns: Some(guest.name.clone()),
        pids: vec![],
        procs: vec![],
    }
}

/// ferry: the forwarder publishes the guest ports at the same numbers.
pub fn ferry(name: &'static str, bridge: &Bridge, servers: &Arc<GuestServers>) -> ForwardPath {
    let guest_ports = ports_of(servers);
    for p in &guest_ports {
        wait_for(Duration::from_secs(20), "ferry to publish the port", || {
            std::net::TcpStream::connect(("127.0.0.1", *p)).ok().map(|_| ())
        });
    }
    ForwardPath {
        name,
        servers: servers.clone(),
        ports: guest_ports.iter().map(|p| (*p, *p)).collect(),
        netns: None,
        pids: vec![bridge.forwarder.pid(), bridge.agent.pid()],
        procs: vec![],
    }
}

/// Whether a program is on PATH.
pub fn have(program: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {program}")]).output().is_ok_and(|o| o.status.success())
}

/// socat two-hop over a Unix socket, 256 KiB buffers, one process pair per
/// service (forking per connection, as socat does). Both listeners take a
/// backlog of 1024, as the floor's and ferry's do: with socat's default of
/// 5, a hundred streams opened at once overflowed it, and the dropped
/// handshakes took tens of seconds of SYN retries to open.
pub fn socat(guest: &Guest, dir: &Path, servers: &Arc<GuestServers>) -> Result<ForwardPath, String> {
    if !have("socat") {
        return Err("socat not installed (apt-get install socat)".into());
    }
    let mut path = ForwardPath::host_side("socat", servers);
    for gp in ports_of(servers) {
        let sock = dir.join(format!("socat-{gp}.sock"));
        let mut g = guest.command("socat");
        g.args([
            "-b262144",
            &format!("UNIX-LISTEN:{},fork,backlog=1024", sock.display()),
            &format!("TCP:127.0.0.1:{gp}"),
        ]);
        path.adopt(Proc::spawn(g, dir.join(format!("socat-guest-{gp}.log"))));
        wait_for(Duration::from_secs(10), "socat guest socket", || sock.exists().then_some(()));
        let hp = free_port();
        let mut h = Command::new("socat");
        h.args([
            "-b262144",
            &format!("TCP-LISTEN:{hp},fork,reuseaddr,backlog=1024,bind=127.0.0.1"),
            &format!("UNIX-CONNECT:{}", sock.display()),
        ]);
        path.adopt(Proc::spawn(h, dir.join(format!("socat-host-{gp}.log"))));
        path.ports.insert(gp, hp);
    }
    wait_host_ports(&path, "socat host port");
    Ok(path)
}

/// Builds the floor `source` (in bench/floor) into `bin` with the
/// machine's C compiler.
fn build_floor(source: &str, bin: &Path) -> Result<std::path::PathBuf, String> {
    if !have("cc") {
        return Err("no C compiler (apt-get install gcc)".into());
    }
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("floor").join(source);
    let built =
        Command::new("cc").args(["-O2", "-o"]).arg(bin).arg(&source).output().map_err(|e| format!("cc: {e}"))?;
    if !built.status.success() {
        return Err(format!("cc failed: {}", String::from_utf8_lossy(&built.stderr)));
    }
    Ok(bin.to_path_buf())
}

/// The floor of the two-hop topology (bench/floor/two_hop.c, built here
/// with the machine's C compiler): one single-threaded epoll process on
/// each side, copying, with no authentication and no framing, one process
/// pair per service over a Unix socket. What the topology itself costs.
pub fn two_hop_floor(guest: &Guest, dir: &Path, servers: &Arc<GuestServers>) -> Result<ForwardPath, String> {
    let bin = build_floor("two_hop.c", &dir.join("two-hop"))?;
    let bin = bin.to_str().ok_or("a non-UTF-8 temporary path")?;
    let mut path = ForwardPath::host_side("two-hop floor", servers);
    for gp in ports_of(servers) {
        let sock = dir.join(format!("two-hop-{gp}.sock"));
        let sock = sock.to_str().ok_or("a non-UTF-8 temporary path")?;
        let mut g = guest.command(bin);
        g.args(["guest", sock, &gp.to_string()]);
        path.adopt(Proc::spawn(g, dir.join(format!("two-hop-guest-{gp}.log"))));
        wait_for(Duration::from_secs(10), "two-hop guest socket", || Path::new(sock).exists().then_some(()));
        let hp = free_port();
        let mut h = Command::new(bin);
        h.args(["host", &hp.to_string(), sock]);
        path.adopt(Proc::spawn(h, dir.join(format!("two-hop-host-{gp}.log"))));
        path.ports.insert(gp, hp);
    }
    wait_host_ports(&path, "two-hop host port");
    Ok(path)
}

/// The floor of the ssh ControlMaster route (bench/floor/ssh_master.c,
/// built here with the machine's C compiler): a master of its own, and one
/// single-threaded epoll process per service that carries each connection
/// through it as ferry's master route does, with nothing else. What the
/// route itself costs against `ssh -L`.
pub fn ssh_master_floor(guest: &Guest, dir: &Path, servers: &Arc<GuestServers>) -> Result<ForwardPath, String> {
    let setup = ferry_tests::ssh::SshGuest::new(dir)?;
    let d = dir.join("ssh-master-floor");
    std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
    let bin = build_floor("ssh_master.c", &d.join("ssh-master-floor"))?;
    let control = d.join("ssh.sock");
    let mut path = ForwardPath::host_side("ssh master floor", servers);
    path.adopt(setup.start_master(guest, &control, d.join("master.log")));
    for gp in ports_of(servers) {
        let hp = free_port();
        let mut cmd = Command::new(&bin);
        cmd.arg(hp.to_string()).arg(&control).arg(gp.to_string());
        path.adopt(Proc::spawn(cmd, d.join(format!("floor-{gp}.log"))));
        path.ports.insert(gp, hp);
    }
    wait_host_ports(&path, "ssh master floor port");
    Ok(path)
}

/// Where Debian's golang-github-hashicorp-yamux-dev puts its sources.
const GOPATH: &str = "/usr/share/gocode";

/// A Go forwarder multiplexing every connection over one Unix socket with
/// hashicorp/yamux (bench/yamux), built here with Debian's Go packages: the
/// baseline of ferry's multiplexed route.
pub fn yamux(guest: &Guest, dir: &Path, servers: &Arc<GuestServers>) -> Result<ForwardPath, String> {
    let missing = "Go or hashicorp/yamux not installed (apt-get install golang-go golang-github-hashicorp-yamux-dev)";
    if !have("go") || !Path::new(GOPATH).join("src/github.com/hashicorp/yamux").exists() {
        return Err(missing.into());
    }
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("yamux/main.go");
    let bin = dir.join("yamux-forward");
    let built = Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg(&source)
        .env("GO111MODULE", "off")
        .env("GOPATH", GOPATH)
        .env("GOCACHE", dir.join("gocache"))
        .output()
        .map_err(|e| format!("go build: {e}"))?;
    if !built.status.success() {
        return Err(format!("go build failed: {}", String::from_utf8_lossy(&built.stderr)));
    }
    let mut path = ForwardPath::host_side("yamux (Go)", servers);
    let sock = dir.join("yamux.sock");
    let mut g = guest.command(bin.to_str().ok_or("a non-UTF-8 temporary path")?);
    g.arg("serve").arg(&sock);
    path.adopt(Proc::spawn(g, dir.join("yamux-guest.log")));
    wait_for(Duration::from_secs(10), "yamux guest socket", || sock.exists().then_some(()));
    let mut h = Command::new(&bin);
    h.arg("listen").arg(&sock);
    for gp in ports_of(servers) {
        let hp = free_port();
        h.arg(format!("{hp}={gp}"));
        path.ports.insert(gp, hp);
    }
    path.adopt(Proc::spawn(h, dir.join("yamux-host.log")));
    wait_host_ports(&path, "yamux host port");
    Ok(path)
}

/// Waits until every host port of `path` accepts (a baseline's, which
/// must come up).
fn wait_host_ports(path: &ForwardPath, what: &str) {
    for hp in path.ports.values() {
        wait_for(Duration::from_secs(10), what, || std::net::TcpStream::connect(("127.0.0.1", *hp)).ok().map(|_| ()));
    }
}

/// Waits until every host port of `path` accepts, or says why not.
fn wait_ports(path: &ForwardPath, proc: &mut Proc, what: &str) -> Result<(), String> {
    for hp in path.ports.values() {
        let ok = ferry_tests::try_wait_for(Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", *hp)).ok().map(|_| ())
        });
        if ok.is_none() || !proc.is_running() {
            return Err(format!("{what} did not come up: {}", proc.log_text().trim()));
        }
    }
    Ok(())
}

/// `ssh -L`, one forward per guest port, through an sshd in the guest
/// (what Lima's ssh port forwarder does over its ControlMaster).
pub fn ssh(guest: &Guest, dir: &Path, servers: &Arc<GuestServers>) -> Result<ForwardPath, String> {
    let setup = ferry_tests::ssh::SshGuest::new(dir)?;
    let mut path = ForwardPath::host_side("ssh -L", servers);
    let mut cmd = Command::new("ssh");
    cmd.args(["-N", "-o", "ExitOnForwardFailure=yes"]).args(setup.client_args(guest));
    for gp in ports_of(servers) {
        let hp = free_port();
        cmd.args(["-L", &format!("127.0.0.1:{hp}:127.0.0.1:{gp}")]);
        path.ports.insert(gp, hp);
    }
    cmd.arg("root@guest");
    let mut proc = Proc::spawn(cmd, dir.join("ssh.log"));
    wait_ports(&path, &mut proc, "ssh -L")?;
    path.adopt(proc);
    Ok(path)
}

/// ferry over `exec:ssh`: one ssh session to the same sshd as `ssh -L`,
/// the agent on its stdio (the transport every Lima VM on a Mac has). With
/// `master`, as `limactl ferry start` runs it: the session is a client of
/// an ssh ControlMaster and connections go through that master as stdio
/// forwards (`--ssh-control-path`); without, every connection is
/// multiplexed in the session.
pub fn ferry_over_ssh(
    guest: &Guest,
    dir: &Path,
    servers: &Arc<GuestServers>,
    master: bool,
) -> Result<ForwardPath, String> {
    let setup = ferry_tests::ssh::SshGuest::new(dir)?;
    let name = if master { "ferry (ssh master)" } else { "ferry (exec:ssh)" };
    let d = dir.join(if master { "ferry-ssh-master" } else { "ferry-ssh" });
    std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
    let secret = ferry_tests::procs::make_secret(&d);
    let mut path =
        ForwardPath { name, servers: servers.clone(), ports: HashMap::new(), netns: None, pids: vec![], procs: vec![] };
    let mut rules = String::from("portForwards:\n");
    for gp in ports_of(servers) {
        let hp = free_port();
        rules.push_str(&format!("- guestPort: {gp}\n  hostPort: {hp}\n"));
        path.ports.insert(gp, hp);
    }
    rules.push_str("- guestPortRange: [1, 65535]\n  ignore: true\n");
    std::fs::write(d.join("rules.yaml"), rules).map_err(|e| e.to_string())?;
    let quote = |a: &str| format!("'{}'", a.replace('\'', "'\\''"));
    let control = d.join("ssh.sock");
    let master_proc = master.then(|| setup.start_master(guest, &control, d.join("master.log")));
    // With the master route, the session has an ssh connection of its own
    // (as `limactl ferry start` gives it), so the two encrypt apart.
    let mut remote: Vec<String> = vec!["ssh".into()];
    if master {
        remote.extend(["-o", "ControlMaster=no", "-o", "ControlPath=none"].map(String::from));
    }
    remote.extend(setup.client_args(guest).iter().map(|a| quote(a)));
    remote.push("root@guest".into());
    remote.push(ferry_tests::bin_dir().join("ferry-agent").display().to_string());
    remote.extend(["--stdio".into(), "--secret-file".into(), secret.display().to_string()]);
    let mut cmd = Command::new(ferry_tests::bin_dir().join("ferry"));
    cmd.args(["run", "--agent", &format!("exec:{}", remote.join(" "))])
        .arg("--secret-file")
        .arg(&secret)
        .arg("--rules")
        .arg(d.join("rules.yaml"))
        .arg("--control-socket")
        .arg(d.join("ferry.sock"))
        .env("FERRY_STATE_DIR", d.join("state"));
    if master {
        cmd.arg("--ssh-control-path").arg(&control);
    }
    let mut proc = Proc::spawn(cmd, d.join("ferry.log"));
    wait_ports(&path, &mut proc, name)?;
    path.adopt(proc);
    if let Some(m) = master_proc {
        path.adopt(m);
    }
    Ok(path)
}
