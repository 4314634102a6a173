//! The ports channel on the guest side: which sockets listen, and how the
//! set changes over time.
//!
//! Sources ([`scanner`]: the kernel's socket table, woken by
//! [`bind_events`] and [`destroy_events`]; [`kubernetes`]: cluster
//! services) feed the [`watcher`]; each session applies its [`filter`] and
//! sends diffs. [`udp`] serves the UDP flows the host opens.

pub mod bind_events;
pub mod destroy_events;
pub mod filter;
pub mod kubernetes;
pub mod scanner;
pub mod sock_diag;
pub mod watcher;

pub use watcher::PortWatcher;
