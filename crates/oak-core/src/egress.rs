//! Where a worker may fetch from on a tenant's behalf (image registries, their token services,
//! unikernel kernel URLs, and every redirect on the way).
//!
//! A tenant names those URLs, so without a rule a worker would send requests from its place in
//! the network to whatever the tenant names: its own loopback services, the cluster's API, other
//! machines of the LAN, a cloud's metadata service (169.254.169.254), other tenants' instances.
//! The rule: only public (globally routable) addresses, plus what the worker's operator allows
//! (`--fetch-allow`). An allowed host name may resolve to anything; any other name must resolve
//! to public addresses (or ones inside an allowed network), checked on the addresses really
//! connected to, so DNS cannot smuggle an internal address in.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One `--fetch-allow` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allow {
    /// An address (`10.0.0.5`, `10.0.0.5:5000`, `[fd00::5]:5000`) or a network (`10.0.0.0/8`,
    /// no port). A network or address without a port also admits names resolving into it.
    Net { addr: IpAddr, prefix: u8, port: Option<u16> },
    /// A host name (`registry.lan`, `registry.lan:5000`): any address it resolves to; with a
    /// port, only that port of the name.
    Host { name: String, port: Option<u16> },
}

impl Allow {
    /// Parses `ADDRESS[:PORT]`, `[IPv6][:PORT]`, `NETWORK/PREFIX` or `NAME[:PORT]`.
    pub fn parse(entry: &str) -> Result<Allow, String> {
        let text = entry.trim();
        let bad = |why: &str| format!("fetch allowance {entry:?}: {why}");
        if text.is_empty() {
            return Err(bad("empty"));
        }
        if text.contains("://") {
            return Err(bad("not an address, network or host name (give the host, not a URL)"));
        }
        if let Some((net, prefix)) = text.split_once('/') {
            let addr: IpAddr =
                net.trim_start_matches('[').trim_end_matches(']').parse().map_err(|_| bad("not an IP network"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix: u8 = prefix.parse().ok().filter(|p| *p <= max).ok_or_else(|| bad("bad prefix length"))?;
            return Ok(Allow::Net { addr: mask(addr, prefix), prefix, port: None });
        }
        if let Ok(addr) = text.parse::<IpAddr>() {
            return Ok(Allow::Net { addr, prefix: full(addr), port: None });
        }
        if let Ok(sock) = text.parse::<std::net::SocketAddr>() {
            let port = Some(sock.port()).filter(|p| *p != 0).ok_or_else(|| bad("port 0"))?;
            return Ok(Allow::Net { addr: sock.ip(), prefix: full(sock.ip()), port: Some(port) });
        }
        if let Some(v6) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            let addr: IpAddr = v6.parse().map_err(|_| bad("not an IPv6 address"))?;
            return Ok(Allow::Net { addr, prefix: 128, port: None });
        }
        let (name, port) = match text.rsplit_once(':') {
            Some((name, port)) => {
                (name, Some(port.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| bad("bad port"))?))
            }
            None => (text, None),
        };
        let name = normal_name(name);
        let valid = !name.is_empty()
            && name.len() <= 253
            && name
                .split('.')
                .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        if !valid {
            return Err(bad("not an address, network or host name"));
        }
        Ok(Allow::Host { name, port })
    }
}

impl fmt::Display for Allow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Allow::Net { addr, prefix, port } => {
                match (addr, port) {
                    (IpAddr::V6(a), Some(p)) => write!(f, "[{a}]:{p}")?,
                    (a, Some(p)) => write!(f, "{a}:{p}")?,
                    (a, None) => write!(f, "{a}")?,
                }
                if *prefix != full(*addr) {
                    write!(f, "/{prefix}")?;
                }
                Ok(())
            }
            Allow::Host { name, port: Some(p) } => write!(f, "{name}:{p}"),
            Allow::Host { name, port: None } => write!(f, "{name}"),
        }
    }
}

/// The host part of a URL about to be fetched.
#[derive(Debug, Clone, Copy)]
pub enum Dest<'a> {
    Ip(IpAddr),
    Name(&'a str),
}

/// How a name that passed [`EgressPolicy::check`] may resolve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameUse {
    /// The operator allowed the name: any address.
    Trusted,
    /// Only public addresses and ones in allowed networks ([`EgressPolicy::admits_resolved`]).
    PublicOnly,
}

/// Why a fetch was refused; shown to the tenant in the instance's `status_detail`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refusal {}

