//! The ports channel on the host side: mirror each guest listener as a host
//! listener on loopback, and forward every accepted connection.

pub mod dedicated;
pub mod forwarder;
pub mod listener;
pub mod mapping;

pub use forwarder::PortForwarder;
