//! The overlay's packet loop: packets the kernel routes into the TUN go through the proxy and
//! out on the UDP tunnel (or straight back into the TUN for instances on this node); datagrams
//! from peers go through the proxy into the TUN. Misses ask the cluster for the route table
//! without holding up other flows (the proxy queues the packet). A ticker expires flows and
//! interests, probes peers' round-trip times for closest balancing and re-checks the public
//! address.
//!
//! Between the proxy and the socket sits the secure tunnel (`oak_net::secure`): every datagram
//! is sealed for its peer's key and every received one opened and checked, probes included,
//! so nothing from an unknown or forged sender reaches an instance or the RTT table. Refusals
//! are counted (node information) and logged, rate-limited. With `--insecure-plaintext-overlay`
//! packets travel in clear as they did before.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use oak_api::net::{PeerAnswer, PeerQuery, RouteTable, TableQuery};
use oak_net::gso::{self, TcpChecksum, VnetHdr, VNET_HDR_LEN};
use oak_net::secure::{DATA_HEADER, MIN_OUT, OVERHEAD};
use oak_net::{
    classify, Datagram, Inbound, Ipv4Net, Opened, Outbound, PeerKey, Probe, ProbeKind, Proxy, ProxyConfig, Refusal,
    RefusalCounts, Sealed, SecureTunnel, StaticKey, Tun,
};
use tokio::task::JoinSet;

use super::names;
use super::state::Attachment;
use super::NetManager;
use crate::reports::Outgoing;
use oak_core::log_budget::LogBudget;

/// Largest packet read from the TUN (an offloaded TCP packet is up to 64 KiB).
const TUN_BUFFER: usize = 65_536 + VNET_HDR_LEN + 64;
/// Largest tunnel datagram accepted (peers send at most [`WIRE_MAX`]).
const UDP_BUFFER: usize = 4096;
/// Largest IPv4 packet carried in one tunnel datagram (the overlay MTU; sealed, it grows by
/// [`OVERHEAD`] and still fits a 1500-byte link).
const WIRE_MAX: usize = names::MTU as usize;
/// Datagrams received per `recvmmsg`.
const BATCH: usize = 32;
/// Tunnel socket buffers (the kernel caps them without `CAP_NET_ADMIN`).
const SOCKET_BUFFER: libc::c_int = 4 << 20;
/// How often the packet threads look at the stop flag while idle.
const IDLE_POLL_MS: i32 = 200;
/// Most bytes of one UDP GSO send (a UDP datagram's limit, with headroom).
const GSO_MAX_BYTES: usize = 65_000;
const GSO_MAX_SEGMENTS: usize = 64;
const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;
/// Receive buffer with UDP GRO: a coalesced run of datagrams is up to 64 KiB.
const GRO_BUFFER: usize = 65_536;
const TICK: Duration = Duration::from_secs(1);
const PROBE_EVERY: u32 = 2;

pub(crate) struct Datapath {
    proxy: Mutex<Proxy>,
    tun: Tun,
    udp: UdpSocket,
    epoch: Instant,
    net: Weak<NetManager>,
    stopped: AtomicBool,
    /// Cleared when the kernel refuses `UDP_SEGMENT`; segments are then sent one by one.
    udp_gso: AtomicBool,
    tasks: Mutex<JoinSet<()>>,
    /// `None`: the insecure plaintext tunnel. Never locked while holding `proxy`.
    secure: Option<Mutex<SecureTunnel>>,
    refusal_log: Mutex<LogBudget>,
}

