//! Bytes on the wire of TCP connections, read from the kernel (`ss -ti`): what target P10
//! counts. The payload the kernel carried each way, TLS records and MQTT framing included; the
//! product's own counters would miss exactly the overhead P10 is about.

use std::process::Command;

use anyhow::{bail, Context};

/// What the established connections to some local ports carried so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkBytes {
    pub connections: u64,
    /// Received by the listening side (worker → cluster).
    pub received: u64,
    /// Sent by the listening side and acknowledged (cluster → worker).
    pub sent: u64,
}

impl LinkBytes {
    pub fn total(&self) -> u64 {
        self.received + self.sent
    }

    /// Bytes carried between `self` (earlier) and `later`.
    pub fn since(&self, later: &LinkBytes) -> u64 {
        later.total().saturating_sub(self.total())
    }
}

/// The server side of every established connection to one of `ports`.
pub fn to_ports(ports: &[u16]) -> anyhow::Result<LinkBytes> {
    if ports.is_empty() {
        return Ok(LinkBytes::default());
    }
    let filter = ports.iter().map(|p| format!("sport = :{p}")).collect::<Vec<_>>().join(" or ");
    let out = Command::new("ss")
        .args(["-H", "-t", "-i", "-n", "state", "established"])
        .arg(format!("( {filter} )"))
        .output()
        .context("cannot run ss (Debian package iproute2)")?;
    if !out.status.success() {
        bail!("ss failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(parse(&String::from_utf8_lossy(&out.stdout)))
}

/// Sums `ss -ti` output: a socket line, then its indented details with `bytes_acked:` and
/// `bytes_received:` (each left out while zero; on the accepting side they count data only).
fn parse(text: &str) -> LinkBytes {
    let mut total = LinkBytes::default();
    for line in text.lines() {
        let mut details = false;
        for token in line.split_whitespace() {
            let field = |name: &str| token.strip_prefix(name).and_then(|v| v.parse::<u64>().ok());
            if let Some(n) = field("bytes_acked:") {
                total.sent += n;
                details = true;
            } else if let Some(n) = field("bytes_received:") {
                total.received += n;
                details = true;
            }
        }
        if details {
            total.connections += 1;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_details_of_each_socket() {
        let text = "\
0      0      127.0.0.1:10003   127.0.0.1:40000
\t cubic wscale:7,7 rto:201 rtt:0.05/0.02 mss:32768 bytes_sent:1200 bytes_acked:1200 bytes_received:3000 segs_out:10
0      0      127.0.0.1:10003   127.0.0.1:40002
\t cubic rtt:0.05/0.02 bytes_received:55 segs_out:2
";
        assert_eq!(parse(text), LinkBytes { connections: 2, received: 3055, sent: 1200 });
        assert_eq!(parse(""), LinkBytes::default());
    }

    #[test]
    fn reads_a_real_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        use std::io::{Read, Write};
        client.write_all(&[7; 1000]).unwrap();
        let mut buf = [0; 1000];
        server.read_exact(&mut buf).unwrap();
        server.write_all(&[1; 10]).unwrap();
        client.read_exact(&mut buf[..10]).unwrap();
        let bytes = to_ports(&[port]).unwrap();
        assert_eq!(bytes, LinkBytes { connections: 1, received: 1000, sent: 10 });
    }
}