const HINT: &str = "the worker's operator can allow it with --fetch-allow";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    allow: Vec<Allow>,
}

impl EgressPolicy {
    pub fn new(allow: Vec<Allow>) -> Self {
        Self { allow }
    }

    /// Parses every entry, failing on the first bad one.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        Ok(Self::new(entries.into_iter().map(Allow::parse).collect::<Result<_, _>>()?))
    }

    pub fn allowances(&self) -> &[Allow] {
        &self.allow
    }

    /// Whether a URL's host and port may be fetched; for a name, how it may resolve.
    pub fn check(&self, dest: Dest<'_>, port: u16) -> Result<NameUse, Refusal> {
        match dest {
            Dest::Ip(ip) => {
                let ip = canonical(ip);
                if self.net_allows(ip, Some(port)) {
                    return Ok(NameUse::Trusted);
                }
                match non_public(ip) {
                    Some(kind) => Err(Refusal(format!("{} is {kind}; {HINT}", show(ip, port)))),
                    None => Ok(NameUse::PublicOnly),
                }
            }
            Dest::Name(name) => {
                let name = normal_name(name);
                let ports: Vec<Option<u16>> = self
                    .allow
                    .iter()
                    .filter_map(|a| match a {
                        Allow::Host { name: n, port } if *n == name => Some(*port),
                        _ => None,
                    })
                    .collect();
                if ports.is_empty() {
                    Ok(NameUse::PublicOnly)
                } else if ports.iter().any(|p| p.is_none_or(|p| p == port)) {
                    Ok(NameUse::Trusted)
                } else {
                    Err(Refusal(format!("{name}:{port} is not an allowed port of {name}; {HINT}")))
                }
            }
        }
    }

    /// Whether a name may be connected to at `ip`, one of the addresses it resolved to.
    pub fn admits_resolved(&self, name: &str, ip: IpAddr) -> bool {
        let name = normal_name(name);
        let trusted = self.allow.iter().any(|a| matches!(a, Allow::Host { name: n, .. } if *n == name));
        let ip = canonical(ip);
        trusted || non_public(ip).is_none() || self.net_allows(ip, None)
    }

    /// The refusal for a name none of whose addresses was admitted.
    pub fn refuse_resolved(&self, name: &str, ips: &[IpAddr]) -> Refusal {
        let first = ips.first().map(|ip| canonical(*ip));
        let kind = first.and_then(non_public).unwrap_or("not public");
        let addr = first.map_or_else(|| "nothing".to_string(), |ip| ip.to_string());
        Refusal(format!("{} resolves to {addr}, which is {kind}; {HINT}", normal_name(name)))
    }

    /// `port`: `None` when the port is not known (a name being resolved): only entries
    /// without a port count then.
    fn net_allows(&self, ip: IpAddr, port: Option<u16>) -> bool {
        self.allow.iter().any(|a| match a {
            Allow::Net { addr, prefix, port: p } => {
                (p.is_none() || *p == port) && same_family(*addr, ip) && mask(ip, *prefix) == *addr
            }
            Allow::Host { .. } => false,
        })
    }
}

fn show(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V6(a) => format!("[{a}]:{port}"),
        a => format!("{a}:{port}"),
    }
}

