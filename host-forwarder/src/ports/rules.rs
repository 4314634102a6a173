//! Lima's `portForwards` rules: the same keys, defaults and first-match
//! order, so a lima.yaml keeps its meaning under ferry (pure logic).
//!
//! The effective list is: ignore guest port 22 on every IP, ignore the
//! instance's SSH local port (when known), the user's rules in order, then
//! the fallback rule that forwards 127.0.0.1 / ::1 / wildcard listeners on
//! every port to the host's 127.0.0.1 at the same port.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
};

use ferry_protocol::{Listener, PortRange, Proto};
use serde::Deserialize;

/// One `portForwards` entry as written (Lima's keys; everything optional).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RuleSpec {
    /// The guest address a listener must have (default 127.0.0.1).
    #[serde(rename = "guestIP")]
    pub guest_ip: Option<IpAddr>,
    /// With guestIP 0.0.0.0: match only wildcard listeners (default: true
    /// exactly when guestIP is given as 0.0.0.0).
    #[serde(rename = "guestIPMustBeZero")]
    pub guest_ip_must_be_zero: Option<bool>,
    /// A single guest port (0: unset).
    #[serde(rename = "guestPort")]
    pub guest_port: u16,
    /// An inclusive guest port range.
    #[serde(rename = "guestPortRange")]
    pub guest_port_range: Option<[u16; 2]>,
    /// A guest Unix socket path (socket rules; never matches a port).
    #[serde(rename = "guestSocket")]
    pub guest_socket: Option<String>,
    /// The host address to listen on (default 127.0.0.1).
    #[serde(rename = "hostIP")]
    pub host_ip: Option<IpAddr>,
    /// A single host port (0: unset).
    #[serde(rename = "hostPort")]
    pub host_port: u16,
    /// An inclusive host port range, as long as the guest range.
    #[serde(rename = "hostPortRange")]
    pub host_port_range: Option<[u16; 2]>,
    /// A host Unix socket path; relative paths live under the socket directory.
    #[serde(rename = "hostSocket")]
    pub host_socket: Option<String>,
    /// tcp, udp or any (default any).
    pub proto: Option<String>,
    /// Do not forward what this rule matches.
    pub ignore: bool,
    /// Socket rules only: serve the host socket inside the guest.
    pub reverse: bool,
    /// Forward at start-up whether or not the guest listens (Lima's `static`).
    #[serde(rename = "static")]
    pub is_static: bool,
}

/// Which protocols a rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtoMatch {
    /// TCP only.
    Tcp,
    /// UDP only.
    Udp,
    /// Both.
    Any,
}

impl ProtoMatch {
    fn covers(self, p: Proto) -> bool {
        matches!((self, p), (Self::Any, _) | (Self::Tcp, Proto::Tcp) | (Self::Udp, Proto::Udp))
    }
}

/// The most ports one `static` rule may cover (each is a host listener).
pub const MAX_STATIC_PORTS: u16 = 1024;

/// A rule with Lima's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Guest address to match.
    pub guest_ip: IpAddr,
    /// See [`RuleSpec::guest_ip_must_be_zero`].
    pub guest_ip_must_be_zero: bool,
    /// Inclusive guest port range.
    pub guest_ports: (u16, u16),
    /// Guest Unix socket (socket rules).
    pub guest_socket: Option<String>,
    /// Host address to listen on.
    pub host_ip: IpAddr,
    /// Inclusive host port range.
    pub host_ports: (u16, u16),
    /// Host Unix socket (absolute after defaults).
    pub host_socket: Option<PathBuf>,
    /// Protocols covered.
    pub proto: ProtoMatch,
    /// An ignore rule.
    pub ignore: bool,
    /// A reverse socket rule.
    pub reverse: bool,
    /// A static rule.
    pub is_static: bool,
}

