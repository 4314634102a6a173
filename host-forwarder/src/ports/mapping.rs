//! Which host addresses to open for a set of guest listeners (pure logic).
//!
//! A guest listener on 127.0.0.1, ::1, 0.0.0.0 or :: is published on the
//! host's 127.0.0.1 at the same port, and on ::1 when the guest listener is
//! IPv6 or a wildcard. Each host address dials the guest listener of its own
//! family when there is one, so `[::1]:p` reaches an IPv6 server and
//! `127.0.0.1:p` an IPv4 one.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use ferry_protocol::{Listener, Proto};

/// Host address -> the guest address its connections are opened to.
pub type Bindings = BTreeMap<SocketAddr, SocketAddr>;

/// The host bindings for `guest` listeners.
pub fn bindings(guest: &BTreeSet<Listener>) -> Bindings {
    let v4_host = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let v6_host = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let mut out = Bindings::new();
    // IPv4 guest listeners first, so that they win the 127.0.0.1 binding.
    let mut sorted: Vec<&Listener> = guest.iter().filter(|l| l.proto == Proto::Tcp).collect();
    sorted.sort_by_key(|l| l.addr.is_ipv6());
    for l in sorted {
        let port = l.addr.port();
        let ip = l.addr.ip();
        if !(ip.is_loopback() || ip.is_unspecified()) {
            continue;
        }
        let target = SocketAddr::new(
            if ip.is_ipv4() { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { IpAddr::V6(Ipv6Addr::LOCALHOST) },
            port,
        );
        out.entry(SocketAddr::new(v4_host, port)).or_insert(target);
        if ip.is_ipv6() || ip.is_unspecified() {
            let v6 = out.entry(SocketAddr::new(v6_host, port)).or_insert(target);
            if ip.is_ipv6() {
                *v6 = target;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(s: &str) -> Listener {
        Listener { proto: Proto::Tcp, addr: s.parse().unwrap() }
    }

    fn set(ls: &[&str]) -> BTreeSet<Listener> {
        ls.iter().map(|s| tcp(s)).collect()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn loopback_v4_maps_to_host_v4_only() {
        let b = bindings(&set(&["127.0.0.1:80"]));
        assert_eq!(b, Bindings::from([(addr("127.0.0.1:80"), addr("127.0.0.1:80"))]));
    }

    #[test]
    fn wildcard_v4_also_gets_host_v6() {
        let b = bindings(&set(&["0.0.0.0:80"]));
        assert_eq!(b[&addr("127.0.0.1:80")], addr("127.0.0.1:80"));
        assert_eq!(b[&addr("[::1]:80")], addr("127.0.0.1:80"));
    }

    #[test]
    fn v6_listeners_get_both_and_dial_v6() {
        for g in ["[::]:80", "[::1]:80"] {
            let b = bindings(&set(&[g]));
            assert_eq!(b[&addr("127.0.0.1:80")], addr("[::1]:80"), "{g}");
            assert_eq!(b[&addr("[::1]:80")], addr("[::1]:80"), "{g}");
        }
    }

    #[test]
    fn each_family_prefers_its_own_guest_listener() {
        let b = bindings(&set(&["0.0.0.0:80", "[::]:80"]));
        assert_eq!(b[&addr("127.0.0.1:80")], addr("127.0.0.1:80"));
        assert_eq!(b[&addr("[::1]:80")], addr("[::1]:80"));
    }

    #[test]
    fn other_addresses_and_udp_are_not_published() {
        let mut s = set(&["10.0.2.15:80", "[fe80::1]:81"]);
        s.insert(Listener { proto: Proto::Udp, addr: addr("0.0.0.0:53") });
        assert!(bindings(&s).is_empty());
    }
}
