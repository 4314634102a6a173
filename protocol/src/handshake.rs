//! The session preamble: both peers send a [`Hello`] first and check the
//! other's before any frame is exchanged.
//!
//! The hello's layout is frozen for all protocol versions, so that two
//! incompatible peers can always read each other's version and say so.
//!
//! ```text
//!  "FERRY\0" (6) | version u16 BE | min version u16 BE | features u64 BE | role u8
//! ```

/// Magic bytes that open every ferry session.
pub const MAGIC: [u8; 6] = *b"FERRY\0";

/// The protocol version this build speaks. Version 2 derives the session's
/// keys from the handshake ([`crate::keys`]), proves data connections with
/// single-use MACs instead of a bearer token ([`crate::data_conn`]) and
/// seals sessions over network transports ([`crate::seal`]).
pub const PROTOCOL_VERSION: u16 = 2;

/// The oldest peer version this build can talk to: version 1 sent a
/// replayable data token, so it is refused (with both versions named).
pub const MIN_COMPATIBLE_VERSION: u16 = 2;

/// Encoded size of a [`Hello`].
pub const HELLO_LEN: usize = 6 + 2 + 2 + 8 + 1;

/// Optional capabilities, negotiated as the intersection of both peers' bits.
pub mod features {
    /// The peer answers keepalive pings (every v1 peer does; kept as a bit so
    /// that the field is exercised from the first version on).
    pub const KEEPALIVE: u64 = 1 << 0;
    /// The sender authenticates and requires the peer to (see [`crate::auth`]).
    /// Set per session, not part of [`SUPPORTED`]: a peer without it is a peer
    /// started with `--insecure-no-auth`.
    pub const AUTH: u64 = 1 << 1;
    /// Each clean end of a dedicated data connection is confirmed on the
    /// session ([`crate::ControlMessage::DataConnEnd`]), and data hellos carry
    /// a connection id for it (see [`crate::data_conn`]).
    pub const DATA_END: u64 = 1 << 2;
    /// The sender's transport is not private to the two peers (TCP): every
    /// session byte after the handshake travels in sealed records
    /// ([`crate::seal`]). Set per session, not part of [`SUPPORTED`]; the
    /// session is sealed if either side sets it (and both authenticate).
    pub const SEALED: u64 = 1 << 3;
    /// Everything this build supports unconditionally.
    pub const SUPPORTED: u64 = KEEPALIVE | DATA_END;
}

/// Which end of the bridge a peer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// `ferry`, the host forwarder.
    Host = 1,
    /// `ferry-agent`, inside the guest.
    Agent = 2,
}

/// The first thing each peer sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version the sender speaks.
    pub version: u16,
    /// Oldest version the sender accepts.
    pub min_version: u16,
    /// Feature bits the sender supports.
    pub features: u64,
    /// The sender's role.
    pub role: Role,
}

/// What both peers agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// The version both speak (the lower of the two).
    pub version: u16,
    /// Feature bits both support.
    pub features: u64,
}

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The peer is not speaking ferry at all.
    #[error("peer is not a ferry endpoint (bad magic {0:02x?})")]
    BadMagic([u8; 6]),
    /// The peer sent an unknown role byte.
    #[error("peer sent unknown role {0}")]
    BadRole(u8),
    /// The versions do not overlap.
    #[error("incompatible protocol versions: we speak v{ours} (accepting v{our_min}+), the peer speaks v{theirs} (accepting v{their_min}+); upgrade the older side")]
    IncompatibleVersion { ours: u16, our_min: u16, theirs: u16, their_min: u16 },
    /// Both ends claim the same role (e.g. a forwarder dialled another forwarder).
    #[error("both peers are {0:?}s; one end must be the host forwarder and the other the guest agent")]
    SameRole(Role),
}

impl Hello {
    /// The hello this build sends in the given role.
    pub fn ours(role: Role) -> Self {
        Self { version: PROTOCOL_VERSION, min_version: MIN_COMPATIBLE_VERSION, features: features::SUPPORTED, role }
    }

