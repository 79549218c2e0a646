//! The descriptor's `port` field: `HOST[:CONTAINER][/tcp|/udp]` entries joined by `;` (spec §3.4).
//!
//! One grammar for every tier: the root validates descriptors with it, the cluster reads the host
//! ports a job takes from it, and the worker wires its DNAT rules from it, so a descriptor the
//! root accepts never fails on a worker's parser. `CONTAINER` defaults to `HOST`, the protocol to
//! tcp. Refused: blanks, empty entries, port 0, numbers above 65535, a host port and protocol
//! mapped twice, and host port [`TUNNEL_PORT`]/udp, which the overlay's tunnel uses on every
//! worker started with the default `--tunnel-port`.

use std::collections::BTreeSet;
use std::fmt;

/// The default UDP port of the overlay tunnel between workers.
pub const TUNNEL_PORT: u16 = 50103;

/// Transport protocol of a port mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A port on a node's address, which one instance at a time may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostPort {
    pub port: u16,
    pub protocol: Protocol,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.port, self.protocol.as_str())
    }
}

/// One published port: traffic to `host` on the node goes to `container` in the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortMapping {
    pub host: u16,
    pub container: u16,
    pub protocol: Protocol,
}

impl PortMapping {
    pub fn host_port(&self) -> HostPort {
        HostPort { port: self.host, protocol: self.protocol }
    }
}

const SYNTAX: &str = "HOST[:CONTAINER][/tcp|/udp]";

/// Parses a whole `port` field; the empty string means no mappings. The error names the bad
/// entry and why it is bad.
pub fn parse_port_mappings(s: &str) -> Result<Vec<PortMapping>, String> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for entry in s.split(';') {
        if entry.is_empty() {
            return Err(format!("{s:?} has an empty port mapping entry ({SYNTAX} joined by ';')"));
        }
        let m = parse_entry(entry).map_err(|why| format!("port mapping {entry:?}: {why}"))?;
        if m.host_port() == (HostPort { port: TUNNEL_PORT, protocol: Protocol::Udp }) {
            return Err(format!("port mapping {entry:?}: host port {TUNNEL_PORT}/udp is the overlay tunnel's"));
        }
        if !seen.insert(m.host_port()) {
            return Err(format!("port mapping {entry:?}: host port {} is mapped twice", m.host_port()));
        }
        out.push(m);
    }
    Ok(out)
}

/// The host ports a `port` field takes; none when it does not parse (it was validated when
/// stored, and the worker refuses it anyway).
pub fn host_ports(s: &str) -> Vec<HostPort> {
    parse_port_mappings(s).map(|ms| ms.iter().map(PortMapping::host_port).collect()).unwrap_or_default()
}

fn parse_entry(entry: &str) -> Result<PortMapping, String> {
    let (ports, protocol) = match entry.split_once('/') {
        None => (entry, Protocol::Tcp),
        Some((ports, "tcp")) => (ports, Protocol::Tcp),
        Some((ports, "udp")) => (ports, Protocol::Udp),
        Some((_, other)) => return Err(format!("protocol {other:?} is not tcp or udp")),
    };
    let (host, container) = match ports.split_once(':') {
        None => (ports, ports),
        Some(pair) => pair,
    };
    Ok(PortMapping { host: parse_port(host)?, container: parse_port(container)?, protocol })
}

/// Digits only (no sign, no blanks), value 1–65535.
fn parse_port(text: &str) -> Result<u16, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{text:?} is not a port number (expected {SYNTAX})"));
    }
    match text.parse::<u16>() {
        Ok(0) => Err("port 0 cannot be mapped".into()),
        Ok(port) => Ok(port),
        Err(_) => Err(format!("port {text} is out of range 1-65535")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: u16, container: u16) -> PortMapping {
        PortMapping { host, container, protocol: Protocol::Tcp }
    }

    fn udp(host: u16, container: u16) -> PortMapping {
        PortMapping { host, container, protocol: Protocol::Udp }
    }

    #[test]
    fn accepted_forms() {
        let cases: Vec<(&str, Vec<PortMapping>)> = vec![
            ("", vec![]),
            ("80", vec![tcp(80, 80)]),
            ("6080:60/tcp", vec![tcp(6080, 60)]),
            ("8080:80;5353/udp", vec![tcp(8080, 80), udp(5353, 5353)]),
            ("1:65535/udp", vec![udp(1, 65535)]),
            // The same port number once per protocol.
            ("80;80/udp", vec![tcp(80, 80), udp(80, 80)]),
            // Two host ports may lead to one container port.
            ("81:80;82:80", vec![tcp(81, 80), tcp(82, 80)]),
            // The tunnel is UDP only.
            ("50103", vec![tcp(50103, 50103)]),
            ("50103:53/tcp", vec![tcp(50103, 53)]),
        ];
        for (input, want) in cases {
            assert_eq!(parse_port_mappings(input), Ok(want), "{input:?}");
        }
    }

    #[test]
    fn refused_forms_name_entry_and_reason() {
        let cases: Vec<(&str, &str)> = vec![
            ("0", "port mapping \"0\": port 0 cannot be mapped"),
            ("80:0", "port mapping \"80:0\": port 0 cannot be mapped"),
            ("0:65535/udp", "port mapping \"0:65535/udp\": port 0 cannot be mapped"),
            ("80;80", "port mapping \"80\": host port 80/tcp is mapped twice"),
            ("80:8080;80:9090/tcp", "port mapping \"80:9090/tcp\": host port 80/tcp is mapped twice"),
            ("50103/udp", "port mapping \"50103/udp\": host port 50103/udp is the overlay tunnel's"),
            ("50103:80/udp", "port mapping \"50103:80/udp\": host port 50103/udp is the overlay tunnel's"),
            ("70000", "port mapping \"70000\": port 70000 is out of range 1-65535"),
            ("80:x", "port mapping \"80:x\": \"x\" is not a port number (expected HOST[:CONTAINER][/tcp|/udp])"),
            ("80/sctp", "port mapping \"80/sctp\": protocol \"sctp\" is not tcp or udp"),
            ("80;", "\"80;\" has an empty port mapping entry (HOST[:CONTAINER][/tcp|/udp] joined by ';')"),
        ];
        for (input, want) in cases {
            assert_eq!(parse_port_mappings(input), Err(want.to_string()), "{input:?}");
        }
        for bad in [
            "80:65536",
            "80/",
            "80;;81",
            ";",
            ":80",
            "80:",
            "+80",
            " 80",
            "80 ",
            "80:90:100",
            "80/tcp/udp",
            "80/TCP",
            "-1",
            "99999999999999999999",
        ] {
            assert!(parse_port_mappings(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn host_ports_of_a_field() {
        let hp = |port, protocol| HostPort { port, protocol };
        assert_eq!(host_ports("8080:80;53/udp"), vec![hp(8080, Protocol::Tcp), hp(53, Protocol::Udp)]);
        assert_eq!(host_ports(""), vec![]);
        assert_eq!(host_ports("80;80"), vec![], "a field that does not parse takes nothing");
        assert_eq!(hp(8080, Protocol::Tcp).to_string(), "8080/tcp");
    }
}
