//! Hand-built packets and an independent, from-scratch checksum computation for the tests.

use std::net::Ipv4Addr;

/// Transport part of a test packet.
#[derive(Debug, Clone, Copy)]
pub enum L4 {
    Tcp { sport: u16, dport: u16, flags: u8 },
    Udp { sport: u16, dport: u16, checksum: bool },
    Icmp { kind: u8, id: u16, seq: u16 },
}

/// Builds an IPv4 packet (IHL 5, TTL 64) with correct checksums.
pub fn build(src: Ipv4Addr, dst: Ipv4Addr, l4: L4, payload: &[u8]) -> Vec<u8> {
    let (proto, mut transport) = match l4 {
        L4::Tcp { sport, dport, flags } => {
            let mut t = vec![0u8; 20];
            t[0..2].copy_from_slice(&sport.to_be_bytes());
            t[2..4].copy_from_slice(&dport.to_be_bytes());
            t[4..8].copy_from_slice(&0x0102_0304u32.to_be_bytes());
            t[12] = 5 << 4;
            t[13] = flags;
            t[14..16].copy_from_slice(&64240u16.to_be_bytes());
            (6u8, t)
        }
        L4::Udp { sport, dport, checksum } => {
            let mut t = vec![0u8; 8];
            t[0..2].copy_from_slice(&sport.to_be_bytes());
            t[2..4].copy_from_slice(&dport.to_be_bytes());
            let len = (8 + payload.len()) as u16;
            t[4..6].copy_from_slice(&len.to_be_bytes());
            if checksum {
                t[6] = 1; // marker: "has a checksum", replaced below
            }
            (17u8, t)
        }
        L4::Icmp { kind, id, seq } => {
            let mut t = vec![0u8; 8];
            t[0] = kind;
            t[4..6].copy_from_slice(&id.to_be_bytes());
            t[6..8].copy_from_slice(&seq.to_be_bytes());
            (1u8, t)
        }
    };
    transport.extend_from_slice(payload);
    let total = (20 + transport.len()) as u16;
    let mut pkt = vec![0u8; 20];
    pkt[0] = 0x45;
    pkt[2..4].copy_from_slice(&total.to_be_bytes());
    pkt[4..6].copy_from_slice(&0x4242u16.to_be_bytes());
    pkt[6] = 0x40; // DF
    pkt[8] = 64;
    pkt[9] = proto;
    pkt[12..16].copy_from_slice(&src.octets());
    pkt[16..20].copy_from_slice(&dst.octets());
    pkt.extend_from_slice(&transport);
    recompute_checksums(&mut pkt);
    pkt
}

/// Straightforward one's-complement sum, independent of the crate's implementation.
fn ones_sum(parts: &[&[u8]]) -> u16 {
    let mut bytes = Vec::new();
    for p in parts {
        bytes.extend_from_slice(p);
    }
    if bytes.len() % 2 == 1 {
        bytes.push(0);
    }
    let mut sum: u64 = 0;
    for w in bytes.chunks(2) {
        sum += (u64::from(w[0]) << 8) | u64::from(w[1]);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Recomputes every checksum of `pkt` from scratch (a UDP checksum of 0 stays "none").
pub fn recompute_checksums(pkt: &mut [u8]) {
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
    pkt[10] = 0;
    pkt[11] = 0;
    let ip = !ones_sum(&[&pkt[..ihl]]);
    pkt[10..12].copy_from_slice(&ip.to_be_bytes());
    let proto = pkt[9];
    let at = match proto {
        6 => ihl + 16,
        17 => ihl + 6,
        1 => ihl + 2,
        _ => return,
    };
    if proto == 17 && pkt[at] == 0 && pkt[at + 1] == 0 {
        return;
    }
    pkt[at] = 0;
    pkt[at + 1] = 0;
    let l4_len = ((total - ihl) as u16).to_be_bytes();
    let sum = if proto == 1 {
        !ones_sum(&[&pkt[ihl..total]])
    } else {
        let pseudo = [&pkt[12..20], &[0, proto], &l4_len[..], &pkt[ihl..total]];
        let s = !ones_sum(&pseudo);
        if proto == 17 && s == 0 {
            0xffff
        } else {
            s
        }
    };
    pkt[at..at + 2].copy_from_slice(&sum.to_be_bytes());
}

/// Whether every checksum of `pkt` equals a full recomputation.
pub fn full_checksums_ok(pkt: &[u8]) -> bool {
    let mut copy = pkt.to_vec();
    recompute_checksums(&mut copy);
    copy == pkt
}

/// Splits `pkt` (IHL 5) like a router would: the first fragment carries `first_payload` bytes
/// after the IP header (a multiple of 8), the second the rest; both with correct header checksums.
pub fn fragment(pkt: &[u8], first_payload: usize) -> (Vec<u8>, Vec<u8>) {
    assert_eq!(first_payload % 8, 0);
    let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
    let header = |len: usize, frag: u16| {
        let mut h = pkt[..20].to_vec();
        h[2..4].copy_from_slice(&((20 + len) as u16).to_be_bytes());
        h[6..8].copy_from_slice(&frag.to_be_bytes());
        h[10] = 0;
        h[11] = 0;
        let sum = !ones_sum(&[&h]);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        h
    };
    let mut first = header(first_payload, 0x2000);
    first.extend_from_slice(&pkt[20..20 + first_payload]);
    let mut second = header(total - 20 - first_payload, (first_payload / 8) as u16);
    second.extend_from_slice(&pkt[20 + first_payload..total]);
    (first, second)
}

/// Joins two fragments made by [`fragment`] back into one packet (header of the first).
pub fn reassemble(first: &[u8], second: &[u8]) -> Vec<u8> {
    let mut pkt = first.to_vec();
    pkt.extend_from_slice(&second[20..]);
    let total = pkt.len() as u16;
    pkt[2..4].copy_from_slice(&total.to_be_bytes());
    pkt[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
    pkt[10] = 0;
    pkt[11] = 0;
    let sum = !ones_sum(&[&pkt[..20]]);
    pkt[10..12].copy_from_slice(&sum.to_be_bytes());
    pkt
}
