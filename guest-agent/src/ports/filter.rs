//! Which discovered UDP sockets are worth reporting.
//!
//! A bound, unconnected UDP socket is either a server or a client that
//! sends with `sendto` from an ephemeral port. Lima reports both, so host
//! ports churn and even the DHCP client's UDP 68 gets forwarded. The agent
//! skips ports in the kernel's ephemeral range and a list of well-known
//! client and system ports, unless the host's rules name them explicitly.
//! TCP listeners are always reported.

use std::{collections::BTreeSet, ops::RangeInclusive};

use ferry_protocol::{Listener, PortRange, Proto};

/// The kernel's default ephemeral range, used if /proc cannot be read.
const DEFAULT_EPHEMERAL: RangeInclusive<u16> = 32768..=60999;

/// The agent's reporting policy for UDP sockets.
#[derive(Debug, Clone)]
pub struct UdpFilter {
    ephemeral: RangeInclusive<u16>,
    ignore: BTreeSet<u16>,
    wanted: Vec<PortRange>,
}

impl UdpFilter {
    /// A filter with the guest's ephemeral range and the given ignore list.
    pub fn new(ignore: &[u16]) -> Self {
        Self { ephemeral: ephemeral_range(), ignore: ignore.iter().copied().collect(), wanted: Vec::new() }
    }

    /// Ports the host's rules name explicitly; these are always reported.
    pub fn set_wanted(&mut self, wanted: Vec<PortRange>) {
        self.wanted = wanted;
    }

    /// Whether `l` should be reported to the host.
    pub fn keep(&self, l: &Listener) -> bool {
        let port = l.addr.port();
        match l.proto {
            Proto::Tcp => true,
            Proto::Udp => {
                self.wanted.iter().any(|r| r.contains(port))
                    || !(self.ephemeral.contains(&port) || self.ignore.contains(&port))
            }
        }
    }
}

/// The local port range from /proc/sys/net/ipv4/ip_local_port_range
/// (the kernel applies it to IPv6 too).
fn ephemeral_range() -> RangeInclusive<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| parse_range(&s))
        .unwrap_or(DEFAULT_EPHEMERAL)
}

fn parse_range(s: &str) -> Option<RangeInclusive<u16>> {
    let mut it = s.split_whitespace().map(str::parse::<u16>);
    let (first, last) = (it.next()?.ok()?, it.next()?.ok()?);
    (first <= last).then_some(first..=last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp(port: u16) -> Listener {
        Listener { proto: Proto::Udp, addr: ([0, 0, 0, 0], port).into() }
    }

    fn filter() -> UdpFilter {
        UdpFilter { ephemeral: 32768..=60999, ignore: [68, 5353].into(), wanted: vec![] }
    }

    #[test]
    fn servers_pass_clients_and_system_ports_do_not() {
        let f = filter();
        assert!(f.keep(&udp(53)) && f.keep(&udp(8125)) && f.keep(&udp(61000)));
        assert!(!f.keep(&udp(68)) && !f.keep(&udp(5353)));
        assert!(!f.keep(&udp(32768)) && !f.keep(&udp(45000)) && !f.keep(&udp(60999)));
    }

    #[test]
    fn explicit_rules_win() {
        let mut f = filter();
        f.set_wanted(vec![PortRange { first: 5353, last: 5353 }, PortRange { first: 40000, last: 40010 }]);
        assert!(f.keep(&udp(5353)) && f.keep(&udp(40005)));
        assert!(!f.keep(&udp(40011)) && !f.keep(&udp(68)));
    }

    #[test]
    fn tcp_is_never_filtered() {
        let l = Listener { proto: Proto::Tcp, addr: ([127, 0, 0, 1], 45000).into() };
        assert!(filter().keep(&l));
    }

    #[test]
    fn parses_the_proc_format() {
        assert_eq!(parse_range("32768\t60999\n"), Some(32768..=60999));
        assert_eq!(parse_range("garbage"), None);
        assert_eq!(parse_range("5 4"), None);
    }
}
