//! UDP load: datagrams per second and loss at fixed offered rates, through
//! a guest echo server (so each datagram crosses the path both ways).

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use crate::enter_netns;

/// Starts a UDP echo server on 127.0.0.1:`port` inside namespace `ns`.
pub fn start_echo(ns: &str, port: u16) {
    let ns = ns.to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        enter_netns(&ns);
        let s = UdpSocket::bind(("127.0.0.1", port)).expect("bind guest UDP echo");
        let _ = socket2::SockRef::from(&s).set_recv_buffer_size(4 << 20);
        tx.send(()).unwrap();
        let mut buf = vec![0u8; 65_535];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    });
    rx.recv().expect("UDP echo started");
}

/// What one paced run achieved.
pub struct UdpRun {
    /// Replies received per second.
    pub delivered_per_s: f64,
    /// Fraction of datagrams that got no reply.
    pub loss: f64,
}

/// Sends `size`-byte datagrams to `addr` at `rate` per second for `dur`
/// (from namespace `netns` if given) and counts the echoes.
pub fn paced_echo(addr: SocketAddr, netns: Option<String>, size: usize, rate: u64, dur: Duration) -> UdpRun {
    let received = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let (r2, d2) = (received.clone(), done.clone());
    let handle = std::thread::spawn(move || {
        if let Some(ns) = netns {
            enter_netns(&ns);
        }
        let s = UdpSocket::bind("127.0.0.1:0").expect("client socket");
        let _ = socket2::SockRef::from(&s).set_recv_buffer_size(4 << 20);
        s.connect(addr).expect("connect");
        let rx = s.try_clone().expect("clone");
        rx.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let receiver = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_535];
            while !d2.load(Ordering::Relaxed) {
                if rx.recv(&mut buf).is_ok() {
                    r2.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let payload = vec![0xa5u8; size];
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < dur {
            // Send what the schedule owes by now, in 1 ms steps.
            let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
            while sent < due {
                if s.send(&payload).is_ok() {
                    sent += 1;
                } else {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let elapsed = start.elapsed();
        std::thread::sleep(Duration::from_millis(300)); // stragglers
        (sent, elapsed, receiver)
    });
    let (sent, elapsed, receiver) = handle.join().expect("udp client");
    done.store(true, Ordering::Relaxed);
    receiver.join().expect("udp receiver");
    let got = received.load(Ordering::Relaxed);
    UdpRun {
        delivered_per_s: got as f64 / elapsed.as_secs_f64(),
        loss: if sent == 0 { 1.0 } else { 1.0 - (got.min(sent) as f64 / sent as f64) },
    }
}

/// Datagrams the kernel of one network namespace dropped for want of
/// socket buffer room (`RcvbufErrors` + `SndbufErrors` of /proc/net/snmp),
/// seen from process `pid` (which names its namespace), or from this
/// process; 0 if unreadable.
pub fn kernel_drops(pid: Option<u32>) -> u64 {
    let path = match pid {
        Some(p) => format!("/proc/{p}/net/snmp"),
        None => "/proc/self/net/snmp".into(),
    };
    std::fs::read_to_string(path).map_or(0, |t| snmp_udp_drops(&t))
}

/// `RcvbufErrors` + `SndbufErrors` of the `Udp:` lines of a /proc/net/snmp text.
fn snmp_udp_drops(text: &str) -> u64 {
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else { return 0 };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .filter(|(n, _)| *n == "RcvbufErrors" || *n == "SndbufErrors")
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snmp_drops_add_receive_and_send_buffer_errors() {
        let text = "Ip: Forwarding\nIp: 1\nUdp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
                    Udp: 10 0 7 12 5 2\nUdpLite: InDatagrams RcvbufErrors\nUdpLite: 0 9\n";
        assert_eq!(snmp_udp_drops(text), 7);
        assert!(kernel_drops(None) < u64::MAX);
    }
}
