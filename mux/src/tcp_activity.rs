//! How many bytes a TCP connection has moved, as its kernel counts them:
//! received, and sent (acknowledged, on Linux). The ssh ControlMaster route reads
//! it to tell the connections it carries that move bulk from those that
//! sit idle or exchange a few messages (it never sees the bytes the master
//! reads from the client itself).

use std::os::fd::{AsRawFd, BorrowedFd};

/// Bytes `socket` (a TCP socket) has received plus those it sent (those
/// the peer acknowledged on Linux, `tcpi_bytes_acked`; all sent on macOS,
/// `tcpi_txbytes`); `None` where the kernel cannot say (not TCP, an old
/// kernel).
pub fn bytes_moved(socket: BorrowedFd<'_>) -> Option<u64> {
    platform::bytes_moved(socket.as_raw_fd())
}

#[cfg(target_os = "linux")]
mod platform {
    use std::{mem, os::fd::RawFd};

    pub fn bytes_moved(fd: RawFd) -> Option<u64> {
        // SAFETY: tcp_info is plain old data; all zeroes is a valid value.
        let mut info: libc::tcp_info = unsafe { mem::zeroed() };
        let mut len = mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: getsockopt(2) writes at most `len` bytes into `info`,
        // which is that large, and sets `len` to what it wrote.
        let rc = unsafe {
            libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, std::ptr::addr_of_mut!(info).cast(), &mut len)
        };
        // Kernels before 4.1 write a shorter struct, without the byte counts.
        let needed = mem::offset_of!(libc::tcp_info, tcpi_bytes_received) + mem::size_of::<u64>();
        (rc == 0 && len as usize >= needed).then(|| info.tcpi_bytes_received + info.tcpi_bytes_acked)
    }
}

#[cfg(target_os = "macos")]
mod platform {
    use std::{mem, os::fd::RawFd};

    pub fn bytes_moved(fd: RawFd) -> Option<u64> {
        // SAFETY: tcp_connection_info is plain old data; all zeroes is valid.
        let mut info: libc::tcp_connection_info = unsafe { mem::zeroed() };
        let mut len = mem::size_of::<libc::tcp_connection_info>() as libc::socklen_t;
        // SAFETY: getsockopt(2) writes at most `len` bytes into `info`,
        // which is that large, and sets `len` to what it wrote.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_CONNECTION_INFO,
                std::ptr::addr_of_mut!(info).cast(),
                &mut len,
            )
        };
        let needed = mem::offset_of!(libc::tcp_connection_info, tcpi_rxbytes) + mem::size_of::<u64>();
        (rc == 0 && len as usize >= needed).then(|| info.tcpi_rxbytes + info.tcpi_txbytes)
    }
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
mod platform {
    pub fn bytes_moved(_fd: std::os::fd::RawFd) -> Option<u64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::{TcpListener, TcpStream},
        os::fd::AsFd,
    };

    use super::*;

    #[test]
    fn counts_what_a_connection_received_and_sent() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut server, _) = l.accept().unwrap();
        assert_eq!(bytes_moved(server.as_fd()), Some(0));
        client.write_all(&[7u8; 1000]).unwrap();
        let mut buf = [0u8; 1000];
        server.read_exact(&mut buf).unwrap();
        server.write_all(&buf[..300]).unwrap();
        client.read_exact(&mut buf[..300]).unwrap();
        // The acknowledgement of the 300 bytes may lag a moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while bytes_moved(server.as_fd()) != Some(1300) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(bytes_moved(server.as_fd()), Some(1300));
        let pipe = std::os::unix::net::UnixStream::pair().unwrap().0;
        assert_eq!(bytes_moved(pipe.as_fd()), None, "not a TCP socket");
    }
}
