//! `ferry completions SHELL` and `ferry man`: shell completion scripts and
//! man pages, generated from the clap definitions in [`crate::cli`], so they
//! always describe this binary.

use std::{io::Write, path::Path};

use clap::CommandFactory;

use crate::cli::Cli;

/// Writes the completion script for `shell` to stdout.
pub fn print_completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut cmd = Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(shell, &mut cmd, "ferry", &mut out);
    out.flush()?;
    Ok(())
}

/// Prints ferry(1) to stdout, or with `dir` writes ferry(1) and one page per
/// subcommand (ferry-run(1), ferry-lima-start(1), ...) into that directory.
pub fn man(dir: Option<&Path>) -> anyhow::Result<()> {
    let cmd = Cli::command();
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
            clap_mangen::generate_to(cmd, dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        }
        None => {
            let mut out = std::io::stdout().lock();
            clap_mangen::Man::new(cmd).render(&mut out)?;
            out.flush()?;
        }
    }
    Ok(())
}
