//! `ferry status`: asks the running forwarder for its status and prints it
//! as a table or as JSON.

use std::{io::Read, os::unix::net::UnixStream, path::Path, time::Duration};

use super::board::StatusReport;

/// Reads the report from the control socket at `path`.
pub fn query(path: &Path) -> anyhow::Result<StatusReport> {
    let mut conn = UnixStream::connect(path).map_err(|e| {
        anyhow::anyhow!("no ferry is running with control socket {} ({e}); is `ferry run` up?", path.display())
    })?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = Vec::new();
    conn.read_to_end(&mut buf)?;
    Ok(serde_json::from_slice(&buf)?)
}

/// `ferry status`: asks the forwarder at `control` (default: the state
/// directory's socket) and prints a table, or JSON.
pub fn print(control: Option<&Path>, json: bool) -> anyhow::Result<()> {
    let path = control.map(Path::to_path_buf).unwrap_or_else(super::server::default_path);
    let report = query(&path)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}

/// The report as a human-readable table.
pub fn render(r: &StatusReport) -> String {
    let mut out = format!(
        "agent {} ({})\n",
        r.agent,
        match (r.connected, r.transport == r.agent) {
            (false, _) => "not connected".into(),
            (true, true) => format!("connected, {} connections", r.data_path),
            (true, false) => format!("connected over {}, {} connections", r.transport, r.data_path),
        }
    );
    let c = &r.connections_by_route;
    let routes: Vec<String> =
        [(c.ssh_master, "through the ssh master"), (c.dedicated, "dedicated"), (c.multiplexed, "multiplexed")]
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, how)| format!("{n} {how}"))
            .collect();
    if !routes.is_empty() {
        out.push_str(&format!("connections so far: {}\n", routes.join(", ")));
    }
    let mut rows: Vec<[String; 8]> = vec![[
        "PROTO".to_string(),
        "GUEST".into(),
        "HOST".into(),
        "STATE".into(),
        "ACTIVE".into(),
        "TO GUEST".into(),
        "FROM GUEST".into(),
        "DROPPED".into(),
    ]];
    for p in &r.ports {
        let state = match &p.reason {
            Some(reason) => format!("{} ({reason})", p.state),
            None => p.state.clone(),
        };
        rows.push([
            p.proto.clone(),
            p.guest.clone(),
            p.host.clone(),
            state,
            p.active_connections.to_string(),
            bytes(p.bytes_to_guest),
            bytes(p.bytes_from_guest),
            if p.proto == "udp" { p.dropped_datagrams.to_string() } else { "-".into() },
        ]);
    }
    let widths: Vec<usize> = (0..8).map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0)).collect();
    for row in rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut v, mut u) = (n as f64, 0);
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::board::RowReport;

    #[test]
    fn renders_an_aligned_table() {
        let r = StatusReport {
            agent: "unix:/a".into(),
            connected: true,
            transport: "unix:/a".into(),
            data_path: "dedicated".into(),
            connections_by_route: Default::default(),
            ports: vec![RowReport {
                proto: "tcp".into(),
                guest: "127.0.0.1:80".into(),
                host: "127.0.0.1:8080".into(),
                state: "forwarding".into(),
                reason: None,
                active_connections: 2,
                total_connections: 5,
                bytes_to_guest: 1536,
                bytes_from_guest: 10,
                dropped_datagrams: 0,
            }],
        };
        let t = render(&r);
        assert!(t.starts_with("agent unix:/a (connected, dedicated connections)\n"), "{t}");
        assert!(t.contains("tcp    127.0.0.1:80  127.0.0.1:8080  forwarding  2       1.5 KiB   10 B        -"), "{t}");
    }
}
