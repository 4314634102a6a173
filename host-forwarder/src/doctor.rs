//! `ferry doctor [INSTANCE]`: one command that says what is wrong and what
//! to do, the way `brew doctor` does: the service and the daemon, then for
//! each instance its state, whether ferry follows it, whether Lima's own
//! forwarding is still on, the forwarder and its transport (and why), host
//! ports another process holds (and which process), the agent's version and
//! the secret's permissions. Exits with status 1 if any check fails.

use std::{os::unix::fs::PermissionsExt, path::Path, time::SystemTime};

use crate::{
    lifecycle::{homes, homes::Home, marker, override_yaml, state},
    lima::lima_yaml,
};

/// Options of `ferry doctor`.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Only this instance [default: every instance in the Lima homes].
    pub instance: Option<String>,
}

/// The findings, printed as they come.
#[derive(Default)]
struct Report {
    failures: usize,
}

impl Report {
    fn ok(&mut self, what: impl AsRef<str>) {
        println!("  ok  {}", what.as_ref());
    }
    fn info(&mut self, what: impl AsRef<str>) {
        println!("  --  {}", what.as_ref());
    }
    fn fail(&mut self, what: impl AsRef<str>, fix: impl AsRef<str>) {
        self.failures += 1;
        println!("  !!  {}\n      -> {}", what.as_ref(), fix.as_ref());
    }
}

/// Runs the checks.
pub fn run(a: &DoctorArgs) -> anyhow::Result<()> {
    let mut r = Report::default();
    let targets: Vec<(Home, String, std::path::PathBuf)> = match &a.instance {
        Some(name) => {
            let (home, dir) = homes::find(name)?;
            vec![(home, name.clone(), dir)]
        }
        None => homes::homes()
            .into_iter()
            .flat_map(|h| h.instances().into_iter().map(move |(n, d)| (h.clone(), n, d)))
            .collect(),
    };
    let any_enabled = targets.iter().any(|(h, _, d)| followed(h, d));
    println!("ferry {}", env!("CARGO_PKG_VERSION"));
    check_service(&mut r, any_enabled);
    for (home, name, dir) in &targets {
        println!("{name} ({})", dir.display());
        check_instance(&mut r, home, name, dir);
    }
    if targets.is_empty() {
        println!(
            "no instances in {}",
            homes::homes().iter().map(|h| h.dir.display().to_string()).collect::<Vec<_>>().join(" or ")
        );
    }
    if r.failures > 0 {
        println!("{} problem(s) found", r.failures);
        std::process::exit(1);
    }
    println!("no problems found");
    Ok(())
}

fn followed(home: &Home, dir: &Path) -> bool {
    marker::effective(dir).is_some() || (home.colima && override_yaml::has_block(&home.override_yaml()))
}

