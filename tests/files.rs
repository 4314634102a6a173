//! File events end to end: the guest sees a host directory through bindfs
//! (FUSE) in its own mount namespace, which shows host changes to readers
//! but raises no inotify event in the guest. Real watchers in the guest
//! (inotifywait, Node's fs.watch) must wake up for host edits through ferry.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use ferry_tests::{data::sha256, procs::Proc, try_wait_for, wait_for, Bridge, Guest};

struct World {
    bridge: Bridge,
    inotify: Proc,
    node: Proc,
    _bindfs: Proc,
    host: PathBuf,
    share: PathBuf,
    _dir: tempfile::TempDir,
}

fn lines(p: &Proc) -> Vec<String> {
    p.stdout_text().lines().map(str::to_string).collect()
}

/// Waits until a line after the first `from` lines of `p`'s output contains `needle`.
fn wait_line(p: &Proc, from: usize, needle: &str) -> String {
    wait_for(Duration::from_secs(10), &format!("a watcher line with {needle:?}"), || {
        lines(p).into_iter().skip(from).find(|l| l.contains(needle))
    })
}

fn world() -> World {
    for tool in ["/usr/bin/bindfs", "/usr/bin/inotifywait", "/usr/bin/node"] {
        assert!(Path::new(tool).exists(), "{tool} is missing: apt-get install bindfs inotify-tools nodejs");
    }
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("host");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("a.txt"), b"first version\n").unwrap();
    let guest_dir = dir.path().join("guest");
    let guest = Guest::with_private_dir(&guest_dir, dir.path().join("holder.log"));
    let share = guest_dir.join("share");
    assert!(guest.command("mkdir").arg(&share).status().unwrap().success());
    let mut cmd = guest.command("/usr/bin/bindfs");
    cmd.arg("-f").arg(&host).arg(&share);
    let bindfs = Proc::spawn_graceful(cmd, dir.path().join("bindfs.log"));
    let probe = share.join("a.txt");
    wait_for(Duration::from_secs(10), "the bindfs mount in the guest", || {
        guest.command("test").arg("-e").arg(&probe).status().ok()?.success().then_some(())
    });
    let mut cmd = guest.command("/usr/bin/inotifywait");
    cmd.arg("-m").arg(&share);
    let inotify = Proc::spawn(cmd, dir.path().join("inotifywait.log"));
    let mut cmd = guest.command("/usr/bin/node");
    cmd.args(["-e", "require('fs').watch(process.argv[1], (t, f) => console.log(t, f)); console.log('ready')"])
        .arg(&share);
    let node = Proc::spawn(cmd, dir.path().join("node.log"));
    wait_for(Duration::from_secs(10), "inotifywait and node ready", || {
        (inotify.log_text().contains("Watches established") && node.stdout_text().contains("ready")).then_some(())
    });

    // Control: without ferry, a host edit raises nothing in the guest.
    std::fs::write(host.join("a.txt"), b"edited without ferry\n").unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert!(lines(&inotify).is_empty(), "control: inotifywait saw {:?}", lines(&inotify));
    assert_eq!(lines(&node), vec!["ready"], "control: node saw events");

    let watch = format!("{}={}", host.display(), share.display());
    let bridge = Bridge::start_in(guest, &["-v"], &["--watch", &watch, "-v"], &[]);
    bridge.wait_log(1, "watching");
    World { bridge, inotify, node, _bindfs: bindfs, host, share, _dir: dir }
}

#[test]
fn host_edits_creations_and_deletions_wake_guest_watchers_without_loops_or_damage() {
    let w = world();
    let a = w.host.join("a.txt");
    let before = std::fs::read(&a).unwrap();

    // Edit.
    let (i0, n0) = (lines(&w.inotify).len(), lines(&w.node).len());
    std::fs::write(&a, b"second version, longer than the first\n").unwrap();
    wait_line(&w.inotify, i0, "ATTRIB a.txt");
    wait_line(&w.inotify, i0, "CLOSE_WRITE,CLOSE a.txt");
    wait_line(&w.node, n0, "a.txt");
    let after_edit = std::fs::read(&a).unwrap();
    assert_eq!(after_edit, b"second version, longer than the first\n", "the replay changed content");
    assert_ne!(before, after_edit);

    // Creation.
    let (i0, n0) = (lines(&w.inotify).len(), lines(&w.node).len());
    std::fs::write(w.host.join("new.js"), b"export default 1\n").unwrap();
    wait_line(&w.inotify, i0, "new.js");
    wait_line(&w.node, n0, "new.js");

    // Deletion: the directory itself reports a change.
    let (i0, n0) = (lines(&w.inotify).len(), lines(&w.node).len());
    std::fs::remove_file(w.host.join("new.js")).unwrap();
    wait_line(&w.inotify, i0, "ATTRIB,ISDIR");
    wait_for(Duration::from_secs(10), "node sees the deletion", || (lines(&w.node).len() > n0).then_some(()));

    // No loop: the replays do not come back as new host events.
    std::thread::sleep(Duration::from_millis(300));
    let settled = (lines(&w.inotify).len(), lines(&w.node).len());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!((lines(&w.inotify).len(), lines(&w.node).len()), settled, "events kept coming: a replay loop");

    // Content and size as the host wrote them, seen from both sides.
    let sum = sha256(&std::fs::read(&a).unwrap());
    let guest_view = w.bridge.guest.command("cat").arg(w.share.join("a.txt")).output().unwrap().stdout;
    assert_eq!(sha256(&guest_view), sum);
}

