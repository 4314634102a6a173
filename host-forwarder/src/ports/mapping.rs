//! Which host addresses to open for a set of guest listeners (pure logic).
//!
//! The rules ([`RuleSet`]) decide whether a listener is forwarded and to
//! which host address. Beyond Lima, a wildcard or IPv6 guest listener is
//! published on both host loopbacks: a rule's host 127.0.0.1 adds ::1, and
//! 0.0.0.0 adds ::. Each host address dials the guest listener of its own
//! family when there is one, so `[::1]:p` reaches an IPv6 server and
//! `127.0.0.1:p` an IPv4 one.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use ferry_protocol::{Listener, Proto};

use super::rules::{Decision, RuleSet};

/// Where a host binding's connections go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    /// The guest address to connect to.
    pub guest: SocketAddr,
    /// The guest listener that caused the binding.
    pub listener: Listener,
}

/// (protocol, host address) -> its binding.
pub type Bindings = BTreeMap<(Proto, SocketAddr), Binding>;

/// The outcome for a whole port set.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Host addresses to listen on.
    pub bindings: Bindings,
    /// Guest listeners that get no host address, with the reason.
    pub skipped: Vec<(Listener, Decision)>,
}

/// The plan for `guest` listeners under `rules`.
pub fn plan(guest: &BTreeSet<Listener>, rules: &RuleSet) -> Plan {
    let mut out = Plan::default();
    // IPv4 guest listeners first, so that they win IPv4 host addresses.
    let mut sorted: Vec<&Listener> = guest.iter().collect();
    sorted.sort_by_key(|l| l.addr.is_ipv6());
    for l in sorted {
        let host = match rules.decide(l) {
            Decision::Forward { host, .. } => host,
            other => {
                out.skipped.push((*l, other));
                continue;
            }
        };
        let ip = l.addr.ip();
        let binding = Binding { guest: dial_addr(l.addr), listener: *l };
        out.bindings.entry((l.proto, host)).or_insert(binding);
        if let Some(v6) = v6_twin(host.ip()).filter(|_| ip.is_ipv6() || ip.is_unspecified()) {
            let slot = out.bindings.entry((l.proto, SocketAddr::new(v6, host.port()))).or_insert(binding);
            if ip.is_ipv6() {
                *slot = binding;
            }
        }
    }
    out
}

/// Where the agent reaches a guest listener: its own address, or loopback
/// of the same family for a wildcard.
pub fn dial_addr(listener: SocketAddr) -> SocketAddr {
    let ip = match listener.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    };
    SocketAddr::new(ip, listener.port())
}

/// The IPv6 address that goes with an IPv4 host address, for dual-stack publishing.
fn v6_twin(host: IpAddr) -> Option<IpAddr> {
    match host {
        IpAddr::V4(v4) if v4.is_loopback() => Some(Ipv6Addr::LOCALHOST.into()),
        IpAddr::V4(v4) if v4.is_unspecified() => Some(Ipv6Addr::UNSPECIFIED.into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::rules::{Rule, RuleSpec};

    fn tcp(s: &str) -> Listener {
        Listener { proto: Proto::Tcp, addr: s.parse().unwrap() }
    }

    fn bindings(ls: &[&str]) -> BTreeMap<SocketAddr, SocketAddr> {
        let set = ls.iter().map(|s| tcp(s)).collect();
        plan(&set, &RuleSet::default()).bindings.into_iter().map(|((_, h), b)| (h, b.guest)).collect()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn loopback_v4_maps_to_host_v4_only() {
        let b = bindings(&["127.0.0.1:80"]);
        assert_eq!(b, BTreeMap::from([(addr("127.0.0.1:80"), addr("127.0.0.1:80"))]));
    }

    #[test]
    fn wildcard_v4_also_gets_host_v6() {
        let b = bindings(&["0.0.0.0:80"]);
        assert_eq!(b[&addr("127.0.0.1:80")], addr("127.0.0.1:80"));
        assert_eq!(b[&addr("[::1]:80")], addr("127.0.0.1:80"));
    }

    #[test]
    fn v6_listeners_get_both_and_dial_v6() {
        for g in ["[::]:80", "[::1]:80"] {
            let b = bindings(&[g]);
            assert_eq!(b[&addr("127.0.0.1:80")], addr("[::1]:80"), "{g}");
            assert_eq!(b[&addr("[::1]:80")], addr("[::1]:80"), "{g}");
        }
    }

    #[test]
    fn each_family_prefers_its_own_guest_listener() {
        let b = bindings(&["0.0.0.0:80", "[::]:80"]);
        assert_eq!(b[&addr("127.0.0.1:80")], addr("127.0.0.1:80"));
        assert_eq!(b[&addr("[::1]:80")], addr("[::1]:80"));
    }

    #[test]
    fn other_addresses_and_ssh_are_skipped_with_a_reason() {
        let set = [tcp("10.0.2.15:80"), tcp("0.0.0.0:22")].into_iter().collect();
        let p = plan(&set, &RuleSet::default());
        assert!(p.bindings.is_empty());
        assert!(matches!(p.skipped[0].1, Decision::Ignored { rule: 0 }));
        assert_eq!(p.skipped[1].1, Decision::Unmatched);
    }

    #[test]
    fn rules_move_ports_and_host_ips() {
        let spec = RuleSpec {
            guest_port: 80,
            host_port: 8080,
            host_ip: Some("0.0.0.0".parse().unwrap()),
            ..Default::default()
        };
        let rules = RuleSet::new(vec![Rule::from_spec(&spec, "/".as_ref()).unwrap()], None);
        let set = [tcp("[::]:80")].into_iter().collect();
        let hosts: Vec<SocketAddr> = plan(&set, &rules).bindings.keys().map(|k| k.1).collect();
        assert_eq!(hosts, vec![addr("0.0.0.0:8080"), addr("[::]:8080")]);
    }

    #[test]
    fn udp_listeners_get_udp_bindings() {
        let set = [Listener { proto: Proto::Udp, addr: addr("0.0.0.0:53") }].into_iter().collect();
        let p = plan(&set, &RuleSet::default());
        assert!(p.bindings.contains_key(&(Proto::Udp, addr("127.0.0.1:53"))));
    }
}
