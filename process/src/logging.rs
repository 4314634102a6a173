//! Log set-up shared by both binaries: tracing to stderr (stdout may carry
//! a session, as with `ferry-agent --stdio`), colours only on a terminal.

use std::io::IsTerminal;

/// Installs the global subscriber: `info` by default, `debug` with one `-v`,
/// `trace` with two; `RUST_LOG` overrides.
pub fn init(verbose: u8) {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .init();
}
