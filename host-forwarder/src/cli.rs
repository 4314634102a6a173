//! Command-line interface of `ferry`.

use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};
use ferry_mux::Address;

/// ferry: makes the VM layer disappear. Publishes every port that listens in
/// the guest on the host's localhost, over one multiplexed connection to
/// `ferry-agent`.
#[derive(Debug, Parser)]
#[command(name = "ferry", version)]
pub struct Cli {
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

/// What `ferry` does.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Connect to the agent and forward its ports, in the foreground.
    Run(RunArgs),
    /// Create the instance secret if there is none yet, and print its path
    /// (give that file to the agent with --secret-file).
    Secret(SecretArgs),
    /// Show what a running `ferry run` forwards: a table, or JSON.
    Status(StatusArgs),
    /// Install, remove or inspect the per-user service that runs `ferry daemon`.
    ///
    /// macOS: a launchd agent (~/Library/LaunchAgents/dev.ferry.daemon.plist,
    /// logs in ~/Library/Logs/ferry/daemon.log); Linux: a systemd user unit
    /// (~/.config/systemd/user/ferry.service, logs in the journal). Started at
    /// login and restarted if it exits. Install and uninstall are idempotent.
    ///
    /// Example: ferry service install
    Service(crate::service::ServiceArgs),
    /// Follow every Lima and Colima instance, forwarding the enabled ones while they run.
    ///
    /// The long-lived process `ferry service install` runs. It watches the
    /// Lima homes ($LIMA_HOME or ~/.lima, and Colima's ~/.colima/_lima) by
    /// file events and the host agents' status events, never by polling
    /// `limactl list`; `limactl ferry enable NAME` says which instances it
    /// takes over.
    ///
    /// Example: ferry daemon -v
    Daemon(crate::daemon::DaemonArgs),
    /// Explain what is wrong with ferry, the service or an instance.
    ///
    /// Checks the service, and for each instance (or INSTANCE): its state,
    /// whether it is enabled, whether Lima's own forwarding is still on,
    /// the forwarder and its transport, ports another process holds, the
    /// agent's version and the secret's permissions. Exits 1 if a check fails.
    ///
    /// Example: ferry doctor default
    Doctor(crate::doctor::DoctorArgs),
    /// Lima integration (also installed as the `limactl-ferry` plugin).
    Lima {
        /// What to do.
        #[command(subcommand)]
        command: crate::lima::LimaCommand,
    },
}

/// `limactl ferry ...`: the `ferry` binary called as `limactl-ferry`.
#[derive(Debug, Parser)]
#[command(name = "limactl ferry", version)]
pub struct LimaPlugin {
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: crate::lima::LimaCommand,
}

/// Options of `ferry status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The control socket of the `ferry run` to ask [default: STATE_DIR/ferry.sock].
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,

    /// Print the status as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Options of `ferry secret`.
#[derive(Debug, clap::Args)]
pub struct SecretArgs {
    /// Where the secret lives [default: STATE_DIR/secret].
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
}