fn check_service(r: &mut Report, any_enabled: bool) {
    println!("service");
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from).unwrap_or_default();
    let m = crate::service::manager(None, &home);
    let s = crate::service::status(m.as_ref());
    let daemon = crate::pid_file::running(&crate::lifecycle::state::daemon_pid_file());
    match (&s.definition, daemon) {
        (Some(p), Some(pid)) => {
            r.ok(format!("{} service installed ({}), daemon running (pid {pid})", m.name(), p.display()))
        }
        (None, Some(pid)) => {
            r.info(format!("daemon running (pid {pid}) but not as a service: it will not start at the next login"));
            r.info("`ferry service install` makes it one");
        }
        (Some(p), None) if any_enabled => r.fail(
            format!("{} service installed ({}) but the daemon is not running", m.name(), p.display()),
            format!("see its logs: {}; `ferry service install` loads it again", s.logs),
        ),
        (None, None) if any_enabled => {
            r.fail("instances are enabled but no ferry daemon runs: nothing follows them", "`ferry service install`")
        }
        _ => r.info("no daemon running (nothing is enabled)"),
    }
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn check_instance(r: &mut Report, home: &Home, name: &str, dir: &Path) {
    let mut log = state::HaLog::default();
    log.update(&dir.join("ha.stdout.log"));
    let running = state::is_running(dir, &log);
    match (&log.last, running) {
        (_, true) => r.ok("running"),
        (Some(s), false) if state::host_agent_alive(dir) && !s.exiting => r.info("starting (not Running yet)"),
        _ => r.info("stopped"),
    }
    if let Some(s) = &log.last {
        if s.degraded || !s.errors.is_empty() {
            r.info(format!("Lima's host agent reports: {}", s.errors.join("; ")));
        }
    }
    let enabled = followed(home, dir);
    if enabled {
        r.ok(if marker::read(&marker::instance_path(dir)).is_some() {
            "enabled (limactl ferry enable)"
        } else if marker::read(&marker::all_path()).is_some() {
            "enabled (limactl ferry enable --all)"
        } else {
            "followed: the home's override.yaml switches Lima's forwarding off for every instance there"
        });
    } else {
        r.info(format!("not enabled (`limactl ferry enable {name}` lets ferry forward it)"));
    }
    check_lima_forwarding(r, home, name, dir, running);
    let state_dir = crate::lima::state_dir(dir);
    let forwarder = crate::pid_file::running(&state_dir.join("ferry.pid"));
    match (running, enabled, forwarder) {
        (true, true, None) => r.fail(
            "enabled and running, but no forwarder runs",
            format!("see `limactl ferry logs {name}` and the daemon's log"),
        ),
        (false, _, Some(pid)) => r.fail(
            format!("a forwarder (pid {pid}) runs for a stopped instance"),
            format!("`limactl ferry stop {name}`"),
        ),
        _ => {}
    }
    if let Some(pid) = forwarder {
        check_forwarder(r, name, &state_dir, pid);
    }
    check_secret(r, &state_dir.join("secret"));
}

fn check_lima_forwarding(r: &mut Report, home: &Home, name: &str, dir: &Path, running: bool) {
    let (edited_file, has_block) = if home.colima {
        let p = home.override_yaml();
        let b = override_yaml::has_block(&p);
        (p, b)
    } else {
        let p = dir.join("lima.yaml");
        let b = std::fs::read_to_string(&p).is_ok_and(|t| lima_yaml::has_ferry_block(&t));
        (p, b)
    };
    if !has_block {
        return;
    }
    // Lima reads the file when its host agent starts (and writes ha.pid
    // then); the same timestamp is no proof of the order.
    let read_since = match (mtime(&dir.join("ha.pid")), mtime(&edited_file)) {
        (Some(started), Some(edited)) => started > edited,
        _ => false,
    };
    if !running {
        r.ok(format!("Lima's own forwarding: off from the next start ({})", edited_file.display()));
    } else if read_since {
        r.ok("Lima's own forwarding: off");
    } else {
        r.fail(
            format!("Lima's own forwarding is still on: {} changed after the instance started", edited_file.display()),
            format!("`limactl ferry enable {name} --restart` (Lima holds its ports until then)"),
        );
    }
}