impl Rule {
    /// Applies Lima's defaults to `spec`; relative host sockets go under
    /// `socket_dir`. Errors name what is wrong.
    pub fn from_spec(spec: &RuleSpec, socket_dir: &std::path::Path) -> Result<Self, String> {
        let proto = match spec.proto.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("any") => ProtoMatch::Any,
            Some("tcp") => ProtoMatch::Tcp,
            Some("udp") => ProtoMatch::Udp,
            Some(other) => return Err(format!("proto {other:?} is not tcp, udp or any")),
        };
        let must_be_zero = spec.guest_ip_must_be_zero.unwrap_or(spec.guest_ip == Some(Ipv4Addr::UNSPECIFIED.into()));
        let guest_ip = spec.guest_ip.unwrap_or(if must_be_zero {
            Ipv4Addr::UNSPECIFIED.into()
        } else {
            Ipv4Addr::LOCALHOST.into()
        });
        let guest_ports = match (spec.guest_port_range, spec.guest_port) {
            (Some([a, b]), _) => (a, b),
            (None, 0) => (1, 65535),
            (None, p) => (p, p),
        };
        let host_ports = match (spec.host_port_range, spec.host_port) {
            (Some([a, b]), _) => (a, b),
            (None, 0) => guest_ports,
            (None, p) => (p, p),
        };
        let socket_rule = spec.guest_socket.is_some();
        if !socket_rule {
            for (name, (a, b)) in [("guestPortRange", guest_ports), ("hostPortRange", host_ports)] {
                if a == 0 || a > b {
                    return Err(format!("{name} [{a}, {b}] is not a valid range of ports 1-65535"));
                }
            }
            if !spec.ignore && guest_ports.1 - guest_ports.0 != host_ports.1 - host_ports.0 {
                return Err(format!(
                    "hostPortRange [{}, {}] and guestPortRange [{}, {}] differ in length",
                    host_ports.0, host_ports.1, guest_ports.0, guest_ports.1
                ));
            }
        }
        if spec.is_static && !spec.ignore && !socket_rule && guest_ports.1 - guest_ports.0 >= MAX_STATIC_PORTS {
            return Err(format!(
                "a static rule listens on every port of its range at once; [{}, {}] is more than {MAX_STATIC_PORTS} ports",
                guest_ports.0, guest_ports.1
            ));
        }
        if spec.reverse && !socket_rule {
            return Err("reverse applies to socket rules (guestSocket and hostSocket) only".into());
        }
        let host_socket = spec.host_socket.as_ref().map(|s| {
            let p = PathBuf::from(s);
            if p.is_absolute() {
                p
            } else {
                socket_dir.join(p)
            }
        });
        Ok(Self {
            guest_ip,
            guest_ip_must_be_zero: must_be_zero,
            guest_ports,
            guest_socket: spec.guest_socket.clone(),
            host_ip: spec.host_ip.unwrap_or(Ipv4Addr::LOCALHOST.into()),
            host_ports,
            host_socket,
            proto,
            ignore: spec.ignore,
            reverse: spec.reverse,
            is_static: spec.is_static,
        })
    }

    /// Lima's leading rule that keeps an SSH port unforwarded on every IP.
    fn ignore_port(port: u16) -> Self {
        let spec = RuleSpec {
            guest_ip: Some(Ipv4Addr::UNSPECIFIED.into()),
            guest_ip_must_be_zero: Some(false),
            guest_port: port,
            ignore: true,
            ..RuleSpec::default()
        };
        Self::from_spec(&spec, std::path::Path::new("/")).expect("a valid built-in rule")
    }

    /// Whether the guest address `ip` satisfies this rule (Lima's four cases).
    fn matches_ip(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_unspecified()
            || ip == self.guest_ip.to_canonical()
            || (ip == IpAddr::V6(Ipv6Addr::LOCALHOST) && self.guest_ip == IpAddr::V4(Ipv4Addr::LOCALHOST))
            || (self.guest_ip.is_unspecified() && !self.guest_ip_must_be_zero)
    }
}

/// What the rules say about one guest listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Forward from this host address (rule index in the effective list).
    Forward {
        /// Host address to listen on.
        host: SocketAddr,
        /// Index of the deciding rule in [`RuleSet::rules`].
        rule: usize,
    },
    /// Forward from a host Unix socket (a port to socket rule).
    HostSocket {
        /// The host socket path.
        path: PathBuf,
        /// Index of the deciding rule.
        rule: usize,
    },
    /// An ignore rule matched.
    Ignored {
        /// Index of the deciding rule.
        rule: usize,
    },
    /// No rule matched (for example a listener on a guest-only IP).
    Unmatched,
}

/// The effective, ordered rule list.
#[derive(Debug, Clone)]
pub struct RuleSet {
    rules: Vec<Rule>,
    /// How many rules precede the user's (the SSH ignores).
    leading: usize,
}

impl Default for RuleSet {
    /// The rules of an instance without `portForwards`.
    fn default() -> Self {
        Self::new(Vec::new(), None)
    }
}

