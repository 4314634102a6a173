//! The local end of a forwarded connection: a TCP or a Unix stream socket,
//! relayed either as a stream of the session ([`LocalConn::pump`]) or over a
//! dedicated data connection ([`LocalConn::relay`]).

use tokio::net::{TcpStream, UnixStream};

use crate::{
    pump::{pump, reset_tcp, PumpEnd},
    MuxStream, RawConn, Traffic,
};

/// A connected local socket.
pub enum LocalConn {
    /// A TCP connection (a client of a host port, or a guest server).
    Tcp(TcpStream),
    /// A Unix stream connection (docker.sock and friends).
    Unix(UnixStream),
}

impl std::os::fd::AsRawFd for LocalConn {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        match self {
            Self::Tcp(s) => s.as_raw_fd(),
            Self::Unix(s) => s.as_raw_fd(),
        }
    }
}

impl LocalConn {
    /// Relays with `stream` until both directions end; an abort from either
    /// side aborts the socket (TCP: RST). Returns the reason of an abort.
    pub async fn pump(self, stream: MuxStream, traffic: &Traffic) -> Option<String> {
        match self {
            Self::Tcp(mut tcp) => {
                let (r, w) = tcp.split();
                match pump(r, w, stream, traffic).await {
                    PumpEnd::Closed => None,
                    PumpEnd::Reset(reason) => {
                        reset_tcp(tcp);
                        Some(reason)
                    }
                }
            }
            Self::Unix(mut unix) => {
                let (r, w) = unix.split();
                match pump(r, w, stream, traffic).await {
                    PumpEnd::Closed => None,
                    // A Unix socket has no RST: closing is all there is.
                    PumpEnd::Reset(reason) => Some(reason),
                }
            }
        }
    }

    /// Relays with the data connection `conn` (splice(2) on Linux: see
    /// [`crate::relay`]) with `duties` until both directions end, from
    /// `from` on, stopping for a move if `movable` (see
    /// [`crate::relay::relay_from`]). On an error (an abort, or, with
    /// [`crate::relay::Answer::Read`], a refusal) the caller aborts the
    /// socket.
    pub async fn relay(
        &self,
        conn: &RawConn,
        traffic: &Traffic,
        duties: crate::relay::Duties<'_>,
        from: crate::relay::Resume,
        movable: bool,
    ) -> std::io::Result<crate::relay::Relayed> {
        match self {
            Self::Tcp(tcp) => conn.relay_with(tcp, traffic, duties, from, movable).await,
            Self::Unix(unix) => conn.relay_with(unix, traffic, duties, from, movable).await,
        }
    }

    /// Closes the socket so that its peer sees an abort where it can (TCP: RST).
    pub fn abort(self) {
        match self {
            Self::Tcp(tcp) => reset_tcp(tcp),
            Self::Unix(_) => {}
        }
    }
}
