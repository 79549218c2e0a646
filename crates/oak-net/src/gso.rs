//! TUN offload support (pure logic): the `virtio_net_hdr` the kernel prepends to every packet of
//! a TUN opened with `IFF_VNET_HDR`, completion of partial checksums, and segmentation of a large
//! TCP/IPv4 packet (TSO) into wire-sized packets, laid out back to back with equal sizes so that
//! one `sendmsg` with `UDP_SEGMENT` sends them as separate UDP datagrams.

/// Bytes of the `struct virtio_net_hdr` before each packet.
pub const VNET_HDR_LEN: usize = 10;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start + csum_offset` is partial.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_ECN` (flag bit on `gso_type`).
pub const GSO_ECN: u8 = 0x80;

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// The virtio-net header (legacy layout, host byte order as TUN uses by default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub fn decode(b: &[u8]) -> Option<VnetHdr> {
        if b.len() < VNET_HDR_LEN {
            return None;
        }
        let u = |at: usize| u16::from_ne_bytes([b[at], b[at + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    pub fn encode(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
    }
}

/// Why an offloaded packet cannot be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GsoError {
    #[error("checksum offsets outside the packet")]
    BadChecksumOffsets,
    #[error("not a well-formed TCP/IPv4 packet")]
    NotTcp4,
    #[error("segment size too small")]
    BadSegmentSize,
}

/// Unfolded one's-complement sum of `data` (big-endian 16-bit words; an odd last byte is padded
/// with zero) added to `initial`. This is the data path's hottest loop (every segment's TCP
/// checksum), so it sums native-endian 32-bit words into eight 64-bit lanes the compiler turns
/// into wide vector adds, folds once and swaps the 16-bit result into network order: the
/// one's-complement sum is independent of byte order up to that final swap (RFC 1071).
pub fn ones_sum(data: &[u8], initial: u64) -> u64 {
    let mut lanes = [0u64; 8];
    let mut blocks = data.chunks_exact(32);
    for block in &mut blocks {
        for (lane, word) in lanes.iter_mut().zip(block.chunks_exact(4)) {
            *lane += u64::from(u32::from_ne_bytes([word[0], word[1], word[2], word[3]]));
        }
    }
    // 2^32 ≡ 1 (mod 2^16 − 1): a lane's halves add like 32-bit words.
    let mut sum: u64 = lanes.iter().map(|l| (l & 0xffff_ffff) + (l >> 32)).sum();
    let mut rest = blocks.remainder().chunks_exact(2);
    for pair in &mut rest {
        sum += u64::from(u16::from_ne_bytes([pair[0], pair[1]]));
    }
    if let [last] = rest.remainder() {
        sum += u64::from(u16::from_ne_bytes([*last, 0]));
    }
    initial + u64::from(u16::from_be(fold64(sum)))
}

/// Folds a sum of [`ones_sum`] to 16 bits.
pub fn fold64(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Completes a partial checksum (`VIRTIO_NET_HDR_F_NEEDS_CSUM`): the field at
/// `start + offset` holds the pseudo-header sum; the checksum over `pkt[start..]` replaces it.
pub fn complete_checksum(pkt: &mut [u8], start: usize, offset: usize) -> Result<(), GsoError> {
    let at = start.checked_add(offset).ok_or(GsoError::BadChecksumOffsets)?;
    if at + 2 > pkt.len() {
        return Err(GsoError::BadChecksumOffsets);
    }
    let mut sum = !fold64(ones_sum(&pkt[start..], 0));
    if pkt[9] == 17 && sum == 0 {
        // UDP: a computed 0 is sent as all ones.
        sum = 0xffff;
    }
    pkt[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    Ok(())
}

/// Lengths of a TCP/IPv4 packet: (IPv4 header, IPv4 + TCP headers, IPv4 total length).
fn tcp4_lengths(pkt: &[u8]) -> Result<(usize, usize, usize), GsoError> {
    if pkt.len() < 40 || pkt[0] >> 4 != 4 || pkt[9] != 6 {
        return Err(GsoError::NotTcp4);
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    if ihl < 20 || ihl + 20 > pkt.len() {
        return Err(GsoError::NotTcp4);
    }
    let hdr = ihl + usize::from(pkt[ihl + 12] >> 4) * 4;
    let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
    if hdr < ihl + 20 || total < hdr || total > pkt.len() {
        return Err(GsoError::NotTcp4);
    }
    Ok((ihl, hdr, total))
}

/// Headers (IPv4 + TCP) length of a TCP/IPv4 packet.
pub fn tcp4_header_len(pkt: &[u8]) -> Result<usize, GsoError> {
    tcp4_lengths(pkt).map(|(_, hdr, _)| hdr)
}

/// Splits the TCP/IPv4 packet `pkt` (any checksums) into packets carrying at most `mss` bytes of
/// payload each, appended back to back to `out` (cleared first), with correct total lengths,
/// consecutive IP ids, advancing sequence numbers, FIN/PSH only on the last and CWR only on the
/// first segment, and full IPv4 and TCP checksums. Returns the size of every segment but the
/// last (which may be shorter): the `UDP_SEGMENT` size. A packet with no more than `mss` bytes of
/// payload becomes one segment.
pub fn segment_tcp4(pkt: &[u8], mss: usize, out: &mut Vec<u8>) -> Result<usize, GsoError> {
    segment_tcp4_with_room(pkt, mss, (0, 0), TcpChecksum::Full, out)
}

/// What a segment's TCP checksum field gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpChecksum {
    /// The complete checksum.
    Full,
    /// Only the pseudo-header sum (as with `VIRTIO_NET_HDR_F_NEEDS_CSUM`): for segments the
    /// secure tunnel carries, whose integrity its AEAD guarantees and whose receiver sets the
    /// field again anyway ([`tcp_partial_checksum`]); summing every payload byte was a third
    /// of the sending thread's time.
    Partial,
}

/// [`segment_tcp4`] leaving `room.0` bytes before and `room.1` after every segment (all of them
/// zero), so a tunnel can seal each segment where it lies: segment `i` starts at
/// `i * (room.0 + size + room.1) + room.0`, `size` being the returned segment size.
pub fn segment_tcp4_with_room(
    pkt: &[u8],
    mss: usize,
    room: (usize, usize),
    checksum: TcpChecksum,
    out: &mut Vec<u8>,
) -> Result<usize, GsoError> {
    if mss == 0 {
        return Err(GsoError::BadSegmentSize);
    }
    let (ihl, hdr, total) = tcp4_lengths(pkt)?;
    let header = &pkt[..hdr];
    let payload = &pkt[hdr..total];
    let id = u16::from_be_bytes([pkt[4], pkt[5]]);
    let seq = u32::from_be_bytes([pkt[ihl + 4], pkt[ihl + 5], pkt[ihl + 6], pkt[ihl + 7]]);
    let flags = pkt[ihl + 13];
    // Pseudo-header without the length: source, destination, protocol.
    let pseudo = ones_sum(&pkt[12..20], 6);
    // The headers' sums without the fields that change per segment (IP total length, id and
    // checksum; TCP sequence number, flags and checksum), which are added as numbers: nothing
    // reads back a segment just written (those loads stalled on the copy's stores).
    let mut base = [0u8; 120];
    base[..hdr].copy_from_slice(header);
    base[2..6].fill(0);
    base[10..12].fill(0);
    base[ihl + 4..ihl + 8].fill(0);
    base[ihl + 13] = 0;
    base[ihl + 16..ihl + 18].fill(0);
    let ip_base = ones_sum(&base[..ihl], 0);
    let tcp_base = ones_sum(&base[ihl..hdr], 0);
    let count = payload.len().div_ceil(mss).max(1);
    out.clear();
    out.reserve(count * (room.0 + hdr + room.1) + payload.len());
    for i in 0..count {
        let chunk = &payload[(i * mss).min(payload.len())..((i + 1) * mss).min(payload.len())];
        let len = (hdr + chunk.len()) as u16;
        let seg_id = id.wrapping_add(i as u16);
        let seg_seq = seq.wrapping_add((i * mss) as u32);
        let mut f = flags;
        if i + 1 < count {
            f &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            f &= !TCP_CWR;
        }
        let ip_sum = !fold64(ip_base + u64::from(len) + u64::from(seg_id));
        let tcp_len = u64::from(len) - ihl as u64;
        let field = match checksum {
            TcpChecksum::Full => {
                let words = u64::from(seg_seq >> 16) + u64::from(seg_seq & 0xffff) + u64::from(f);
                !fold64(tcp_base + words + pseudo + tcp_len + ones_sum(chunk, 0))
            }
            TcpChecksum::Partial => fold64(pseudo + tcp_len),
        };
        out.resize(out.len() + room.0, 0);
        let start = out.len();
        out.extend_from_slice(header);
        out.extend_from_slice(chunk);
        let seg = &mut out[start..];
        seg[2..4].copy_from_slice(&len.to_be_bytes());
        seg[4..6].copy_from_slice(&seg_id.to_be_bytes());
        seg[10..12].copy_from_slice(&ip_sum.to_be_bytes());
        let t = &mut seg[ihl..];
        t[4..8].copy_from_slice(&seg_seq.to_be_bytes());
        t[13] = f;
        t[16..18].copy_from_slice(&field.to_be_bytes());
        out.resize(out.len() + room.1, 0);
    }
    Ok(if count > 1 { hdr + mss } else { out.len() - room.0 - room.1 })
}

/// Prepares an unfragmented TCP/IPv4 packet for the TUN as a partial checksum, whatever its
/// checksum field held: the field gets the pseudo-header sum and the returned header says
/// `NEEDS_CSUM`, so the kernel trusts the packet on local delivery and completes the checksum
/// should it ever leave the machine. `None` (packet untouched) for anything else.
pub fn tcp_partial_checksum(pkt: &mut [u8]) -> Option<VnetHdr> {
    let (ihl, _, total) = tcp4_lengths(pkt).ok()?;
    if u16::from_be_bytes([pkt[6], pkt[7]]) & 0x3fff != 0 || total != pkt.len() {
        return None;
    }
    let pseudo = fold64(ones_sum(&pkt[12..20], 6 + (total - ihl) as u64));
    pkt[ihl + 16..ihl + 18].copy_from_slice(&pseudo.to_be_bytes());
    Some(VnetHdr { flags: F_NEEDS_CSUM, csum_start: ihl as u16, csum_offset: 16, ..VnetHdr::default() })
}

/// Most bytes of a coalesced IPv4 packet.
const COALESCED_MAX: usize = 65_535;

/// Receive-side coalescing (user-space GRO): consecutive in-order segments of one TCP/IPv4 flow,
/// as the tunnel delivers them, merged into one large packet written into the TUN with a
/// `VIRTIO_NET_HDR_GSO_TCPV4` header, so the kernel handles one packet instead of dozens.
/// Only plain data segments (ACK, optionally PSH on the last) with identical headers apart from
/// length, IP id, checksums and sequence number are merged.
#[derive(Debug, Default)]
pub struct TcpCoalescer {
    /// Virtio header room, then the merged packet.
    buf: Vec<u8>,
    ihl: usize,
    hdr: usize,
    mss: usize,
    next_seq: u32,
    segments: usize,
    /// A shorter or PSH segment ends the run.
    closed: bool,
}

impl TcpCoalescer {
    pub fn new() -> Self {
        TcpCoalescer { buf: Vec::with_capacity(COALESCED_MAX + VNET_HDR_LEN), ..Default::default() }
    }

    /// Whether a run is held (to be taken with [`Self::finish`]).
    pub fn is_active(&self) -> bool {
        self.segments > 0
    }

    /// Starts a run with `pkt`; false (and nothing held) if it cannot be merged with anything.
    pub fn start(&mut self, pkt: &[u8]) -> bool {
        self.segments = 0;
        let Ok((ihl, hdr, total)) = tcp4_lengths(pkt) else { return false };
        let frag = u16::from_be_bytes([pkt[6], pkt[7]]);
        let flags = pkt[ihl + 13];
        if total != pkt.len()
            || total == hdr
            || frag & 0x3fff != 0
            || flags & 0x10 == 0
            || flags & !(0x10 | TCP_PSH) != 0
        {
            return false;
        }
        self.buf.clear();
        self.buf.resize(VNET_HDR_LEN, 0);
        self.buf.extend_from_slice(pkt);
        self.ihl = ihl;
        self.hdr = hdr;
        self.mss = total - hdr;
        self.next_seq = seq_of(pkt, ihl).wrapping_add(self.mss as u32);
        self.segments = 1;
        self.closed = flags & TCP_PSH != 0;
        true
    }

    /// Appends `pkt` if it continues the run; false leaves the run unchanged.
    pub fn push(&mut self, pkt: &[u8]) -> bool {
        if self.segments == 0 || self.closed || pkt.len() <= self.hdr || pkt.len() - self.hdr > self.mss {
            return false;
        }
        if self.buf.len() + pkt.len() - self.hdr > VNET_HDR_LEN + COALESCED_MAX {
            return false;
        }
        let (ihl, hdr) = (self.ihl, self.hdr);
        let head = &self.buf[VNET_HDR_LEN..VNET_HDR_LEN + hdr];
        let same = pkt[0] == head[0]
            && usize::from(u16::from_be_bytes([pkt[2], pkt[3]])) == pkt.len()
            && pkt[1] == head[1]
            && pkt[6..10] == head[6..10]
            && pkt[12..ihl] == head[12..ihl]
            && pkt[ihl..ihl + 4] == head[ihl..ihl + 4]
            && pkt[ihl + 8..ihl + 13] == head[ihl + 8..ihl + 13]
            && pkt[ihl + 13] & !TCP_PSH == head[ihl + 13]
            && pkt[ihl + 14..ihl + 16] == head[ihl + 14..ihl + 16]
            && pkt[ihl + 18..hdr] == head[ihl + 18..hdr];
        if !same || seq_of(pkt, ihl) != self.next_seq {
            return false;
        }
        let payload = &pkt[hdr..];
        self.next_seq = self.next_seq.wrapping_add(payload.len() as u32);
        self.closed = payload.len() < self.mss || pkt[ihl + 13] & TCP_PSH != 0;
        if pkt[ihl + 13] & TCP_PSH != 0 {
            self.buf[VNET_HDR_LEN + ihl + 13] |= TCP_PSH;
        }
        self.buf.extend_from_slice(payload);
        self.segments += 1;
        true
    }

    /// Ends the run: the virtio header and packet to write into the TUN (a single segment is
    /// returned unchanged with an empty header). Empty if no run is held.
    pub fn finish(&mut self) -> &[u8] {
        let segments = std::mem::take(&mut self.segments);
        if segments == 0 {
            return &[];
        }
        if segments == 1 {
            // Its checksum may be partial (see `TcpChecksum::Partial`): the kernel completes it.
            let hdr = tcp_partial_checksum(&mut self.buf[VNET_HDR_LEN..]).unwrap_or_default();
            self.buf[..VNET_HDR_LEN].copy_from_slice(&hdr.encode());
            return &self.buf;
        }
        let ihl = self.ihl;
        let pkt = &mut self.buf[VNET_HDR_LEN..];
        let total = pkt.len();
        pkt[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        pkt[10..12].copy_from_slice(&[0, 0]);
        let ip_sum = !fold64(ones_sum(&pkt[..ihl], 0));
        pkt[10..12].copy_from_slice(&ip_sum.to_be_bytes());
        // The kernel completes the checksum: the field holds the pseudo-header sum.
        let pseudo = fold64(ones_sum(&pkt[12..20], 6 + (total - ihl) as u64));
        pkt[ihl + 16..ihl + 18].copy_from_slice(&pseudo.to_be_bytes());
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: self.hdr as u16,
            gso_size: self.mss as u16,
            csum_start: ihl as u16,
            csum_offset: 16,
        };
        self.buf[..VNET_HDR_LEN].copy_from_slice(&hdr.encode());
        &self.buf
    }
}

fn seq_of(pkt: &[u8], ihl: usize) -> u32 {
    u32::from_be_bytes([pkt[ihl + 4], pkt[ihl + 5], pkt[ihl + 6], pkt[ihl + 7]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::internet_checksum;
    use crate::testutil::{build, full_checksums_ok, L4};
    use std::net::Ipv4Addr;

    const A: Ipv4Addr = Ipv4Addr::new(10, 18, 0, 66);
    const B: Ipv4Addr = Ipv4Addr::new(10, 30, 1, 30);

    #[test]
    fn vnet_header_round_trips() {
        let h = VnetHdr { flags: 1, gso_type: GSO_TCPV4, hdr_len: 52, gso_size: 1398, csum_start: 20, csum_offset: 16 };
        assert_eq!(VnetHdr::decode(&h.encode()), Some(h));
        assert_eq!(VnetHdr::decode(&[0; 9]), None);
    }

    #[test]
    fn ones_sum_matches_the_reference_checksum() {
        for len in [0usize, 1, 2, 3, 5, 8, 15, 16, 17, 31, 33, 1001, 1388, 65_535] {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(!fold64(ones_sum(&data, 0)), internet_checksum(&data), "len {len}");
            let all_ones = vec![0xffu8; len];
            assert_eq!(!fold64(ones_sum(&all_ones, 0)), internet_checksum(&all_ones), "ones, len {len}");
        }
    }

    #[test]
    fn partial_checksums_are_completed() {
        let payload: Vec<u8> = (0..777u32).map(|i| i as u8).collect();
        for l4 in [L4::Tcp { sport: 1, dport: 2, flags: 0x18 }, L4::Udp { sport: 3, dport: 4, checksum: true }] {
            let good = build(A, B, l4, &payload);
            let (at, offset) = if matches!(l4, L4::Tcp { .. }) { (36, 16) } else { (26, 6) };
            // What the kernel hands over: the pseudo-header sum in the checksum field.
            let mut partial = good.clone();
            let l4_len = (good.len() - 20) as u64;
            let pseudo = fold64(ones_sum(&good[12..20], u64::from(good[9]) + l4_len));
            partial[at..at + 2].copy_from_slice(&pseudo.to_be_bytes());
            complete_checksum(&mut partial, 20, offset).unwrap();
            assert_eq!(partial, good);
        }
        let mut short = build(A, B, L4::Udp { sport: 3, dport: 4, checksum: true }, b"");
        assert_eq!(complete_checksum(&mut short, 20, 100), Err(GsoError::BadChecksumOffsets));
    }

    fn tcp_with_options(payload_len: usize, flags: u8) -> Vec<u8> {
        let payload: Vec<u8> = (0..payload_len).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut pkt = build(A, B, L4::Tcp { sport: 40000, dport: 5201, flags }, &payload);
        // 12 bytes of options (NOP NOP timestamp) after the 20-byte TCP header.
        let ts = [1u8, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
        pkt.splice(40..40, ts);
        pkt[32] = 8 << 4;
        let total = pkt.len() as u16;
        pkt[2..4].copy_from_slice(&total.to_be_bytes());
        pkt[4..6].copy_from_slice(&0xfffeu16.to_be_bytes());
        crate::testutil::recompute_checksums(&mut pkt);
        pkt
    }

    #[test]
    fn segmentation_produces_valid_consecutive_packets() {
        let mss = 1398;
        let payload_len = 10 * mss + 123;
        let big = tcp_with_options(payload_len, 0x80 | 0x18 | 0x01); // CWR PSH ACK FIN
        let mut out = Vec::new();
        let seg = segment_tcp4(&big, mss, &mut out).unwrap();
        assert_eq!(seg, 52 + mss);
        assert_eq!(out.len(), 11 * 52 + payload_len);
        let segments: Vec<&[u8]> = out.chunks(seg).collect();
        assert_eq!(segments.len(), 11);
        let mut data = Vec::new();
        for (i, s) in segments.iter().enumerate() {
            assert!(full_checksums_ok(s), "segment {i} checksums");
            let info = crate::packet::parse(s).unwrap();
            assert_eq!(info.total_len, s.len());
            assert_eq!((info.src, info.dst, info.src_port, info.dst_port), (A, B, 40000, 5201));
            assert_eq!(u16::from_be_bytes([s[4], s[5]]), 0xfffeu16.wrapping_add(i as u16), "IP id");
            let seq = u32::from_be_bytes([s[24], s[25], s[26], s[27]]);
            assert_eq!(seq, 0x0102_0304 + (i * mss) as u32, "sequence number");
            let flags = s[33];
            assert_eq!(flags & 0x10, 0x10, "ACK everywhere");
            assert_eq!(flags & 0x80 != 0, i == 0, "CWR only first");
            assert_eq!(flags & 0x09 != 0, i == 10, "FIN/PSH only last");
            assert_eq!(&s[40..52], &big[40..52], "options copied");
            data.extend_from_slice(&s[52..]);
        }
        assert_eq!(data, &big[52..]);
        assert_eq!(segments[10].len(), 52 + 123);
    }

    #[test]
    fn room_around_segments_leaves_them_as_without_it() {
        let mss = 1000;
        let big = tcp_with_options(3 * mss + 7, 0x10 | 0x08);
        let (mut plain, mut roomy) = (Vec::new(), Vec::new());
        let size = segment_tcp4(&big, mss, &mut plain).unwrap();
        assert_eq!(segment_tcp4_with_room(&big, mss, (16, 16), TcpChecksum::Full, &mut roomy).unwrap(), size);
        let stride = 16 + size + 16;
        assert_eq!(roomy.len(), 4 * 32 + plain.len());
        for (i, seg) in plain.chunks(size).enumerate() {
            let at = i * stride;
            assert!(roomy[at..at + 16].iter().all(|b| *b == 0), "head room of {i}");
            assert_eq!(&roomy[at + 16..at + 16 + seg.len()], seg, "segment {i}");
            assert!(roomy[at + 16 + seg.len()..at + 32 + seg.len()].iter().all(|b| *b == 0), "tail room of {i}");
        }
        let small = tcp_with_options(10, 0x10);
        assert_eq!(segment_tcp4_with_room(&small, mss, (16, 16), TcpChecksum::Full, &mut roomy).unwrap(), small.len());
        assert_eq!(roomy.len(), small.len() + 32);
    }

    #[test]
    fn partial_checksums_complete_to_the_full_ones() {
        let mss = 1000;
        let big = tcp_with_options(3 * mss + 7, 0x10 | 0x08);
        let (mut full, mut partial) = (Vec::new(), Vec::new());
        let size = segment_tcp4(&big, mss, &mut full).unwrap();
        segment_tcp4_with_room(&big, mss, (0, 0), TcpChecksum::Partial, &mut partial).unwrap();
        for (f, p) in full.chunks(size).zip(partial.chunks_mut(size)) {
            assert_ne!(f, &*p, "the TCP checksum is left partial");
            assert_eq!(f[..36], p[..36], "everything before the TCP checksum is the same");
            // The receiver's preparation is the same whatever the field held.
            let mut g = f.to_vec();
            let hdr = tcp_partial_checksum(p).expect("TCP");
            assert_eq!(tcp_partial_checksum(&mut g), Some(hdr));
            assert_eq!(g, *p);
            assert_eq!((hdr.flags, hdr.gso_type, hdr.csum_start, hdr.csum_offset), (F_NEEDS_CSUM, GSO_NONE, 20, 16));
            complete_checksum(p, 20, 16).unwrap();
            assert_eq!(f, &*p, "completed, the partial checksum is the full one");
        }
        let udp = build(A, B, L4::Udp { sport: 1, dport: 2, checksum: true }, &[0; 10]);
        assert_eq!(tcp_partial_checksum(&mut udp.clone()), None, "only TCP");
        let mut fragment = tcp_with_options(10, 0x10);
        fragment[6] |= 0x20; // more fragments
        assert_eq!(tcp_partial_checksum(&mut fragment), None, "never a fragment");
    }

    #[test]
    fn small_packet_is_one_segment_with_fixed_checksums() {
        let mut pkt = tcp_with_options(100, 0x10);
        pkt[36] ^= 0x55; // a partial/garbled TCP checksum gets recomputed
        let mut out = Vec::new();
        let seg = segment_tcp4(&pkt, 1398, &mut out).unwrap();
        assert_eq!(seg, pkt.len());
        assert!(full_checksums_ok(&out));
        let empty = tcp_with_options(0, 0x10);
        assert_eq!(segment_tcp4(&empty, 1398, &mut out).unwrap(), empty.len());
        assert_eq!(out, empty);
    }

    #[test]
    fn segmentation_refuses_non_tcp() {
        let udp = build(A, B, L4::Udp { sport: 1, dport: 2, checksum: true }, &[0; 100]);
        let mut out = Vec::new();
        assert_eq!(segment_tcp4(&udp, 1000, &mut out), Err(GsoError::NotTcp4));
        let tcp = tcp_with_options(10, 0x10);
        assert_eq!(segment_tcp4(&tcp, 0, &mut out), Err(GsoError::BadSegmentSize));
        assert_eq!(segment_tcp4(&tcp[..30], 10, &mut out), Err(GsoError::NotTcp4));
    }
    #[test]
    fn coalescing_inverts_segmentation() {
        let mss = 1398;
        let payload_len = 20 * mss + 77;
        let mut big = tcp_with_options(payload_len, 0x18); // PSH ACK
        let mut segs = Vec::new();
        let size = segment_tcp4(&big, mss, &mut segs).unwrap();
        let mut c = TcpCoalescer::new();
        let mut chunks = segs.chunks(size);
        assert!(c.start(chunks.next().unwrap()));
        for s in chunks {
            assert!(c.push(s));
        }
        // Nothing continues a run that ended with a short PSH segment.
        let again: Vec<u8> = segs.chunks(size).next().unwrap().to_vec();
        assert!(!c.push(&again));
        let out = c.finish().to_vec();
        let hdr = VnetHdr::decode(&out).unwrap();
        assert_eq!(
            hdr,
            VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: GSO_TCPV4,
                hdr_len: 52,
                gso_size: mss as u16,
                csum_start: 20,
                csum_offset: 16
            }
        );
        let mut merged = out[VNET_HDR_LEN..].to_vec();
        complete_checksum(&mut merged, 20, 16).unwrap();
        assert!(full_checksums_ok(&merged));
        // Same as the original apart from the IP id of the first segment (unchanged here).
        crate::testutil::recompute_checksums(&mut big);
        assert_eq!(merged, big);
        assert!(!c.is_active());
        assert!(c.finish().is_empty());
    }

    #[test]
    fn coalescing_refuses_gaps_other_flows_and_control_segments() {
        let mss = 1000;
        let big = tcp_with_options(4 * mss, 0x10);
        let mut segs = Vec::new();
        let size = segment_tcp4(&big, mss, &mut segs).unwrap();
        let s: Vec<Vec<u8>> = segs.chunks(size).map(<[u8]>::to_vec).collect();
        let mut c = TcpCoalescer::new();
        assert!(c.start(&s[0]));
        assert!(!c.push(&s[2]), "gap in sequence numbers");
        let mut other = s[1].clone();
        other[21] ^= 1; // other source port
        assert!(!c.push(&other));
        let mut window = s[1].clone();
        window[35] ^= 1;
        assert!(!c.push(&window), "different window");
        let mut fin = s[1].clone();
        fin[33] |= 0x01;
        assert!(!c.push(&fin));
        assert!(c.push(&s[1]));
        // A single segment comes back as a partial checksum the kernel completes.
        let mut one = TcpCoalescer::new();
        assert!(one.start(&s[3]));
        let out = one.finish().to_vec();
        let mut want = s[3].clone();
        let hdr = tcp_partial_checksum(&mut want).unwrap();
        assert_eq!(&out[..VNET_HDR_LEN], &hdr.encode());
        assert_eq!(&out[VNET_HDR_LEN..], &want[..]);
        complete_checksum(&mut want, 20, 16).unwrap();
        assert_eq!(want, s[3], "and completes to the segment's own");
        let syn = build(A, B, L4::Tcp { sport: 1, dport: 2, flags: 0x02 }, b"");
        assert!(!one.start(&syn));
        let ack = build(A, B, L4::Tcp { sport: 1, dport: 2, flags: 0x10 }, b"");
        assert!(!one.start(&ack), "pure ACKs are not merged");
        let udp = build(A, B, L4::Udp { sport: 1, dport: 2, checksum: true }, b"data");
        assert!(!one.start(&udp));
    }
}