impl RuleSet {
    /// The effective list around the user's `rules`; `ssh_local_port` is
    /// the host port of the instance's SSH, when known.
    pub fn new(rules: Vec<Rule>, ssh_local_port: Option<u16>) -> Self {
        let mut all = vec![Rule::ignore_port(22)];
        all.extend(ssh_local_port.map(Rule::ignore_port));
        let leading = all.len();
        all.extend(rules);
        all.push(Rule::from_spec(&RuleSpec::default(), std::path::Path::new("/")).expect("the fallback rule is valid"));
        Self { rules: all, leading }
    }

    /// Every rule, in matching order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The user's rules (without the leading ignores and the fallback).
    pub fn user_rules(&self) -> &[Rule] {
        &self.rules[self.leading..self.rules.len() - 1]
    }

    /// The guest listeners that `static` rules forward whether or not the
    /// guest listens: each port of the rule's range, on its guest IP, for
    /// each protocol it covers.
    pub fn static_listeners(&self) -> Vec<Listener> {
        let mut out = Vec::new();
        for rule in self.user_rules().iter().filter(|r| r.is_static && !r.ignore && r.guest_socket.is_none()) {
            for proto in [Proto::Tcp, Proto::Udp].into_iter().filter(|p| rule.proto.covers(*p)) {
                for port in rule.guest_ports.0..=rule.guest_ports.1 {
                    out.push(Listener { proto, addr: SocketAddr::new(rule.guest_ip, port) });
                }
            }
        }
        out
    }

