//! Command-line interface of `ferry`.

use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};
use ferry_mux::Address;

/// Makes the VM layer disappear: publishes the guest's ports on the host's localhost.
///
/// ferry is the host side of a bridge to a Linux VM (Lima, Colima, QEMU,
/// Firecracker): guest ports and Unix sockets appear on the host, host
/// services can be reached from the guest (--reverse), and host file events
/// wake watchers in the guest (--watch). `ferry-agent` runs in the guest;
/// both prove they hold the same instance secret (`ferry secret`).
#[derive(Debug, Parser)]
#[command(name = "ferry", version, after_help = FERRY_EXAMPLES)]
pub struct Cli {
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Write the log to this file (created 0600) instead of stderr, rotated
    /// past 1 MiB with one older file kept (PATH.1).
    #[arg(long, global = true, value_name = "PATH")]
    pub log_file: Option<std::path::PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

/// What `ferry` does.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Connect to the agent and forward its ports, in the foreground.
    ///
    /// Dials ferry-agent at --agent, proves the instance secret, and
    /// publishes every port the guest listens on at the host's loopback,
    /// following Lima's portForwards rules (--rules). Guest Unix sockets,
    /// reverse forwards (--reverse) and file events (--watch) ride the same
    /// session. Runs until interrupted; when the transport dies it closes
    /// the host listeners and reconnects with backoff. `ferry status` asks
    /// it what it forwards.
    #[command(after_help = RUN_EXAMPLES)]
    Run(RunArgs),
    /// Create the instance secret if there is none yet, and print its path.
    ///
    /// The secret is 64 hex digits in a file of mode 0600 inside a 0700
    /// directory; ferry and ferry-agent both prove they hold it before any
    /// port is forwarded. Copy the file into the guest and give it to the
    /// agent with --secret-file. An existing secret is left as it is.
    #[command(after_help = SECRET_EXAMPLES)]
    Secret(SecretArgs),
    /// Show what a running `ferry run` forwards: a table, or JSON.
    ///
    /// Asks the control socket of a running `ferry run` for its state: the
    /// agent and how it is reached, and per port or socket the guest and host
    /// addresses, the state (forwarding, retrying with the reason, ignored),
    /// active connections and bytes each way.
    #[command(after_help = STATUS_EXAMPLES)]
    Status(StatusArgs),
    /// Install, remove or inspect the per-user service that runs `ferry daemon`.
    ///
    /// macOS: a launchd agent (~/Library/LaunchAgents/dev.ferry.daemon.plist,
    /// logs in ~/Library/Logs/ferry/daemon.log); Linux: a systemd user unit
    /// (~/.config/systemd/user/ferry.service, logs in the journal). Started at
    /// login and restarted if it exits. Install and uninstall are idempotent.
    #[command(after_help = "Examples:\n  ferry service install\n  ferry service status\n  ferry service uninstall")]
    Service(crate::service::ServiceArgs),
    /// Follow every Lima and Colima instance, forwarding the enabled ones while they run.
    ///
    /// The long-lived process `ferry service install` runs. It watches the
    /// Lima homes ($LIMA_HOME or ~/.lima, and Colima's ~/.colima/_lima) by
    /// file events and the host agents' status events, never by polling
    /// `limactl list`; `limactl ferry enable NAME` says which instances it
    /// takes over.
    #[command(after_help = "Examples:\n  ferry daemon -v")]
    Daemon(crate::daemon::DaemonArgs),
    /// Explain what is wrong with ferry, the service or an instance.
    ///
    /// Checks the service, and for each instance (or INSTANCE): its state,
    /// whether it is enabled, whether Lima's own forwarding is still on,
    /// the forwarder and its transport, ports another process holds, the
    /// agent's version and the secret's permissions. Exits 1 if a check fails.
    #[command(after_help = "Examples:\n  ferry doctor\n  ferry doctor default")]
    Doctor(crate::doctor::DoctorArgs),
    /// Lima integration (also installed as the `limactl-ferry` plugin).
    ///
    /// `ferry lima CMD` is the same as `limactl ferry CMD`: it installs the
    /// agent in a Lima instance, switches Lima's own port forwarding off and
    /// runs ferry in its place, and gives it back on stop.
    #[command(
        after_help = LIMA_EXAMPLES,
        mut_subcommand("start", lima_start_help),
        mut_subcommand("stop", lima_stop_help),
        mut_subcommand("status", lima_status_help),
        mut_subcommand("logs", lima_logs_help)
    )]
    Lima {
        /// What to do.
        #[command(subcommand)]
        command: crate::lima::LimaCommand,
    },
    /// Print a shell completion script for bash, zsh or fish.
    ///
    /// Writes the script on stdout, generated from ferry's own definitions,
    /// so it always matches this binary. The release tarball carries the
    /// three scripts under share/.
    #[command(after_help = COMPLETIONS_EXAMPLES)]
    Completions(CompletionsArgs),
    /// Print ferry's man page (roff) on stdout.
    ///
    /// Prints ferry(1). With --dir, writes ferry(1) and one page per
    /// subcommand (ferry-run(1), ferry-lima-start(1), ...) into that
    /// directory instead. The release tarball carries them in share/man/man1.
    #[command(after_help = MAN_EXAMPLES)]
    Man(ManArgs),
}

