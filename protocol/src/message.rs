//! Control messages and open targets, encoded with postcard.
//!
//! New variants are only ever appended, so an older peer fails to decode a
//! newer message cleanly (and ignores it) instead of misreading it.

use bytes::Bytes;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::net::SocketAddr;

/// Transport protocol of a discovered listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Proto {
    /// A TCP socket in LISTEN state.
    Tcp,
    /// A bound, unconnected UDP socket.
    Udp,
}

/// A listening socket inside the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Listener {
    /// TCP or UDP.
    pub proto: Proto,
    /// The address the socket is bound to (may be a wildcard).
    pub addr: SocketAddr,
}

/// Where a new stream should connect on the receiving side.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Target {
    /// A TCP address, connected from the receiver's network namespace.
    Tcp(SocketAddr),
    /// A UDP address: the stream is one flow, each DATA frame exactly one
    /// datagram; the receiver sends from a socket of the flow's own.
    Udp(SocketAddr),
    /// Host -> agent: a guest Unix socket, one the host announced in
    /// [`ControlMessage::GuestSocketsWanted`].
    Unix(String),
    /// Agent -> host: a connection accepted on reverse listener `id` (see
    /// [`ControlMessage::ReverseListeners`]); the host alone knows where it
    /// goes, so the guest cannot name arbitrary host addresses.
    Reverse(u32),
}

/// What happened to a file on the host, as a guest path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileEvent {
    /// The guest path (absolute, under one of the announced mount points).
    pub path: String,
    /// What happened.
    pub kind: FileEventKind,
}

/// The kinds of file events the guest replays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FileEventKind {
    /// The path appeared (a new file or directory, or the target of a rename).
    Created,
    /// The file's content changed.
    Modified,
    /// The path went away (removed, or the source of a rename).
    Removed,
    /// Too much happened to list (the host's watcher overflowed): rescan this directory.
    Rescan,
}

/// A shared file system the agent sees in the guest, and how many inotify
/// watches guest processes hold on it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SharedMount {
    /// Where it is mounted in the guest.
    pub mount_point: String,
    /// Its type (virtiofs, 9p, fuse.sshfs, nfs ...).
    pub fs_type: String,
    /// inotify watches on it, over all guest processes.
    pub watches: u32,
}

/// Where a reverse listener listens inside the guest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GuestEndpoint {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix socket path.
    Unix(String),
    /// A UDP address: each guest client address is a flow of its own, a
    /// `Reverse` stream whose DATA frames are single datagrams.
    Udp(SocketAddr),
}

/// A listener the agent opens in the guest for the host.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReverseListener {
    /// The host's name for it, sent back in [`Target::Reverse`].
    pub id: u32,
    /// Where to listen in the guest.
    pub guest: GuestEndpoint,
}

/// Session-level messages carried in CONTROL frames.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlMessage {
    /// The complete set of guest listeners; sent when a session starts.
    PortSnapshot(Vec<Listener>),
    /// Listeners that appeared and disappeared since the previous message.
    PortsChanged {
        /// New listeners.
        added: Vec<Listener>,
        /// Listeners that went away.
        removed: Vec<Listener>,
    },
    /// Agent -> host: the agent accepts dedicated data connections proven
    /// with this session's keys (see [`crate::data_conn`]); sent once, right
    /// after the session starts. (Version 1 sent a bearer token here.)
    DataConnsAccepted,
    /// Host -> agent: UDP ports the host's rules name explicitly, to be
    /// reported even inside the ephemeral range or the agent's ignore list.
    UdpPortsWanted(Vec<PortRange>),
    /// Host -> agent: guest Unix socket paths to watch and to accept
    /// [`Target::Unix`] opens for (the complete list).
    GuestSocketsWanted(Vec<String>),
    /// Agent -> host: which of the wanted guest sockets exist now (the
    /// complete list; sent whenever it changes).
    GuestSocketsPresent(Vec<String>),
    /// Host -> agent: listeners to open in the guest whose connections come
    /// back to the host as [`Target::Reverse`] streams (the complete list).
    ReverseListeners(Vec<ReverseListener>),
    /// Agent -> host: the state of reverse listener `id`: `None` when it
    /// listens, else why it cannot.
    ReverseState {
        /// The listener's id.
        id: u32,
        /// Why it does not listen, if it does not.
        error: Option<String>,
    },
    /// Host -> agent: the guest directories that host file events may name
    /// (the complete list); events for other paths are dropped.
    FileRoots(Vec<String>),
    /// Host -> agent: coalesced host file events to replay in the guest.
    FileEvents(Vec<FileEvent>),
    /// Agent -> host: the shared file systems in the guest and the inotify
    /// watches on them (sent when it changes).
    WatchTargets(Vec<SharedMount>),
    /// Either way, with the DATA_END feature: how the sender's half of the
    /// dedicated data connection `conn` ended. `Some(n)`: it sent exactly
    /// `n` bytes and then half-closed cleanly; `None`: it aborted. The
    /// receiver passes a data connection's EOF on as a clean end only once
    /// this confirms it, so the death of the far process is never mistaken
    /// for one, whatever the transport.
    DataConnEnd {
        /// The id from the connection's hello.
        conn: u64,
        /// The bytes sent before a clean end, or `None` for an abort.
        sent: Option<u64>,
    },
}

