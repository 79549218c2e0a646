//! The descriptor's `port` string: host port mappings of an instance (spec §4.2 step 5).
//!
//! Format: `;`-separated items `HOST[:CONTAINER][/tcp|/udp]`, e.g. `80:8080;5353/udp`. Parsing is
//! strict so that a typo is reported at deployment instead of silently exposing nothing.

use std::collections::HashSet;
use std::fmt;

/// UDP port of the overlay tunnel, which a mapping must not take over.
pub const DEFAULT_TUNNEL_PORT: u16 = 50103;

/// Transport protocol of a port mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Traffic to `host`/`proto` on the node goes to `container` in the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortMapping {
    pub host: u16,
    pub container: u16,
    pub proto: Proto,
}

/// Why one item of the `port` string is invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortProblem {
    NotANumber(String),
    Zero,
    TooLarge(String),
    UnknownProtocol(String),
    TooManyColons,
    Duplicate,
    Reserved(u16),
}

impl fmt::Display for PortProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortProblem::NotANumber(s) => write!(f, "port `{s}` is not a number"),
            PortProblem::Zero => f.write_str("port 0 is not allowed"),
            PortProblem::TooLarge(s) => write!(f, "port {s} is larger than 65535"),
            PortProblem::UnknownProtocol(s) => {
                write!(f, "unknown protocol `{s}` (expected tcp or udp)")
            }
            PortProblem::TooManyColons => f.write_str("expected HOST[:CONTAINER][/tcp|/udp]"),
            PortProblem::Duplicate => f.write_str("host port and protocol are mapped twice"),
            PortProblem::Reserved(p) => write!(f, "host port {p} is reserved for the overlay tunnel"),
        }
    }
}

/// A bad item of the `port` string and why it is bad.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("port mapping `{item}`: {problem}")]
pub struct PortError {
    pub item: String,
    pub problem: PortProblem,
}

/// Parses a `port` string; `reserved` is the tunnel port, which no mapping may use as host port.
/// An empty (or blank) string means no mappings; empty items (`80;;81;`) are ignored.
pub fn parse_port_mappings(spec: &str, reserved: u16) -> Result<Vec<PortMapping>, PortError> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for raw in spec.split(';') {
        let item = raw.trim();
        if item.is_empty() {
            continue;
        }
        let fail = |problem| PortError { item: item.to_string(), problem };
        let mapping = parse_item(item).map_err(fail)?;
        if mapping.host == reserved {
            return Err(fail(PortProblem::Reserved(reserved)));
        }
        if !seen.insert((mapping.host, mapping.proto)) {
            return Err(fail(PortProblem::Duplicate));
        }
        out.push(mapping);
    }
    Ok(out)
}

fn parse_item(item: &str) -> Result<PortMapping, PortProblem> {
    let (ports, proto) = match item.split_once('/') {
        None => (item, Proto::Tcp),
        Some((ports, proto)) => (ports, parse_proto(proto)?),
    };
    let mut parts = ports.split(':');
    let host = parse_port(parts.next().unwrap_or_default())?;
    let container = match parts.next() {
        None => host,
        Some(c) => parse_port(c)?,
    };
    if parts.next().is_some() {
        return Err(PortProblem::TooManyColons);
    }
    Ok(PortMapping { host, container, proto })
}

fn parse_proto(s: &str) -> Result<Proto, PortProblem> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok(Proto::Tcp),
        "udp" => Ok(Proto::Udp),
        _ => Err(PortProblem::UnknownProtocol(s.to_string())),
    }
}

fn parse_port(s: &str) -> Result<u16, PortProblem> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PortProblem::NotANumber(s.to_string()));
    }
    match s.parse::<u64>() {
        Ok(0) => Err(PortProblem::Zero),
        Ok(n) => u16::try_from(n).map_err(|_| PortProblem::TooLarge(s.to_string())),
        Err(_) => Err(PortProblem::TooLarge(s.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(spec: &str) -> Vec<(u16, u16, Proto)> {
        parse_port_mappings(spec, DEFAULT_TUNNEL_PORT)
            .unwrap()
            .into_iter()
            .map(|m| (m.host, m.container, m.proto))
            .collect()
    }

    fn err(spec: &str) -> PortError {
        parse_port_mappings(spec, DEFAULT_TUNNEL_PORT).unwrap_err()
    }

    #[test]
    fn valid_forms() {
        assert_eq!(ok(""), vec![]);
        assert_eq!(ok("   "), vec![]);
        assert_eq!(ok("80"), vec![(80, 80, Proto::Tcp)]);
        assert_eq!(ok("80:8080"), vec![(80, 8080, Proto::Tcp)]);
        assert_eq!(ok("5353/udp"), vec![(5353, 5353, Proto::Udp)]);
        assert_eq!(ok("443:8443/tcp"), vec![(443, 8443, Proto::Tcp)]);
        assert_eq!(ok("53:5353/UDP"), vec![(53, 5353, Proto::Udp)]);
        assert_eq!(
            ok(" 80:8080 ; 80/udp;;65535:1; "),
            vec![(80, 8080, Proto::Tcp), (80, 80, Proto::Udp), (65535, 1, Proto::Tcp)]
        );
        // Two host ports may lead to the same container port.
        assert_eq!(ok("81:80;82:80"), vec![(81, 80, Proto::Tcp), (82, 80, Proto::Tcp)]);
    }

    #[test]
    fn every_error_names_item_and_reason() {
        let e = err("80;0:80");
        assert_eq!((e.item.as_str(), &e.problem), ("0:80", &PortProblem::Zero));
        assert_eq!(err("80:0").problem, PortProblem::Zero);
        assert_eq!(err("65536").problem, PortProblem::TooLarge("65536".into()));
        assert_eq!(err("1:99999999999999999999999").problem, PortProblem::TooLarge("99999999999999999999999".into()));
        assert_eq!(err("http").problem, PortProblem::NotANumber("http".into()));
        assert_eq!(err("+80").problem, PortProblem::NotANumber("+80".into()));
        assert_eq!(err(":80").problem, PortProblem::NotANumber("".into()));
        assert_eq!(err("80:").problem, PortProblem::NotANumber("".into()));
        assert_eq!(err("80 : 81").problem, PortProblem::NotANumber("80 ".into()));
        assert_eq!(err("80/sctp").problem, PortProblem::UnknownProtocol("sctp".into()));
        assert_eq!(err("80/").problem, PortProblem::UnknownProtocol("".into()));
        assert_eq!(err("80/tcp/udp").problem, PortProblem::UnknownProtocol("tcp/udp".into()));
        assert_eq!(err("1:2:3").problem, PortProblem::TooManyColons);
        let dup = err("80:8080; 80:9090/tcp");
        assert_eq!((dup.item.as_str(), &dup.problem), ("80:9090/tcp", &PortProblem::Duplicate));
        assert_eq!(err("50103/udp").problem, PortProblem::Reserved(50103));
        assert_eq!(err("50103:80").problem, PortProblem::Reserved(50103));
        assert_eq!(err("0").to_string(), "port mapping `0`: port 0 is not allowed");
    }

    #[test]
    fn reserved_port_is_a_parameter() {
        assert!(parse_port_mappings("50103", 40000).is_ok());
        let e = parse_port_mappings("40000/udp", 40000).unwrap_err();
        assert_eq!(e.problem, PortProblem::Reserved(40000));
    }
}
