//! Behind a reverse proxy: which peers are trusted proxies
//! (`--trusted-proxies`), and the client address such a peer forwards in
//! `X-Forwarded-For` or `Forwarded` (RFC 7239). The per-IP caps and the
//! logs use that address; without the flag, the socket's address counts
//! (and one proxy in front makes every client one address).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use thiserror::Error;

/// An address range: a network address and a prefix length
/// (`10.0.0.0/8`, `fd00::/8`; a bare address is a range of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

/// Why a range could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0:?}: expected an address range such as 10.0.0.0/8 or fd00::/8")]
pub struct CidrError(String);

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || CidrError(s.to_owned());
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (s.trim(), None),
        };
        let net: IpAddr = addr.parse().map_err(|_| bad())?;
        let net = net.to_canonical();
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(Self { net, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

impl Cidr {
    /// Whether `ip` lies in this range (IPv4-mapped IPv6 addresses count
    /// as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Whether `ip` is in one of the `trusted` ranges.
pub(crate) fn is_trusted(trusted: &[Cidr], ip: IpAddr) -> bool {
    trusted.iter().any(|c| c.contains(ip))
}

/// The client a connection from `peer` stands for. A peer outside the
/// `trusted` ranges is its own client. For a trusted proxy the forwarding
/// chain (`X-Forwarded-For` if present, else the `for=` of `Forwarded`) is
/// walked from the right, the nearest hop first: every proxy appends the
/// address it got the request from, so the first address that is not a
/// trusted proxy is the client, and whatever a client wrote further left
/// is ignored. An entry that is no address (`unknown`, an obfuscated name)
/// stops the walk at the last hop known.
pub(crate) fn client_ip(
    peer: IpAddr,
    trusted: &[Cidr],
    forwarded_for: Option<&str>,
    forwarded: Option<&str>,
) -> IpAddr {
    let peer = peer.to_canonical();
    if !is_trusted(trusted, peer) {
        return peer;
    }
    let chain: Vec<&str> = match (forwarded_for, forwarded) {
        (Some(xff), _) => xff.split(',').map(str::trim).collect(),
        (None, Some(fwd)) => forwarded_fors(fwd),
        (None, None) => return peer,
    };
    let mut client = peer;
    for hop in chain.iter().rev() {
        let Some(ip) = parse_hop(hop) else {
            return client;
        };
        client = ip;
        if !is_trusted(trusted, ip) {
            return ip;
        }
    }
    client
}

/// The `for=` values of a `Forwarded` header, in order.
fn forwarded_fors(header: &str) -> Vec<&str> {
    header
        .split(',')
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                k.trim().eq_ignore_ascii_case("for").then(|| v.trim())
            })
        })
        .collect()
}

/// One hop's address: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`,
/// `[2001:db8::1]:443`, optionally quoted.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim().trim_matches('"');
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = hop.strip_prefix('[') {
        let (v6, _) = rest.split_once(']')?;
        return v6.parse::<IpAddr>().ok().map(|ip| ip.to_canonical());
    }
    let (v4, port) = hop.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    v4.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// What the per-IP caps count by: the address, but an IPv6 peer by its /64
/// (one host gets a whole /64; counting single addresses would not cap it).
pub(crate) fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn ranges_parse_and_contain() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.200.3.4")) && !c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.1.1.1")), "IPv4-mapped");
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        for bad in [
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0/8",
            "",
            "x/1",
            "10.0.0.0/",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert_eq!(c.to_string(), "10.0.0.0/8");
    }

    #[test]
    fn the_client_is_the_first_untrusted_hop_from_the_right() {
        let trusted = cidrs(&["10.0.0.0/8"]);
        let proxy = ip("10.0.0.2");
        // An untrusted peer is its own client, whatever it claims.
        assert_eq!(
            client_ip(ip("203.0.113.5"), &trusted, Some("198.51.100.1"), None),
            ip("203.0.113.5")
        );
        assert_eq!(
            client_ip(proxy, &trusted, Some("198.51.100.1"), None),
            ip("198.51.100.1")
        );
        // A client's own (spoofed) entries stay left of what its proxy saw.
        assert_eq!(
            client_ip(
                proxy,
                &trusted,
                Some("1.1.1.1, 198.51.100.1, 10.0.0.9"),
                None
            ),
            ip("198.51.100.1")
        );
        // Only trusted hops: the leftmost.
        assert_eq!(
            client_ip(proxy, &trusted, Some("10.1.1.1, 10.0.0.9"), None),
            ip("10.1.1.1")
        );
        // No header: the proxy itself.
        assert_eq!(client_ip(proxy, &trusted, None, None), proxy);
        // Not an address: the walk stops at the last hop known.
        assert_eq!(
            client_ip(proxy, &trusted, Some("198.51.100.1, unknown"), None),
            proxy
        );
    }

    #[test]
    fn forwarded_is_read_when_there_is_no_x_forwarded_for() {
        let trusted = cidrs(&["127.0.0.0/8"]);
        let lo = ip("127.0.0.1");
        let fwd = r#"for=192.0.2.60;proto=http;by=203.0.113.43, For="[2001:db8:cafe::17]:4711""#;
        assert_eq!(
            client_ip(lo, &trusted, None, Some(fwd)),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(
            client_ip(lo, &trusted, None, Some("for=192.0.2.60:8080")),
            ip("192.0.2.60")
        );
        assert_eq!(client_ip(lo, &trusted, None, Some("for=_hidden")), lo);
        assert_eq!(
            client_ip(lo, &trusted, Some("198.51.100.1"), Some("for=192.0.2.60")),
            ip("198.51.100.1"),
            "X-Forwarded-For first"
        );
    }
}
