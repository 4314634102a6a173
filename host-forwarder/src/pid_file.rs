//! A pid file held with a lock, so that "is ferry running?" needs no /proc
//! (which macOS lacks) and a stale file from a crashed process is never
//! mistaken for a live one.
//!
//! `ferry run --pid-file PATH` creates the file (mode 0600), takes an
//! exclusive flock(2) on it, writes its pid and holds the lock until it
//! exits; the kernel drops the lock when the process dies, however it dies.
//! [`running`] reads the pid only while somebody holds that lock.

use std::{
    fs::{File, OpenOptions},
    io::{self, Read, Write},
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
    path::Path,
};

/// The held pid file of this process; the lock ends when it is dropped.
#[derive(Debug)]
pub struct PidFile {
    _file: File,
}

fn lock(file: &File, how: libc::c_int) -> io::Result<()> {
    // SAFETY: flock(2) on a descriptor this function borrows.
    if unsafe { libc::flock(file.as_raw_fd(), how | libc::LOCK_NB) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl PidFile {
    /// Creates or takes over `path` and holds it for this process; fails
    /// with `AlreadyExists` (naming the holder's pid) if another live
    /// process holds it.
    pub fn hold(path: &Path) -> io::Result<Self> {
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path)?;
        // [`running`] takes a shared lock for an instant to ask; a holder
        // holds for good. A few short retries tell the two apart.
        let mut tries = 0;
        let locked = loop {
            match lock(&file, libc::LOCK_EX) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && tries < 20 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                other => break other,
            }
        };
        if let Err(e) = locked {
            if e.kind() == io::ErrorKind::WouldBlock {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} is held by a running process (pid {})", path.display(), text.trim()),
                ));
            }
            return Err(e);
        }
        file.set_len(0)?;
        writeln!(file, "{}", std::process::id())?;
        file.flush()?;
        Ok(Self { _file: file })
    }
}

/// The pid in the file at `path` if a live process holds it.
pub fn running(path: &Path) -> Option<u32> {
    let mut file = File::open(path).ok()?;
    match lock(&file, libc::LOCK_SH) {
        // Nobody holds it: whoever wrote it has exited.
        Ok(()) => None,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            let mut text = String::new();
            file.read_to_string(&mut text).ok()?;
            text.trim().parse().ok()
        }
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_held_file_names_a_running_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.pid");
        assert_eq!(running(&path), None, "no file");
        let held = PidFile::hold(&path).unwrap();
        assert_eq!(running(&path), Some(std::process::id()));
        let second = PidFile::hold(&path).unwrap_err();
        assert_eq!(second.kind(), io::ErrorKind::AlreadyExists, "{second}");
        drop(held);
        assert_eq!(running(&path), None, "a file nobody holds is stale");
        std::fs::write(&path, "1\n").unwrap();
        assert_eq!(running(&path), None, "a stale pid is never believed");
        let again = PidFile::hold(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{}\n", std::process::id()));
        drop(again);
    }

    #[test]
    fn a_process_asking_at_the_same_moment_does_not_stop_a_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.pid");
        std::fs::write(&path, "").unwrap();
        // Someone asking holds the shared lock for a moment, as `running` does.
        let asker = File::open(&path).unwrap();
        lock(&asker, libc::LOCK_SH).unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            drop(asker);
        });
        let held = PidFile::hold(&path).expect("the start waits out the question");
        release.join().unwrap();
        assert_eq!(running(&path), Some(std::process::id()));
        drop(held);
    }
}