    /// First match wins; an ignore rule for a specific IP lets a wildcard
    /// listener fall through to later rules.
    pub fn decide(&self, l: &Listener) -> Decision {
        let (ip, port) = (l.addr.ip(), l.addr.port());
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.guest_socket.is_some()
                || !rule.proto.covers(l.proto)
                || !(rule.guest_ports.0..=rule.guest_ports.1).contains(&port)
                || !rule.matches_ip(ip)
            {
                continue;
            }
            if rule.ignore {
                if ip.is_unspecified() && !rule.guest_ip.is_unspecified() {
                    continue;
                }
                return Decision::Ignored { rule: i };
            }
            if let Some(path) = &rule.host_socket {
                return Decision::HostSocket { path: path.clone(), rule: i };
            }
            let host_port = (port as u32 + rule.host_ports.0 as u32 - rule.guest_ports.0 as u32) as u16;
            return Decision::Forward { host: SocketAddr::new(rule.host_ip, host_port), rule: i };
        }
        Decision::Unmatched
    }

    /// UDP ports that the user's rules name explicitly (not by the whole
    /// range), which the agent then reports even if it would skip them.
    pub fn udp_wanted(&self) -> Vec<PortRange> {
        self.user_rules()
            .iter()
            .filter(|r| !r.ignore && r.guest_socket.is_none() && r.proto != ProtoMatch::Tcp)
            .filter(|r| r.guest_ports != (1, 65535))
            .map(|r| PortRange { first: r.guest_ports.0, last: r.guest_ports.1 })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(yaml: &str) -> Rule {
        let spec: RuleSpec = serde_saphyr::from_str(yaml).unwrap();
        Rule::from_spec(&spec, std::path::Path::new("/inst/sock")).unwrap()
    }

    fn rule_err(yaml: &str) -> String {
        let spec: RuleSpec = serde_saphyr::from_str(yaml).unwrap();
        Rule::from_spec(&spec, std::path::Path::new("/inst/sock")).unwrap_err()
    }

    fn tcp(s: &str) -> Listener {
        Listener { proto: Proto::Tcp, addr: s.parse().unwrap() }
    }

    fn udp(s: &str) -> Listener {
        Listener { proto: Proto::Udp, addr: s.parse().unwrap() }
    }

    fn fwd(host: &str, rule: usize) -> Decision {
        Decision::Forward { host: host.parse().unwrap(), rule }
    }

    #[test]
    fn static_rules_name_their_listeners_whatever_the_guest_does() {
        let set = RuleSet::new(
            vec![
                rule("{guestPort: 8080, hostPort: 9090, static: true, proto: tcp}"),
                rule("{guestIP: 0.0.0.0, guestPortRange: [53, 54], static: true}"),
                rule("{guestPort: 7000, static: true, ignore: true}"),
                rule("{guestPort: 7001}"),
            ],
            None,
        );
        assert_eq!(
            set.static_listeners(),
            vec![tcp("127.0.0.1:8080"), tcp("0.0.0.0:53"), tcp("0.0.0.0:54"), udp("0.0.0.0:53"), udp("0.0.0.0:54")]
        );
        // They are forwarded by the usual first match.
        assert_eq!(set.decide(&tcp("127.0.0.1:8080")), fwd("127.0.0.1:9090", 1));
        // A static range is a listener per port: bounded.
        assert!(rule_err("{guestPortRange: [1, 65535], static: true}").contains("static"));
    }

    #[test]
    fn defaults_follow_lima() {
        let r = rule("{}");
        assert_eq!(r.guest_ip, IpAddr::from([127, 0, 0, 1]));
        assert!(!r.guest_ip_must_be_zero);
        assert_eq!((r.guest_ports, r.host_ports), ((1, 65535), (1, 65535)));
        assert_eq!((r.host_ip, r.proto), (IpAddr::from([127, 0, 0, 1]), ProtoMatch::Any));
        // guestIP 0.0.0.0 given explicitly: must be zero unless said otherwise.
        assert!(rule("guestIP: 0.0.0.0").guest_ip_must_be_zero);
        assert!(!rule("{guestIP: 0.0.0.0, guestIPMustBeZero: false}").guest_ip_must_be_zero);
        // guestIPMustBeZero alone: guestIP defaults to 0.0.0.0.
        assert_eq!(rule("guestIPMustBeZero: true").guest_ip, IpAddr::from([0, 0, 0, 0]));
        // a single port sets both ranges; hostPort overrides the host range.
        let r = rule("{guestPort: 8080, hostPort: 9090}");
        assert_eq!((r.guest_ports, r.host_ports), ((8080, 8080), (9090, 9090)));
        assert_eq!(rule("guestPort: 80").host_ports, (80, 80));
        assert_eq!(rule("proto: UDP").proto, ProtoMatch::Udp);
        assert_eq!(
            rule("{guestSocket: /run/x.sock, hostSocket: x.sock}").host_socket,
            Some("/inst/sock/x.sock".into())
        );
        assert_eq!(rule("{guestSocket: /a, hostSocket: /b}").host_socket, Some("/b".into()));
    }

    #[test]
    fn invalid_rules_are_explained() {
        assert!(rule_err("proto: sctp").contains("sctp"));
        assert!(rule_err("guestPortRange: [10, 5]").contains("guestPortRange"));
        assert!(rule_err("{guestPortRange: [10, 20], hostPortRange: [10, 11]}").contains("differ"));
        assert!(rule_err("{guestPort: 80, reverse: true}").contains("socket rules"));
    }

    #[test]
    fn ssh_ports_are_ignored_on_every_ip() {
        let set = RuleSet::new(vec![], Some(60022));
        for l in ["127.0.0.1:22", "0.0.0.0:22", "[::]:22", "10.0.2.15:22", "127.0.0.1:60022"] {
            assert!(matches!(set.decide(&tcp(l)), Decision::Ignored { .. }), "{l}");
        }
    }

    #[test]
    fn fallback_forwards_loopback_and_wildcards_only() {
        let set = RuleSet::default();
        let last = set.rules().len() - 1;
        assert_eq!(set.decide(&tcp("127.0.0.1:80")), fwd("127.0.0.1:80", last));
        assert_eq!(set.decide(&tcp("[::1]:80")), fwd("127.0.0.1:80", last));
        assert_eq!(set.decide(&tcp("0.0.0.0:80")), fwd("127.0.0.1:80", last));
        assert_eq!(set.decide(&tcp("[::]:80")), fwd("127.0.0.1:80", last));
        assert_eq!(set.decide(&udp("0.0.0.0:53")), fwd("127.0.0.1:53", last));
        assert_eq!(set.decide(&tcp("10.0.2.15:80")), Decision::Unmatched);
    }

    #[test]
    fn first_match_wins_and_ports_shift_by_range() {
        let set = RuleSet::new(
            vec![rule("{guestPortRange: [8000, 8009], hostPortRange: [18000, 18009]}"), rule("guestPort: 8005")],
            None,
        );
        assert_eq!(set.decide(&tcp("127.0.0.1:8005")), fwd("127.0.0.1:18005", 1));
    }

    #[test]
    fn proto_filters() {
        let set = RuleSet::new(vec![rule("{proto: udp, guestPort: 53, hostPort: 5353}")], None);
        assert_eq!(set.decide(&udp("127.0.0.1:53")), fwd("127.0.0.1:5353", 1));
        assert_eq!(set.decide(&tcp("127.0.0.1:53")), fwd("127.0.0.1:53", 2));
    }

    #[test]
    fn guest_ip_matching() {
        // a specific guest IP matches only itself ... and wildcard listeners.
        let set = RuleSet::new(vec![rule("{guestIP: 10.0.2.15, guestPort: 80, hostPort: 8080}")], None);
        assert_eq!(set.decide(&tcp("10.0.2.15:80")), fwd("127.0.0.1:8080", 1));
        assert_eq!(set.decide(&tcp("0.0.0.0:80")), fwd("127.0.0.1:8080", 1));
        assert_eq!(set.decide(&tcp("127.0.0.1:80")), fwd("127.0.0.1:80", 2));
        // guestIP 0.0.0.0 with guestIPMustBeZero false matches any IP.
        let any = RuleSet::new(vec![rule("{guestIP: 0.0.0.0, guestIPMustBeZero: false, hostIP: 0.0.0.0}")], None);
        assert_eq!(any.decide(&tcp("10.0.2.15:80")), fwd("0.0.0.0:80", 1));
        // ... and with guestIPMustBeZero true only wildcard listeners.
        let zero = RuleSet::new(vec![rule("{guestIP: 0.0.0.0, hostIP: 0.0.0.0}")], None);
        assert_eq!(zero.decide(&tcp("0.0.0.0:80")), fwd("0.0.0.0:80", 1));
        assert_eq!(zero.decide(&tcp("[::]:80")), fwd("0.0.0.0:80", 1));
        assert_eq!(zero.decide(&tcp("127.0.0.1:80")), fwd("127.0.0.1:80", 2));
        assert_eq!(zero.decide(&tcp("10.0.2.15:80")), Decision::Unmatched);
        // guest ::1 matches a rule for 127.0.0.1, an IPv6 rule matches itself.
        let v6 = RuleSet::new(vec![rule("{guestIP: '::1', guestPort: 81, hostPort: 8181}")], None);
        assert_eq!(v6.decide(&tcp("[::1]:81")), fwd("127.0.0.1:8181", 1));
    }

    #[test]
    fn ignore_rules_stop_matching_except_for_wildcards_under_specific_ips() {
        let set = RuleSet::new(vec![rule("{guestPort: 9000, ignore: true}")], None);
        assert_eq!(set.decide(&tcp("127.0.0.1:9000")), Decision::Ignored { rule: 1 });
        // the ignore names 127.0.0.1, so a 0.0.0.0 listener falls through.
        assert_eq!(set.decide(&tcp("0.0.0.0:9000")), fwd("127.0.0.1:9000", 2));
        let all =
            RuleSet::new(vec![rule("{guestIP: 0.0.0.0, guestIPMustBeZero: false, proto: tcp, ignore: true}")], None);
        assert_eq!(all.decide(&tcp("0.0.0.0:9000")), Decision::Ignored { rule: 1 });
        assert_eq!(all.decide(&tcp("127.0.0.1:9000")), Decision::Ignored { rule: 1 });
        assert_eq!(all.decide(&udp("127.0.0.1:9000")), fwd("127.0.0.1:9000", 2));
    }

    #[test]
    fn socket_rules_never_match_ports_and_host_sockets_are_targets() {
        let set = RuleSet::new(
            vec![
                rule("{guestSocket: /run/docker.sock, hostSocket: docker.sock}"),
                rule("{guestPort: 2375, hostSocket: d.sock}"),
            ],
            None,
        );
        assert_eq!(
            set.decide(&tcp("127.0.0.1:2375")),
            Decision::HostSocket { path: "/inst/sock/d.sock".into(), rule: 2 }
        );
        assert_eq!(set.decide(&tcp("127.0.0.1:80")), fwd("127.0.0.1:80", 3));
    }

    #[test]
    fn udp_wanted_lists_explicit_udp_ports_only() {
        let set = RuleSet::new(
            vec![
                rule("{proto: udp, guestPort: 5353}"),
                rule("{guestPortRange: [40000, 40010]}"),
                rule("{proto: tcp, guestPort: 7}"),
                rule("{proto: udp, guestPort: 68, ignore: true}"),
                rule("{proto: udp}"),
            ],
            None,
        );
        assert_eq!(
            set.udp_wanted(),
            vec![PortRange { first: 5353, last: 5353 }, PortRange { first: 40000, last: 40010 }]
        );
    }
}
