//! `ferry-agent`: the guest side of ferry. Wiring only; see the modules.

use clap::Parser;

mod cli;
mod dedicated;
mod files;
mod ports;
mod pre_auth;
mod reverse;
mod server;
mod session;
mod sockets;
mod targets;

fn main() -> anyhow::Result<()> {
    let args = cli::Args::parse();
    ferry_process::logging::init(args.verbose, args.log_file.as_deref())?;
    ferry_process::alloc::tune();
    ferry_mux::placement::main_runtime(args.expects_data_conns())?.block_on(server::run(args))
}
