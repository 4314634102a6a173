//! `stop`: end the forwarder and the agent service, and give lima.yaml
//! back to the user ([`lima_yaml::restore`]). Shared by `limactl ferry
//! stop` and whatever else takes ferry down for an instance.

use serde::Serialize;

use super::{agent_service, forwarder, lima_yaml, limactl, state_dir::state_dir, yaml_file};

/// What `stop` did.
#[derive(Debug, Serialize)]
pub struct StopReport {
    /// The instance.
    pub instance: String,
    /// Whether a forwarder ran (and was stopped).
    pub stopped: bool,
    /// Whether lima.yaml was changed back.
    pub lima_yaml_restored: bool,
}

/// Takes ferry down for `instance`: stops the background forwarder and the
/// agent service a TCP start left in the guest (a stopped VM keeps the
/// service's record for the next start), and removes ferry's changes from
/// lima.yaml, keeping every change the user made meanwhile.
pub fn stop(instance: &str) -> anyhow::Result<StopReport> {
    let inst = limactl::instance(instance)?;
    let dir = state_dir(&inst.dir);
    let stopped = forwarder::stop(&dir);
    let record = agent_service::record_path(&dir);
    if let Ok(text) = std::fs::read_to_string(&record) {
        let svc: agent_service::Service = serde_json::from_str(&text)?;
        match agent_service::stop(instance, &svc) {
            Ok(_) => {
                let _ = std::fs::remove_file(&record);
            }
            // A stopped VM took its agent with it; keep the record for the next start.
            Err(e) => tracing::warn!("could not stop the agent service in {instance}: {e}"),
        }
    }
    let lima_yaml = inst.dir.join("lima.yaml");
    let restore = |t: &str| {
        lima_yaml::restore_checked(t).map_err(|e| anyhow::anyhow!("{} is left as it is: {e}", lima_yaml.display()))
    };
    let restored = yaml_file::update(&lima_yaml, restore)?.is_some();
    Ok(StopReport { instance: instance.to_string(), stopped, lima_yaml_restored: restored })
}