/// An inclusive range of ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortRange {
    /// First port of the range.
    pub first: u16,
    /// Last port of the range (inclusive).
    pub last: u16,
}

impl PortRange {
    /// Whether `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

/// A control payload that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undecodable message: {0}")]
pub struct MessageError(pub String);

/// Encodes a message with postcard.
pub fn encode<T: Serialize>(msg: &T) -> Bytes {
    Bytes::from(postcard::to_stdvec(msg).expect("postcard encoding into a Vec cannot fail"))
}

/// Decodes a postcard message; trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, MessageError> {
    let (msg, rest) = postcard::take_from_bytes::<T>(bytes).map_err(|e| MessageError(e.to_string()))?;
    if !rest.is_empty() {
        return Err(MessageError(format!("{} trailing bytes", rest.len())));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn control_round_trip() {
        let l = Listener { proto: Proto::Tcp, addr: "[::]:8080".parse().unwrap() };
        let m = ControlMessage::PortsChanged { added: vec![l], removed: vec![] };
        assert_eq!(decode::<ControlMessage>(&encode(&m)).unwrap(), m);
        let t = Target::Tcp("127.0.0.1:22".parse().unwrap());
        assert_eq!(decode::<Target>(&encode(&t)).unwrap(), t);
        let u = Target::Udp("[::1]:53".parse().unwrap());
        assert_eq!(decode::<Target>(&encode(&u)).unwrap(), u);
        for t in [Target::Unix("/run/docker.sock".into()), Target::Reverse(7)] {
            assert_eq!(decode::<Target>(&encode(&t)).unwrap(), t);
        }
        let r = ControlMessage::ReverseListeners(vec![
            ReverseListener { id: 1, guest: GuestEndpoint::Unix("/run/host-ssh-agent.sock".into()) },
            ReverseListener { id: 2, guest: GuestEndpoint::Udp("127.0.0.1:53".parse().unwrap()) },
        ]);
        assert_eq!(decode::<ControlMessage>(&encode(&r)).unwrap(), r);
        let f = ControlMessage::FileEvents(vec![FileEvent {
            path: "/home/u/app/a.js".into(),
            kind: FileEventKind::Modified,
        }]);
        assert_eq!(decode::<ControlMessage>(&encode(&f)).unwrap(), f);
        let w = ControlMessage::UdpPortsWanted(vec![PortRange { first: 5353, last: 5353 }]);
        assert_eq!(decode::<ControlMessage>(&encode(&w)).unwrap(), w);
    }

    #[test]
    fn port_ranges_are_inclusive() {
        let r = PortRange { first: 10, last: 12 };
        assert!(r.contains(10) && r.contains(12) && !r.contains(9) && !r.contains(13));
    }

    proptest! {
        #[test]
        fn garbage_is_an_error_not_a_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<ControlMessage>(&data);
            let _ = decode::<Target>(&data);
        }
    }
}
