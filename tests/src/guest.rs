//! A guest: a network namespace with loopback up, optionally with a private
//! mount namespace in which a directory is the guest's own (a tmpfs the host
//! does not see).

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT: AtomicU32 = AtomicU32::new(0);
static NEXT_LINK: AtomicU32 = AtomicU32::new(0);

/// A network namespace, deleted on drop.
pub struct Guest {
    /// The namespace's name under /run/netns.
    pub name: String,
    /// With a private mount namespace: the process holding it and the
    /// directory that is a private tmpfs inside it.
    private: Option<(crate::Proc, std::path::PathBuf)>,
}

impl Guest {
    /// Creates a fresh namespace with loopback up.
    pub fn new() -> Self {
        crate::require_root();
        let name = format!("ferry-t{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        run(Command::new("ip").args(["netns", "add", &name]));
        let guest = Self { name, private: None };
        run(Command::new("ip").args(["netns", "exec", &guest.name, "ip", "link", "set", "lo", "up"]));
        guest
    }

    /// A guest whose processes also share a private mount namespace in which
    /// `dir` (an empty directory on the host) is a tmpfs of the guest's own:
    /// files the guest makes there (sockets, say) are invisible to the host.
    /// `log` receives the holder process's stderr.
    pub fn with_private_dir(dir: &std::path::Path, log: std::path::PathBuf) -> Self {
        let mut guest = Self::new();
        std::fs::create_dir_all(dir).expect("private dir");
        let script = format!(
            "mount -t tmpfs -o mode=0755 ferry-guest {0} && touch {0}/.ready && exec sleep 1000000",
            dir.display()
        );
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", guest.name)).args([
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ]);
        let holder = crate::Proc::spawn(cmd, log);
        let pid = holder.pid();
        guest.private = Some((holder, dir.to_path_buf()));
        let ready = dir.join(".ready");
        crate::wait_for(std::time::Duration::from_secs(10), "the guest's private mount", || {
            let st = guest.command("test").arg("-e").arg(&ready).status().ok()?;
            st.success().then_some(())
        });
        assert!(!ready.exists(), "the private dir must not be visible on the host (holder {pid})");
        guest
    }

    /// The pid of the process holding the private mount namespace, if any.
    pub fn holder_pid(&self) -> Option<u32> {
        self.private.as_ref().map(|(p, _)| p.pid())
    }

    /// Joins the guest to the host by a veth pair, its end named `guest_if`
    /// (as a VM's NIC on a host-reachable network, e.g. Lima's lima0); each
    /// end gets an address of a /30 of its own. Returns (host address,
    /// guest address). The pair goes with the namespace.
    pub fn link_to_host(&self, guest_if: &str) -> (String, String) {
        let n = (std::process::id() % 200) as usize * 16 + NEXT_LINK.fetch_add(1, Ordering::Relaxed) as usize % 16;
        let (host_if, tmp_if) = (format!("fvh{n}"), format!("fvg{n}"));
        let host_ip = format!("10.213.{}.{}", n / 64, (n % 64) * 4 + 1);
        let guest_ip = format!("10.213.{}.{}", n / 64, (n % 64) * 4 + 2);
        let netns = |args: &[&str]| {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &self.name, "ip"]).args(args);
            c
        };
        run(Command::new("ip")
            .args(["link", "add", &host_if, "type", "veth", "peer", "name", &tmp_if, "netns", &self.name]));
        run(Command::new("ip").args(["addr", "add", &format!("{host_ip}/30"), "dev", &host_if]));
        run(Command::new("ip").args(["link", "set", &host_if, "up"]));
        run(&mut netns(&["link", "set", &tmp_if, "name", guest_if]));
        run(&mut netns(&["addr", "add", &format!("{guest_ip}/30"), "dev", guest_if]));
        run(&mut netns(&["link", "set", guest_if, "up"]));
        (host_ip, guest_ip)
    }

    /// A command that runs `program` inside the guest (its network
    /// namespace, and its mount namespace if it has one).
    pub fn command(&self, program: &str) -> Command {
        match &self.private {
            Some((holder, _)) => {
                let mut c = Command::new("nsenter");
                c.args(["-t", &holder.pid().to_string(), "-m", "-n", program]);
                c
            }
            None => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &self.name, program]);
                c
            }
        }
    }

    /// Runs `f` on a thread that has entered the namespace; sockets created
    /// there live in the guest (a network namespace is per thread).
    pub fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = File::open(&path).expect("open netns");
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("guest thread panicked")
    }

    /// Binds a TCP listener inside the guest, ready for tokio.
    pub fn tcp_listener(&self, addr: &str) -> tokio::net::TcpListener {
        let addr = addr.to_string();
        let std = self.run_in(move || {
            let l = std::net::TcpListener::bind(&addr).expect("bind in guest");
            l.set_nonblocking(true).unwrap();
            l
        });
        tokio::net::TcpListener::from_std(std).expect("tokio listener")
    }
}

impl Default for Guest {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        // The holder's death takes the private mount namespace with it.
        drop(self.private.take());
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

fn run(c: &mut Command) {
    let st = c.status().expect("spawn");
    assert!(st.success(), "{c:?} failed: {st}");
}
