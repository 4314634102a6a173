//! Command-line interface of `ferry-agent`.

use std::{path::PathBuf, time::Duration};

use clap::Parser;
use ferry_mux::Address;

/// ferry's guest agent: reports listening ports to the host forwarder and
/// opens the connections it asks for inside the guest.
///
/// Runs inside the Linux guest. It listens on one or more transport addresses
/// (or serves one session on stdin/stdout with --stdio), checks that the host
/// holds the instance secret, then pushes the guest's listening TCP and UDP
/// ports to the host as they appear and vanish, connects the streams the host
/// opens, serves reverse listeners and replays the host's file events.
#[derive(Debug, Parser)]
#[command(name = "ferry-agent", version, after_help = EXAMPLES)]
pub struct Args {
    /// Transport address to accept the host on (repeatable):
    /// vsock:CID:PORT, unix:PATH or tcp:HOST:PORT.
    #[arg(long = "listen", value_name = "ADDR", default_value = "vsock:any:1024")]
    pub listen: Vec<Address>,

    /// Serve exactly one session on stdin/stdout (for `exec:` transports such as ssh), then exit.
    #[arg(long, conflicts_with = "listen")]
    pub stdio: bool,

    /// How often to poll for listening sockets, in milliseconds, where
    /// kernel events cannot wake the scanner (see `--port-events`).
    #[arg(long, value_name = "MS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub scan_interval_ms: u64,

    /// How ports are noticed: `auto` is woken by the kernel's bind and
    /// listen tracepoints and socket-destroy broadcasts where it can (root
    /// with tracefs; a scan only when something changed) and polls
    /// otherwise; `off` only polls, every `--scan-interval-ms`.
    #[arg(long, value_name = "MODE", default_value = "auto")]
    pub port_events: PortEventsMode,

    /// UDP ports never reported unless a host rule names them, comma-separated
    /// (ports in the kernel's ephemeral range are skipped too). The default
    /// covers the DHCP client (68), NetBIOS (137, 138), chrony (323), the
    /// DHCPv6 client (546), mDNS (5353) and LLMNR (5355); `--udp-ignore=`
    /// ignores none.
    #[arg(long, value_name = "PORTS", value_delimiter = ',', default_value = "68,137,138,323,546,5353,5355")]
    pub udp_ignore: Vec<String>,

    /// Report Kubernetes NodePort and LoadBalancer services (found with
    /// kubectl): `auto` follows a cluster whenever kubectl reaches one, `off` never.
    #[arg(long, value_name = "MODE", default_value = "auto")]
    pub kubernetes: KubernetesMode,

    /// The kubectl to run for `--kubernetes auto` (it honours $KUBECONFIG).
    #[arg(long, value_name = "PATH", default_value = "kubectl")]
    pub kubectl: PathBuf,

    /// File holding the instance secret (64 hex digits, mode 0600), as made
    /// on the host by `ferry secret`; the host must prove it holds the same.
    /// [default: STATE_DIR/secret, the same default as `ferry`'s, created if
    /// missing; STATE_DIR is $FERRY_STATE_DIR or $XDG_STATE_HOME/ferry or
    /// ~/.local/state/ferry]
    #[arg(long, value_name = "PATH", env = "FERRY_SECRET_FILE")]
    pub secret_file: Option<PathBuf>,

    /// DEVELOPMENT ONLY: accept any peer without authentication. Anyone who
    /// can reach the agent's address can then reach every guest-local service.
    #[arg(long, conflicts_with = "secret_file")]
    pub insecure_no_auth: bool,

    /// More log output (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Write the log to this file (created 0600) instead of stderr, rotated
    /// past 1 MiB with one older file kept (PATH.1): a log in the guest's
    /// RAM-backed /run stays bounded whatever peers do.
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
}

const EXAMPLES: &str = "\
Examples:
  ferry-agent --secret-file /etc/ferry/secret                 # listens on vsock:any:1024
  ferry-agent --secret-file /etc/ferry/secret --listen unix:/run/ferry.sock --listen tcp:127.0.0.1:7070
  ferry-agent --secret-file /etc/ferry/secret --stdio         # one session, for exec: transports
  ferry-agent --port-events off --scan-interval-ms 100 --kubernetes off";

/// Whether tracepoints wake the port scanner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PortEventsMode {
    /// Use the bind/listen tracepoints when the kernel allows it.
    Auto,
    /// Only poll, every `--scan-interval-ms`.
    Off,
}

/// Whether the Kubernetes source runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KubernetesMode {
    /// Follow services whenever kubectl reaches a cluster.
    Auto,
    /// Never run kubectl.
    Off,
}

impl Args {
    /// Whether the host will mostly send dedicated data connections: not
    /// over --stdio (one session, nothing to dial) nor to a TCP listener
    /// (its sessions are sealed and carry connections as frames).
    pub fn expects_data_conns(&self) -> bool {
        !self.stdio && !self.listen.iter().any(|a| matches!(a, ferry_mux::Address::Tcp(_)))
    }

    /// The UDP ignore list as numbers.
    pub fn udp_ignore_ports(&self) -> anyhow::Result<Vec<u16>> {
        self.udp_ignore
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.trim().parse::<u16>().map_err(|e| anyhow::anyhow!("--udp-ignore: {s:?}: {e}")))
            .collect()
    }

    /// The polling period, used where tracepoints are unavailable.
    pub fn scan_interval(&self) -> Duration {
        Duration::from_millis(self.scan_interval_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn one_thread_where_the_host_sends_data_connections() {
        let dedicated =
            |args: &[&str]| Args::try_parse_from(["ferry-agent"].iter().chain(args)).unwrap().expects_data_conns();
        assert!(dedicated(&[]), "the default vsock listener");
        assert!(dedicated(&["--listen", "unix:/run/a.sock"]));
        assert!(!dedicated(&["--stdio"]));
        assert!(!dedicated(&["--listen", "tcp:0.0.0.0:1024"]), "sealed sessions carry frames");
        assert!(!dedicated(&["--listen", "vsock:any:1024", "--listen", "tcp:0.0.0.0:1024"]));
    }
}
