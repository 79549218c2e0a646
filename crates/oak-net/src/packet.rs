//! IPv4 parsing and in-place address rewriting.
//!
//! The proxy only ever changes the two addresses of a packet, so checksums are patched
//! incrementally (RFC 1624) instead of being recomputed over the payload: the cost stays constant
//! whatever the packet size.

use std::net::Ipv4Addr;

/// Minimum IPv4 header length (IHL 5).
pub const IPV4_MIN_HEADER: usize = 20;

const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;

/// TCP flag bits the flow table cares about (connection teardown and restart).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Transport protocols the proxy translates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    /// ICMP echo request/reply only; the echo identifier plays the role of both ports.
    Icmp,
}

/// Why a buffer is not a packet the proxy can translate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("packet shorter than an IPv4 header")]
    TooShort,
    #[error("not an IPv4 packet (version {0})")]
    NotIpv4(u8),
    #[error("bad IPv4 header length")]
    BadHeaderLength,
    #[error("bad IPv4 total length")]
    BadTotalLength,
    /// A fragment after the first: it has no transport header (see [`fragment_key`]).
    #[error("IPv4 fragment after the first")]
    Fragment,
    #[error("unsupported protocol {0}")]
    UnsupportedProtocol(u8),
    #[error("ICMP type {0} is not an echo request/reply")]
    UnsupportedIcmp(u8),
    #[error("transport header truncated")]
    TransportTruncated,
}

/// The fields of a parsed packet that translation needs; offsets refer to the parsed buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketInfo {
    pub protocol: Protocol,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// Source port, or the echo identifier for ICMP.
    pub src_port: u16,
    /// Destination port, or the echo identifier for ICMP.
    pub dst_port: u16,
    /// TCP flags (0 for UDP and ICMP).
    pub tcp_flags: u8,
    /// IPv4 header length in bytes (start of the transport header).
    pub header_len: usize,
    /// IPv4 total length; bytes after it in the buffer are ignored.
    pub total_len: usize,
}

/// What identifies the fragments of one datagram (RFC 791): they all carry these four fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragmentKey {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub id: u16,
}

/// The datagram `buf` is a fragment of, and whether it is the first fragment (the one with the
/// transport header); `None` for an unfragmented packet or a header too short to tell.
pub fn fragment_key(buf: &[u8]) -> Option<(FragmentKey, bool)> {
    if buf.len() < IPV4_MIN_HEADER || buf[0] >> 4 != 4 {
        return None;
    }
    let frag = u16::from_be_bytes([buf[6], buf[7]]);
    let (more_fragments, offset) = (frag & 0x2000 != 0, frag & 0x1fff);
    if !more_fragments && offset == 0 {
        return None;
    }
    let (src, dst) = addresses(buf);
    let key = FragmentKey { src, dst, protocol: buf[9], id: u16::from_be_bytes([buf[4], buf[5]]) };
    Some((key, offset == 0))
}

/// Parses the IPv4 and transport headers of `buf`, refusing anything the proxy does not
/// translate (other protocols, truncated headers). A first fragment parses like a whole packet
/// (its transport header is there); later fragments are refused with [`PacketError::Fragment`].
pub fn parse(buf: &[u8]) -> Result<PacketInfo, PacketError> {
    let Some(&first) = buf.first() else {
        return Err(PacketError::TooShort);
    };
    let version = first >> 4;
    if version != 4 {
        return Err(PacketError::NotIpv4(version));
    }
    if buf.len() < IPV4_MIN_HEADER {
        return Err(PacketError::TooShort);
    }
    let header_len = usize::from(first & 0x0f) * 4;
    if header_len < IPV4_MIN_HEADER || header_len > buf.len() {
        return Err(PacketError::BadHeaderLength);
    }
    let total_len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    if total_len < header_len || total_len > buf.len() {
        return Err(PacketError::BadTotalLength);
    }
    let offset = u16::from_be_bytes([buf[6], buf[7]]) & 0x1fff;
    if offset != 0 {
        return Err(PacketError::Fragment);
    }
    let (src, dst) = addresses(buf);
    let l4 = &buf[header_len..total_len];
    let port = |at: usize| u16::from_be_bytes([l4[at], l4[at + 1]]);
    let (protocol, src_port, dst_port, tcp_flags) = match buf[9] {
        PROTO_TCP => {
            if l4.len() < 20 {
                return Err(PacketError::TransportTruncated);
            }
            (Protocol::Tcp, port(0), port(2), l4[13])
        }
        PROTO_UDP => {
            if l4.len() < 8 {
                return Err(PacketError::TransportTruncated);
            }
            (Protocol::Udp, port(0), port(2), 0)
        }
        PROTO_ICMP => {
            if l4.len() < 8 {
                return Err(PacketError::TransportTruncated);
            }
            if l4[0] != ICMP_ECHO_REQUEST && l4[0] != ICMP_ECHO_REPLY {
                return Err(PacketError::UnsupportedIcmp(l4[0]));
            }
            let id = port(4);
            (Protocol::Icmp, id, id, 0)
        }
        other => return Err(PacketError::UnsupportedProtocol(other)),
    };
    Ok(PacketInfo { protocol, src, dst, src_port, dst_port, tcp_flags, header_len, total_len })
}

