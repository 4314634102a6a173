//! The ports channel on the guest side: which sockets listen, and how the
//! set changes over time.

pub mod sock_diag;
pub mod watcher;

pub use watcher::PortWatcher;
