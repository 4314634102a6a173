//! Batched UDP I/O: several datagrams per system call, with recvmmsg(2) and
//! sendmmsg(2).
//!
//! A relay makes a receive and a send per datagram, and one flow is one
//! task, so at about 100,000 datagrams a second those calls are its limit:
//! the flow's credit runs out and datagrams are dropped while CPUs idle.
//! Under load datagrams queue up, and these calls move up to [`BATCH`] of
//! them at once; with one datagram waiting they cost what recv/send cost.

use std::{cell::RefCell, io, mem, net::SocketAddr, os::fd::AsRawFd};

use bytes::Bytes;
use socket2::{SockAddr, SockAddrStorage};

use crate::stream::{StreamReader, MAX_DATAGRAM};

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
    SLOTS.with_borrow_mut(|slots| {
        slots.reserve_exact(BATCH * MAX_DATAGRAM);
        let base = slots.as_mut_ptr();
        let mut names: [SockAddrStorage; BATCH] = std::array::from_fn(|_| SockAddrStorage::zeroed());
        // SAFETY: all-zero is a valid value of these plain C structs.
        let mut iovs: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
        for (i, (iov, (hdr, name))) in iovs.iter_mut().zip(hdrs.iter_mut().zip(names.iter_mut())).enumerate() {
            // SAFETY: slot i lies within the capacity reserved above.
            iov.iov_base = unsafe { base.add(i * MAX_DATAGRAM) }.cast();
            iov.iov_len = MAX_DATAGRAM;
            hdr.msg_hdr.msg_iov = iov;
            hdr.msg_hdr.msg_iovlen = 1;
            hdr.msg_hdr.msg_namelen = name.size_of();
            hdr.msg_hdr.msg_name = (name as *mut SockAddrStorage).cast();
        }
        // SAFETY: every header points at live buffers of the stated sizes.
        let n = unsafe {
            libc::recvmmsg(socket.as_raw_fd(), hdrs.as_mut_ptr(), BATCH as _, libc::MSG_DONTWAIT, std::ptr::null_mut())
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        for (i, (hdr, name)) in hdrs.iter().zip(names).take(n as usize).enumerate() {
            let len = (hdr.msg_len as usize).min(MAX_DATAGRAM);
            // SAFETY: the kernel wrote `len` bytes at the start of slot i.
            let payload = unsafe { std::slice::from_raw_parts(base.add(i * MAX_DATAGRAM), len) };
            // SAFETY: the kernel filled the name as a socket address of that length.
            let from = unsafe { SockAddr::new(name, hdr.msg_hdr.msg_namelen) };
            // An inet UDP socket's senders are inet addresses; anything else is skipped.
            if let Some(from) = from.as_socket() {
                out.push((Bytes::copy_from_slice(payload), from));
            }
        }
        Ok(n as usize)
    })
}

/// Sends the first [`BATCH`] or fewer of `datagrams`, to `to` or, when
/// `None`, to the socket's connected peer, without blocking. Returns how
/// many went before the socket refused one; fails (`WouldBlock` when the
/// socket is full) only if the first could not go.
pub fn send(socket: &impl AsRawFd, datagrams: &[Bytes], to: Option<SocketAddr>) -> io::Result<usize> {
    let to = to.map(SockAddr::from);
    let count = datagrams.len().min(BATCH);
    if count == 0 {
        return Ok(0);
    }
    // SAFETY: all-zero is a valid value of these plain C structs.
    let mut iovs: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
    for ((iov, hdr), datagram) in iovs.iter_mut().zip(hdrs.iter_mut()).zip(datagrams) {
        // The kernel only reads through this pointer.
        iov.iov_base = datagram.as_ptr() as *mut libc::c_void;
        iov.iov_len = datagram.len();
        hdr.msg_hdr.msg_iov = iov;
        hdr.msg_hdr.msg_iovlen = 1;
        if let Some(to) = &to {
            hdr.msg_hdr.msg_name = to.as_ptr() as *mut libc::c_void;
            hdr.msg_hdr.msg_namelen = to.len();
        }
    }
    // SAFETY: the first `count` headers point at live buffers of the stated sizes.
    let n = unsafe {
        libc::sendmmsg(socket.as_raw_fd(), hdrs.as_mut_ptr(), count as _, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
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
    use std::net::UdpSocket;

    use super::*;

    fn pair() -> (UdpSocket, UdpSocket) {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        // Room for a burst of large datagrams.
        crate::udp_buffers::enlarge(&b);
        (a, b)
    }

    #[test]
    fn a_burst_arrives_in_batches_with_sizes_and_senders_intact() {
        let (a, b) = pair();
        // Sizes from empty to the largest a slot holds, more than one batch.
        let sizes: Vec<usize> = (0..BATCH + 5).map(|i| [0, 1, 1400, 9000, 65_507][i % 5]).collect();
        for (i, &n) in sizes.iter().enumerate() {
            a.send_to(&vec![i as u8; n], b.local_addr().unwrap()).unwrap();
        }
        let mut got = Vec::new();
        let first = recv(&b, &mut got).unwrap();
        assert_eq!(first, BATCH, "a full batch while more wait");
        let rest = recv(&b, &mut got).unwrap();
        assert_eq!(rest, 5);
        assert_eq!(recv(&b, &mut got).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        assert_eq!(got.len(), sizes.len());
        for (i, ((payload, from), &n)) in got.iter().zip(&sizes).enumerate() {
            assert_eq!(payload.len(), n, "datagram {i}");
            assert!(payload.iter().all(|&x| x == i as u8), "datagram {i}'s bytes");
            assert_eq!(*from, a.local_addr().unwrap());
        }
    }

    #[test]
    fn a_batch_goes_out_in_order_to_an_address_or_the_connected_peer() {
        let (a, b) = pair();
        b.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let datagrams: Vec<Bytes> = (0..BATCH as u8 + 3).map(|i| Bytes::from(vec![i; 100 + i as usize])).collect();
        let sent = send(&a, &datagrams, Some(b.local_addr().unwrap())).unwrap();
        assert_eq!(sent, BATCH, "one call sends at most a batch");
        a.connect(b.local_addr().unwrap()).unwrap();
        assert_eq!(send(&a, &datagrams[sent..], None).unwrap(), 3);
        let mut buf = [0u8; 1024];
        for d in &datagrams {
            let n = b.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], &d[..]);
        }
        assert_eq!(send(&a, &[], None).unwrap(), 0);
    }

    #[test]
    fn an_empty_socket_would_block() {
        let (_, b) = pair();
        let mut got = Vec::new();
        assert_eq!(recv(&b, &mut got).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        assert!(got.is_empty());
    }
}
