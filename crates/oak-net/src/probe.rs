//! Control messages on the tunnel port: RTT probes for the "closest" policy.
//!
//! Probes share the UDP port with data, whose payload is a raw IPv4 packet and therefore always
//! starts with 0x45..=0x4f. A control message starts with 0x00 and carries a magic, so the two can
//! never be confused and random garbage is rejected.

/// Bytes of an encoded probe.
pub const PROBE_LEN: usize = 24;
/// `0x00` (not an IPv4 version nibble), then "OAKP", then the format version.
const MAGIC: [u8; 6] = [0x00, b'O', b'A', b'K', b'P', 1];
const KIND_PING: u8 = 1;
const KIND_PONG: u8 = 2;

/// Whether a probe asks or answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    Ping,
    Pong,
}

/// A ping or the pong answering it; `sent_nanos` is the pinger's own clock, echoed back, so the
/// pinger computes the RTT without state per probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub kind: ProbeKind,
    pub id: u64,
    pub sent_nanos: u64,
}

impl Probe {
    pub fn ping(id: u64, sent_nanos: u64) -> Self {
        Probe { kind: ProbeKind::Ping, id, sent_nanos }
    }

    /// The answer to this probe (same id and timestamp).
    pub fn pong(&self) -> Self {
        Probe { kind: ProbeKind::Pong, ..*self }
    }

    pub fn encode(&self) -> [u8; PROBE_LEN] {
        let mut out = [0u8; PROBE_LEN];
        out[..6].copy_from_slice(&MAGIC);
        out[6] = match self.kind {
            ProbeKind::Ping => KIND_PING,
            ProbeKind::Pong => KIND_PONG,
        };
        out[8..16].copy_from_slice(&self.id.to_be_bytes());
        out[16..24].copy_from_slice(&self.sent_nanos.to_be_bytes());
        out
    }

    /// Decodes an exact probe; anything else (wrong length, magic, kind, reserved byte) is `None`.
    pub fn decode(buf: &[u8]) -> Option<Self> {
        if buf.len() != PROBE_LEN || buf[..6] != MAGIC || buf[7] != 0 {
            return None;
        }
        let kind = match buf[6] {
            KIND_PING => ProbeKind::Ping,
            KIND_PONG => ProbeKind::Pong,
            _ => return None,
        };
        let word = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[at..at + 8]);
            u64::from_be_bytes(b)
        };
        Some(Probe { kind, id: word(8), sent_nanos: word(16) })
    }
}

/// IPv4 protocol number of a probe inside the encrypted tunnel (253: for experimentation,
/// RFC 3692); instances never send it, and the proxy would refuse it anyway.
const PROBE_PROTOCOL: u8 = 253;
/// An IPv4 header, then the probe.
pub const PROBE_PACKET_LEN: usize = crate::packet::IPV4_MIN_HEADER + PROBE_LEN;

impl Probe {
    /// The probe as an IPv4 packet (0.0.0.0 → 0.0.0.0, protocol 253), to be sealed like data on
    /// the encrypted tunnel, so only the peer can answer it.
    pub fn to_packet(&self) -> [u8; PROBE_PACKET_LEN] {
        let mut out = [0u8; PROBE_PACKET_LEN];
        out[0] = 0x45;
        out[2..4].copy_from_slice(&(PROBE_PACKET_LEN as u16).to_be_bytes());
        out[8] = 1;
        out[9] = PROBE_PROTOCOL;
        let sum = crate::packet::internet_checksum(&out[..20]);
        out[10..12].copy_from_slice(&sum.to_be_bytes());
        out[20..].copy_from_slice(&self.encode());
        out
    }

    /// The probe in an opened tunnel packet; `None` for anything else (data).
    pub fn from_packet(packet: &[u8]) -> Option<Self> {
        if packet.len() != PROBE_PACKET_LEN || packet[0] != 0x45 || packet[9] != PROBE_PROTOCOL {
            return None;
        }
        if packet[12..20] != [0; 8] {
            return None;
        }
        Self::decode(&packet[20..])
    }
}

/// What a datagram received on the tunnel port is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datagram {
    /// A data packet: hand it to [`crate::Proxy::inbound`].
    Ip,
    Probe(Probe),
    Garbage,
}

/// Tells data packets, probes and garbage apart by their first byte.
pub fn classify(datagram: &[u8]) -> Datagram {
    match datagram.first() {
        Some(b) if (0x45..=0x4f).contains(b) => Datagram::Ip,
        Some(0x00) => Probe::decode(datagram).map_or(Datagram::Garbage, Datagram::Probe),
        _ => Datagram::Garbage,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_pong_round_trip() {
        let ping = Probe::ping(0x0102_0304_0506_0708, 123_456_789);
        let bytes = ping.encode();
        assert_eq!(bytes[0], 0);
        assert_eq!(Probe::decode(&bytes), Some(ping));
        assert_eq!(classify(&bytes), Datagram::Probe(ping));
        let pong = ping.pong();
        assert_eq!(pong, Probe { kind: ProbeKind::Pong, id: ping.id, sent_nanos: 123_456_789 });
        assert_eq!(classify(&pong.encode()), Datagram::Probe(pong));
        assert_ne!(pong.encode(), bytes);
    }

    #[test]
    fn probes_travel_as_ip_packets() {
        let ping = Probe::ping(9, 77);
        let packet = ping.to_packet();
        assert_eq!(crate::packet::internet_checksum(&packet[..20]), 0);
        assert_eq!(Probe::from_packet(&packet), Some(ping));
        let mut other = packet;
        other[15] = 1; // a source address: an instance's packet, not a probe
        assert_eq!(Probe::from_packet(&other), None);
        assert_eq!(Probe::from_packet(&packet[..PROBE_PACKET_LEN - 1]), None);
        let mut tcp = packet;
        tcp[9] = 6;
        assert_eq!(Probe::from_packet(&tcp), None);
    }

    #[test]
    fn garbage_is_rejected() {
        let good = Probe::ping(1, 2).encode();
        assert_eq!(classify(&[]), Datagram::Garbage);
        assert_eq!(classify(&[0x00]), Datagram::Garbage);
        assert_eq!(classify(&good[..PROBE_LEN - 1]), Datagram::Garbage);
        let mut longer = good.to_vec();
        longer.push(0);
        assert_eq!(classify(&longer), Datagram::Garbage);
        for at in 1..8 {
            let mut bad = good;
            bad[at] ^= 0x55;
            assert_eq!(classify(&bad), Datagram::Garbage, "byte {at} flipped");
        }
        assert_eq!(classify(&[0x60, 0, 0, 0]), Datagram::Garbage);
        assert_eq!(classify(&[0x44, 0, 0, 0]), Datagram::Garbage);
        assert_eq!(classify(&[0x45, 0, 0, 20]), Datagram::Ip);
        assert_eq!(classify(&[0x4f]), Datagram::Ip);
    }
}
