//! The ports channel on the host side: decide with Lima's rules which guest
//! listeners to publish, mirror each as a host listener (loopback unless a
//! rule says otherwise) or as a host Unix socket ([`host_sockets`]), and
//! forward every accepted connection.

pub mod forwarder;
pub mod host_sockets;
pub mod listener;
pub mod mapping;
pub mod restart_grace;
pub mod rules;
