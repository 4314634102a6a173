//! The two halves of a byte stream between the peers, boxed, as every
//! transport (and the sealed layer over one) hands them to the session.

use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};

/// The read half of a transport.
pub type BoxRead = Pin<Box<dyn AsyncRead + Send>>;
/// The write half of a transport.
pub type BoxWrite = Pin<Box<dyn AsyncWrite + Send>>;
