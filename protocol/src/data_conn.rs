//! Dedicated data connections (sans-I/O part).
//!
//! Where the transport can dial more connections (Unix, hybrid vsock, TCP),
//! each forwarded connection may travel on a transport connection of its own
//! instead of as frames on the session: the kernel then does the flow
//! control, and the bytes can move with splice(2). Such a connection opens
//! with a [`DataHello`] naming the session token (handed out by the agent
//! over the authenticated session) and the target; the agent answers with
//! one status byte, and, on refusal, a reason. After that the connection
//! carries raw bytes both ways, and closing a direction is a half-close.
//!
//! ```text
//!  "FERRYD" (6) | negotiated version u16 BE | token [32] | target length u16 BE | postcard Target
//!     [ | connection id u64 BE ]   (only if the session negotiated DATA_END)
//!  answer: 0x00 (connected) | 0x01, reason length u16 BE, UTF-8 reason
//! ```
//!
//! With the DATA_END feature each side confirms, on the session, how its
//! half of the connection ended ([`crate::ControlMessage::DataConnEnd`],
//! naming the connection id): an EOF on the data connection is a clean end
//! only with that confirmation, since over TCP (unlike a Unix socket) the
//! death of the far process looks exactly like its half-close.

use crate::{message, Target};

/// Magic of a data connection (the session's hello starts `FERRY\0`).
pub const DATA_MAGIC: [u8; 6] = *b"FERRYD";

/// Length of the session token.
pub const TOKEN_LEN: usize = 32;

/// Length of the fixed part of a [`DataHello`], before the target bytes.
pub const FIXED_LEN: usize = 6 + 2 + TOKEN_LEN + 2;

/// Largest encoded target accepted.
pub const MAX_TARGET_LEN: usize = 1024;

/// Status byte: the agent reached the target.
pub const CONNECTED: u8 = 0;
/// Status byte: the agent could not reach the target; a reason follows.
pub const REFUSED: u8 = 1;

/// The opening of a data connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataHello {
    /// The protocol version the session negotiated (not the dialer's own:
    /// an old and a new side keep their data connections across a bump).
    pub version: u16,
    /// The session token proving the dialer belongs to an authenticated session.
    pub token: [u8; TOKEN_LEN],
    /// Where the agent should connect.
    pub target: Target,
    /// The connection's id within its session, if the session negotiated
    /// DATA_END (the dialer picks it).
    pub conn: Option<u64>,
}

/// Length of the connection id that ends a hello under DATA_END.
pub const CONN_ID_LEN: usize = 8;

/// The fixed part of a [`DataHello`]: what is known before the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelloFixed {
    /// The version the dialer's session negotiated.
    pub version: u16,
    /// The session token.
    pub token: [u8; TOKEN_LEN],
    /// How many target bytes follow.
    pub target_len: usize,
}

/// A data-connection opening that is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataHelloError {
    /// Not a data connection.
    #[error("not a ferry data connection (bad magic)")]
    BadMagic,
    /// A version this build does not speak.
    #[error(
        "data connection of protocol v{0}; this build speaks v{min} to v{ours}",
        min = crate::handshake::MIN_COMPATIBLE_VERSION,
        ours = crate::PROTOCOL_VERSION
    )]
    Version(u16),
    /// The target length is over the limit.
    #[error("data connection target of {0} bytes exceeds the limit")]
    TargetTooLong(usize),
    /// The target does not decode.
    #[error("data connection target: {0}")]
    Target(String),
}

impl DataHello {
    /// Encodes the opening.
    pub fn encode(&self) -> Vec<u8> {
        let target = message::encode(&self.target);
        let mut out = Vec::with_capacity(FIXED_LEN + target.len());
        out.extend_from_slice(&DATA_MAGIC);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.token);
        out.extend_from_slice(&(target.len() as u16).to_be_bytes());
        out.extend_from_slice(&target);
        if let Some(id) = self.conn {
            out.extend_from_slice(&id.to_be_bytes());
        }
        out
    }

    /// Parses the fixed part: any version this build speaks (the agent then
    /// checks it is the one the token's session negotiated).
    pub fn decode_fixed(b: &[u8; FIXED_LEN]) -> Result<HelloFixed, DataHelloError> {
        if b[..6] != DATA_MAGIC {
            return Err(DataHelloError::BadMagic);
        }
        let version = u16::from_be_bytes([b[6], b[7]]);
        if !(crate::handshake::MIN_COMPATIBLE_VERSION..=crate::PROTOCOL_VERSION).contains(&version) {
            return Err(DataHelloError::Version(version));
        }
        let token: [u8; TOKEN_LEN] = b[8..8 + TOKEN_LEN].try_into().expect("token length");
        let len = u16::from_be_bytes([b[FIXED_LEN - 2], b[FIXED_LEN - 1]]) as usize;
        if len > MAX_TARGET_LEN {
            return Err(DataHelloError::TargetTooLong(len));
        }
        Ok(HelloFixed { version, token, target_len: len })
    }

    /// Parses the target bytes that follow the fixed part.
    pub fn decode_target(b: &[u8]) -> Result<Target, DataHelloError> {
        message::decode(b).map_err(|e| DataHelloError::Target(e.to_string()))
    }
}

/// Encodes a refusal answer.
pub fn refusal(reason: &str) -> Vec<u8> {
    let r = &reason.as_bytes()[..reason.len().min(crate::frame::MAX_REASON_LEN)];
    let mut out = vec![REFUSED];
    out.extend_from_slice(&(r.len() as u16).to_be_bytes());
    out.extend_from_slice(r);
    out
}

/// Compares two tokens in constant time.
pub fn token_eq(a: &[u8; TOKEN_LEN], b: &[u8; TOKEN_LEN]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let target = Target::Tcp("[::1]:8080".parse().unwrap());
        for conn in [None, Some(0x0102_0304_0506_0708)] {
            let h = DataHello { version: 1, token: [7; TOKEN_LEN], target: target.clone(), conn };
            let wire = h.encode();
            let fixed = DataHello::decode_fixed(wire[..FIXED_LEN].try_into().unwrap()).unwrap();
            assert_eq!((fixed.version, fixed.token), (1, h.token));
            let end = FIXED_LEN + fixed.target_len;
            assert_eq!(DataHello::decode_target(&wire[FIXED_LEN..end]).unwrap(), h.target);
            let id = wire[end..].try_into().ok().map(u64::from_be_bytes);
            assert_eq!(id, conn);
        }
    }

    #[test]
    fn rejects_garbage_versions_and_oversized_targets() {
        let mut b = [0u8; FIXED_LEN];
        assert_eq!(DataHello::decode_fixed(&b), Err(DataHelloError::BadMagic));
        b[..6].copy_from_slice(&DATA_MAGIC);
        b[7] = 9;
        assert_eq!(DataHello::decode_fixed(&b), Err(DataHelloError::Version(9)));
        b[7] = 0;
        assert_eq!(DataHello::decode_fixed(&b), Err(DataHelloError::Version(0)), "below the oldest compatible");
        b[7] = 1;
        b[FIXED_LEN - 2] = 0xff;
        assert!(matches!(DataHello::decode_fixed(&b), Err(DataHelloError::TargetTooLong(_))));
        assert!(DataHello::decode_target(&[0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn token_comparison() {
        assert!(token_eq(&[1; TOKEN_LEN], &[1; TOKEN_LEN]));
        let mut other = [1; TOKEN_LEN];
        other[31] = 2;
        assert!(!token_eq(&[1; TOKEN_LEN], &other));
    }
}
