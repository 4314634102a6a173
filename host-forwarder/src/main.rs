//! `ferry`: the host side of ferry. Wiring only; see the modules.

use clap::Parser;

mod cli;
mod config;
mod daemon;
mod doctor;
mod files;
mod lifecycle;
mod lima;
mod manual;
mod pid_file;
mod port_holder;
mod ports;
mod reverse;
mod routes;
mod service;
mod sockets;
mod status;
mod supervisor;

fn main() -> anyhow::Result<()> {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if std::path::Path::new(&argv0).file_name().is_some_and(|n| n == "limactl-ferry") {
        let plugin = cli::LimaPlugin::parse();
        ferry_process::logging::init(plugin.verbose, None)?;
        return lima::run(plugin.command);
    }
    let cli = cli::Cli::parse();
    ferry_process::logging::init(cli.verbose, cli.log_file.as_deref())?;
    match cli.command {
        cli::Command::Run(args) => {
            ferry_process::alloc::tune();
            ferry_mux::placement::main_runtime(args.expects_data_conns())?.block_on(supervisor::run(args))
        }
        cli::Command::Secret(args) => {
            let path = args.file.unwrap_or_else(ferry_process::secret_file::default_path);
            ferry_process::secret_file::load_or_create(&path)?;
            println!("{}", path.display());
            Ok(())
        }
        cli::Command::Lima { command } => lima::run(command),
        cli::Command::Service(args) => service::run(&args),
        cli::Command::Daemon(args) => daemon::run(&args),
        cli::Command::Doctor(args) => doctor::run(&args),
        cli::Command::Status(args) => status::client::print(args.control_socket.as_deref(), args.json),
        cli::Command::Completions(args) => manual::print_completions(args.shell),
        cli::Command::Man(args) => manual::man(args.dir.as_deref()),
    }
}
