//! `ferry doctor [INSTANCE]`: placeholder, filled in below.

/// Options of `ferry doctor`.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Only this instance [default: every instance in the Lima homes].
    pub instance: Option<String>,
}

/// Runs the checks.
pub fn run(_a: &DoctorArgs) -> anyhow::Result<()> {
    Ok(())
}
