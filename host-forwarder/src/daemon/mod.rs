//! `ferry daemon`: the long-lived process the per-user service runs
//! ([`crate::service`]). It follows every instance in the Lima homes
//! ([`crate::lifecycle::homes`]) by file events alone (never by polling
//! `limactl list`): an instance directory appearing, its host agent's pid
//! file and its status events in `ha.stdout.log`
//! ([`crate::lifecycle::state`]), ferry's enable markers. For every enabled
//! instance it brings forwarding up as soon as the instance reaches Running
//! (`limactl ferry start` with the options `enable` recorded: the agent is
//! installed again if the guest lost it) and down when it stops.
//!
//! A slow tick (2 s by default) looks at the same files again, in case an
//! event was lost, and notices a forwarder that died; it never runs
//! `limactl`.

mod follower;

use std::{os::unix::fs::DirBuilderExt, sync::mpsc, time::Duration};

pub use follower::Msg;

/// Options of `ferry daemon`.
#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    /// How often the daemon looks at the instances' files again without an
    /// event (a safety net for lost events; it never runs `limactl`), in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub tick_ms: u64,
}

/// Runs the daemon until it is killed.
pub fn run(a: &DaemonArgs) -> anyhow::Result<()> {
    let state = ferry_process::secret_file::state_dir();
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&state)?;
    let _pid = crate::pid_file::PidFile::hold(&crate::lifecycle::state::daemon_pid_file()).map_err(|e| {
        anyhow::anyhow!("{}: {e} (another ferry daemon runs)", crate::lifecycle::state::daemon_pid_file().display())
    })?;
    let (tx, rx) = mpsc::channel();
    let fs_tx = tx.clone();
    let watcher = notify::recommended_watcher(move |r| {
        let _ = fs_tx.send(Msg::Fs(r));
    })?;
    let mut f = follower::Follower::new(watcher, tx, state);
    tracing::info!("ferry daemon {} follows {}", env!("CARGO_PKG_VERSION"), f.homes_text());
    f.rescan();
    let tick = Duration::from_millis(a.tick_ms);
    loop {
        let msg = rx.recv_timeout(tick);
        let t0 = std::time::Instant::now();
        match msg {
            Ok(msg) => f.handle(msg),
            Err(mpsc::RecvTimeoutError::Timeout) => f.rescan(),
            Err(mpsc::RecvTimeoutError::Disconnected) => anyhow::bail!("the file watcher stopped"),
        }
        // Take every event already queued before acting once.
        while let Ok(msg) = rx.try_recv() {
            f.handle(msg);
        }
        f.evaluate_dirty();
        if t0.elapsed() > Duration::from_millis(200) {
            tracing::debug!("one turn of the loop took {} ms", t0.elapsed().as_millis());
        }
    }
}
