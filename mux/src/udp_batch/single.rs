//! Portable: the batch calls as loops of recvfrom(2) / sendto(2), one
//! datagram per system call (macOS has no recvmmsg/sendmmsg).

use std::{io, net::SocketAddr, os::fd::RawFd};

use bytes::Bytes;
use socket2::{SockAddr, SockAddrStorage};

use super::{BATCH, SLOTS};
use crate::stream::MAX_DATAGRAM;

/// See [`super::recv`].
pub(super) fn recv(fd: RawFd, out: &mut Vec<(Bytes, SocketAddr)>) -> io::Result<usize> {
    SLOTS.with_borrow_mut(|slot| {
        // One full-size slot, reused for every datagram of the batch.
        if slot.len() < MAX_DATAGRAM {
            slot.resize(MAX_DATAGRAM, 0);
        }
        let mut got = 0;
        while got < BATCH {
            let mut name = SockAddrStorage::zeroed();
            let mut namelen = name.size_of();
            // SAFETY: the slot is writable for its length and the name
            // storage for `namelen` bytes.
            let n = unsafe {
                libc::recvfrom(
                    fd,
                    slot.as_mut_ptr().cast(),
                    MAX_DATAGRAM,
                    libc::MSG_DONTWAIT,
                    (&mut name as *mut SockAddrStorage).cast(),
                    &mut namelen,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                return if got > 0 && e.kind() == io::ErrorKind::WouldBlock { Ok(got) } else { Err(e) };
            }
            got += 1;
            // SAFETY: the kernel filled the name as a socket address of that length.
            let from = unsafe { SockAddr::new(name, namelen) };
            // An inet UDP socket's senders are inet addresses; anything else is skipped.
            if let Some(from) = from.as_socket() {
                out.push((Bytes::copy_from_slice(&slot[..n as usize]), from));
            }
        }
        Ok(got)
    })
}

/// See [`super::send`].
pub(super) fn send(fd: RawFd, datagrams: &[Bytes], to: Option<SocketAddr>) -> io::Result<usize> {
    let to = to.map(SockAddr::from);
    let (name, namelen) = match &to {
        Some(to) => (to.as_ptr().cast::<libc::sockaddr>(), to.len()),
        None => (std::ptr::null(), 0),
    };
    for (i, datagram) in datagrams.iter().take(BATCH).enumerate() {
        // SAFETY: the datagram is readable for its length; the name is null
        // or a socket address of `namelen` bytes.
        let n =
            unsafe { libc::sendto(fd, datagram.as_ptr().cast(), datagram.len(), libc::MSG_DONTWAIT, name, namelen) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if i > 0 { Ok(i) } else { Err(e) };
        }
    }
    Ok(datagrams.len().min(BATCH))
}