impl Datapath {
    /// Opens the TUN and binds the tunnel port, then starts the loops: one thread per direction
    /// (blocking I/O, no async overhead per packet) and a ticker task.
    pub(crate) async fn open(
        net: Arc<NetManager>,
        endpoint: SocketAddrV4,
        key: Option<StaticKey>,
    ) -> std::io::Result<Arc<Self>> {
        let instance_range = Ipv4Net::parse(names::SERVICE_RANGE)
            .ok_or_else(|| std::io::Error::other("the service range is not an IPv4 prefix"))?;
        let secure = key.map(|k| Mutex::new(SecureTunnel::new(k, instance_range)));
        let tun = Tun::open_offload(names::TUN)?;
        let udp = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, endpoint.port())).map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot bind the tunnel port {}: {e}", endpoint.port()))
        })?;
        udp.set_read_timeout(Some(Duration::from_millis(IDLE_POLL_MS as u64)))?;
        set_buffers(&udp);
        let proxy = Proxy::new(ProxyConfig::new(endpoint));
        let weak_net = Arc::downgrade(&net);
        let datapath = Arc::new(Self {
            proxy: Mutex::new(proxy),
            tun,
            udp,
            epoch: Instant::now(),
            net: weak_net.clone(),
            stopped: AtomicBool::new(false),
            udp_gso: AtomicBool::new(true),
            tasks: Mutex::new(JoinSet::new()),
            secure,
            refusal_log: Mutex::new(LogBudget::new(Instant::now())),
        });
        tracing::debug!(offload = datapath.tun.vnet_hdr(), "overlay TUN opened");
        let d = datapath.clone();
        std::thread::Builder::new().name("oak-tun-rx".into()).spawn(move || from_tun(d))?;
        let d = datapath.clone();
        std::thread::Builder::new().name("oak-tunnel-rx".into()).spawn(move || from_tunnel(d))?;
        datapath.tasks.lock().unwrap().spawn(ticker(datapath.clone(), weak_net));
        Ok(datapath)
    }

    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        self.tasks.lock().unwrap().abort_all();
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    pub(crate) fn add_local(&self, a: &Attachment) {
        if let Some(instance_ip) = a.instance_ip {
            self.proxy.lock().unwrap().add_local(a.wiring.nsip, instance_ip, &a.job_name);
        } else {
            tracing::warn!(job = %a.job_name, instance = a.instance, "instance has no instance IP: it cannot use service IPs");
        }
    }

    pub(crate) fn remove_local(&self, nsip: Ipv4Addr) {
        self.proxy.lock().unwrap().remove_local(nsip);
    }

    /// Applies a table and sends the packets that waited for it.
    pub(crate) fn apply_table(self: &Arc<Self>, table: RouteTable) {
        if let Some(secure) = &self.secure {
            let mut secure = secure.lock().unwrap();
            for inst in &table.instance_list {
                let Ok(host) = inst.host_ip.trim().parse::<Ipv4Addr>() else { continue };
                if inst.host_port == 0 || inst.public_key.is_empty() {
                    continue;
                }
                match PeerKey::parse(&inst.public_key) {
                    Ok(key) => secure.set_peer(key, SocketAddrV4::new(host, inst.host_port), None),
                    Err(e) => {
                        tracing::warn!(job = %table.app_name, instance = inst.instance_number, error = %e, "ignoring a bad tunnel key in a route table")
                    }
                }
            }
        }
        let released = {
            let mut proxy = self.proxy.lock().unwrap();
            match proxy.apply_table(&table, Instant::now()) {
                Ok(report) if !report.skipped.is_empty() => {
                    tracing::debug!(job = %table.app_name, skipped = ?report.skipped, "route table entries ignored");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "ignoring a route table"),
            }
            proxy.take_released()
        };
        if released.is_empty() {
            return;
        }
        let mut scratch = Scratch::new();
        for packet in released {
            // Queued packets are plain (checksums complete); give them an empty virtio header.
            let mut framed = vec![0u8; VNET_HDR_LEN + packet.len()];
            framed[VNET_HDR_LEN..].copy_from_slice(&packet);
            self.outbound(&mut framed, 0, None, &mut scratch);
        }
    }

    /// The proxy's counters, the probed round-trip times and the traffic per peer worker (read
    /// at a scrape of `/metrics`, never per packet).
    pub(crate) fn observe(&self) -> Observed {
        let (stats, rtts) = {
            let proxy = self.proxy.lock().unwrap();
            (proxy.stats(), proxy.peer_rtts())
        };
        let traffic = self.secure.as_ref().map(|s| s.lock().unwrap().peer_traffic()).unwrap_or_default();
        Observed { stats, rtts, traffic }
    }

    /// Refused tunnel datagrams per reason; `None` for the plaintext tunnel.
    pub(crate) fn refusals(&self) -> Option<RefusalCounts> {
        self.secure.as_ref().map(|s| s.lock().unwrap().refusals())
    }

    /// The peer directory answered about a key: a peer now (its held handshake completes), or
    /// refused.
    pub(crate) fn directory_answer(&self, answer: &PeerAnswer) {
        let Some(secure) = &self.secure else { return };
        let key = match PeerKey::parse(&answer.public_key) {
            Ok(k) => k,
            Err(e) => {
                tracing::debug!(error = %e, "peer answer with a bad key ignored");
                return;
            }
        };
        let found = match (answer.error.is_empty(), answer.host_ip.trim().parse::<Ipv4Addr>()) {
            (true, Ok(host)) if answer.host_port != 0 => {
                Some((SocketAddrV4::new(host, answer.host_port), Ipv4Net::parse(&answer.subnet)))
            }
            _ => None,
        };
        match &found {
            Some((endpoint, _)) => {
                tracing::debug!(peer = ?key, %endpoint, worker = %answer.worker_id, "tunnel peer confirmed by the directory")
            }
            None => {
                self.log_refusal(None, Refusal::UnknownPeer, &format!("no worker holds key {key:?}: {}", answer.error))
            }
        }
        let outbox = {
            let mut secure = secure.lock().unwrap();
            secure.directory_answer(key, found, Instant::now());
            secure.take_outbox()
        };
        self.send_outbox(outbox);
    }

    fn send_outbox(&self, outbox: Vec<(SocketAddrV4, Vec<u8>)>) {
        for (to, datagram) in outbox {
            if let Err(e) = self.udp.send_to(&datagram, to) {
                tracing::debug!(peer = %to, error = %e, "tunnel send failed");
            }
        }
    }

    /// One log line per refusal, at most a few per window (see [`LogBudget`]).
    fn log_refusal(&self, from: Option<SocketAddrV4>, reason: Refusal, detail: &str) {
        let (log, unlogged) = self.refusal_log.lock().unwrap().admit(Instant::now());
        if unlogged > 0 {
            tracing::warn!(count = unlogged, "more tunnel datagrams refused (not logged one by one)");
        }
        if log {
            match from {
                Some(from) => tracing::warn!(peer = %from, %reason, "tunnel datagram refused{detail}"),
                None => tracing::warn!(%reason, "tunnel peer refused: {detail}"),
            }
        }
    }

    /// Sends one packet to a peer: sealed, or in clear with the plaintext tunnel.
    fn send_packet(&self, packet: &[u8], peer: SocketAddrV4, scratch: &mut Scratch) {
        let Some(secure) = &self.secure else {
            if let Err(e) = self.udp.send_to(packet, peer) {
                tracing::debug!(%peer, error = %e, "tunnel send failed");
            }
            return;
        };
        scratch.sealed.resize((packet.len() + OVERHEAD).max(MIN_OUT), 0);
        let (sealed, outbox) = {
            let mut secure = secure.lock().unwrap();
            (secure.seal(peer, packet, &mut scratch.sealed), secure.take_outbox())
        };
        self.send_outbox(outbox);
        match sealed {
            Sealed::Ready(n) => {
                if let Err(e) = self.udp.send_to(&scratch.sealed[..n], peer) {
                    tracing::debug!(%peer, error = %e, "tunnel send failed");
                }
            }
            Sealed::Queued => {}
            Sealed::NoPeer => tracing::debug!(%peer, "no tunnel key known for the peer; packet dropped"),
        }
    }

    /// Bytes of the virtio-net header before each TUN packet (0 without offloads).
    fn tun_header(&self) -> usize {
        if self.tun.vnet_hdr() {
            VNET_HDR_LEN
        } else {
            0
        }
    }

    /// One packet from a local instance: `frame` is `VNET_HDR_LEN` bytes of room (holding the
    /// virtio header when the TUN has offloads) then the packet; `gso_size` is the segment size
    /// the kernel asked for (0: none).
    fn outbound(&self, frame: &mut [u8], gso_size: usize, net: Option<&NetManager>, scratch: &mut Scratch) {
        let packet = &mut frame[VNET_HDR_LEN..];
        let action = self.proxy.lock().unwrap().outbound(packet, Instant::now());
        match action {
            Outbound::Tunnel(peer) => {
                if gso_size > 0 || packet.len() > WIRE_MAX {
                    // Sealed, every segment gets the tunnel's header before and tag after it.
                    // and its TCP checksum is left partial: the AEAD protects the segment and
                    // the receiver sets the field again (`TcpChecksum::Partial`).
                    let (room, checksum, out) = match &self.secure {
                        Some(_) => ((DATA_HEADER, OVERHEAD - DATA_HEADER), TcpChecksum::Partial, &mut scratch.sealed),
                        None => ((0, 0), TcpChecksum::Full, &mut scratch.segments),
                    };
                    match segment(packet, gso_size, room, checksum, out) {
                        Some(size) => self.send_segments(size, peer, scratch),
                        None => tracing::debug!("cannot segment a large outbound packet; dropped"),
                    }
                } else {
                    self.send_packet(packet, peer, scratch);
                }
            }
            Outbound::Local => {
                if gso_size > 0 || packet.len() > WIRE_MAX {
                    let Some(size) = segment(packet, gso_size, (0, 0), TcpChecksum::Full, &mut scratch.segments) else {
                        tracing::debug!("cannot segment a large local packet; dropped");
                        return;
                    };
                    for seg in scratch.segments.chunks(size) {
                        scratch.frame.clear();
                        scratch.frame.resize(self.tun_header(), 0);
                        scratch.frame.extend_from_slice(seg);
                        self.write_tun(&scratch.frame);
                    }
                } else {
                    // A TCP checksum left partial (see `from_tun`) goes in as one again.
                    let partial = match (&self.secure, self.tun_header()) {
                        (Some(_), 1..) => gso::tcp_partial_checksum(&mut frame[VNET_HDR_LEN..]),
                        _ => None,
                    };
                    frame[..VNET_HDR_LEN].copy_from_slice(&partial.unwrap_or_default().encode());
                    self.write_tun(&frame[VNET_HDR_LEN - self.tun_header()..]);
                }
            }
            Outbound::Query(ip) => {
                tracing::debug!(%ip, "route table miss; asking the cluster");
                if let Some(net) = net {
                    net.send(Outgoing::TableQuery(TableQuery { sname: String::new(), sip: ip.to_string() }));
                }
            }
            Outbound::Queued => {}
            Outbound::Drop(reason) => tracing::debug!(%reason, "outbound packet dropped"),
        }
    }

    /// Writes a packet the secure tunnel delivered into the TUN: a TCP one's checksum may be
    /// partial (`TcpChecksum::Partial`), so it goes as `NEEDS_CSUM`, or without offloads gets
    /// its checksum completed here.
    fn write_tun_opened(&self, packet: &mut [u8]) {
        let Some(hdr) = gso::tcp_partial_checksum(packet) else {
            return self.write_tun_packet(packet);
        };
        if self.tun_header() == 0 {
            let _ = gso::complete_checksum(packet, usize::from(hdr.csum_start), usize::from(hdr.csum_offset));
            return self.write_tun(packet);
        }
        if let Err(e) = self.tun.try_send_vectored(&[&hdr.encode(), packet]) {
            tracing::debug!(error = %e, "TUN write failed");
        }
    }

    /// Writes a plain packet (complete checksums, no offload) into the TUN.
    fn write_tun_packet(&self, packet: &[u8]) {
        if self.tun_header() == 0 {
            return self.write_tun(packet);
        }
        let empty = [0u8; VNET_HDR_LEN];
        if let Err(e) = self.tun.try_send_vectored(&[&empty, packet]) {
            tracing::debug!(error = %e, "TUN write failed");
        }
    }

    fn write_tun(&self, frame: &[u8]) {
        if let Err(e) = self.tun.try_send(frame) {
            tracing::debug!(error = %e, "TUN write failed");
        }
    }

    /// Sends the equal-size segments of `size` bytes (the last may be shorter), each as one
    /// datagram: on the secure tunnel they lie in `scratch.sealed` with room for the header and
    /// tag around each, and are sealed there, outside the tunnel's lock, with counters reserved
    /// in one go; the overhead is constant, so the sealed datagrams are equal-size too and still
    /// go out with UDP GSO. In clear they lie back to back in `scratch.segments`.
    fn send_segments(&self, size: usize, peer: SocketAddrV4, scratch: &mut Scratch) {
        let Some(secure) = &self.secure else {
            return self.send_datagrams(&scratch.segments, size, peer);
        };
        let stride = size + OVERHEAD;
        let count = scratch.sealed.len().div_ceil(stride);
        let bytes = scratch.sealed.len() - count * OVERHEAD;
        let reserved = secure.lock().unwrap().reserve(peer, count, bytes);
        if let Some(mut batch) = reserved {
            for datagram in scratch.sealed.chunks_mut(stride) {
                let len = datagram.len() - OVERHEAD;
                batch.seal_in_place(datagram, len);
            }
            self.send_datagrams(&scratch.sealed, stride, peer);
        } else {
            // No session yet: the tunnel queues the packets and starts a handshake.
            let mut out = vec![0u8; stride.max(MIN_OUT)];
            for datagram in scratch.sealed.chunks(stride) {
                let packet = &datagram[DATA_HEADER..datagram.len() - (OVERHEAD - DATA_HEADER)];
                match secure.lock().unwrap().seal(peer, packet, &mut out) {
                    Sealed::Ready(n) => {
                        if let Err(e) = self.udp.send_to(&out[..n], peer) {
                            tracing::debug!(%peer, error = %e, "tunnel send failed");
                        }
                    }
                    Sealed::Queued => {}
                    Sealed::NoPeer => {
                        tracing::debug!(%peer, "no tunnel key known for the peer; packet dropped");
                        break;
                    }
                }
            }
        }
        let outbox = secure.lock().unwrap().take_outbox();
        self.send_outbox(outbox);
    }

    /// Sends equal-size datagrams (the last may be shorter) laid out back to back, with as few
    /// `sendmsg` calls as UDP GSO allows.
    fn send_datagrams(&self, data: &[u8], size: usize, peer: SocketAddrV4) {
        if data.is_empty() {
            return;
        }
        let per_send = (GSO_MAX_BYTES / size).clamp(1, GSO_MAX_SEGMENTS);
        for chunk in data.chunks(per_send * size) {
            if chunk.len() > size && self.udp_gso.load(Ordering::Relaxed) {
                match send_gso(&self.udp, chunk, size as u16, peer) {
                    Ok(()) => continue,
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EIO | libc::ENOPROTOOPT)) => {
                        tracing::debug!(error = %e, "UDP segmentation offload unavailable; sending segments one by one");
                        self.udp_gso.store(false, Ordering::Relaxed);
                    }
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "tunnel send failed");
                        continue;
                    }
                }
            }
            for seg in chunk.chunks(size) {
                if let Err(e) = self.udp.send_to(seg, peer) {
                    tracing::debug!(%peer, error = %e, "tunnel send failed");
                }
            }
        }
    }
}

