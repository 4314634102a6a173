//! `status` and `logs`: what ferry forwards for an instance, and what
//! Lima's side of it looks like.

use std::path::Path;

use serde::Serialize;

use super::{
    cli::InstanceArgs,
    forwarder, lima_yaml, limactl,
    state_dir::{state_dir, CONTROL_SOCKET, START_REPORT, YAML_EDITED},
};
use crate::status::client;

/// What `status` says of Lima's side of the instance.
#[derive(Serialize)]
struct LimaState {
    /// Whether Lima's own port and socket forwarding is off: ferry's block
    /// is in lima.yaml and Lima's host agent started after it was written.
    /// Lima reads lima.yaml only when the instance starts.
    lima_forwarding_off: bool,
    /// Socket rules (docker.sock ...) ferry took over from Lima.
    socket_rules_moved: usize,
    /// How `start` reached the agent ("tcp", "ssh" or "given").
    transport: Option<String>,
    /// The agent `start` installed or found in the guest.
    agent_version: Option<String>,
    /// Host ports ferry cannot take yet, with the process that holds each
    /// (Lima's own forwarder until the instance restarts, or another program).
    held: Vec<HeldPort>,
}

/// A host port another process holds.
#[derive(Serialize)]
struct HeldPort {
    /// The host address ("127.0.0.1:8080").
    host: String,
    /// "NAME (pid N)", if lsof could tell.
    holder: Option<String>,
}

fn lima_state(inst: &limactl::Instance, dir: &Path) -> LimaState {
    let text = std::fs::read_to_string(inst.dir.join("lima.yaml")).unwrap_or_default();
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    // Lima's host agent writes ha.pid when it starts.
    let restarted = match (mtime(&inst.dir.join("ha.pid")), mtime(&dir.join(YAML_EDITED))) {
        (Some(started), Some(edited)) => started > edited,
        (Some(_), None) => true,
        _ => false,
    };
    let start: serde_json::Value = std::fs::read_to_string(dir.join(START_REPORT))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    LimaState {
        lima_forwarding_off: lima_yaml::has_ferry_block(&text) && restarted,
        socket_rules_moved: lima_yaml::moved_socket_rules(&text),
        transport: start["transport"].as_str().map(String::from),
        agent_version: start["agent_version"].as_str().map(String::from),
        held: Vec::new(),
    }
}

/// Prints what ferry forwards for the instance (a table, or JSON).
pub fn print_status(a: &InstanceArgs) -> anyhow::Result<()> {
    let inst = limactl::instance(&a.instance)?;
    let dir = state_dir(&inst.dir);
    let report = forwarder::running_pid(&dir).and_then(|_| client::query(&dir.join(CONTROL_SOCKET)).ok());
    let mut lima = lima_state(&inst, &dir);
    if let Some(r) = &report {
        lima.held = r
            .ports
            .iter()
            .filter(|p| p.state == "retrying")
            .map(|p| HeldPort { host: p.host.clone(), holder: crate::port_holder::holder_of(&p.host) })
            .collect();
    }
    match (report, a.json) {
        (Some(r), true) => {
            let mut v = serde_json::to_value(&r)?;
            v["lima"] = serde_json::to_value(&lima)?;
            println!("{v}");
        }
        (Some(r), false) => {
            print!("{}", client::render(&r));
            println!(
                "lima: own forwarding {}; {} socket rule(s) served by ferry; agent {} over {}",
                if lima.lima_forwarding_off { "off" } else { "still on until the next `limactl start`" },
                lima.socket_rules_moved,
                lima.agent_version.as_deref().unwrap_or("?"),
                lima.transport.as_deref().unwrap_or("?"),
            );
            if !lima.held.is_empty() {
                let who = if lima.lima_forwarding_off { "another program" } else { "Lima (or another program)" };
                let held: Vec<String> = lima
                    .held
                    .iter()
                    .map(|h| format!("{} by {}", h.host, h.holder.as_deref().unwrap_or("an unknown process")))
                    .collect();
                println!("held by {who}, taken over once free: {}", held.join(", "));
            }
        }
        (None, true) => println!("{}", serde_json::json!({"instance": a.instance, "running": false})),
        (None, false) => println!("ferry is not running for {}", a.instance),
    }
    Ok(())
}

/// Prints ferry's log for the instance.
pub fn print_logs(a: &InstanceArgs) -> anyhow::Result<()> {
    let inst = limactl::instance(&a.instance)?;
    let log = forwarder::log_path(&state_dir(&inst.dir));
    let text = std::fs::read_to_string(&log).map_err(|e| anyhow::anyhow!("{}: {e}", log.display()))?;
    print!("{text}");
    Ok(())
}