/// Options of `ferry run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The agent's transport address: vsock:CID:PORT, hvsock:PATH:PORT,
    /// unix:PATH, tcp:HOST:PORT or exec:COMMAND.
    #[arg(long, value_name = "ADDR")]
    pub agent: Address,

    /// A second transport address, used while the agent cannot be reached
    /// at --agent (e.g. exec:ssh behind a tcp: address on the guest's vzNAT
    /// network); --agent is tried first again at every reconnection.
    #[arg(long, value_name = "ADDR")]
    pub fallback_agent: Option<Address>,

    /// Longest wait between reconnection attempts, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    pub max_backoff_ms: u64,

    /// Longest wait between attempts to bind a host port that was taken, in
    /// milliseconds (the wait starts at 250 ms and doubles).
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    pub retry_busy_ms: u64,

    /// Forwarding rules: a Lima instance's lima.yaml or a ferry config file,
    /// read for its `portForwards` list (Lima's keys, defaults and order).
    #[arg(long, value_name = "FILE")]
    pub rules: Option<PathBuf>,

    /// The instance's SSH port on the host, never forwarded (overrides the
    /// rules file's ssh.localPort).
    #[arg(long, value_name = "PORT")]
    pub ssh_local_port: Option<u16>,

    /// The control socket `ferry status` asks (0600 in a 0700 directory)
    /// [default: STATE_DIR/ferry.sock]. Each running forwarder needs its own.
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,

    /// Keep a TCP host port this long after its guest listener closes,
    /// holding the connections that arrive, in case the listener returns (a
    /// dev server restarting on save); 0 releases the port at once.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    pub restart_grace_ms: u64,

    /// Write this process's pid to PATH (mode 0600) and hold the file
    /// locked while it runs, so that `limactl ferry status` and `stop` know it
    /// runs without /proc. Fails if another live process holds it.
    #[arg(long, value_name = "PATH")]
    pub pid_file: Option<PathBuf>,

    /// A UDP flow (one host client address) with no datagram either way for
    /// this long ends, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub udp_idle_timeout: u64,

    /// Most UDP flows per host port; datagrams of further clients are dropped (and counted).
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub udp_max_flows: u64,

    /// Make a host service reachable inside the guest (repeatable): GUEST=HOST,
    /// each an IP:PORT or an absolute Unix socket path, or a bare PORT for
    /// 127.0.0.1:PORT on both sides. The agent listens at GUEST.
    #[arg(long, value_name = "GUEST=HOST", value_parser = crate::reverse::parse_reverse)]
    pub reverse: Vec<crate::reverse::ReverseForward>,

    /// Send this host directory's file events to the guest (repeatable):
    /// HOST=GUEST, or DIR where the guest sees it at the same path. A lima.yaml
    /// given with --rules adds its `mounts`.
    #[arg(long, value_name = "HOST=GUEST", value_parser = crate::files::parse_watch)]
    pub watch: Vec<crate::files::Mount>,

    /// A directory name not to watch deeply, in addition to the defaults
    /// (.git .hg .svn node_modules target __pycache__ .venv .tox .cache .next); repeatable.
    #[arg(long, value_name = "NAME")]
    pub watch_exclude: Vec<String>,

    /// Send no file events, even for a lima.yaml's mounts.
    #[arg(long)]
    pub no_file_events: bool,

    /// Print one JSON line per forwarding change on stdout
    /// (type forwarding, not-forwarding or failed; Lima's PortForwardEvent keys).
    #[arg(long)]
    pub events: bool,

    /// The instance secret both sides prove they hold; created (mode 0600, in
    /// a 0700 directory) if missing [default: STATE_DIR/secret, where
    /// STATE_DIR is $FERRY_STATE_DIR or $XDG_STATE_HOME/ferry or ~/.local/state/ferry].
    #[arg(long, value_name = "PATH", env = "FERRY_SECRET_FILE")]
    pub secret_file: Option<PathBuf>,

    /// Carry every connection as frames on the one session, even where the
    /// transport could dial a dedicated (spliced) connection per client.
    #[arg(long)]
    pub no_dedicated: bool,

    /// Give each connection a data connection of its own over an `hvsock:`
    /// transport too (one CONNECT each). Only for a hybrid-vsock backend that
    /// carries a half-close as a half-close: vhost-device-vsock 0.3 ends the
    /// whole connection instead, so by default hvsock connections are
    /// multiplexed over the session. `vsock:`, `unix:` and `tcp:` always
    /// get data connections.
    #[arg(long)]
    pub hvsock_data_connections: bool,

    /// The ControlPath of an OpenSSH ControlMaster connected to the guest
    /// (Lima's `<instance>/ssh.sock`): TCP and Unix-socket connections then
    /// go through it as ssh stdio forwards, the path and speed of `ssh -L`,
    /// instead of through the session; a connection the master cannot take
    /// (none running, or it refuses) goes over the session.
    #[arg(long, value_name = "PATH")]
    pub ssh_control_path: Option<PathBuf>,

    /// The most connections the ssh ControlMaster carries at once; more go
    /// over the session (OpenSSH's throughput collapses with many busy
    /// channels, the session's single channel does not).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub ssh_master_max_connections: u64,

    /// Publish loopback ports on the wildcard address and refuse every peer
    /// that is not local (the path macOS takes for privileged ports);
    /// for testing that path on Linux.
    #[arg(long, hide = true)]
    pub pseudoloopback: bool,

    /// DEVELOPMENT ONLY: connect without authentication (the agent must be
    /// started with --insecure-no-auth as well).
    #[arg(long, conflicts_with = "secret_file")]
    pub insecure_no_auth: bool,
}

impl RunArgs {
    /// The reconnection backoff ceiling.
    pub fn max_backoff(&self) -> Duration {
        Duration::from_millis(self.max_backoff_ms)
    }

    /// The busy-port retry period.
    pub fn retry_busy(&self) -> Duration {
        Duration::from_millis(self.retry_busy_ms)
    }
}