/// The data path's figures for `/metrics`.
pub(crate) struct Observed {
    pub stats: oak_net::ProxyStats,
    /// Probed round-trip time per peer worker.
    pub rtts: Vec<(SocketAddrV4, std::time::Duration)>,
    /// Packets and bytes per peer worker (the secure tunnel only).
    pub traffic: Vec<(SocketAddrV4, oak_net::Traffic)>,
}

/// Reusable buffers of one packet thread.
struct Scratch {
    segments: Vec<u8>,
    frame: Vec<u8>,
    /// Sealed datagrams, back to back.
    sealed: Vec<u8>,
}

impl Scratch {
    fn new() -> Self {
        Scratch {
            segments: Vec::with_capacity(2 * TUN_BUFFER),
            frame: Vec::with_capacity(WIRE_MAX + VNET_HDR_LEN),
            sealed: Vec::with_capacity(2 * TUN_BUFFER + 64 * OVERHEAD),
        }
    }
}

/// Segments a TCP packet into packets of at most [`WIRE_MAX`] bytes (and at most `gso_size`
/// payload bytes if given), with `room` around each (see [`gso::segment_tcp4_with_room`]);
/// returns the segment size.
fn segment(
    packet: &[u8],
    gso_size: usize,
    room: (usize, usize),
    checksum: TcpChecksum,
    out: &mut Vec<u8>,
) -> Option<usize> {
    let hdr = gso::tcp4_header_len(packet).ok()?;
    let space = WIRE_MAX.checked_sub(hdr).filter(|r| *r > 0)?;
    let mss = if gso_size > 0 { gso_size.min(space) } else { space };
    gso::segment_tcp4_with_room(packet, mss, room, checksum, out).ok()
}

