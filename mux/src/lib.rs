//! The stream multiplexer shared by `ferry-agent` and `ferry`.
//!
//! A [`Session`] drives the sans-I/O connection of `ferry-protocol`
//! (`ferry_protocol::connection`, which holds every rule of the protocol)
//! over one [`Transport`] (vsock, hybrid vsock, Unix, TCP, or a command's
//! stdio): one reader task feeds it the bytes read, one writer task sends
//! its frames in vectored batches, and one timer task runs its deadlines
//! (keepalive, open timeouts). Each forwarded connection is a [`MuxStream`]
//! with its own credit window, so a slow reader stalls only its own stream.
//! [`data_end`] confirms on the session how each dedicated data connection
//! ended.
//!
//! [`pump`] copies between a socket and a stream, keeping half-close and
//! resets; [`relay`] relays a socket and a dedicated data connection
//! ([`RawConn`]): through a pipe with splice(2) on Linux, without copies to
//! user space, or through a buffer elsewhere. [`platform`] says which
//! OS-specific data paths a process uses.

pub mod accept_errors;
pub mod address;
pub mod buffer_share;
pub mod data_auth;
pub mod data_end;
pub mod fuzzing;
pub mod local;
pub mod placement;
pub mod platform;
pub mod private_socket;
pub mod pump;
pub mod refusals;
pub mod relay;
pub mod sealed;
pub mod session;
pub mod ssh_master;
pub mod stdio;
pub mod stream;
pub mod tcp_activity;
pub mod traffic;
pub mod transport;
pub mod udp_batch;
pub mod udp_buffers;
pub mod udp_flows;
pub mod unix_conn;
#[cfg(target_os = "linux")]
pub mod vsock;

mod end_book;
mod halves;
mod handshake;
mod incoming;
mod reader;
mod shared;
mod sockopt;
mod writer;

pub use address::Address;
pub use data_auth::{DataClaim, DataRefusal};
pub use local::LocalConn;
pub use session::{IncomingOpen, OpenError, Session, SessionConfig, SessionEvent};
pub use stream::{MuxStream, StreamError, StreamReader, StreamWriter};
pub use traffic::Traffic;
pub use transport::{Incoming, RawConn, Transport, TransportListener};
