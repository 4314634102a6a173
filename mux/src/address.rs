//! The transport address syntax shared by both binaries.
//!
//! | syntax | meaning |
//! |---|---|
//! | `vsock:CID:PORT` | AF_VSOCK; CID may be `any`, `host`, `local` or a number |
//! | `hvsock:PATH:PORT` | hybrid vsock: a Unix socket that takes `CONNECT <port>\n` |
//! | `unix:PATH` | a Unix stream socket |
//! | `tcp:HOST:PORT` | TCP |
//! | `exec:COMMAND` | the stdin/stdout of `sh -c COMMAND` (host side only) |
//! | `stdio` | this process's stdin/stdout (agent side only) |

use std::{fmt, path::PathBuf, str::FromStr};

/// A parsed transport address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// AF_VSOCK context id and port.
    Vsock { cid: u32, port: u32 },
    /// A hybrid-vsock Unix socket (Firecracker, Cloud Hypervisor, vhost-device-vsock).
    HybridVsock { path: PathBuf, port: u32 },
    /// A Unix stream socket path.
    Unix(PathBuf),
    /// A `host:port` TCP address.
    Tcp(String),
    /// A shell command whose stdin/stdout carry the session.
    Exec(String),
    /// This process's own stdin/stdout.
    Stdio,
}

/// An address string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid transport address {input:?}: {reason} (expected vsock:CID:PORT, hvsock:PATH:PORT, unix:PATH, tcp:HOST:PORT, exec:COMMAND or stdio)")]
pub struct AddressError {
    input: String,
    reason: String,
}

fn parse_u32(s: &str, what: &str) -> Result<u32, String> {
    s.parse().map_err(|_| format!("{what} {s:?} is not a number"))
}

fn parse_cid(s: &str) -> Result<u32, String> {
    match s {
        "any" => Ok(libc::VMADDR_CID_ANY),
        "host" => Ok(libc::VMADDR_CID_HOST),
        "local" => Ok(1),
        n => parse_u32(n, "CID"),
    }
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| AddressError { input: input.to_string(), reason: reason.to_string() };
        if input == "stdio" {
            return Ok(Address::Stdio);
        }
        let (scheme, rest) = input.split_once(':').ok_or_else(|| err("missing scheme"))?;
        if rest.is_empty() {
            return Err(err("empty address after the scheme"));
        }
        match scheme {
            "vsock" => {
                let (cid, port) = rest.split_once(':').ok_or_else(|| err("missing :PORT"))?;
                Ok(Address::Vsock {
                    cid: parse_cid(cid).map_err(|r| err(&r))?,
                    port: parse_u32(port, "port").map_err(|r| err(&r))?,
                })
            }
            "hvsock" => {
                let (path, port) = rest.rsplit_once(':').ok_or_else(|| err("missing :PORT"))?;
                if path.is_empty() {
                    return Err(err("empty socket path"));
                }
                Ok(Address::HybridVsock {
                    path: PathBuf::from(path),
                    port: parse_u32(port, "port").map_err(|r| err(&r))?,
                })
            }
            "unix" => Ok(Address::Unix(PathBuf::from(rest))),
            "tcp" => {
                let (_, port) = rest.rsplit_once(':').ok_or_else(|| err("missing :PORT"))?;
                port.parse::<u16>().map_err(|_| err("bad TCP port"))?;
                Ok(Address::Tcp(rest.to_string()))
            }
            "exec" => Ok(Address::Exec(rest.to_string())),
            other => Err(err(&format!("unknown scheme {other:?}"))),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Vsock { cid, port } if *cid == libc::VMADDR_CID_ANY => write!(f, "vsock:any:{port}"),
            Address::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
            Address::HybridVsock { path, port } => write!(f, "hvsock:{}:{port}", path.display()),
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
            Address::Tcp(a) => write!(f, "tcp:{a}"),
            Address::Exec(c) => write!(f, "exec:{c}"),
            Address::Stdio => write!(f, "stdio"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_scheme() {
        assert_eq!("vsock:any:1024".parse(), Ok(Address::Vsock { cid: u32::MAX, port: 1024 }));
        assert_eq!("vsock:3:1024".parse(), Ok(Address::Vsock { cid: 3, port: 1024 }));
        assert_eq!(
            "hvsock:/tmp/v.sock:1024".parse(),
            Ok(Address::HybridVsock { path: "/tmp/v.sock".into(), port: 1024 })
        );
        assert_eq!("unix:/run/a.sock".parse(), Ok(Address::Unix("/run/a.sock".into())));
        assert_eq!("tcp:127.0.0.1:9".parse(), Ok(Address::Tcp("127.0.0.1:9".into())));
        assert_eq!("tcp:[::1]:9".parse(), Ok(Address::Tcp("[::1]:9".into())));
        assert_eq!(
            "exec:ssh host ferry-agent --stdio".parse(),
            Ok(Address::Exec("ssh host ferry-agent --stdio".into()))
        );
        assert_eq!("stdio".parse(), Ok(Address::Stdio));
    }

    #[test]
    fn rejects_bad_addresses_with_a_reason() {
        for bad in ["", "vsock:x:1", "vsock:3", "hvsock::1", "tcp:host", "ftp:x", "unix:"] {
            let e = bad.parse::<Address>().unwrap_err().to_string();
            assert!(e.contains("invalid transport address"), "{bad}: {e}");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["vsock:any:1024", "vsock:3:5", "hvsock:/a/b:7", "unix:/x", "tcp:h:1", "exec:a b", "stdio"] {
            assert_eq!(s.parse::<Address>().unwrap().to_string(), s);
        }
    }
}