/// Replaces source and destination address of a packet previously parsed into `info`, patching
/// the IPv4 header checksum and the TCP/UDP checksum (whose pseudo-header covers the addresses).
/// ICMP checksums do not cover addresses and stay untouched; a UDP checksum of 0 ("none") stays 0.
/// In a first fragment the transport checksum covers the whole datagram, so the same patch holds.
pub fn rewrite_addresses(buf: &mut [u8], info: &PacketInfo, src: Ipv4Addr, dst: Ipv4Addr) {
    if buf.len() < info.total_len || info.total_len < info.header_len + 8 {
        // `info` does not describe this buffer; leave it alone rather than corrupt it.
        return;
    }
    let Some((old, new)) = rewrite_ip_addresses(buf, src, dst) else { return };
    let l4 = info.header_len;
    match info.protocol {
        Protocol::Tcp => patch_checksum(buf, l4 + 16, &old, &new),
        Protocol::Udp => {
            let at = l4 + 6;
            if buf[at] != 0 || buf[at + 1] != 0 {
                patch_checksum(buf, at, &old, &new);
                if buf[at] == 0 && buf[at + 1] == 0 {
                    // A computed 0 is sent as all ones; 0 on the wire means "no checksum".
                    buf[at] = 0xff;
                    buf[at + 1] = 0xff;
                }
            }
        }
        Protocol::Icmp => {}
    }
}

/// Replaces the addresses of the IPv4 header only (and its checksum): enough for a fragment
/// after the first, which carries no transport header. Returns the old and new address bytes
/// if anything changed.
pub fn rewrite_ip_addresses(buf: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr) -> Option<([u8; 8], [u8; 8])> {
    if buf.len() < IPV4_MIN_HEADER {
        return None;
    }
    let mut old = [0u8; 8];
    old.copy_from_slice(&buf[12..20]);
    let mut new = [0u8; 8];
    new[..4].copy_from_slice(&src.octets());
    new[4..].copy_from_slice(&dst.octets());
    if old == new {
        return None;
    }
    buf[12..20].copy_from_slice(&new);
    patch_checksum(buf, 10, &old, &new);
    Some((old, new))
}

/// The source and destination address of an IPv4 header (`buf` at least 20 bytes).
pub fn addresses(buf: &[u8]) -> (Ipv4Addr, Ipv4Addr) {
    (Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]), Ipv4Addr::new(buf[16], buf[17], buf[18], buf[19]))
}

/// Updates the 16-bit checksum stored at `at` after the covered bytes `old` became `new`
/// (RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m')). Both slices must have an even, equal length.
fn patch_checksum(buf: &mut [u8], at: usize, old: &[u8], new: &[u8]) {
    let stored = u16::from_be_bytes([buf[at], buf[at + 1]]);
    let mut sum = u32::from(!stored);
    for (o, n) in old.chunks_exact(2).zip(new.chunks_exact(2)) {
        sum += u32::from(!u16::from_be_bytes([o[0], o[1]]));
        sum += u32::from(u16::from_be_bytes([n[0], n[1]]));
    }
    let patched = !fold(sum);
    buf[at..at + 2].copy_from_slice(&patched.to_be_bytes());
}

