//! What guest processes watch: the shared file systems mounted in the guest
//! (from /proc/self/mountinfo) and the inotify watches on each (from the
//! `inotify` lines of /proc/PID/fdinfo). No other bridge reports this; it
//! tells the host which of its folders matter to the guest.

use std::collections::HashMap;

use ferry_protocol::SharedMount;

/// File system types that share host folders into a VM.
fn is_shared(fs_type: &str) -> bool {
    matches!(fs_type, "virtiofs" | "9p" | "nfs" | "nfs4" | "cifs" | "smb3")
        || fs_type == "fuse"
        || fs_type.starts_with("fuse.")
}

/// The shared mounts with their watch counts.
pub fn shared_mounts() -> Vec<SharedMount> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return Vec::new() };
    let watches = watches_per_device();
    parse_mountinfo(&info)
        .into_iter()
        .filter(|(_, fs_type, _)| is_shared(fs_type))
        .map(|(mount_point, fs_type, dev)| SharedMount {
            mount_point,
            fs_type,
            watches: watches.get(&dev).copied().unwrap_or(0),
        })
        .collect()
}

/// (mount point, type, kernel device number) of each mount.
fn parse_mountinfo(info: &str) -> Vec<(String, String, u64)> {
    info.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let (major, minor) = f.get(2)?.split_once(':')?;
            let dev = (major.parse::<u64>().ok()? << 20) | minor.parse::<u64>().ok()?;
            let mount_point = unescape(f.get(4)?);
            let fs_type = right.split(' ').next()?.to_string();
            Some((mount_point, fs_type, dev))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// inotify watches per kernel device number, over every process.
fn watches_per_device() -> HashMap<u64, u32> {
    let mut out = HashMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else { return out };
    for p in procs.flatten() {
        if !p.file_name().to_string_lossy().bytes().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            let is_inotify = std::fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == "anon_inode:inotify");
            if !is_inotify {
                continue;
            }
            let info = p.path().join("fdinfo").join(fd.file_name());
            if let Ok(text) = std::fs::read_to_string(info) {
                for dev in text.lines().filter_map(inotify_sdev) {
                    *out.entry(dev).or_insert(0) += 1;
                }
            }
        }
    }
    out
}

/// The `sdev` of an fdinfo line `inotify wd:1 ino:... sdev:... mask:...`.
fn inotify_sdev(line: &str) -> Option<u64> {
    let rest = line.strip_prefix("inotify ")?;
    let sdev = rest.split(' ').find_map(|f| f.strip_prefix("sdev:"))?;
    u64::from_str_radix(sdev, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_and_fdinfo() {
        let info = "36 35 0:52 / /mnt/host\\040dir rw,relatime shared:1 - virtiofs mount0 rw\n\
                    37 35 8:1 / / rw - ext4 /dev/vda1 rw\n\
                    38 35 0:60 / /Users/me rw - fuse.sshfs me@host: rw\n";
        let m = parse_mountinfo(info);
        assert_eq!(m[0], ("/mnt/host dir".to_string(), "virtiofs".to_string(), 52));
        assert_eq!(m[1].2, (8 << 20) | 1);
        assert!(is_shared(&m[2].1) && !is_shared(&m[1].1));
        assert_eq!(inotify_sdev("inotify wd:1 ino:2a1 sdev:34 mask:fce ignored_mask:0 fhandle-bytes:8"), Some(0x34));
        assert_eq!(inotify_sdev("pos: 0"), None);
    }

    #[test]
    fn counts_this_process_watches() {
        let dir = tempfile::tempdir().unwrap();
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        let c = std::ffi::CString::new(dir.path().to_str().unwrap()).unwrap();
        assert!(unsafe { libc::inotify_add_watch(fd, c.as_ptr(), libc::IN_ALL_EVENTS) } >= 0);
        let total: u32 = watches_per_device().values().sum();
        unsafe { libc::close(fd) };
        assert!(total >= 1);
    }
}
