//! `limactl ferry enable NAME|--all` and `disable NAME|--all`: which
//! instances ferry takes over for good. The `ferry daemon`
//! ([`crate::daemon`]) brings forwarding up whenever an enabled instance
//! reaches Running and down when it stops.
//!
//! Enabling makes the edits Lima reads at the instance's next start:
//! ferry's block in lima.yaml (Lima's own forwarding off), or for Colima's
//! instances in the home's `_config/override.yaml` ([`override_yaml`]),
//! and with `--network` a vzNAT network ([`network`]). Disabling undoes
//! each byte for byte and stops forwarding (the plugin's `stop`).

pub mod homes;
pub mod marker;
pub mod network;
pub mod override_yaml;
pub mod state;

use std::{
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    process::Command,
};

use clap::Parser;
use homes::Home;

use crate::lima::{lima_yaml, LimaCommand};

/// Options of `enable`.
#[derive(Debug, clap::Args)]
pub struct EnableArgs {
    /// The instance, as `limactl list` names it (Colima's: `colima`, or `colima-PROFILE`).
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub instance: Option<String>,
    /// Every instance in every Lima home ferry follows, and every instance created later.
    #[arg(long)]
    pub all: bool,
    /// Restart a running instance now (`limactl stop` and `start`), so that
    /// Lima lets go of its own forwards at once.
    #[arg(long)]
    pub restart: bool,
    /// Add Lima's vzNAT network to a vz instance (at its next start): the
    /// guest gets an address the host reaches and ferry takes its fastest
    /// route, TCP, with ssh as the fallback.
    #[arg(long)]
    pub network: bool,
    /// Options for `limactl ferry start`, after `--` (e.g. `-- --transport ssh`);
    /// enabling again without any keeps those recorded before.
    #[arg(last = true, value_name = "START_OPTIONS")]
    pub start_args: Vec<String>,
}

/// Options of `disable`.
#[derive(Debug, clap::Args)]
pub struct DisableArgs {
    /// The instance.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub instance: Option<String>,
    /// Every instance, and `enable --all` no longer applies to new ones.
    #[arg(long)]
    pub all: bool,
}

/// `limactl ferry start`'s options alone, to check `enable`'s before recording them.
#[derive(Debug, Parser)]
#[command(name = "start")]
struct StartOnly {
    #[command(flatten)]
    args: crate::lima::StartArgs,
}

/// Checks `args` as `limactl ferry start NAME` options.
pub fn check_start_args(args: &[String]) -> anyhow::Result<()> {
    let argv = ["start", "NAME"].into_iter().map(String::from).chain(args.iter().cloned());
    StartOnly::try_parse_from(argv).map_err(|e| anyhow::anyhow!("start options after --: {e}"))?;
    Ok(())
}

/// The file whose mtime says when ferry last edited lima.yaml (read by `limactl ferry status`).
const YAML_EDITED: &str = "lima-yaml-edited";

/// Makes the edits Lima must read at the instance's next start; returns
/// what changed, in words.
pub fn apply_edits(home: &Home, inst_dir: &Path, network: bool) -> anyhow::Result<Vec<String>> {
    let mut changed = Vec::new();
    let lima_yaml_path = inst_dir.join("lima.yaml");
    let text =
        std::fs::read_to_string(&lima_yaml_path).map_err(|e| anyhow::anyhow!("{}: {e}", lima_yaml_path.display()))?;
    let mut edited = text.clone();
    if home.colima {
        if override_yaml::add(&home.override_yaml())? {
            changed.push(format!("{}: Lima's own forwarding off", home.override_yaml().display()));
        }
    } else {
        edited = lima_yaml::disable_lima_forwarding(&edited)
            .map_err(|e| anyhow::anyhow!("{} cannot be edited: {e}", lima_yaml_path.display()))?;
    }
    if network {
        if home.colima {
            anyhow::bail!("Colima makes its instances' lima.yaml; give the profile a reachable address with `colima start --network-address`");
        }
        match network::vm_type(&text).as_deref() {
            Some("vz") => {}
            None if cfg!(target_os = "macos") => {}
            other => anyhow::bail!(
                "--network adds a vzNAT network, which only vz instances have (this one is {})",
                other.unwrap_or("not vz")
            ),
        }
        edited = network::add(&edited).map_err(|e| anyhow::anyhow!("{}: {e}", lima_yaml_path.display()))?;
    }
    if edited != text {
        write_atomically(&lima_yaml_path, &edited)?;
        let state = inst_dir.join("ferry");
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&state)?;
        std::fs::write(state.join(YAML_EDITED), b"")?;
        changed.push(format!(
            "{}: Lima's own forwarding off{}",
            lima_yaml_path.display(),
            if network { ", vzNAT network" } else { "" }
        ));
    }
    Ok(changed)
}