/// Asks for large socket buffers: bursts of a bulk transfer otherwise overflow the defaults.
fn set_buffers(udp: &UdpSocket) {
    let fd = udp.as_raw_fd();
    for (force, plain) in [(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF), (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)] {
        let size = SOCKET_BUFFER;
        let set = |opt| {
            // SAFETY: setsockopt reads one c_int from a valid pointer.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    (&size as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            }
        };
        if set(force) < 0 {
            set(plain);
        }
    }
}

fn sockaddr(peer: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: peer.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*peer.ip()).to_be() },
        sin_zero: [0; 8],
    }
}

/// One `sendmsg` with `UDP_SEGMENT`: the kernel cuts `data` into datagrams of `size` bytes.
fn send_gso(udp: &UdpSocket, data: &[u8], size: u16, peer: SocketAddrV4) -> std::io::Result<()> {
    let mut addr = sockaddr(peer);
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    // Room for one cmsg carrying a u16, aligned for cmsghdr.
    let mut control = [0u64; 4];
    // SAFETY: msghdr is plain data; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut addr as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a length.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as _;
    // SAFETY: the control buffer holds CMSG_SPACE(2) bytes, so the first header and its data fit.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = SOL_UDP;
        (*cmsg).cmsg_type = UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), size);
    }
    loop {
        // SAFETY: `msg` describes valid buffers.
        let n = unsafe { libc::sendmsg(udp.as_raw_fd(), &msg, 0) };
        if n >= 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// TUN → proxy → tunnel (or back into the TUN), on a thread of its own.
fn from_tun(d: Arc<Datapath>) {
    raise_priority();
    let head = d.tun_header();
    // The packet always starts at VNET_HDR_LEN, so released and read packets share one layout.
    let mut buf = vec![0u8; TUN_BUFFER];
    let mut scratch = Scratch::new();
    let mut spin = Spin::new();
    while !d.is_stopped() {
        let n = match d.tun.try_recv(&mut buf[VNET_HDR_LEN - head..]) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if spin.again() {
                    continue;
                }
                if let Err(e) = d.tun.wait_readable(IDLE_POLL_MS) {
                    tracing::error!(error = %e, "waiting on the TUN failed; the overlay data path stops");
                    return;
                }
                continue;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                if !d.is_stopped() {
                    tracing::error!(error = %e, "reading the TUN failed; the overlay data path stops");
                }
                return;
            }
        };
        spin.reset();
        if n < head {
            continue;
        }
        let frame = &mut buf[..VNET_HDR_LEN - head + n];
        let mut gso_size = 0;
        if head > 0 {
            let hdr = VnetHdr::decode(&frame[..VNET_HDR_LEN]).unwrap_or_default();
            match hdr.gso_type & !gso::GSO_ECN {
                gso::GSO_NONE => {
                    if hdr.flags & gso::F_NEEDS_CSUM != 0 {
                        let packet = &mut frame[VNET_HDR_LEN..];
                        let (start, offset) = (usize::from(hdr.csum_start), usize::from(hdr.csum_offset));
                        // On the secure tunnel a TCP checksum may stay partial: whoever writes
                        // the packet into a TUN sets it up again (`TcpChecksum::Partial`).
                        let tcp = d.secure.is_some() && offset == 16 && packet.get(9) == Some(&6);
                        if !tcp && gso::complete_checksum(packet, start, offset).is_err() {
                            tracing::debug!("TUN packet with bad checksum offsets dropped");
                            continue;
                        }
                    }
                }
                gso::GSO_TCPV4 => gso_size = usize::from(hdr.gso_size).max(1),
                other => {
                    tracing::debug!(gso_type = other, "TUN packet of an unsupported offload type dropped");
                    continue;
                }
            }
        }
        let net = d.net.upgrade();
        d.outbound(frame, gso_size, net.as_deref(), &mut scratch);
    }
}

