//! The few messages of OpenSSH's ControlMaster protocol (its PROTOCOL.mux)
//! that ferry speaks, sans-I/O: the hello both sides send, the request for
//! a stdio forward, and the master's replies.
//!
//! A message is a big-endian `u32` length, then that many bytes: a `u32`
//! type and its fields. Strings are a `u32` length and the bytes.

use std::fmt;

/// Both sides' first message.
pub const MUX_MSG_HELLO: u32 = 0x0000_0001;
/// Client: forward my stdin and stdout to a host and port (or path) the
/// server side connects to.
pub const MUX_C_NEW_STDIO_FWD: u32 = 0x1000_0008;
/// Master: the request was refused by policy.
pub const MUX_S_PERMISSION_DENIED: u32 = 0x8000_0002;
/// Master: the request failed (for a forward: the server could not connect).
pub const MUX_S_FAILURE: u32 = 0x8000_0003;
/// Master: the forward is open.
pub const MUX_S_SESSION_OPENED: u32 = 0x8000_0006;
/// The protocol version ferry speaks (OpenSSH's since 5.x).
pub const PROTOCOL_VERSION: u32 = 4;
/// The "port" that makes the connect host of a forward a Unix socket path.
pub const PORT_STREAMLOCAL: u32 = -2i32 as u32;
/// The longest message accepted from a master (its replies are tiny).
pub const MAX_MESSAGE: usize = 64 * 1024;

/// Where the server side of a stdio forward connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination<'a> {
    /// A TCP host (a name or an address, as the server resolves it) and port.
    Tcp(&'a str, u16),
    /// A Unix socket path on the server.
    Unix(&'a str),
}

/// A message from the master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The master's hello.
    Hello { version: u32 },
    /// The forward `request_id` asked for is open.
    Opened { request_id: u32 },
    /// The forward was refused: by policy (`denied`) or because the server
    /// side could not connect.
    Refused { request_id: u32, denied: bool, reason: String },
    /// A message ferry does not expect here.
    Other { kind: u32 },
}

/// A message that does not follow the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadMessage(pub String);

impl fmt::Display for BadMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad ControlMaster message: {}", self.0)
    }
}

impl std::error::Error for BadMessage {}

/// The client's hello.
pub fn hello() -> Vec<u8> {
    let mut m = Message::new(MUX_MSG_HELLO);
    m.u32(PROTOCOL_VERSION);
    m.finish()
}

/// A request to forward the descriptors sent next (stdin, then stdout) to
/// `to`, answered with `request_id`.
pub fn stdio_forward(request_id: u32, to: Destination<'_>) -> Vec<u8> {
    let mut m = Message::new(MUX_C_NEW_STDIO_FWD);
    m.u32(request_id);
    m.string(b""); // reserved
    match to {
        Destination::Tcp(host, port) => {
            m.string(host.as_bytes());
            m.u32(u32::from(port));
        }
        Destination::Unix(path) => {
            m.string(path.as_bytes());
            m.u32(PORT_STREAMLOCAL);
        }
    }
    m.finish()
}

/// The length of the first whole message in `buf` (its length prefix
/// included), or `None` while it is incomplete.
pub fn message_len(buf: &[u8]) -> Result<Option<usize>, BadMessage> {
    let Some(prefix) = buf.first_chunk::<4>() else { return Ok(None) };
    let len = u32::from_be_bytes(*prefix) as usize;
    if !(4..=MAX_MESSAGE).contains(&len) {
        return Err(BadMessage(format!("length {len}")));
    }
    Ok((buf.len() >= 4 + len).then_some(4 + len))
}

/// Parses one whole message (as [`message_len`] delimits it).
pub fn parse(message: &[u8]) -> Result<Reply, BadMessage> {
    let mut r = Fields(message.get(4..).unwrap_or_default());
    let kind = r.u32()?;
    Ok(match kind {
        MUX_MSG_HELLO => Reply::Hello { version: r.u32()? },
        MUX_S_SESSION_OPENED => Reply::Opened { request_id: r.u32()? },
        MUX_S_PERMISSION_DENIED | MUX_S_FAILURE => {
            let request_id = r.u32()?;
            let reason = String::from_utf8_lossy(r.string()?).into_owned();
            Reply::Refused { request_id, denied: kind == MUX_S_PERMISSION_DENIED, reason }
        }
        kind => Reply::Other { kind },
    })
}

struct Message(Vec<u8>);

impl Message {
    fn new(kind: u32) -> Self {
        let mut m = Self(vec![0; 4]);
        m.u32(kind);
        m
    }

    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }

    fn string(&mut self, s: &[u8]) {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s);
    }

    fn finish(mut self) -> Vec<u8> {
        let len = (self.0.len() - 4) as u32;
        self.0[..4].copy_from_slice(&len.to_be_bytes());
        self.0
    }
}

struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BadMessage> {
        if self.0.len() < n {
            return Err(BadMessage("truncated".into()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, BadMessage> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn string(&mut self) -> Result<&'a [u8], BadMessage> {
        let len = self.u32()? as usize;
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stdio_forward_request_is_laid_out_as_openssh_reads_it() {
        let m = stdio_forward(7, Destination::Tcp("127.0.0.1", 8080));
        let mut want = Vec::new();
        for v in [0x1000_0008u32, 7, 0, 9] {
            want.extend_from_slice(&v.to_be_bytes());
        }
        want.extend_from_slice(b"127.0.0.1");
        want.extend_from_slice(&8080u32.to_be_bytes());
        assert_eq!(&m[4..], &want[..]);
        assert_eq!(u32::from_be_bytes(m[..4].try_into().unwrap()) as usize, want.len());

        let unix = stdio_forward(1, Destination::Unix("/run/docker.sock"));
        assert_eq!(&unix[unix.len() - 4..], &[0xff, 0xff, 0xff, 0xfe]);
    }

    #[test]
    fn replies_parse_and_partial_or_oversized_ones_are_told_apart() {
        let mut m = Message::new(MUX_S_FAILURE);
        m.u32(3);
        m.string(b"Session open refused by peer");
        let failure = m.finish();
        assert_eq!(message_len(&failure[..failure.len() - 1]), Ok(None));
        assert_eq!(message_len(&failure), Ok(Some(failure.len())));
        assert_eq!(
            parse(&failure),
            Ok(Reply::Refused { request_id: 3, denied: false, reason: "Session open refused by peer".into() })
        );
        assert_eq!(parse(&hello()), Ok(Reply::Hello { version: 4 }));
        let mut opened = Message::new(MUX_S_SESSION_OPENED);
        opened.u32(9);
        opened.u32(2);
        assert_eq!(parse(&opened.finish()), Ok(Reply::Opened { request_id: 9 }));
        assert!(message_len(&[0, 0x10, 0, 0]).is_err(), "1 MiB is beyond any reply");
        assert!(message_len(&[0, 0, 0, 1]).is_err(), "shorter than its type");
        let mut short = Message::new(MUX_S_FAILURE);
        short.u32(1);
        short.u32(100); // a string longer than the message
        assert!(parse(&short.finish()).is_err());
    }
}