/// Runs `enable`.
pub fn enable(a: &EnableArgs) -> anyhow::Result<()> {
    check_start_args(&a.start_args)?;
    let record = marker::Enabled { start_args: a.start_args.clone(), network: a.network };
    let targets = targets(a.instance.as_deref())?;
    if a.all {
        marker::write(&marker::all_path(), &record)?;
        println!("ferry: every instance is enabled, those created later too");
    }
    for (home, name, dir) in &targets {
        let changed = apply_edits(home, dir, a.network)?;
        if !a.all {
            // Enabling again without options keeps the ones recorded before.
            let mut record = record.clone();
            if let Some(before) = marker::read(&marker::instance_path(dir)) {
                if a.start_args.is_empty() {
                    record.start_args = before.start_args;
                }
                record.network |= before.network;
            }
            marker::write(&marker::instance_path(dir), &record)?;
        }
        for c in &changed {
            println!("{name}: edited {c}");
        }
        if home.colima {
            let others: Vec<String> = home
                .instances()
                .into_iter()
                .filter(|(n, d)| n != name && marker::effective(d).is_none())
                .map(|(n, _)| n)
                .collect();
            if !others.is_empty() {
                println!(
                    "{name}: override.yaml applies to every instance in {}: Lima's own forwarding is off for {} too, \
                     so ferry forwards them as well",
                    home.dir.display(),
                    others.join(", ")
                );
            }
        }
        if state::running_now(dir) {
            if a.restart {
                restart(home, name)?;
                println!("{name}: restarted; ferry forwards it");
            } else if !changed.is_empty() {
                println!(
                    "{name} is running: Lima keeps its own forwards until it restarts, and ferry serves the ports \
                     Lima leaves free meanwhile; `limactl ferry enable {name} --restart` restarts it now"
                );
            } else {
                println!("{name}: enabled; ferry forwards it");
            }
        } else {
            println!("{name}: enabled; ferry takes over at its next start");
        }
    }
    if crate::pid_file::running(&crate::lifecycle::state::daemon_pid_file()).is_none() {
        println!("note: the ferry daemon is not running; `ferry service install` starts it now and at every login");
    }
    Ok(())
}

/// Runs `disable`.
pub fn disable(a: &DisableArgs) -> anyhow::Result<()> {
    if a.all {
        let _ = std::fs::remove_file(marker::all_path());
    }
    let targets = match a.instance.as_deref() {
        Some(name) => targets(Some(name))?,
        // Every instance ferry may have changed.
        None => targets(None)?
            .into_iter()
            .filter(|(home, _, dir)| {
                marker::read(&marker::instance_path(dir)).is_some()
                    || std::fs::read_to_string(dir.join("lima.yaml"))
                        .is_ok_and(|t| t != lima_yaml::restore(&network::remove(&t)))
                    || (home.colima && override_yaml::has_block(&home.override_yaml()))
            })
            .collect(),
    };
    for (home, name, dir) in &targets {
        disable_one(home, name, dir)?;
    }
    if targets.is_empty() {
        println!("ferry: nothing was enabled");
    }
    Ok(())
}

fn disable_one(home: &Home, name: &str, dir: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(marker::instance_path(dir));
    // The network block first: it sits after ferry's forwarding block.
    let path = dir.join("lima.yaml");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let back = network::remove(&text);
        if back != text {
            write_atomically(&path, &back)?;
            println!("{name}: vzNAT network removed from lima.yaml (at its next start)");
        }
    }
    // The plugin's stop: the forwarder, the agent service, lima.yaml given back.
    std::env::set_var("LIMA_HOME", &home.dir);
    if let Err(e) =
        crate::lima::run(LimaCommand::Stop(crate::lima::InstanceArgs { instance: name.into(), json: false }))
    {
        // Without limactl the files still come back.
        tracing::warn!("{name}: {e}");
        let path = dir.join("lima.yaml");
        if let Ok(text) = std::fs::read_to_string(&path) {
            let back = lima_yaml::restore(&text);
            if back != text {
                write_atomically(&path, &back)?;
            }
        }
    }
    if home.colima {
        let still: Vec<String> =
            home.instances().into_iter().filter(|(_, d)| marker::effective(d).is_some()).map(|(n, _)| n).collect();
        if still.is_empty() {
            if override_yaml::remove(&home.override_yaml())? {
                println!("{name}: {} restored", home.override_yaml().display());
            }
        } else {
            println!(
                "{name}: {} keeps Lima's forwarding off while {} is enabled (it applies to every instance there); \
                 ferry keeps forwarding {name}",
                home.override_yaml().display(),
                still.join(", ")
            );
        }
    }
    if marker::read(&marker::all_path()).is_some() {
        println!("{name}: `enable --all` still covers it; `limactl ferry disable --all` ends that");
    } else {
        println!("{name}: disabled");
    }
    Ok(())
}

/// (home, name, dir) of `name`, or of every instance in every home.
fn targets(name: Option<&str>) -> anyhow::Result<Vec<(Home, String, PathBuf)>> {
    match name {
        Some(name) => {
            let (home, dir) = homes::find(name)?;
            Ok(vec![(home, name.to_string(), dir)])
        }
        None => Ok(homes::homes()
            .into_iter()
            .flat_map(|h| h.instances().into_iter().map(move |(n, d)| (h.clone(), n, d)))
            .collect()),
    }
}

/// `limactl stop NAME` then `limactl start NAME`, in the instance's home.
fn restart(home: &Home, name: &str) -> anyhow::Result<()> {
    for verb in ["stop", "start"] {
        let st = Command::new(crate::lima::limactl::program())
            .args([verb, name])
            .env("LIMA_HOME", &home.dir)
            .status()
            .map_err(|e| anyhow::anyhow!("cannot run limactl: {e}"))?;
        if !st.success() {
            anyhow::bail!("`limactl {verb} {name}` failed ({st})");
        }
    }
    Ok(())
}

/// Replaces `path` with `text` atomically: a temporary file beside it with
/// the same permissions, synced, then renamed over it.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, text.as_bytes())?;
    tmp.as_file().sync_all()?;
    if let Ok(meta) = std::fs::metadata(path) {
        tmp.as_file().set_permissions(meta.permissions())?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