#[test]
fn ten_thousand_rapid_edits_give_a_bounded_number_of_replays_and_the_final_state() {
    let w = world();
    let b = w.host.join("b.txt");
    let i0 = lines(&w.inotify).len();
    for i in 0..10_000 {
        std::fs::write(&b, format!("edit {i}\n")).unwrap();
    }
    // The last state arrives: the guest sees the final content and an event after it.
    wait_line(&w.inotify, i0, "b.txt");
    std::thread::sleep(Duration::from_millis(500));
    let replays = lines(&w.inotify).len() - i0;
    assert!(replays < 2_000, "{replays} guest events for 10,000 host edits");
    let final_view = try_wait_for(Duration::from_secs(5), || {
        let out = w.bridge.guest.command("cat").arg(w.share.join("b.txt")).output().ok()?;
        (out.stdout == b"edit 9999\n").then_some(())
    });
    assert!(final_view.is_some(), "the guest never saw the final content");
    let row = w.bridge.status()["ports"].as_array().unwrap().iter().find(|r| r["proto"] == "files").cloned().unwrap();
    assert_eq!(row["state"], "watching", "{row}");
    eprintln!("10,000 edits -> {replays} guest events; status {row}");
}

/// A host folder holding a mount that stops answering (a hung network or
/// FUSE file system, here a stopped bindfs) stalls only the file events:
/// `ferry run`, which serves everything on one thread, keeps forwarding
/// while it waits on that mount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_mount_in_a_watched_folder_stalls_nothing_else() {
    use ferry_tests::net::{connect_forwarded, spawn_echo};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    assert!(Path::new("/usr/bin/bindfs").exists(), "bindfs is missing: apt-get install bindfs");
    let dir = tempfile::tempdir().unwrap();
    let (share, outside, backing) = (dir.path().join("share"), dir.path().join("outside"), dir.path().join("backing"));
    let mount = outside.join("m");
    for d in [&share, &mount, &backing] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(backing.join("f"), b"x").unwrap();
    let mut cmd = std::process::Command::new("/usr/bin/bindfs");
    cmd.arg("-f").arg(&backing).arg(&mount);
    let bindfs = Proc::spawn(cmd, dir.path().join("bindfs.log"));
    let mut unmount = HungMount { pid: bindfs.pid(), path: mount.clone() };
    wait_for(Duration::from_secs(10), "the bindfs mount", || mount.join("f").exists().then_some(()));

    let watch = format!("{}=/srv/share", share.display());
    let bridge = Bridge::start_with(&[], &["--watch", &watch, "-v"]);
    bridge.wait_log(1, "watching");
    let port = ferry_tests::free_port();
    let addr = format!("127.0.0.1:{port}");
    spawn_echo(bridge.guest.tcp_listener(&addr));
    let round = |addr: String| async move {
        let mut s = connect_forwarded(&addr).await;
        s.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        s.read_exact(&mut got).await.map(|_| got)
    };
    assert_eq!(&round(addr.clone()).await.unwrap(), b"ping");

    // The mount stops answering, and a directory holding it moves into the
    // folder: watching the new directory reaches into the mount and waits.
    // SAFETY: a signal to the bindfs process this test started.
    assert_eq!(unsafe { libc::kill(bindfs.pid() as i32, libc::SIGSTOP) }, 0);
    std::fs::rename(&outside, share.join("outside")).unwrap();
    unmount.path = share.join("outside/m");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = tokio::time::timeout(Duration::from_secs(10), round(addr.clone())).await;
    // SAFETY: as above.
    unsafe { libc::kill(bindfs.pid() as i32, libc::SIGCONT) };
    assert!(matches!(during, Ok(Ok(got)) if &got == b"ping"), "a hung mount held up the forwarder: {during:?}");
}

/// Lets a stopped bindfs go on and lazily unmounts its mount when the test ends.
struct HungMount {
    pid: u32,
    path: PathBuf,
}

impl Drop for HungMount {
    fn drop(&mut self) {
        // SAFETY: a signal to the bindfs process the test started.
        unsafe { libc::kill(self.pid as i32, libc::SIGCONT) };
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
