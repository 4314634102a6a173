//! Command-line interface of `ferry-agent`.

use std::{path::PathBuf, time::Duration};

use clap::Parser;
use ferry_mux::Address;

/// ferry's guest agent: reports listening ports to the host forwarder and
/// opens the connections it asks for inside the guest.
#[derive(Debug, Parser)]
#[command(name = "ferry-agent", version)]
pub struct Args {
    /// Transport address to accept the host on (repeatable):
    /// vsock:CID:PORT, unix:PATH or tcp:HOST:PORT.
    #[arg(long = "listen", value_name = "ADDR", default_value = "vsock:any:1024")]
    pub listen: Vec<Address>,

    /// Serve exactly one session on stdin/stdout (for `exec:` transports such as ssh), then exit.
    #[arg(long, conflicts_with = "listen")]
    pub stdio: bool,

    /// How often to rescan listening sockets, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 250, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub scan_interval_ms: u64,

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
}

impl Args {
    /// The rescan period.
    pub fn scan_interval(&self) -> Duration {
        Duration::from_millis(self.scan_interval_ms)
    }
}
