//! `ferry-agent`: the guest side of ferry. Wiring only; see the modules.

use std::io::IsTerminal;

use clap::Parser;

mod cli;
mod dedicated;
mod ports;
mod server;
mod session;

fn main() -> anyhow::Result<()> {
    let args = cli::Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(cli::log_filter(args.verbose))
        .init();
    tokio::runtime::Runtime::new()?.block_on(server::run(args))
}
