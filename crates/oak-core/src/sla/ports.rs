//! The `port` field: `HOST[:CONTAINER][/tcp|udp]` entries joined by `;` (spec §3.4).
//!
//! The worker's network manager applies these mappings at deploy time and fails the deployment on
//! a malformed one, so they are checked up front with the same grammar.

use super::json::show_str;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

/// One published port: traffic to `host` on the node goes to `container` in the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortMapping {
    pub host: u16,
    pub container: u16,
    pub protocol: Protocol,
}

const SYNTAX: &str = "HOST[:CONTAINER][/tcp|udp]";

/// Parses `HOST[:CONTAINER][/tcp|udp]` entries joined by `;`. The empty string means no
/// mappings; `CONTAINER` defaults to `HOST` and the protocol to tcp.
pub fn parse_port_mappings(s: &str) -> Result<Vec<PortMapping>, String> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    s.split(';')
        .map(|entry| {
            if entry.is_empty() {
                Err(format!("{} has an empty port mapping entry", show_str(s)))
            } else {
                parse_entry(entry)
            }
        })
        .collect()
}

fn parse_entry(entry: &str) -> Result<PortMapping, String> {
    let (ports, protocol) = match entry.split_once('/') {
        None => (entry, Protocol::Tcp),
        Some((ports, "tcp")) => (ports, Protocol::Tcp),
        Some((ports, "udp")) => (ports, Protocol::Udp),
        Some((_, other)) => return Err(format!("{}: protocol {} is not tcp or udp", show_str(entry), show_str(other))),
    };
    let (host, container) = match ports.split_once(':') {
        None => (ports, ports),
        Some(pair) => pair,
    };
    Ok(PortMapping { host: parse_port(host, entry)?, container: parse_port(container, entry)?, protocol })
}

/// Digits only (no sign, no blanks), value 0–65535.
fn parse_port(text: &str, entry: &str) -> Result<u16, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{} is not a port mapping ({SYNTAX})", show_str(entry)));
    }
    text.parse::<u16>().map_err(|_| format!("{}: port {text} is out of range 0-65535", show_str(entry)))
}
