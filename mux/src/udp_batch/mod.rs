//! Batched UDP I/O: several datagrams per call.
//!
//! A relay makes a receive and a send per datagram, and one flow is one
//! task, so at about 100,000 datagrams a second those calls are its limit:
//! the flow's credit runs out and datagrams are dropped while CPUs idle.
//! Under load datagrams queue up, and on Linux one recvmmsg(2) or
//! sendmmsg(2) moves up to [`BATCH`] of them at once ([`mmsg`]); with one
//! datagram waiting they cost what recv/send cost. Elsewhere (and on Linux
//! in portable mode: [`crate::platform`]) the same calls loop over
//! recvfrom(2)/sendto(2) ([`single`]), one datagram per system call.

#[cfg(target_os = "linux")]
mod mmsg;
mod single;

use std::{cell::RefCell, io, net::SocketAddr, os::fd::AsRawFd};

use bytes::Bytes;

use crate::stream::StreamReader;

/// Most datagrams one call moves.
pub const BATCH: usize = 16;

thread_local! {
    /// Receive space: a full-size slot per datagram of a batch (a smaller
    /// slot would truncate a large datagram). One per thread, shared by
    /// every socket the thread serves; its pages are touched only as
    /// datagrams fill them.
    static SLOTS: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Receives what is waiting on `socket`, up to [`BATCH`] datagrams, without
/// blocking: appends each payload with its sender to `out` and returns how
/// many. Fails with `WouldBlock` when nothing is waiting (and then appends
/// nothing), so it fits `UdpSocket::async_io`.
pub fn recv(socket: &impl AsRawFd, out: &mut Vec<(Bytes, SocketAddr)>) -> io::Result<usize> {
    #[cfg(target_os = "linux")]
    if crate::platform::linux_fast_paths() {
        return mmsg::recv(socket.as_raw_fd(), out);
    }
    single::recv(socket.as_raw_fd(), out)
}

/// Sends the first [`BATCH`] or fewer of `datagrams`, to `to` or, when
/// `None`, to the socket's connected peer, without blocking. Returns how
/// many went before the socket refused one; fails (`WouldBlock` when the
/// socket is full) only if the first could not go.
pub fn send(socket: &impl AsRawFd, datagrams: &[Bytes], to: Option<SocketAddr>) -> io::Result<usize> {
    #[cfg(target_os = "linux")]
    if crate::platform::linux_fast_paths() {
        return mmsg::send(socket.as_raw_fd(), datagrams, to);
    }
    single::send(socket.as_raw_fd(), datagrams, to)
}

/// Moves the datagrams that have already arrived on `reader` into `batch`
/// until it holds [`BATCH`]. Returns `true` if the stream ended (its end or
/// an error was taken), so the caller sends what it holds and stops.
pub fn take_ready(reader: &mut StreamReader, batch: &mut Vec<Bytes>) -> bool {
    while batch.len() < BATCH {
        match reader.try_recv() {
            None => return false,
            Some(Ok(Some(d))) => batch.push(d),
            Some(Ok(None) | Err(_)) => return true,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use std::{net::UdpSocket, os::fd::RawFd};

    use super::*;

    type Recv = fn(RawFd, &mut Vec<(Bytes, SocketAddr)>) -> io::Result<usize>;
    type Send = fn(RawFd, &[Bytes], Option<SocketAddr>) -> io::Result<usize>;

    /// Every implementation this platform has, named.
    fn implementations() -> Vec<(&'static str, Recv, Send)> {
        #[allow(unused_mut)]
        let mut all: Vec<(&'static str, Recv, Send)> = vec![("single", single::recv, single::send)];
        #[cfg(target_os = "linux")]
        all.push(("mmsg", mmsg::recv, mmsg::send));
        all
    }

    fn pair() -> (UdpSocket, UdpSocket) {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        // Room for a burst of large datagrams.
        crate::udp_buffers::enlarge(&b);
        (a, b)
    }

    #[test]
    fn a_burst_arrives_in_batches_with_sizes_and_senders_intact() {
        for (name, recv, _) in implementations() {
            let (a, b) = pair();
            let fd = b.as_raw_fd();
            // Sizes from empty to the largest a slot holds, more than one batch.
            let sizes: Vec<usize> = (0..BATCH + 5).map(|i| [0, 1, 1400, 9000, 65_507][i % 5]).collect();
            for (i, &n) in sizes.iter().enumerate() {
                a.send_to(&vec![i as u8; n], b.local_addr().unwrap()).unwrap();
            }
            let mut got = Vec::new();
            let first = recv(fd, &mut got).unwrap();
            assert_eq!(first, BATCH, "{name}: a full batch while more wait");
            let rest = recv(fd, &mut got).unwrap();
            assert_eq!(rest, 5, "{name}");
            assert_eq!(recv(fd, &mut got).unwrap_err().kind(), io::ErrorKind::WouldBlock, "{name}");
            assert_eq!(got.len(), sizes.len(), "{name}");
            for (i, ((payload, from), &n)) in got.iter().zip(&sizes).enumerate() {
                assert_eq!(payload.len(), n, "{name}: datagram {i}");
                assert!(payload.iter().all(|&x| x == i as u8), "{name}: datagram {i}'s bytes");
                assert_eq!(*from, a.local_addr().unwrap(), "{name}");
            }
        }
    }

    #[test]
    fn a_batch_goes_out_in_order_to_an_address_or_the_connected_peer() {
        for (name, _, send) in implementations() {
            let (a, b) = pair();
            let fd = a.as_raw_fd();
            b.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
            let datagrams: Vec<Bytes> = (0..BATCH as u8 + 3).map(|i| Bytes::from(vec![i; 100 + i as usize])).collect();
            let sent = send(fd, &datagrams, Some(b.local_addr().unwrap())).unwrap();
            assert_eq!(sent, BATCH, "{name}: one call sends at most a batch");
            a.connect(b.local_addr().unwrap()).unwrap();
            assert_eq!(send(fd, &datagrams[sent..], None).unwrap(), 3, "{name}");
            let mut buf = [0u8; 1024];
            for d in &datagrams {
                let n = b.recv(&mut buf).unwrap();
                assert_eq!(&buf[..n], &d[..], "{name}");
            }
            assert_eq!(send(fd, &[], None).unwrap(), 0, "{name}");
        }
    }

    #[test]
    fn an_empty_socket_would_block() {
        for (name, recv, _) in implementations() {
            let (_, b) = pair();
            let mut got = Vec::new();
            assert_eq!(recv(b.as_raw_fd(), &mut got).unwrap_err().kind(), io::ErrorKind::WouldBlock, "{name}");
            assert!(got.is_empty(), "{name}");
        }
    }

    #[test]
    fn the_public_calls_use_this_process_s_implementation() {
        let (a, b) = pair();
        send(&a, &[Bytes::from_static(b"hi")], Some(b.local_addr().unwrap())).unwrap();
        let mut got = Vec::new();
        let n = recv(&b, &mut got).unwrap();
        assert_eq!((n, &got[0].0[..]), (1, &b"hi"[..]));
    }
}