    /// Encodes the hello into its fixed wire form.
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut out = [0u8; HELLO_LEN];
        out[0..6].copy_from_slice(&MAGIC);
        out[6..8].copy_from_slice(&self.version.to_be_bytes());
        out[8..10].copy_from_slice(&self.min_version.to_be_bytes());
        out[10..18].copy_from_slice(&self.features.to_be_bytes());
        out[18] = self.role as u8;
        out
    }

    /// Decodes a hello from exactly [`HELLO_LEN`] bytes.
    pub fn decode(b: &[u8; HELLO_LEN]) -> Result<Self, HandshakeError> {
        let magic: [u8; 6] = b[0..6].try_into().expect("6 bytes");
        if magic != MAGIC {
            return Err(HandshakeError::BadMagic(magic));
        }
        let role = match b[18] {
            1 => Role::Host,
            2 => Role::Agent,
            r => return Err(HandshakeError::BadRole(r)),
        };
        Ok(Self {
            version: u16::from_be_bytes([b[6], b[7]]),
            min_version: u16::from_be_bytes([b[8], b[9]]),
            features: u64::from_be_bytes(b[10..18].try_into().expect("8 bytes")),
            role,
        })
    }

    /// Checks the peer's hello against ours and agrees on version and features.
    pub fn negotiate(&self, peer: &Hello) -> Result<Negotiated, HandshakeError> {
        if peer.role == self.role {
            return Err(HandshakeError::SameRole(self.role));
        }
        let version = self.version.min(peer.version);
        if version < self.min_version || version < peer.min_version {
            return Err(HandshakeError::IncompatibleVersion {
                ours: self.version,
                our_min: self.min_version,
                theirs: peer.version,
                their_min: peer.min_version,
            });
        }
        // Sealing is wanted by a side whose own transport is exposed: one
        // side asking is enough.
        let sealed = (self.features | peer.features) & features::SEALED;
        Ok(Negotiated { version, features: (self.features & peer.features) | sealed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_negotiate() {
        let host = Hello::ours(Role::Host);
        let agent = Hello::decode(&Hello::ours(Role::Agent).encode()).unwrap();
        let n = host.negotiate(&agent).unwrap();
        assert_eq!(n.version, PROTOCOL_VERSION);
        assert_eq!(n.features, features::SUPPORTED);
    }

    #[test]
    fn newer_peer_within_range_is_accepted_at_our_version() {
        let host = Hello::ours(Role::Host);
        let agent = Hello { version: 7, min_version: 1, features: u64::MAX, role: Role::Agent };
        assert_eq!(host.negotiate(&agent).unwrap().version, PROTOCOL_VERSION);
    }

    #[test]
    fn incompatible_versions_name_both() {
        let host = Hello::ours(Role::Host);
        let agent = Hello { version: 9, min_version: 5, features: 0, role: Role::Agent };
        let err = host.negotiate(&agent).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("v2") && msg.contains("v9"), "{msg}");
    }

    #[test]
    fn a_version_1_peer_is_refused_naming_both_versions() {
        let host = Hello::ours(Role::Host);
        let old = Hello { version: 1, min_version: 1, features: features::SUPPORTED, role: Role::Agent };
        let msg = host.negotiate(&old).unwrap_err().to_string();
        assert!(msg.contains("we speak v2") && msg.contains("peer speaks v1") && msg.contains("upgrade"), "{msg}");
    }

    #[test]
    fn sealing_is_asked_by_either_side() {
        let mut host = Hello::ours(Role::Host);
        let agent = Hello::ours(Role::Agent);
        assert_eq!(host.negotiate(&agent).unwrap().features & features::SEALED, 0);
        host.features |= features::SEALED;
        assert_ne!(host.negotiate(&agent).unwrap().features & features::SEALED, 0);
        assert_ne!(agent.negotiate(&host).unwrap().features & features::SEALED, 0);
    }

    #[test]
    fn garbage_is_bad_magic() {
        let mut b = Hello::ours(Role::Host).encode();
        b[0] = b'G';
        assert!(matches!(Hello::decode(&b), Err(HandshakeError::BadMagic(_))));
        let mut b = Hello::ours(Role::Host).encode();
        b[18] = 9;
        assert_eq!(Hello::decode(&b), Err(HandshakeError::BadRole(9)));
    }

    #[test]
    fn same_role_is_rejected() {
        let h = Hello::ours(Role::Host);
        assert_eq!(h.negotiate(&h), Err(HandshakeError::SameRole(Role::Host)));
    }
}