fn check_forwarder(r: &mut Report, name: &str, state_dir: &Path, pid: u32) {
    let report = match crate::status::client::query(&state_dir.join("ferry.sock")) {
        Ok(rep) => rep,
        Err(e) => {
            return r.fail(
                format!("the forwarder (pid {pid}) does not answer: {e}"),
                format!("`limactl ferry logs {name}`"),
            )
        }
    };
    let start: serde_json::Value = std::fs::read_to_string(state_dir.join("start.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let chosen = start["transport"].as_str().unwrap_or("?");
    let why = match chosen {
        "tcp" => "the guest has a vzNAT/shared address: plain TCP, the fastest route, ssh as the fallback",
        "ssh" => "no host-reachable guest address; `limactl ferry enable NAME --network` adds vzNAT to a vz instance",
        "given" => "named with --agent",
        _ => "not recorded (the start is still under way, or an older ferry started it)",
    };
    if report.connected {
        r.ok(format!("forwarder (pid {pid}) connected over {}", report.transport));
        r.info(format!("transport {chosen}: {}", why.replace("NAME", name)));
    } else {
        r.fail(format!("forwarder (pid {pid}) is not connected to the agent"), format!("`limactl ferry logs {name}`"));
    }
    check_tcp_route(r, name, state_dir, &report.transport);
    let want = format!("ferry-agent {}", env!("CARGO_PKG_VERSION"));
    match start["agent_version"].as_str() {
        Some(v) if v == want => r.ok(format!("agent {v}")),
        Some(v) => r.fail(
            format!("agent version {v}, this ferry is {}", env!("CARGO_PKG_VERSION")),
            format!("`limactl ferry stop {name}` and start again installs the matching agent"),
        ),
        None => {}
    }
    let forwarding = report.ports.iter().filter(|p| p.state == "forwarding").count();
    r.info(format!("{forwarding} port(s) forwarded"));
    for p in report.ports.iter().filter(|p| p.state == "retrying" || p.state == "failed") {
        let holder = crate::port_holder::holder_of(&p.host).map(|h| format!(", held by {h}")).unwrap_or_default();
        r.fail(
            format!("{} {} -> guest {}: {}{holder}", p.proto, p.host, p.guest, p.reason.as_deref().unwrap_or(&p.state)),
            "stop that program, or map the guest port to another hostPort in lima.yaml",
        );
    }
}

/// With the TCP transport chosen but the session on its ssh fallback: why
/// the guest's address does not answer, the macOS Local Network permission
/// above all.
fn check_tcp_route(r: &mut Report, name: &str, state_dir: &Path, transport: &str) {
    let Ok(text) = std::fs::read_to_string(crate::lima::agent_service::record_path(state_dir)) else { return };
    let Ok(svc) = serde_json::from_str::<crate::lima::agent_service::Service>(&text) else { return };
    if transport.starts_with("tcp:") {
        return;
    }
    match std::net::TcpStream::connect_timeout(&svc.addr, std::time::Duration::from_secs(1)) {
        Ok(_) => r.info(format!(
            "the agent answers at {} again; the session goes back to TCP at its next reconnection",
            svc.addr
        )),
        Err(e) => {
            let (what, fix) = tcp_failure(&e, svc.addr, name);
            r.fail(what, fix);
        }
    }
}

/// What a failed connection to the agent's TCP address means, and what to do.
fn tcp_failure(e: &std::io::Error, addr: std::net::SocketAddr, name: &str) -> (String, String) {
    if e.raw_os_error() == Some(libc::EHOSTUNREACH) && cfg!(target_os = "macos") {
        return (
            format!("no route to the guest at {addr}: macOS (15 and later) blocks it without the Local Network permission; ferry uses ssh meanwhile"),
            "System Settings > Privacy & Security > Local Network: allow ferry (and the terminal you run it from)".into(),
        );
    }
    (
        format!("the agent's TCP address {addr} does not answer ({e}); ferry uses ssh meanwhile"),
        format!("`limactl ferry enable {name} --restart` starts the agent service again"),
    )
}

fn check_secret(r: &mut Report, secret: &Path) {
    let Ok(meta) = std::fs::metadata(secret) else { return };
    let dir_mode = secret.parent().and_then(|d| std::fs::metadata(d).ok()).map(|m| m.permissions().mode() & 0o777);
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 || dir_mode.is_some_and(|m| m & 0o077 != 0) {
        r.fail(
            format!(
                "the secret {} is readable by others (file {mode:o}, directory {:o})",
                secret.display(),
                dir_mode.unwrap_or(0)
            ),
            format!(
                "chmod 600 {}; chmod 700 {}",
                secret.display(),
                secret.parent().unwrap_or(Path::new(".")).display()
            ),
        );
    } else {
        r.ok("secret private (0600 in a 0700 directory)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tcp_failure_says_what_to_do() {
        let addr: std::net::SocketAddr = "192.168.64.3:7072".parse().unwrap();
        let (what, fix) = tcp_failure(&std::io::Error::from_raw_os_error(libc::EHOSTUNREACH), addr, "dev");
        if cfg!(target_os = "macos") {
            assert!(what.contains("Local Network permission") && fix.contains("Privacy & Security"), "{what}");
        } else {
            assert!(what.contains("does not answer") && what.contains("192.168.64.3:7072"), "{what}");
        }
        let (what, _) = tcp_failure(&std::io::Error::from_raw_os_error(libc::ECONNREFUSED), addr, "dev");
        assert!(what.contains("does not answer") && what.contains("uses ssh"), "{what}");
    }
}
