//! A guest: a network namespace with loopback up.

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace, deleted on drop.
pub struct Guest {
    /// The namespace's name under /run/netns.
    pub name: String,
}

impl Guest {
    /// Creates a fresh namespace with loopback up.
    pub fn new() -> Self {
        crate::require_root();
        let name = format!("ferry-t{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        run(Command::new("ip").args(["netns", "add", &name]));
        let guest = Self { name };
        run(Command::new("ip").args(["netns", "exec", &guest.name, "ip", "link", "set", "lo", "up"]));
        guest
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
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
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

fn run(c: &mut Command) {
    let st = c.status().expect("spawn");
    assert!(st.success(), "{c:?} failed: {st}");
}
