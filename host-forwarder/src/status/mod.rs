//! Observability: what the forwarder is doing, for people (`ferry status`)
//! and for programs (`ferry status --json`, `ferry run --events`).
//!
//! The running forwarder keeps a [`board::StatusBoard`], serves it as JSON
//! on a control socket ([`server`]), and `ferry status` reads and renders it
//! ([`client`]). [`events`] prints one JSON line per forwarding change.

pub mod board;
pub mod client;
pub mod events;
pub mod server;

pub use board::{ConnStats, StatusBoard};
pub use events::EventSink;