/// Folds a 32-bit accumulator into a 16-bit one's-complement sum (end-around carry).
fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Full Internet checksum of `data` (RFC 1071), for building packets from scratch.
pub fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        sum = u32::from(fold(sum));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(u16::from_be_bytes([*last, 0]));
    }
    !fold(sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{build, fragment, full_checksums_ok, reassemble, recompute_checksums, L4};

    const A: Ipv4Addr = Ipv4Addr::new(10, 18, 0, 66);
    const B: Ipv4Addr = Ipv4Addr::new(10, 30, 1, 30);
    const NEW_SRC: Ipv4Addr = Ipv4Addr::new(10, 30, 0, 2);
    const NEW_DST: Ipv4Addr = Ipv4Addr::new(10, 18, 0, 130);

    fn rewrite_and_compare(mut pkt: Vec<u8>) -> Vec<u8> {
        assert!(full_checksums_ok(&pkt), "test packet must start valid");
        let info = parse(&pkt).unwrap();
        rewrite_addresses(&mut pkt, &info, NEW_SRC, NEW_DST);
        let mut expected = pkt.clone();
        recompute_checksums(&mut expected);
        assert_eq!(pkt, expected, "incremental checksums differ from a full recomputation");
        let after = parse(&pkt).unwrap();
        assert_eq!((after.src, after.dst), (NEW_SRC, NEW_DST));
        assert_eq!((after.src_port, after.dst_port), (info.src_port, info.dst_port));
        pkt
    }

    #[test]
    fn parses_tcp_ports_and_flags() {
        let pkt = build(A, B, L4::Tcp { sport: 34278, dport: 30443, flags: TCP_SYN }, b"hi");
        let info = parse(&pkt).unwrap();
        assert_eq!(info.protocol, Protocol::Tcp);
        assert_eq!((info.src, info.dst), (A, B));
        assert_eq!((info.src_port, info.dst_port), (34278, 30443));
        assert_eq!(info.tcp_flags, TCP_SYN);
        assert_eq!(info.header_len, 20);
        assert_eq!(info.total_len, 20 + 20 + 2);
    }

    #[test]
    fn tcp_rewrite_matches_full_recomputation() {
        let payload: Vec<u8> = (0..=255u8).cycle().take(1001).collect();
        rewrite_and_compare(build(A, B, L4::Tcp { sport: 1, dport: 80, flags: TCP_ACK }, &payload));
        rewrite_and_compare(build(A, B, L4::Tcp { sport: 65535, dport: 443, flags: 0 }, b""));
    }

    #[test]
    fn udp_rewrite_matches_full_recomputation() {
        rewrite_and_compare(build(A, B, L4::Udp { sport: 5353, dport: 53, checksum: true }, b"query"));
    }

    #[test]
    fn udp_zero_checksum_stays_zero() {
        let pkt = rewrite_and_compare(build(A, B, L4::Udp { sport: 9, dport: 9, checksum: false }, b"x"));
        assert_eq!(&pkt[26..28], &[0, 0]);
    }

    #[test]
    fn icmp_echo_rewrite_keeps_icmp_checksum() {
        let pkt = build(A, B, L4::Icmp { kind: ICMP_ECHO_REQUEST, id: 0x1234, seq: 7 }, b"ping");
        let icmp_sum = [pkt[22], pkt[23]];
        let out = rewrite_and_compare(pkt);
        assert_eq!([out[22], out[23]], icmp_sum);
        let info = parse(&out).unwrap();
        assert_eq!((info.protocol, info.src_port, info.dst_port), (Protocol::Icmp, 0x1234, 0x1234));
    }

    #[test]
    fn ip_options_are_skipped() {
        let mut pkt = build(A, B, L4::Udp { sport: 1000, dport: 2000, checksum: true }, b"opt");
        // Insert 4 bytes of options (NOP NOP NOP EOL) and fix IHL, length and checksum.
        pkt.splice(20..20, [1, 1, 1, 0]);
        pkt[0] = 0x46;
        let len = pkt.len() as u16;
        pkt[2..4].copy_from_slice(&len.to_be_bytes());
        recompute_checksums(&mut pkt);
        let info = parse(&pkt).unwrap();
        assert_eq!((info.header_len, info.src_port, info.dst_port), (24, 1000, 2000));
        rewrite_and_compare(pkt);
    }

    /// A first fragment is translated like a packet (its transport checksum covers the whole
    /// datagram), a later one by its IP header only; joined again, every checksum holds.
    #[test]
    fn fragments_rewrite_into_a_valid_datagram() {
        for l4 in [
            L4::Udp { sport: 5353, dport: 53, checksum: true },
            L4::Tcp { sport: 1000, dport: 80, flags: TCP_ACK },
            L4::Icmp { kind: ICMP_ECHO_REQUEST, id: 7, seq: 1 },
        ] {
            let payload: Vec<u8> = (0..2000u32).map(|i| (i * 7) as u8).collect();
            let whole = build(A, B, l4, &payload);
            let (mut first, mut second) = fragment(&whole, 1400);
            assert_eq!(fragment_key(&whole), None);
            let (key, is_first) = fragment_key(&first).unwrap();
            assert_eq!((key.src, key.dst, key.protocol, key.id, is_first), (A, B, whole[9], 0x4242, true));
            assert_eq!(fragment_key(&second), Some((key, false)));
            assert_eq!(parse(&second), Err(PacketError::Fragment));
            let info = parse(&first).unwrap();
            assert_eq!(info.total_len, 1420);
            rewrite_addresses(&mut first, &info, NEW_SRC, NEW_DST);
            assert!(rewrite_ip_addresses(&mut second, NEW_SRC, NEW_DST).is_some());
            assert_eq!((addresses(&first), addresses(&second)), ((NEW_SRC, NEW_DST), (NEW_SRC, NEW_DST)));
            for f in [&first, &second] {
                assert_eq!(internet_checksum(&f[..20]), 0, "IP header checksum of a fragment");
            }
            let joined = reassemble(&first, &second);
            assert!(full_checksums_ok(&joined), "{l4:?}: the rewritten datagram's checksums");
            // Nothing but the addresses (and checksums) changed.
            let mut back = joined.clone();
            back[12..20].copy_from_slice(&whole[12..20]);
            recompute_checksums(&mut back);
            assert_eq!(back, whole);
        }
    }

    #[test]
    fn garbled_input_is_refused() {
        let good = build(A, B, L4::Tcp { sport: 1, dport: 2, flags: 0 }, b"");
        assert_eq!(parse(&[]), Err(PacketError::TooShort));
        assert_eq!(parse(&good[..19]), Err(PacketError::TooShort));
        let mut v6 = good.clone();
        v6[0] = 0x60;
        assert_eq!(parse(&v6), Err(PacketError::NotIpv4(6)));
        for ihl in [0x40u8, 0x44, 0x4f] {
            let mut bad = good.clone();
            bad[0] = ihl;
            let err = parse(&bad).unwrap_err();
            assert!(matches!(err, PacketError::BadHeaderLength | PacketError::BadTotalLength), "IHL {ihl:#x}: {err:?}");
        }
        let mut long = good.clone();
        long[2..4].copy_from_slice(&1000u16.to_be_bytes());
        assert_eq!(parse(&long), Err(PacketError::BadTotalLength));
        let mut short_total = good.clone();
        short_total[2..4].copy_from_slice(&10u16.to_be_bytes());
        assert_eq!(parse(&short_total), Err(PacketError::BadTotalLength));
        let mut truncated = good.clone();
        truncated[2..4].copy_from_slice(&30u16.to_be_bytes());
        assert_eq!(parse(&truncated), Err(PacketError::TransportTruncated));
        let mut offset = good.clone();
        offset[7] = 0x01;
        assert_eq!(parse(&offset), Err(PacketError::Fragment));
        let mut sctp = good.clone();
        sctp[9] = 132;
        assert_eq!(parse(&sctp), Err(PacketError::UnsupportedProtocol(132)));
        let unreachable = build(A, B, L4::Icmp { kind: 3, id: 0, seq: 0 }, b"");
        assert_eq!(parse(&unreachable), Err(PacketError::UnsupportedIcmp(3)));
    }

    #[test]
    fn every_truncation_and_byte_flip_is_handled_without_panic() {
        let base = build(A, B, L4::Tcp { sport: 1, dport: 2, flags: 0 }, b"abcdef");
        for len in 0..base.len() {
            let mut cut = base[..len].to_vec();
            if let Ok(info) = parse(&cut) {
                rewrite_addresses(&mut cut, &info, NEW_SRC, NEW_DST);
            }
        }
        for at in 0..base.len() {
            for value in [0u8, 0x0f, 0x45, 0xff] {
                let mut bad = base.clone();
                bad[at] = value;
                if let Ok(info) = parse(&bad) {
                    rewrite_addresses(&mut bad, &info, NEW_SRC, NEW_DST);
                }
            }
        }
    }

    #[test]
    fn trailing_bytes_after_total_length_are_ignored() {
        let mut pkt = build(A, B, L4::Udp { sport: 1, dport: 2, checksum: true }, b"data");
        let len = pkt.len();
        pkt.extend_from_slice(&[0xaa; 5]);
        let info = parse(&pkt).unwrap();
        assert_eq!(info.total_len, len);
        rewrite_addresses(&mut pkt, &info, NEW_SRC, NEW_DST);
        assert!(full_checksums_ok(&pkt[..len]));
        assert_eq!(&pkt[len..], &[0xaa; 5]);
    }

    #[test]
    fn internet_checksum_of_rfc1071_example() {
        // RFC 1071 §3 example: sum of these words is 0xddf2, checksum is its complement.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(internet_checksum(&data), !0xddf2);
        assert_eq!(internet_checksum(&[0xff]), !0xff00);
    }
}