/// Options of `ferry completions`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to write the script for.
    #[arg(value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

/// Options of `ferry man`.
#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Write every page (ferry.1 and one per subcommand) into this directory
    /// instead of printing ferry.1.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

const FERRY_EXAMPLES: &str = "\
Examples:
  ferry secret                              # create the instance secret, print its path
  ferry run --agent vsock:3:1024            # forward the ports of the agent at guest CID 3
  ferry status                              # what the running forwarder forwards
  limactl ferry start dev                   # ferry as the port forwarder of Lima instance dev

Documentation: README.md and docs/ in the source tree.";

const RUN_EXAMPLES: &str = "\
Examples:
  ferry run --agent vsock:3:1024
  ferry run --agent unix:/run/ferry/agent.sock --rules ~/.lima/dev/lima.yaml
  ferry run --agent tcp:192.168.105.2:7072 --reverse 5432 --watch ~/src
  ferry run --agent 'exec:ssh -F ~/.lima/dev/ssh.config lima-dev sudo ferry-agent --stdio --secret-file /etc/ferry/secret'";

const SECRET_EXAMPLES: &str = "\
Examples:
  ferry secret                              # prints ~/.local/state/ferry/secret
  ferry secret --file ~/vm/secret";

const STATUS_EXAMPLES: &str = "\
Examples:
  ferry status
  ferry status --json
  ferry status --control-socket ~/.lima/dev/ferry/ferry.sock";

const LIMA_EXAMPLES: &str = "\
Examples:
  ferry lima start dev                      # the same as: limactl ferry start dev
  ferry lima status dev --json";

const COMPLETIONS_EXAMPLES: &str = "\
Examples:
  ferry completions bash > ~/.local/share/bash-completion/completions/ferry
  ferry completions zsh > ~/.zfunc/_ferry
  ferry completions fish > ~/.config/fish/completions/ferry.fish";

const MAN_EXAMPLES: &str = "\
Examples:
  ferry man | man -l -
  ferry man --dir ~/.local/share/man/man1";

/// The long help and example of `limactl ferry start`.
fn lima_start_help(cmd: clap::Command) -> clap::Command {
    cmd.long_about(
        "Install the agent if needed, switch Lima's forwarding off and start ferry for INSTANCE.\n\n\
         Copies the ferry-agent for the guest's architecture and the instance secret into the \
         guest when they are missing or outdated, adds rules to lima.yaml that switch Lima's own \
         port forwarding off (taking over its socket rules), starts `ferry run` in the background \
         with its pid file, log and control socket in <instance dir>/ferry/, and waits until it \
         is connected. The transport is the fastest the instance allows: TCP to an agent service \
         on the guest's vzNAT/shared address where there is one, else ssh through Lima's \
         ControlMaster. Everything is checked before anything changes.",
    )
    .after_help(
        "Examples:\n  \
         limactl ferry start dev\n  \
         limactl ferry start dev --transport ssh\n  \
         LIMA_HOME=~/.colima/_lima limactl ferry start colima",
    )
}

