//! `ferry`: the host side of ferry. Wiring only; see the modules.

use clap::Parser;

mod cli;
mod ports;
mod supervisor;

fn main() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    ferry_mux::logging::init(cli.verbose);
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        cli::Command::Run(args) => runtime.block_on(supervisor::run(args)),
        cli::Command::Secret(args) => {
            let path = args.file.unwrap_or_else(ferry_mux::secret_file::default_path);
            ferry_mux::secret_file::load_or_create(&path)?;
            println!("{}", path.display());
            Ok(())
        }
    }
}