fn normal_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn full(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & bits))
        }
        IpAddr::V6(a) => {
            let bits = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) };
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & bits))
        }
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:127.0.0.1`) is the IPv4 address it maps: the kernel
/// connects to that.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn in4(a: Ipv4Addr, net: [u8; 4], prefix: u8) -> bool {
    mask(IpAddr::V4(a), prefix) == IpAddr::V4(Ipv4Addr::from(net))
}

fn in6(a: Ipv6Addr, net: [u16; 8], prefix: u8) -> bool {
    mask(IpAddr::V6(a), prefix) == IpAddr::V6(Ipv6Addr::from(net))
}

/// What kind of non-public address `ip` is, or `None` for a public one.
pub fn non_public(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(a) => non_public_v4(a),
        IpAddr::V6(a) => non_public_v6(a),
    }
}

fn non_public_v4(a: Ipv4Addr) -> Option<&'static str> {
    let table: [([u8; 4], u8, &'static str); 16] = [
        ([0, 0, 0, 0], 8, "a \"this network\" address"),
        ([10, 0, 0, 0], 8, "a private address"),
        ([100, 64, 0, 0], 10, "a shared (carrier-grade NAT) address"),
        ([127, 0, 0, 0], 8, "a loopback address"),
        ([169, 254, 0, 0], 16, "a link-local address"),
        ([172, 16, 0, 0], 12, "a private address"),
        ([192, 0, 0, 0], 24, "an IETF protocol address"),
        ([192, 0, 2, 0], 24, "a documentation address"),
        ([192, 88, 99, 0], 24, "a 6to4 relay address"),
        ([192, 168, 0, 0], 16, "a private address"),
        ([198, 18, 0, 0], 15, "a benchmarking address"),
        ([198, 51, 100, 0], 24, "a documentation address"),
        ([203, 0, 113, 0], 24, "a documentation address"),
        ([224, 0, 0, 0], 4, "a multicast address"),
        ([240, 0, 0, 0], 4, "a reserved address"),
        ([255, 255, 255, 255], 32, "the broadcast address"),
    ];
    table.iter().find(|(net, prefix, _)| in4(a, *net, *prefix)).map(|(_, _, kind)| *kind)
}

fn non_public_v6(a: Ipv6Addr) -> Option<&'static str> {
    let s = a.segments();
    let embedded = |hi: usize| Ipv4Addr::new((s[hi] >> 8) as u8, s[hi] as u8, (s[hi + 1] >> 8) as u8, s[hi + 1] as u8);
    if a.is_unspecified() {
        return Some("the unspecified address");
    }
    if a.is_loopback() {
        return Some("a loopback address");
    }
    // NAT64 and 6to4 reach the IPv4 address they embed.
    if in6(a, [0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96) {
        return non_public_v4(embedded(6));
    }
    if in6(a, [0x2002, 0, 0, 0, 0, 0, 0, 0], 16) {
        return non_public_v4(embedded(1));
    }
    let table: [([u16; 8], u8, &'static str); 8] = [
        ([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48, "a local-use NAT64 address"),
        ([0x100, 0, 0, 0, 0, 0, 0, 0], 64, "a discard address"),
        ([0x2001, 0, 0, 0, 0, 0, 0, 0], 23, "an IETF protocol address"),
        ([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32, "a documentation address"),
        ([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, "a private (unique local) address"),
        ([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, "a link-local address"),
        ([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, "a site-local address"),
        ([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, "a multicast address"),
    ];
    if let Some((_, _, kind)) = table.iter().find(|(net, prefix, _)| in6(a, *net, *prefix)) {
        return Some(kind);
    }
    // Global unicast is 2000::/3; everything else is unassigned or special.
    (!in6(a, [0x2000, 0, 0, 0, 0, 0, 0, 0], 3)).then_some("a reserved address")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn policy(entries: &[&str]) -> EgressPolicy {
        EgressPolicy::parse(entries.iter().copied()).unwrap()
    }

    #[test]
    fn only_public_addresses_are_public() {
        for public in ["1.1.1.1", "8.8.8.8", "104.16.0.1", "172.32.0.1", "2606:4700::1111", "2a00:1450::1"] {
            assert_eq!(non_public(ip(public)), None, "{public}");
        }
        let internal = [
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("0.0.0.0", "this network"),
            ("10.30.0.7", "private"),
            ("172.16.5.5", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "carrier-grade"),
            ("169.254.169.254", "link-local"),
            ("192.0.2.2", "documentation"),
            ("198.18.0.1", "benchmarking"),
            ("224.0.0.1", "multicast"),
            ("240.0.0.1", "reserved"),
            ("255.255.255.255", "reserved"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("2002:7f00:1::", "loopback"),
            ("fd00::1", "unique local"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
            ("2001:db8::1", "documentation"),
            ("::7f00:1", "reserved"),
        ];
        for (addr, kind) in internal {
            let got = non_public(ip(addr)).unwrap_or_else(|| panic!("{addr} counted as public"));
            assert!(got.contains(kind), "{addr}: {got}");
        }
    }

    #[test]
    fn internal_addresses_are_refused_with_the_reason_and_the_way_out() {
        let p = EgressPolicy::default();
        let e = p.check(Dest::Ip(ip("169.254.169.254")), 80).unwrap_err().to_string();
        assert_eq!(
            e,
            "169.254.169.254:80 is a link-local address; the worker's operator can allow it with --fetch-allow"
        );
        assert!(p
            .check(Dest::Ip(ip("::ffff:127.0.0.1")), 10190)
            .unwrap_err()
            .0
            .starts_with("127.0.0.1:10190 is a loopback"));
        assert_eq!(p.check(Dest::Ip(ip("1.1.1.1")), 443), Ok(NameUse::PublicOnly));
        assert_eq!(p.check(Dest::Name("registry-1.docker.io"), 443), Ok(NameUse::PublicOnly));
    }

    #[test]
    fn allowances_open_exactly_what_they_name() {
        let p = policy(&["127.0.0.1:5000", "10.1.0.0/16", "registry.lan:5000", "Mirror.LAN.", "[fd00::5]:443"]);
        assert!(p.check(Dest::Ip(ip("127.0.0.1")), 5000).is_ok());
        assert!(p.check(Dest::Ip(ip("127.0.0.1")), 10190).is_err(), "another port of an allowed address");
        assert!(p.check(Dest::Ip(ip("::ffff:127.0.0.1")), 5000).is_ok());
        assert!(p.check(Dest::Ip(ip("10.1.200.3")), 22).is_ok());
        assert!(p.check(Dest::Ip(ip("10.2.0.3")), 22).is_err());
        assert!(p.check(Dest::Ip(ip("fd00::5")), 443).is_ok());
        assert!(p.check(Dest::Ip(ip("fd00::5")), 80).is_err());
        assert_eq!(p.check(Dest::Name("registry.lan"), 5000), Ok(NameUse::Trusted));
        let e = p.check(Dest::Name("REGISTRY.lan."), 22).unwrap_err();
        assert!(e.0.starts_with("registry.lan:22 is not an allowed port of registry.lan"), "{e}");
        assert_eq!(p.check(Dest::Name("mirror.lan"), 8443), Ok(NameUse::Trusted));
        assert_eq!(p.check(Dest::Name("localhost"), 5000), Ok(NameUse::PublicOnly));
    }

    #[test]
    fn names_resolve_only_to_public_or_allowed_networks_unless_trusted() {
        let p = policy(&["127.0.0.1:5000", "10.1.0.0/16", "mirror.lan"]);
        // A port-bound allowance does not extend to names: the port is not known on resolving.
        assert!(!p.admits_resolved("localhost", ip("127.0.0.1")));
        assert!(!p.admits_resolved("evil.example", ip("169.254.169.254")));
        assert!(!p.admits_resolved("evil.example", ip("::ffff:10.0.0.1")));
        assert!(p.admits_resolved("evil.example", ip("1.1.1.1")));
        assert!(p.admits_resolved("lan.example", ip("10.1.3.4")));
        assert!(p.admits_resolved("mirror.lan", ip("192.168.7.7")));
        let e = p.refuse_resolved("localhost", &[ip("127.0.0.1")]);
        assert!(e.0.starts_with("localhost resolves to 127.0.0.1, which is a loopback address"), "{e}");
    }

    #[test]
    fn entries_parse_or_say_what_is_wrong() {
        assert_eq!(
            Allow::parse("10.0.0.5:5000").unwrap(),
            Allow::Net { addr: ip("10.0.0.5"), prefix: 32, port: Some(5000) }
        );
        assert_eq!(Allow::parse("10.9.8.7/8").unwrap(), Allow::Net { addr: ip("10.0.0.0"), prefix: 8, port: None });
        assert_eq!(Allow::parse("fd00::/8").unwrap(), Allow::Net { addr: ip("fd00::"), prefix: 8, port: None });
        assert_eq!(Allow::parse("[fd00::1]").unwrap(), Allow::Net { addr: ip("fd00::1"), prefix: 128, port: None });
        assert_eq!(Allow::parse("Reg.Lan:5000").unwrap(), Allow::Host { name: "reg.lan".into(), port: Some(5000) });
        for (bad, why) in [
            ("", "empty"),
            ("10.0.0.0/33", "prefix"),
            ("reg.lan:0", "port"),
            ("reg.lan:99999", "port"),
            ("http://reg.lan", "not an address"),
            ("a b", "not an address"),
            ("10.0.0.1:0", "port 0"),
        ] {
            let e = Allow::parse(bad).unwrap_err();
            assert!(e.contains(why) && e.contains("fetch allowance"), "{bad:?}: {e}");
        }
        for entry in ["10.0.0.5:5000", "10.0.0.0/8", "[fd00::5]:443", "fd00::/8", "reg.lan:5000", "reg.lan"] {
            assert_eq!(Allow::parse(entry).unwrap().to_string(), entry);
        }
    }
}
