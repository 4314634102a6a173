//! Log set-up shared by both binaries: tracing to stderr (stdout may carry
//! a session, as with `ferry-agent --stdio`), colours only on a terminal;
//! or, with a log file, to that file, capped in size (see [`CappedFile`]).

use std::{
    fs::{File, OpenOptions},
    io::{self, IsTerminal, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

/// The largest a log file grows before it is rotated: one older file is
/// kept beside it (`NAME.1`), so a log takes at most twice this.
pub const LOG_FILE_CAP: u64 = 1 << 20;

/// Installs the global subscriber: `info` by default, `debug` with one `-v`,
/// `trace` with two; `RUST_LOG` overrides. With `log_file` the lines go
/// there (created 0600) instead of stderr.
pub fn init(verbose: u8, log_file: Option<&Path>) -> io::Result<()> {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match log_file {
        Some(path) => {
            let file = CappedFile::open(path, LOG_FILE_CAP)?;
            builder.with_ansi(false).with_writer(move || file.clone()).init()
        }
        None => builder.with_writer(io::stderr).with_ansi(io::stderr().is_terminal()).init(),
    }
    Ok(())
}

/// A log file that is rotated when it passes its cap: `NAME` becomes
/// `NAME.1` (replacing the previous one) and a new `NAME` starts. Clones
/// share the file. Whole lines are written at once, so a line is never
/// split across the two files.
#[derive(Clone)]
pub struct CappedFile(Arc<Mutex<Capped>>);

struct Capped {
    path: PathBuf,
    cap: u64,
    file: File,
    size: u64,
}

fn open_log(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).mode(0o600).open(path)
}

impl CappedFile {
    /// Opens (appending) or creates `path`, to be rotated past `cap` bytes.
    pub fn open(path: &Path, cap: u64) -> io::Result<Self> {
        let file = open_log(path)?;
        let size = file.metadata()?.len();
        Ok(Self(Arc::new(Mutex::new(Capped { path: path.to_path_buf(), cap, file, size }))))
    }
}

impl Write for CappedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut c = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if c.size > 0 && c.size + buf.len() as u64 > c.cap {
            let mut old = c.path.clone().into_os_string();
            old.push(".1");
            std::fs::rename(&c.path, &old)?;
            c.file = open_log(&c.path)?;
            c.size = 0;
        }
        c.file.write_all(buf)?;
        c.size += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_rotates_past_its_cap_and_keeps_one_older_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.log");
        let mut f = CappedFile::open(&path, 1000).unwrap();
        for i in 0..500 {
            f.write_all(format!("line {i:04} of the log\n").as_bytes()).unwrap();
        }
        let now = std::fs::read_to_string(&path).unwrap();
        let older = std::fs::read_to_string(dir.path().join("agent.log.1")).unwrap();
        assert!(now.len() <= 1000 && older.len() <= 1000, "{} {}", now.len(), older.len());
        assert!(now.ends_with("line 0499 of the log\n"), "the newest lines are in the file");
        assert!(older.lines().all(|l| l.starts_with("line ")), "whole lines only");
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
    }
}
