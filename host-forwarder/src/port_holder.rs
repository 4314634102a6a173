//! Which process holds a host port (as `lsof` says): `ferry doctor` and
//! `limactl ferry status` name it for a port ferry cannot take.

use std::process::Command;

/// Which process listens on the host address `host` ("127.0.0.1:8080"), as
/// "NAME (pid N)"; `None` if lsof is missing or names nobody.
pub fn holder_of(host: &str) -> Option<String> {
    let port = host.rsplit(':').next()?;
    let out = Command::new("lsof").args(["-nP", &format!("-iTCP:{port}"), "-sTCP:LISTEN", "-Fpc"]).output().ok()?;
    parse_lsof(&String::from_utf8_lossy(&out.stdout))
}

/// "NAME (pid N)" from `lsof -F pc` output (a `p` line, then a `c` line).
fn parse_lsof(out: &str) -> Option<String> {
    let pid = out.lines().find_map(|l| l.strip_prefix('p'))?;
    let cmd = out.lines().find_map(|l| l.strip_prefix('c')).unwrap_or("?");
    Some(format!("{cmd} (pid {pid})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsof_output_names_the_holder() {
        assert_eq!(parse_lsof("p4242\ncpython3\nf5\n").as_deref(), Some("python3 (pid 4242)"));
        assert_eq!(parse_lsof(""), None);
    }
}