/// The long help and example of `limactl ferry stop`.
fn lima_stop_help(cmd: clap::Command) -> clap::Command {
    cmd.long_about(
        "Stop ferry for INSTANCE and give Lima its forwarding back.\n\n\
         Stops the ferry that `start` ran (and the agent service in the guest, if it ran one) \
         and restores lima.yaml byte for byte; Lima forwards again from its next start.",
    )
    .after_help("Examples:\n  limactl ferry stop dev")
}

/// The long help and example of `limactl ferry status`.
fn lima_status_help(cmd: clap::Command) -> clap::Command {
    cmd.long_about(
        "What ferry forwards for INSTANCE.\n\n\
         Prints the table of `ferry status` for the instance's ferry, and besides it the \
         transport, the route connections take and how many each carried, the agent's version in \
         the guest, whether Lima's own forwarding is off yet, and the socket rules ferry took over.",
    )
    .after_help("Examples:\n  limactl ferry status dev\n  limactl ferry status dev --json")
}

/// The long help and example of `limactl ferry logs`.
fn lima_logs_help(cmd: clap::Command) -> clap::Command {
    cmd.long_about(
        "ferry's log for INSTANCE.\n\n\
         Prints <instance dir>/ferry/ferry.log, the log of the ferry that `start` ran.",
    )
    .after_help("Examples:\n  limactl ferry logs dev")
}

/// ferry as Lima's port forwarder (the `ferry` binary called as `limactl-ferry`).
///
/// The Lima CLI plugin: installs ferry-agent in a Lima instance,
/// switches Lima's own port forwarding off and runs ferry in its place; the
/// VM's lifecycle stays with limactl. Also reachable as `ferry lima`.
#[derive(Debug, Parser)]
#[command(
    name = "limactl ferry",
    bin_name = "limactl ferry",
    version,
    after_help = PLUGIN_EXAMPLES,
    mut_subcommand("start", lima_start_help),
    mut_subcommand("stop", lima_stop_help),
    mut_subcommand("status", lima_status_help),
    mut_subcommand("logs", lima_logs_help)
)]
pub struct LimaPlugin {
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: crate::lima::LimaCommand,
}

