//! Command-line interface of `ferry`.

use std::time::Duration;

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
}

/// Options of `ferry run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The agent's transport address: vsock:CID:PORT, hvsock:PATH:PORT,
    /// unix:PATH, tcp:HOST:PORT or exec:COMMAND.
    #[arg(long, value_name = "ADDR")]
    pub agent: Address,

    /// Longest wait between reconnection attempts, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    pub max_backoff_ms: u64,

    /// How often to retry host ports that were busy, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    pub retry_busy_ms: u64,
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

/// The log filter for a verbosity count; `RUST_LOG` overrides it.
pub fn log_filter(verbose: u8) -> tracing_subscriber::EnvFilter {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level))
}
