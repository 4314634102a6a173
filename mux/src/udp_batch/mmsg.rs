//! Linux: a batch of datagrams per recvmmsg(2) / sendmmsg(2).

use std::{io, mem, net::SocketAddr, os::fd::RawFd};

use bytes::Bytes;
use socket2::{SockAddr, SockAddrStorage};

use super::{BATCH, SLOTS};
use crate::stream::MAX_DATAGRAM;

/// See [`super::recv`].
pub(super) fn recv(fd: RawFd, out: &mut Vec<(Bytes, SocketAddr)>) -> io::Result<usize> {
    SLOTS.with_borrow_mut(|slots| {
        slots.reserve_exact(BATCH * MAX_DATAGRAM);
        let base = slots.as_mut_ptr();
        let mut names: [SockAddrStorage; BATCH] = std::array::from_fn(|_| SockAddrStorage::zeroed());
        // SAFETY: all-zero is a valid value of these plain C structs.
        let mut iovs: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
        // SAFETY: as above.
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
        // (The count and flags are unsigned in musl's declaration, signed in
        // glibc's: hence the inferred casts.)
        let n =
            unsafe { libc::recvmmsg(fd, hdrs.as_mut_ptr(), BATCH as _, libc::MSG_DONTWAIT as _, std::ptr::null_mut()) };
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

/// See [`super::send`].
pub(super) fn send(fd: RawFd, datagrams: &[Bytes], to: Option<SocketAddr>) -> io::Result<usize> {
    let to = to.map(SockAddr::from);
    let count = datagrams.len().min(BATCH);
    if count == 0 {
        return Ok(0);
    }
    // SAFETY: all-zero is a valid value of these plain C structs.
    let mut iovs: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
    // SAFETY: as above.
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
    let n =
        unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), count as _, (libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) as _) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}
