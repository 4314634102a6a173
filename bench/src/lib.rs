//! Building blocks of `cargo bench`: guest-side servers, load generators,
//! the forwarding paths being compared, process accounting and the report.
//!
//! Every scenario runs over the same guest (a network namespace) for every
//! path, alternating the paths' order between rounds, so that ratios come
//! from figures measured side by side on a noisy machine.

pub mod discovery;
pub mod files;
pub mod load;
pub mod paths;
pub mod procstat;
pub mod report;
pub mod servers;
pub mod udp;

/// Enters the network namespace `name` on the calling thread.
pub fn enter_netns(name: &str) {
    use std::os::fd::AsRawFd;
    let ns = std::fs::File::open(format!("/run/netns/{name}")).expect("open netns");
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {name}: {}", std::io::Error::last_os_error());
}
