//! ferry's wire format, shared by the guest agent and the host forwarder.
//!
//! Everything in this crate is sans-I/O: it turns bytes into frames and
//! frames into bytes, and [`connection::Connection`] holds the whole
//! behaviour of a session (stream states, credit, queues, timers), but it
//! never touches a socket or a clock. The tokio driver lives in `ferry-mux`.
//!
//! A session is: both peers send a fixed-size [`handshake::Hello`], check each
//! other's version, exchange nonces and prove the secret ([`auth`]), derive
//! the session's keys ([`keys`]), then exchange [`frame::Frame`]s (inside
//! [`seal`]ed records on a network transport) until one side closes.

pub mod auth;
pub mod codec;
pub mod connection;
pub mod data_conn;
pub mod flow;
pub mod frame;
pub mod fuzzing;
pub mod handshake;
pub mod keys;
pub mod message;
pub mod seal;
pub mod stream_id;

pub use codec::{DecodeError, FrameDecoder};
pub use frame::{Frame, FrameType, StreamId, HEADER_LEN, MAX_PAYLOAD};
pub use handshake::{HandshakeError, Hello, Role, PROTOCOL_VERSION};
pub use message::{
    ControlMessage, FileEvent, FileEventKind, GuestEndpoint, Listener, PortRange, Proto, ReverseListener, SharedMount,
    Target,
};
