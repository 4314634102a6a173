//! `ferry`: the host side of ferry. Wiring only; see the modules.

use std::io::IsTerminal;

use clap::Parser;

mod cli;
mod ports;
mod supervisor;

fn main() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(cli::log_filter(cli.verbose))
        .init();
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        cli::Command::Run(args) => runtime.block_on(supervisor::run(args)),
        cli::Command::Secret(args) => {
            let path = args.file.unwrap_or_else(cli::default_secret_file);
            ferry_mux::secret_file::load_or_create(&path)?;
            println!("{}", path.display());
            Ok(())
        }
    }
}
