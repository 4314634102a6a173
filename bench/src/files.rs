//! File events: from a host write to a guest watcher's event, through a
//! bindfs (FUSE) view of the host folder in the guest, which raises no
//! inotify event of its own. The watcher is Node's fs.watch, printing a
//! wall-clock timestamp per event.

use std::{
    collections::HashSet,
    path::PathBuf,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use ferry_tests::{procs::Proc, wait_for, Bridge, Guest};

/// A guest watching a host folder through ferry.
pub struct FileBench {
    node: Proc,
    _bindfs: Proc,
    /// The agent and forwarder.
    pub bridge: Bridge,
    host: PathBuf,
    _dir: tempfile::TempDir,
}

fn now_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64() * 1e3
}

impl FileBench {
    /// Sets it up, or says why it cannot (a tool is missing).
    pub fn start() -> Result<Self, String> {
        for tool in ["/usr/bin/bindfs", "/usr/bin/node"] {
            if !std::path::Path::new(tool).exists() {
                return Err(format!("{tool} is missing (apt-get install bindfs nodejs)"));
            }
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let host = dir.path().join("host");
        std::fs::create_dir_all(&host).map_err(|e| e.to_string())?;
        let guest_dir = dir.path().join("guest");
        let guest = Guest::with_private_dir(&guest_dir, dir.path().join("holder.log"));
        let share = guest_dir.join("share");
        guest.command("mkdir").arg(&share).status().map_err(|e| e.to_string())?;
        let mut cmd = guest.command("/usr/bin/bindfs");
        cmd.arg("-f").arg(&host).arg(&share);
        let bindfs = Proc::spawn_graceful(cmd, dir.path().join("bindfs.log"));
        std::fs::write(host.join(".probe"), b"").map_err(|e| e.to_string())?;
        let probe = share.join(".probe");
        wait_for(Duration::from_secs(10), "bindfs in the guest", || {
            guest.command("test").arg("-e").arg(&probe).status().ok()?.success().then_some(())
        });
        let mut cmd = guest.command("/usr/bin/node");
        cmd.args([
            "-e",
            "const {performance}=require('perf_hooks');require('fs').watch(process.argv[1],(t,f)=>console.log((performance.timeOrigin+performance.now()).toFixed(3),f));console.log('ready')",
        ])
        .arg(&share);
        let node = Proc::spawn(cmd, dir.path().join("node.log"));
        wait_for(Duration::from_secs(10), "node ready", || node.stdout_text().contains("ready").then_some(()));
        let watch = format!("{}={}", host.display(), share.display());
        let bridge = Bridge::start_in(guest, &[], &["--watch", &watch], &[]);
        bridge.wait_log(1, "watching");
        Ok(Self { node, _bindfs: bindfs, bridge, host, _dir: dir })
    }

    /// The first time (ms since the epoch) the watcher reported `name`, if it did.
    fn seen(&self, name: &str) -> Option<f64> {
        self.node.stdout_text().lines().find_map(|l| {
            let (t, f) = l.split_once(' ')?;
            (f == name).then(|| t.parse().ok()).flatten()
        })
    }

    /// Writes `samples` files one at a time and times each until the guest
    /// watcher reports it. Returns (median, p99) in milliseconds.
    pub fn write_to_event(&self, samples: usize) -> (f64, f64) {
        let mut ms = Vec::with_capacity(samples);
        for i in 0..samples {
            std::thread::sleep(Duration::from_millis(30));
            let name = format!("lat-{i}.txt");
            let t0 = now_ms();
            std::fs::write(self.host.join(&name), b"x").expect("host write");
            let seen = wait_for(Duration::from_secs(10), "the guest event", || {
                let s = self.seen(&name);
                if s.is_none() {
                    std::thread::sleep(Duration::from_micros(300));
                }
                s
            });
            ms.push((seen - t0).max(0.0));
        }
        ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
        (ms[ms.len() / 2], ms[(ms.len() * 99 / 100).min(ms.len() - 1)])
    }

    /// Creates `n` files as fast as possible and returns how many distinct
    /// files per second the guest watcher reported, from the first write to
    /// the last file seen.
    pub fn sustained(&self, n: usize) -> f64 {
        let t0 = Instant::now();
        for i in 0..n {
            std::fs::write(self.host.join(format!("burst-{i}.txt")), b"y").expect("host write");
        }
        let names: HashSet<String> = (0..n).map(|i| format!("burst-{i}.txt")).collect();
        wait_for(Duration::from_secs(60), "every burst file seen", || {
            let seen: HashSet<String> = self
                .node
                .stdout_text()
                .lines()
                .filter_map(|l| l.split_once(' ').map(|(_, f)| f.to_string()))
                .filter(|f| names.contains(f))
                .collect();
            if seen.len() < n {
                std::thread::sleep(Duration::from_millis(5));
                return None;
            }
            Some(())
        });
        n as f64 / t0.elapsed().as_secs_f64()
    }
}
