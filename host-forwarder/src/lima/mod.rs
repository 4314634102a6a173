//! `limactl ferry start|stop|status|logs INSTANCE`: ferry as Lima's port
//! forwarder, as a Lima CLI plugin (`limactl-ferry` on PATH or next to
//! limactl; `ferry lima ...` is the same). VM lifecycle stays with limactl.
//!
//! `start` ([`start`]) installs `ferry-agent` and the instance secret in
//! the guest ([`install`], over `limactl copy` and `limactl shell`, only
//! when missing or outdated), adds Lima's "ignore everything" rules to
//! lima.yaml ([`lima_yaml`], [`yaml_file`]), starts `ferry run` in the
//! background ([`forwarder`]) with its pid file, log and control socket in
//! `<instance dir>/ferry/` ([`state_dir`]), and waits until it is
//! connected. The agent runs per session over ssh (`exec:` transport with
//! the instance's ssh.config, or `limactl shell` without one), unless
//! `--agent` names a transport such as a vsock address of an agent running
//! as a service, or the guest has a lima0 address and the agent runs as a
//! service there ([`transport`], [`agent_service`]). Over ssh, connections
//! go through the instance's ssh ControlMaster ([`ssh_control`]; `ferry
//! run --ssh-control-path`) as `ssh -L` would carry them, with the session
//! as the fallback. `stop` ([`stop`]) undoes it all.

pub mod agent_binary;
pub mod agent_service;
pub mod cli;
pub mod forwarder;
pub mod install;
pub mod lima_yaml;
#[cfg(test)]
mod lima_yaml_props;
pub mod limactl;
pub mod ssh_control;
pub mod start;
pub mod state_dir;
pub mod status;
pub mod stop;
pub mod transport;
pub mod yaml_file;

pub use cli::{InstanceArgs, LimaCommand, StartArgs};
pub use forwarder::stop as stop_process;
pub use state_dir::state_dir;

/// Runs a plugin command.
pub fn run(cmd: LimaCommand) -> anyhow::Result<()> {
    match cmd {
        LimaCommand::Start(a) => {
            let report = start::start(&a)?;
            if a.target.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "ferry forwards {} over {} (pid {}); `limactl ferry status {}` shows what",
                    report.instance, report.transport, report.pid, report.instance
                );
            }
            Ok(())
        }
        LimaCommand::Stop(a) => {
            let r = stop::stop(&a.instance)?;
            if a.json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "{}; {}",
                    if r.stopped { "ferry stopped" } else { "ferry was not running" },
                    if r.lima_yaml_restored {
                        "Lima forwards again after the next `limactl start`"
                    } else {
                        "lima.yaml unchanged"
                    }
                );
            }
            Ok(())
        }
        LimaCommand::Status(a) => status::print_status(&a),
        LimaCommand::Logs(a) => status::print_logs(&a),
        LimaCommand::Enable(a) => crate::lifecycle::enable(&a),
        LimaCommand::Disable(a) => crate::lifecycle::disable(&a),
    }
}