/// Tunnel → proxy → TUN, on a thread of its own, `BATCH` receives per system call. With UDP GRO
/// on the socket one receive may hold several datagrams of one sender back to back, all of the
/// size the control message gives except the last.
fn from_tunnel(d: Arc<Datapath>) {
    raise_priority();
    let head = d.tun_header();
    let gro = head > 0 && enable_udp_gro(&d.udp);
    let size = if gro { GRO_BUFFER } else { UDP_BUFFER };
    let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; size]).collect();
    // SAFETY: plain C structs, all-zero is valid.
    let mut addrs: Vec<libc::sockaddr_in> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut controls = vec![[0u64; 8]; BATCH];
    let mut iovs: Vec<libc::iovec> =
        bufs.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() }).collect();
    // SAFETY: plain C struct.
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    for (((m, iov), addr), control) in
        msgs.iter_mut().zip(iovs.iter_mut()).zip(addrs.iter_mut()).zip(controls.iter_mut())
    {
        m.msg_hdr.msg_name = (addr as *mut libc::sockaddr_in).cast();
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
        m.msg_hdr.msg_control = control.as_mut_ptr().cast();
    }
    // (message, offset, length, delivered) of every datagram of a batch.
    let mut datagrams: Vec<(usize, usize, usize, bool)> = Vec::with_capacity(BATCH * 64);
    let mut coalescer = gso::TcpCoalescer::new();
    let mut spin = Spin::new();
    while !d.is_stopped() {
        for m in msgs.iter_mut() {
            m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            m.msg_hdr.msg_controllen = size_of::<[u64; 8]>() as _;
            m.msg_hdr.msg_flags = 0;
        }
        // SAFETY: every mmsghdr points at live buffers of the sizes given; the socket blocks for
        // the first datagram (up to its read timeout) and takes what else is queued.
        let got = unsafe {
            libc::recvmmsg(
                d.udp.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE | if spin.spinning() { libc::MSG_DONTWAIT } else { 0 },
                std::ptr::null_mut(),
            )
        };
        if got < 0 {
            // Timeouts, interrupts and ICMP port unreachable from a peer all surface here.
            let e = std::io::Error::last_os_error();
            if e.kind() == ErrorKind::WouldBlock && spin.spinning() {
                spin.again();
                continue;
            }
            if !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) {
                tracing::debug!(error = %e, "tunnel receive error");
            }
            continue;
        }
        spin.reset();
        datagrams.clear();
        if let Some(secure) = &d.secure {
            let batch = Received { msgs: &msgs[..got as usize], addrs: &addrs, bufs: &mut bufs, gro };
            open_batch(&d, secure, batch, &mut datagrams);
        } else {
            let now = Instant::now();
            let mut proxy = d.proxy.lock().unwrap();
            for (i, m) in msgs.iter().enumerate().take(got as usize) {
                let n = m.msg_len as usize;
                if m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 || n == 0 {
                    continue;
                }
                let seg = if gro { gro_size(&m.msg_hdr).filter(|s| *s > 0).unwrap_or(n) } else { n };
                let mut off = 0;
                while off < n {
                    let len = seg.min(n - off);
                    let packet = &mut bufs[i][off..off + len];
                    let mut deliver = false;
                    if matches!(classify(packet), Datagram::Ip) {
                        match proxy.inbound(packet, now) {
                            Inbound::Deliver => deliver = true,
                            Inbound::Drop(reason) => tracing::debug!(%reason, "inbound packet dropped"),
                        }
                    }
                    datagrams.push((i, off, len, deliver));
                    off += len;
                }
            }
        }
        for &(i, off, len, deliver) in &datagrams {
            let packet = &mut bufs[i][off..off + len];
            if deliver {
                if head > 0 {
                    // Merge in-order TCP segments of one flow into one offloaded packet.
                    if coalescer.push(packet) {
                        continue;
                    }
                    if coalescer.is_active() {
                        d.write_tun(coalescer.finish());
                    }
                    if coalescer.start(packet) {
                        continue;
                    }
                }
                if d.secure.is_some() {
                    d.write_tun_opened(packet);
                } else {
                    d.write_tun_packet(packet);
                }
                continue;
            }
            let a = addrs[i];
            let from = SocketAddrV4::new(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)), u16::from_be(a.sin_port));
            match classify(packet) {
                Datagram::Ip => {}
                Datagram::Probe(probe) if probe.kind == ProbeKind::Ping => {
                    let _ = d.udp.send_to(&probe.pong().encode(), SocketAddr::V4(from));
                }
                Datagram::Probe(probe) => {
                    let now = d.epoch.elapsed().as_nanos() as u64;
                    if let Some(rtt) = now.checked_sub(probe.sent_nanos) {
                        d.proxy.lock().unwrap().set_rtt(from, Duration::from_nanos(rtt));
                    }
                }
                Datagram::Garbage => tracing::trace!(%from, "ignoring a garbled tunnel datagram"),
            }
        }
        if coalescer.is_active() {
            d.write_tun(coalescer.finish());
        }
    }
}

