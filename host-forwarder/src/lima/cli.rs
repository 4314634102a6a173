//! The plugin's command line: `limactl ferry start|stop|status|logs`.

use std::path::PathBuf;

use clap::Subcommand;
use ferry_mux::Address;

/// The plugin's commands.
#[derive(Debug, Subcommand)]
pub enum LimaCommand {
    /// Install the agent if needed, switch Lima's forwarding off and start ferry for INSTANCE.
    Start(StartArgs),
    /// Stop ferry for INSTANCE and give Lima its forwarding back.
    Stop(InstanceArgs),
    /// What ferry forwards for INSTANCE.
    Status(InstanceArgs),
    /// ferry's log for INSTANCE.
    Logs(InstanceArgs),
    /// Let ferry forward INSTANCE (or --all) from now on, whenever it runs.
    ///
    /// Switches Lima's own forwarding off for the instance's next start (in
    /// lima.yaml; for Colima in the Lima home's _config/override.yaml, which
    /// survives `colima start`), and records the instance for the ferry
    /// daemon (`ferry service install`), which starts forwarding within a
    /// second of the instance reaching Running and stops it when it stops.
    /// On a running instance Lima keeps its own forwards until a restart;
    /// --restart restarts it now.
    #[command(after_help = "Examples:\n  limactl ferry enable default\n  limactl ferry enable default --restart\n  \
                            limactl ferry enable --all")]
    Enable(crate::lifecycle::EnableArgs),
    /// Stop ferry for INSTANCE (or --all) for good and give back every file it changed.
    ///
    /// Stops the forwarder and restores lima.yaml (and, when no other
    /// instance of the same Lima home is enabled, override.yaml) byte for
    /// byte; Lima forwards again from the instance's next start.
    #[command(after_help = "Examples:\n  limactl ferry disable default\n  limactl ferry disable --all")]
    Disable(crate::lifecycle::DisableArgs),
}

/// An instance, and the output format.
#[derive(Debug, clap::Args)]
pub struct InstanceArgs {
    /// The Lima instance.
    pub instance: String,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// Options of `start`.
#[derive(Debug, clap::Args)]
pub struct StartArgs {
    #[command(flatten)]
    pub target: InstanceArgs,
    /// Reach an agent at this transport address instead of running one over ssh.
    #[arg(long, value_name = "ADDR")]
    pub agent: Option<Address>,
    /// The ferry-agent binary to install (a Linux ELF for the guest's
    /// architecture) [default: ../share/ferry/ferry-agent.Linux-ARCH beside
    /// this ferry, else a ferry-agent next to it built for that architecture].
    #[arg(long, value_name = "PATH")]
    pub agent_binary: Option<PathBuf>,
    /// Where the agent is installed in the guest.
    #[arg(long, value_name = "DIR", default_value = "/usr/local/bin")]
    pub guest_bin: String,
    /// Where the secret is installed in the guest.
    #[arg(long, value_name = "DIR", default_value = "/etc/ferry")]
    pub guest_etc: String,
    /// Carry every connection in the agent's session, never through the
    /// instance's ssh ControlMaster.
    #[arg(long)]
    pub no_ssh_master: bool,
    /// How ferry reaches the agent: `tcp` runs it as a service on the
    /// guest's vzNAT/shared address (lima0) and dials it there, with ssh as
    /// the fallback; `ssh` runs it per session over ssh; `auto` takes tcp
    /// where the guest has such an address, else ssh.
    #[arg(long, value_enum, default_value_t = TransportChoice::Auto)]
    pub transport: TransportChoice,
    /// The TCP port of the agent service (with the tcp transport).
    #[arg(long, value_name = "PORT", default_value_t = 7072)]
    pub agent_port: u16,
    /// Where the agent service keeps its pid file and log in the guest.
    #[arg(long, value_name = "DIR", default_value = "/run/ferry")]
    pub guest_state: String,
    /// How long to wait for ferry to connect, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub timeout: u64,
    /// Leave lima.yaml alone (the daemon: `limactl ferry enable` made the
    /// edits, in override.yaml for Colima, which rewrites lima.yaml at every start).
    #[arg(long, hide = true)]
    pub keep_lima_yaml: bool,
}

/// How `start` reaches the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportChoice {
    /// tcp where the guest has a lima0 address, else ssh.
    Auto,
    /// The agent as a service on the guest's lima0 address, over TCP.
    Tcp,
    /// The agent per session over ssh.
    Ssh,
}
