//! `host:port` addresses in `cluster.toml`: an IP literal or a DNS host name (issue 16,
//! multi-host). A name is resolved when a process starts (`replica`, `client`, `gateway`,
//! `status`), not on every reconnect: a replica whose address changes needs its peers
//! restarted, as with etcd's static bootstrap.

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use serde::{Deserialize, Serialize};

/// Longest DNS name (RFC 1035 §2.3.4, without the trailing dot).
pub const MAX_HOST_NAME: usize = 253;
/// Longest DNS label (RFC 1035 §2.3.4).
pub const MAX_LABEL: usize = 63;

/// Why a `host:port` string is not one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostPortError {
    /// No `:port` at the end.
    #[error("{0:?}: expected host:port (an IPv6 address in brackets: [::1]:7400)")]
    NoPort(String),
    /// The port is not a number in 1..=65535.
    #[error("{0:?}: the port must be a number from 1 to 65535")]
    BadPort(String),
    /// The host is neither an IP literal nor a valid DNS name.
    #[error("{0:?}: the host must be an IP address or a DNS name (letters, digits, '-', labels of 1 to 63 characters)")]
    BadHost(String),
}

/// An address as written in `cluster.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostPort {
    host: String,
    port: u16,
}

impl HostPort {
    /// `host` with `port`; `host` is checked as in [`HostPort::parse`].
    pub fn new(host: &str, port: u16) -> Result<Self, HostPortError> {
        let text = match host.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => format!("[{host}]:{port}"),
            _ => format!("{host}:{port}"),
        };
        Self::parse(&text)
    }

    /// Parses `host:port` or `[v6]:port`.
    pub fn parse(text: &str) -> Result<Self, HostPortError> {
        let owned = || text.to_owned();
        let (host, port) = text.rsplit_once(':').ok_or_else(|| HostPortError::NoPort(owned()))?;
        let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(|| HostPortError::BadPort(owned()))?;
        let host = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            v6.parse::<std::net::Ipv6Addr>().map_err(|_| HostPortError::BadHost(owned()))?;
            v6
        } else if host.parse::<std::net::Ipv4Addr>().is_ok() || is_dns_name(host) {
            host
        } else {
            return Err(HostPortError::BadHost(owned()));
        };
        Ok(HostPort { host: host.to_owned(), port })
    }

    /// The host part (without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The first address the host resolves to (an IP literal resolves to itself without
    /// a lookup).
    pub fn resolve(&self) -> std::io::Result<SocketAddr> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, self.port));
        }
        (self.host.as_str(), self.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("{} has no address", self.host)))
    }
}

/// RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens. A name of
/// digits and dots only is refused (it would be a malformed IPv4 address).
fn is_dns_name(host: &str) -> bool {
    let label_ok = |l: &str| {
        (1..=MAX_LABEL).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    (1..=MAX_HOST_NAME).contains(&host.len())
        && host.split('.').all(label_ok)
        && !host.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

impl From<SocketAddr> for HostPort {
    fn from(addr: SocketAddr) -> Self {
        HostPort { host: addr.ip().to_string(), port: addr.port() }
    }
}

impl TryFrom<String> for HostPort {
    type Error = HostPortError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::parse(&text)
    }
}

impl From<HostPort> for String {
    fn from(hp: HostPort) -> String {
        hp.to_string()
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl std::str::FromStr for HostPort {
    type Err = HostPortError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_literals_round_trip() {
        for text in ["127.0.0.1:7400", "[::1]:7400", "replica-0.example.net:7400", "localhost:1", "db1:65535"] {
            let hp = HostPort::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(hp.to_string(), text);
            assert_eq!(HostPort::parse(&hp.to_string()), Ok(hp));
        }
        assert_eq!(HostPort::new("::1", 7400).map(|h| h.to_string()), Ok("[::1]:7400".to_owned()));
        assert_eq!(HostPort::from("10.0.0.1:9".parse::<SocketAddr>().unwrap()).to_string(), "10.0.0.1:9");
    }

    #[test]
    fn malformed_addresses_are_named_errors() {
        assert!(matches!(HostPort::parse("localhost"), Err(HostPortError::NoPort(_))));
        assert!(matches!(HostPort::parse("localhost:0"), Err(HostPortError::BadPort(_))));
        assert!(matches!(HostPort::parse("localhost:70000"), Err(HostPortError::BadPort(_))));
        for bad in ["-a:1", "a-:1", "a..b:1", "a_b:1", ":1", "1.2.3:1", "999.1.1.1:1", "::1:7400", "[nope]:1"] {
            assert!(matches!(HostPort::parse(bad), Err(HostPortError::BadHost(_))), "{bad}");
        }
        let long = format!("{}:1", "a".repeat(MAX_LABEL + 1));
        assert!(matches!(HostPort::parse(&long), Err(HostPortError::BadHost(_))));
    }

    #[test]
    fn literals_resolve_without_a_lookup_and_localhost_resolves() {
        assert_eq!(HostPort::parse("10.1.2.3:80").unwrap().resolve().unwrap(), "10.1.2.3:80".parse().unwrap());
        let local = HostPort::parse("localhost:7400").unwrap().resolve().unwrap();
        assert!(local.ip().is_loopback(), "{local}");
    }
}