/// One `recvmmsg` worth of datagrams.
struct Received<'a> {
    msgs: &'a [libc::mmsghdr],
    addrs: &'a [libc::sockaddr_in],
    bufs: &'a mut [Vec<u8>],
    gro: bool,
}

/// The secure tunnel's receive: opens every datagram of a batch where it lies (the packet then
/// starts `DATA_HEADER` bytes into it), answers probes, checks that each packet's source belongs
/// to its sender and translates the rest; `datagrams` gets those to deliver (their offsets are
/// the packets'). Decryption holds the tunnel's lock one received message at a time, so the
/// other packet thread can reserve counters in between; handshake answers, pongs, directory
/// questions and refusal logs go out once the locks are released.
fn open_batch(
    d: &Datapath,
    secure: &Mutex<SecureTunnel>,
    batch: Received<'_>,
    datagrams: &mut Vec<(usize, usize, usize, bool)>,
) {
    let now = Instant::now();
    let mut unknown: Vec<PeerKey> = Vec::new();
    let mut refused: Vec<(SocketAddrV4, Refusal)> = Vec::new();
    // (message, offset, length, sender) of every opened packet.
    let mut opened: Vec<(usize, usize, usize, PeerKey, SocketAddrV4)> = Vec::new();
    for (i, m) in batch.msgs.iter().enumerate() {
        let n = m.msg_len as usize;
        if m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 || n == 0 {
            continue;
        }
        let a = batch.addrs[i];
        let from = SocketAddrV4::new(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)), u16::from_be(a.sin_port));
        let seg = if batch.gro { gro_size(&m.msg_hdr).filter(|s| *s > 0).unwrap_or(n) } else { n };
        // One lock per received message (one datagram, or a GRO run of one sender's).
        let mut tunnel = secure.lock().unwrap();
        for off in (0..n).step_by(seg) {
            let len = seg.min(n - off);
            let datagram = &mut batch.bufs[i][off..off + len];
            match tunnel.open_in_place(from, datagram, now) {
                Opened::Packet { len: plen, peer } => opened.push((i, off + DATA_HEADER, plen, peer, from)),
                Opened::Control => {}
                Opened::Unknown(key) => unknown.push(key),
                Opened::Refused(reason) => refused.push((from, reason)),
            }
        }
    }
    let mut pongs: Vec<(SocketAddrV4, Vec<u8>)> = Vec::new();
    let outbox = {
        let mut secure = secure.lock().unwrap();
        let mut proxy = d.proxy.lock().unwrap();
        // The last sender and source found allowed: a run of one flow's packets is checked once
        // (nothing can change the answer while both locks are held).
        let mut allowed: Option<(PeerKey, Ipv4Addr)> = None;
        for (i, off, plen, peer, from) in opened {
            let packet = &mut batch.bufs[i][off..off + plen];
            if let Some(probe) = Probe::from_packet(packet) {
                match (probe.kind, secure.endpoint_of(&peer)) {
                    (ProbeKind::Ping, Some(endpoint)) => {
                        let mut out = vec![0u8; MIN_OUT];
                        if let Sealed::Ready(k) = secure.seal(endpoint, &probe.pong().to_packet(), &mut out) {
                            out.truncate(k);
                            pongs.push((endpoint, out));
                        }
                    }
                    (ProbeKind::Pong, Some(endpoint)) => {
                        let at = d.epoch.elapsed().as_nanos() as u64;
                        if let Some(rtt) = at.checked_sub(probe.sent_nanos) {
                            proxy.set_rtt(endpoint, Duration::from_nanos(rtt));
                        }
                    }
                    (_, None) => {}
                }
                continue;
            }
            let (src, _) = oak_net::packet::addresses(packet);
            if allowed != Some((peer, src)) {
                if !secure.source_allowed(peer, src, proxy.instance_endpoint(src)) {
                    secure.refuse(Refusal::WrongSource);
                    refused.push((from, Refusal::WrongSource));
                    continue;
                }
                allowed = Some((peer, src));
            }
            match proxy.inbound(packet, now) {
                Inbound::Deliver => datagrams.push((i, off, plen, true)),
                Inbound::Drop(reason) => tracing::debug!(%reason, "inbound packet dropped"),
            }
        }
        secure.take_outbox()
    };
    d.send_outbox(outbox);
    d.send_outbox(pongs);
    if !unknown.is_empty() {
        if let Some(net) = d.net.upgrade() {
            for key in unknown {
                tracing::debug!(peer = ?key, "handshake from a key no table named; asking the cluster");
                net.send(Outgoing::PeerQuery(PeerQuery { public_key: key.to_hex() }));
            }
        }
    }
    for (from, reason) in refused {
        d.log_refusal(Some(from), reason, "");
    }
}