const PLUGIN_EXAMPLES: &str = "\
Examples:
  limactl ferry start dev
  limactl ferry status dev
  limactl ferry logs dev
  limactl ferry stop dev";

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

    /// Over a tcp: transport, give connections dedicated data connections
    /// anyway: spliced and faster, but their bytes cross the network
    /// unencrypted and someone on the network path can take one over. Only
    /// for a network nobody else is on. Without it, connections over tcp:
    /// travel inside the sealed (AES-256-GCM) session.
    #[arg(long)]
    pub unsealed_data_conns: bool,

    /// Data connections kept dialled and proven ahead of the clients, so a
    /// new client pays only for its request and the guest's connect;
    /// refilled after each use, closed after 20 s unused. 0 (the default)
    /// dials each client's connection when it arrives: on a 2-vCPU host the
    /// background refill competed with the clients and measured no faster.
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=64))]
    pub warm_data_conns: u16,

    /// The ControlPath of an OpenSSH ControlMaster connected to the guest
    /// (Lima's `<instance>/ssh.sock`): TCP and Unix-socket connections then
    /// go through it as ssh stdio forwards, the path and speed of `ssh -L`,
    /// instead of through the session; a connection the master cannot take
    /// (none running, or it refuses) goes over the session.
    #[arg(long, value_name = "PATH")]
    pub ssh_control_path: Option<PathBuf>,

    /// With --ssh-control-path: the ssh config file and host that bring
    /// the ControlMaster back when it is gone (after a Mac slept), as
    /// `ssh -F FILE HOST true` does with Lima's `ControlPersist yes`; tried
    /// at most every 30 s while connections find no master.
    #[arg(long, value_names = ["FILE", "HOST"], num_args = 2, requires = "ssh_control_path")]
    pub ssh_master_revive: Option<Vec<String>>,

    /// The most busy connections the ssh ControlMaster carries at once;
    /// while that many are busy, new ones go over the session (OpenSSH's
    /// throughput collapses with many busy channels, the session's single
    /// channel does not). A connection that is idle or exchanges a few
    /// messages (under 1 MiB/s: iperf3's control connection, `docker
    /// events`) holds no place; a new one holds a place until something
    /// comes back to it (half a second at most), and after that only while
    /// it moves bulk; 64 at most in all.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub ssh_master_max_connections: u64,

    /// Publish loopback ports on the wildcard address and refuse every peer
    /// that is not local (the path macOS takes for privileged ports);
    /// for testing that path on Linux.
    #[arg(long, hide_short_help = true)]
    pub pseudoloopback: bool,

    /// DEVELOPMENT ONLY: connect without authentication (the agent must be
    /// started with --insecure-no-auth as well).
    #[arg(long, conflicts_with = "secret_file")]
    pub insecure_no_auth: bool,
}

impl RunArgs {
    /// Whether connections will mostly travel on dedicated data
    /// connections (as `supervisor` decides once connected): over a Unix or
    /// vsock transport; over hvsock only with --hvsock-data-connections (see
    /// `RawConn::keeps_half_close`); over TCP only where the session is not
    /// sealed (--unsealed-data-conns, or no authentication, which seals
    /// nothing); never with --no-dedicated or over exec:. Only --agent
    /// counts: --fallback-agent is the way round while it is unreachable.
    pub fn expects_data_conns(&self) -> bool {
        !self.no_dedicated
            && match self.agent {
                Address::Unix(_) | Address::Vsock { .. } => true,
                Address::HybridVsock { .. } => self.hvsock_data_connections,
                Address::Tcp(_) => self.unsealed_data_conns || self.insecure_no_auth,
                Address::Exec(_) | Address::Stdio => false,
            }
    }

    /// The reconnection backoff ceiling.
    pub fn max_backoff(&self) -> Duration {
        Duration::from_millis(self.max_backoff_ms)
    }

    /// The busy-port retry period.
    pub fn retry_busy(&self) -> Duration {
        Duration::from_millis(self.retry_busy_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(args: &[&str]) -> RunArgs {
        let argv = ["ferry", "run"].iter().chain(args).copied();
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Run(args) => args,
            _ => unreachable!("parsed as run"),
        }
    }

    #[test]
    fn one_thread_where_connections_travel_on_data_connections() {
        let dedicated = |args: &[&str]| run_args(args).expects_data_conns();
        assert!(dedicated(&["--agent", "unix:/run/a.sock"]));
        assert!(dedicated(&["--agent", "vsock:3:1024"]));
        assert!(!dedicated(&["--agent", "hvsock:/run/v.sock:1024"]), "hvsock: frames by default");
        assert!(dedicated(&["--agent", "hvsock:/run/v.sock:1024", "--hvsock-data-connections"]));
        assert!(!dedicated(&["--agent", "unix:/run/a.sock", "--no-dedicated"]));
        assert!(!dedicated(&["--agent", "tcp:192.168.105.2:1024"]), "sealed: frames");
        assert!(dedicated(&["--agent", "tcp:192.168.105.2:1024", "--unsealed-data-conns"]));
        assert!(dedicated(&["--agent", "tcp:127.0.0.1:1024", "--insecure-no-auth"]), "nothing to seal with");
        assert!(!dedicated(&["--agent", "exec:ssh lima-default ferry-agent --stdio"]));
    }
}