/// A packet thread keeps looking for work a little while after its last packet before it
/// sleeps: in a bulk transfer the next packet usually comes within microseconds, and a sleep
/// and wakeup per packet costs more than that and adds to every round trip.
struct Spin {
    until: Option<Instant>,
}

/// How long a packet thread looks for more work before it sleeps.
const SPIN: Duration = Duration::from_micros(50);

impl Spin {
    fn new() -> Self {
        Spin { until: None }
    }

    /// Work came: the next wait starts with a spin again.
    fn reset(&mut self) {
        self.until = None;
    }

    /// Whether the thread is (still) in its spin; a spin that just began counts.
    fn spinning(&mut self) -> bool {
        match self.until {
            None => true,
            Some(until) => Instant::now() < until,
        }
    }

    /// Nothing was there: true (after letting other threads run) if the thread should look
    /// again, false once the spin is over and it should block.
    fn again(&mut self) -> bool {
        let now = Instant::now();
        let until = *self.until.get_or_insert(now + SPIN);
        if now >= until {
            return false;
        }
        std::thread::yield_now();
        true
    }
}

/// Packet threads run at a higher priority than the instances whose packets they carry: a
/// packet thread that waits for a core behind a busy instance delays every flow through it
/// (the kernel's own network processing likewise preempts user code). Best effort: without
/// `CAP_SYS_NICE` the thread keeps its priority.
fn raise_priority() {
    // SAFETY: gettid and setpriority take plain integers.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, PACKET_THREAD_NICE) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot raise the packet thread's priority");
    }
}

/// Nice value of the packet threads.
const PACKET_THREAD_NICE: libc::c_int = -10;

/// Asks the kernel to hand over runs of same-size datagrams in one receive (`UDP_GRO`).
fn enable_udp_gro(udp: &UdpSocket) -> bool {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads one c_int from a valid pointer.
    let rc = unsafe {
        libc::setsockopt(
            udp.as_raw_fd(),
            SOL_UDP,
            UDP_GRO,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rc == 0
}

/// The datagram size of a coalesced receive, from its `UDP_GRO` control message.
fn gro_size(msg: &libc::msghdr) -> Option<usize> {
    // SAFETY: the kernel filled `msg_control` up to `msg_controllen` with well-formed cmsgs.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == SOL_UDP && (*cmsg).cmsg_type == UDP_GRO {
                let size = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
                return usize::try_from(size).ok();
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    None
}

async fn ticker(d: Arc<Datapath>, net: Weak<NetManager>) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut ticks: u32 = 0;
    let address_every = match net.upgrade() {
        Some(net) => (net.config.address_check.as_secs() / TICK.as_secs()).max(1) as u32,
        None => return,
    };
    loop {
        interval.tick().await;
        ticks = ticks.wrapping_add(1);
        let Some(net) = net.upgrade() else { return };
        let expired = d.proxy.lock().unwrap().expire(Instant::now());
        for job in expired.jobs {
            net.interest_expired(job);
        }
        if let Some(secure) = &d.secure {
            // Handshake retries, rekeying, keepalives.
            let outbox = {
                let mut secure = secure.lock().unwrap();
                secure.tick(Instant::now());
                secure.take_outbox()
            };
            d.send_outbox(outbox);
        }
        if ticks.is_multiple_of(PROBE_EVERY) {
            let targets = d.proxy.lock().unwrap().probe_targets();
            let sent_nanos = d.epoch.elapsed().as_nanos() as u64;
            let mut scratch = Scratch::new();
            for (i, peer) in targets.into_iter().enumerate() {
                let ping = Probe::ping(u64::from(ticks) << 16 | i as u64, sent_nanos);
                if d.secure.is_some() {
                    // Sealed like data: only the peer can answer, so no forged pong steers
                    // the closest choice.
                    d.send_packet(&ping.to_packet(), peer, &mut scratch);
                } else {
                    let _ = d.udp.send_to(&ping.encode(), peer);
                }
            }
        }
        if ticks.is_multiple_of(address_every) && net.recheck_address() {
            let endpoint = *net.endpoint.lock().unwrap();
            d.proxy.lock().unwrap().set_own_endpoint(endpoint);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instances_largest_packet_goes_out_in_one_udp_send() {
        // The fewest header bytes a TCP segment has (IPv4 and TCP without options): the most
        // segments an offloaded packet of `INSTANCE_GSO_MAX` bytes can be cut into.
        let mss = WIRE_MAX - 40;
        let segments = (names::INSTANCE_GSO_MAX as usize - 40).div_ceil(mss);
        let sealed = WIRE_MAX + OVERHEAD;
        assert!(segments * sealed <= GSO_MAX_BYTES, "{segments} sealed segments of {sealed} bytes");
        assert!(segments <= GSO_MAX_SEGMENTS);
    }

    #[test]
    fn a_spin_lasts_its_time_then_blocks_until_work_comes() {
        let mut spin = Spin::new();
        let start = Instant::now();
        assert!(spin.spinning(), "a wait starts with a spin");
        let mut looks = 0;
        while spin.again() {
            looks += 1;
        }
        assert!(start.elapsed() >= SPIN, "the spin ended after {:?}", start.elapsed());
        assert!(looks > 0);
        assert!(!spin.spinning() && !spin.again(), "after the spin the thread blocks");
        spin.reset();
        assert!(spin.spinning() && spin.again(), "work came: the next wait spins again");
    }

    #[test]
    fn packet_threads_run_at_a_raised_priority() {
        if !oak_testenv::can_run("packet_threads_run_at_a_raised_priority", &[oak_testenv::Need::Root]) {
            return;
        }
        let nice = std::thread::spawn(|| {
            raise_priority();
            // SAFETY: plain integers; errno is cleared first because -1 is a valid answer.
            unsafe {
                *libc::__errno_location() = 0;
                libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t)
            }
        })
        .join()
        .unwrap();
        assert_eq!(nice, PACKET_THREAD_NICE);
    }
}
