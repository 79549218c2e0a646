//! The authenticated, encrypted tunnel between workers, WireGuard-style: every pair of workers
//! runs a Noise IK handshake with their static X25519 keys and then exchanges ChaCha20-Poly1305
//! sealed datagrams with a replay window and rekeying every two minutes. The protocol is
//! `boringtun`'s (`noise::Tunn`, one per peer); this module only routes datagrams to the right
//! peer, decides who is a peer, and counts what it refuses.
//!
//! Peers come from the control plane only: a route table names each instance's worker key, and
//! an initiator whose key no table named is held until the cluster's peer directory confirms it
//! ([`Opened::Unknown`], [`SecureTunnel::directory_answer`]). After decryption the inner source
//! address must belong to the sender ([`SecureTunnel::source_allowed`]: cryptokey routing).
//!
//! Like the rest of the crate it does no I/O: datagrams to send for handshakes, keepalives and
//! packets released by a finished handshake collect in an outbox the caller drains.

mod keys;
mod refusals;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};

pub use keys::{KeyError, PeerKey, StaticKey, KEY_LEN};
pub use refusals::{Refusal, RefusalCounts};

/// Bytes a sealed data packet adds (type, receiver index, counter, tag); constant, no padding,
/// so equal-size segments stay equal-size on the wire.
pub const OVERHEAD: usize = 32;
/// Smallest output buffer: a handshake initiation.
pub const MIN_OUT: usize = 148;
/// Handshakes per second accepted before initiators must prove their address (cookies).
const HANDSHAKES_PER_SECOND: u64 = 100;
/// Initiators waiting for the directory at once; more are refused until answers come.
const MAX_UNKNOWN: usize = 256;
/// How long a held initiation waits for the directory, and how long a refused key stays
/// refused without asking again.
const DIRECTORY_WAIT: Duration = Duration::from_secs(10);
/// Largest 24-bit local index (boringtun keeps the low 8 bits for its sessions).
const MAX_INDEX: u32 = (1 << 24) - 1;

/// An IPv4 prefix (a worker's /26, the instance IP range).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Net {
    /// Parses `a.b.c.d/n`.
    pub fn parse(text: &str) -> Option<Self> {
        let (addr, prefix) = text.trim().split_once('/')?;
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
        Some(Ipv4Net { addr: addr.parse().ok()?, prefix })
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
        u32::from(ip) & mask == u32::from(self.addr) & mask
    }
}

/// What the caller does with a sealed packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sealed {
    /// The first `n` bytes of the output buffer are the datagram to send.
    Ready(usize),
    /// No session yet: the packet waits in the peer's queue behind a handshake (in the outbox).
    Queued,
    /// No key is known for that endpoint (its table named none): the packet is dropped.
    NoPeer,
}

/// What a received datagram was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// The first `len` bytes of the output buffer are an authenticated IPv4 packet from `peer`.
    Packet { len: usize, peer: PeerKey },
    /// Handshake, keepalive or cookie traffic, handled (answers, if any, are in the outbox).
    Control,
    /// A valid initiation from a key no table named: held; ask the directory about `key` and
    /// pass the answer to [`SecureTunnel::directory_answer`].
    Unknown(PeerKey),
    /// Dropped and counted.
    Refused(Refusal),
}

struct Peer {
    tunn: Tunn,
    /// Where its datagrams go: the endpoint of its table entries, or where it last spoke from.
    endpoint: SocketAddrV4,
    /// Its /26, when the directory told it.
    subnet: Option<Ipv4Net>,
}

/// An initiation held while the directory is asked about its key.
struct Held {
    from: SocketAddrV4,
    datagram: Vec<u8>,
    since: Instant,
}

/// The tunnel state of one worker: its key, its peers and their sessions.
pub struct SecureTunnel {
    own: StaticKey,
    peers: HashMap<PeerKey, Peer>,
    by_index: HashMap<u32, PeerKey>,
    by_endpoint: HashMap<SocketAddrV4, PeerKey>,
    next_index: u32,
    /// Instance IPs (the overlay's service range): sources a peer may use before its table is
    /// known here.
    instance_range: Ipv4Net,
    held: HashMap<PeerKey, Held>,
    /// Keys the directory did not know, until when they stay refused.
    refused_keys: HashMap<PeerKey, Instant>,
    /// Checks initiations' MAC and rate before the expensive key agreement.
    limiter: RateLimiter,
    outbox: Vec<(SocketAddrV4, Vec<u8>)>,
    refusals: RefusalCounts,
}

impl std::fmt::Debug for SecureTunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureTunnel").field("own", &self.own).field("peers", &self.peers.len()).finish()
    }
}

impl SecureTunnel {
    pub fn new(own: StaticKey, instance_range: Ipv4Net) -> Self {
        let limiter = RateLimiter::new(&own.public().public(), HANDSHAKES_PER_SECOND);
        SecureTunnel {
            own,
            peers: HashMap::new(),
            by_index: HashMap::new(),
            by_endpoint: HashMap::new(),
            next_index: 1,
            instance_range,
            held: HashMap::new(),
            refused_keys: HashMap::new(),
            limiter,
            outbox: Vec::new(),
            refusals: RefusalCounts::default(),
        }
    }

    pub fn public(&self) -> PeerKey {
        self.own.public()
    }

    /// Makes `key` a peer reachable at `endpoint` (from a route table or the directory); an
    /// existing peer keeps its sessions and only moves. The endpoint now means this key, also
    /// if another key had it before (a worker that lost its key and made a new one).
    pub fn set_peer(&mut self, key: PeerKey, endpoint: SocketAddrV4, subnet: Option<Ipv4Net>) {
        if key == self.own.public() {
            return;
        }
        self.refused_keys.remove(&key);
        self.by_endpoint.insert(endpoint, key);
        if let Some(peer) = self.peers.get_mut(&key) {
            peer.endpoint = endpoint;
            if subnet.is_some() {
                peer.subnet = subnet;
            }
            return;
        }
        let index = self.next_index;
        self.next_index = if index >= MAX_INDEX { 1 } else { index + 1 };
        if let Some(old) = self.by_index.remove(&index) {
            self.peers.remove(&old);
        }
        let tunn = Tunn::new(self.own.secret().clone(), key.public(), None, None, index, None);
        self.peers.insert(key, Peer { tunn, endpoint, subnet });
        self.by_index.insert(index, key);
    }

    /// The key that `endpoint` stands for, if any table or answer named one.
    pub fn key_of(&self, endpoint: SocketAddrV4) -> Option<PeerKey> {
        self.by_endpoint.get(&endpoint).copied()
    }

    pub fn is_peer(&self, key: &PeerKey) -> bool {
        self.peers.contains_key(key)
    }

    pub fn endpoint_of(&self, key: &PeerKey) -> Option<SocketAddrV4> {
        self.peers.get(key).map(|p| p.endpoint)
    }

    /// Seals `packet` for the worker at `endpoint` into `out` (at least `packet.len() +
    /// OVERHEAD` and [`MIN_OUT`] bytes; shorter buffers are refused as [`Sealed::NoPeer`] would
    /// be, never a panic).
    pub fn seal(&mut self, endpoint: SocketAddrV4, packet: &[u8], out: &mut [u8]) -> Sealed {
        let Some(peer) = self.by_endpoint.get(&endpoint).and_then(|k| self.peers.get_mut(k)) else {
            return Sealed::NoPeer;
        };
        if out.len() < (packet.len() + OVERHEAD).max(MIN_OUT) {
            return Sealed::NoPeer;
        }
        match peer.tunn.encapsulate(packet, out) {
            TunnResult::WriteToNetwork(d) if is_data(d) => Sealed::Ready(d.len()),
            TunnResult::WriteToNetwork(handshake) => {
                self.outbox.push((endpoint, handshake.to_vec()));
                Sealed::Queued
            }
            _ => Sealed::Queued,
        }
    }

    /// Authenticates and opens a datagram from `from` into `out` (at least the datagram's
    /// length and [`MIN_OUT`] bytes; shorter buffers refuse it).
    pub fn open(&mut self, from: SocketAddrV4, datagram: &[u8], out: &mut [u8], now: Instant) -> Opened {
        let opened = self.open_counted(from, datagram, out, now);
        if let Opened::Refused(reason) = opened {
            self.refusals.add(reason);
        }
        opened
    }

    fn open_counted(&mut self, from: SocketAddrV4, datagram: &[u8], out: &mut [u8], now: Instant) -> Opened {
        if out.len() < datagram.len().max(MIN_OUT) {
            return Opened::Refused(Refusal::Malformed);
        }
        let mut cookie = [0u8; 64];
        let packet = match self.limiter.verify_packet(Some(IpAddr::V4(*from.ip())), datagram, &mut cookie) {
            Ok(p) => p,
            Err(TunnResult::WriteToNetwork(reply)) => {
                self.outbox.push((from, reply.to_vec()));
                return Opened::Control;
            }
            Err(TunnResult::Err(e)) => return Opened::Refused(e.into()),
            Err(_) => return Opened::Refused(Refusal::Malformed),
        };
        let key = match packet {
            Packet::HandshakeInit(ref init) => {
                let public = self.own.public().public();
                match parse_handshake_anon(self.own.secret(), &public, init) {
                    Ok(half) => PeerKey(half.peer_static_public),
                    Err(e) => return Opened::Refused(e.into()),
                }
            }
            Packet::HandshakeResponse(ref p) => match self.by_index.get(&(p.receiver_idx >> 8)) {
                Some(k) => *k,
                None => return Opened::Refused(Refusal::UnknownPeer),
            },
            Packet::PacketCookieReply(ref p) => match self.by_index.get(&(p.receiver_idx >> 8)) {
                Some(k) => *k,
                None => return Opened::Refused(Refusal::UnknownPeer),
            },
            Packet::PacketData(ref p) => match self.by_index.get(&(p.receiver_idx >> 8)) {
                Some(k) => *k,
                None => {
                    // A known peer still using a session this worker forgot (it restarted): a
                    // new handshake, so its flows do not wait for its own rekey timers.
                    self.rekey(from);
                    return Opened::Refused(Refusal::UnknownPeer);
                }
            },
        };
        if !self.peers.contains_key(&key) {
            return self.hold(key, from, datagram, now);
        }
        self.open_from_peer(key, from, datagram, out)
    }

    fn open_from_peer(&mut self, key: PeerKey, from: SocketAddrV4, datagram: &[u8], out: &mut [u8]) -> Opened {
        let Some(peer) = self.peers.get_mut(&key) else {
            return Opened::Refused(Refusal::UnknownPeer);
        };
        match peer.tunn.decapsulate(Some(IpAddr::V4(*from.ip())), datagram, out) {
            TunnResult::Done => Opened::Control,
            TunnResult::Err(e) => {
                let reason = Refusal::from(e);
                if reason == Refusal::NoSession && is_data(datagram) {
                    // The peer sends on a session this worker no longer has (it restarted).
                    let endpoint = peer.endpoint;
                    self.rekey(endpoint);
                }
                Opened::Refused(reason)
            }
            TunnResult::WriteToNetwork(reply) => {
                self.outbox.push((from, reply.to_vec()));
                // A finished handshake releases the packets queued behind it.
                let mut scratch = vec![0u8; 65_536 + OVERHEAD];
                while let TunnResult::WriteToNetwork(d) = peer.tunn.decapsulate(None, &[], &mut scratch) {
                    self.outbox.push((peer.endpoint, d.to_vec()));
                }
                Opened::Control
            }
            TunnResult::WriteToTunnelV4(packet, _) => Opened::Packet { len: packet.len(), peer: key },
            TunnResult::WriteToTunnelV6(..) => Opened::Refused(Refusal::Malformed),
        }
    }

    /// Keeps the initiation of an unconfirmed key for the directory's answer.
    fn hold(&mut self, key: PeerKey, from: SocketAddrV4, datagram: &[u8], now: Instant) -> Opened {
        if self.refused_keys.get(&key).is_some_and(|until| now < *until) {
            return Opened::Refused(Refusal::UnknownPeer);
        }
        let at_capacity = self.held.len() >= MAX_UNKNOWN;
        let asked = match self.held.get_mut(&key) {
            Some(h) => {
                // A retry replaces the held one (newer timestamp); the question is already out.
                h.from = from;
                h.datagram = datagram.to_vec();
                now.saturating_duration_since(h.since) < DIRECTORY_WAIT
            }
            None if at_capacity => return Opened::Refused(Refusal::UnknownPeer),
            None => {
                self.held.insert(key, Held { from, datagram: datagram.to_vec(), since: now });
                false
            }
        };
        if asked {
            Opened::Control
        } else {
            if let Some(h) = self.held.get_mut(&key) {
                h.since = now;
            }
            Opened::Unknown(key)
        }
    }

    /// The directory's answer about `key`: `Some` makes it a peer and completes its held
    /// handshake (answer in the outbox); `None` refuses it (counted) for a while.
    pub fn directory_answer(&mut self, key: PeerKey, found: Option<(SocketAddrV4, Option<Ipv4Net>)>, now: Instant) {
        let held = self.held.remove(&key);
        let Some((endpoint, subnet)) = found else {
            if held.is_some() {
                self.refusals.add(Refusal::UnknownPeer);
            }
            self.refused_keys.insert(key, now + DIRECTORY_WAIT);
            return;
        };
        self.set_peer(key, endpoint, subnet);
        if let Some(h) = held {
            let mut out = vec![0u8; MIN_OUT.max(h.datagram.len())];
            if let Opened::Refused(reason) = self.open_from_peer(key, h.from, &h.datagram, &mut out) {
                self.refusals.add(reason);
            }
        }
    }

    /// Cryptokey routing: whether `peer` may send packets from `src`. `table_endpoint` is the
    /// endpoint a route table gives for the instance IP `src`, if this worker has its table: then
    /// that endpoint must stand for `peer`. Otherwise `src` must be an instance IP or in the
    /// peer's /26.
    pub fn source_allowed(&self, peer: PeerKey, src: Ipv4Addr, table_endpoint: Option<SocketAddrV4>) -> bool {
        if let Some(endpoint) = table_endpoint {
            return self.by_endpoint.get(&endpoint) == Some(&peer);
        }
        self.instance_range.contains(src)
            || self.peers.get(&peer).and_then(|p| p.subnet).is_some_and(|net| net.contains(src))
    }

    /// Counts a packet the caller refused after opening it (e.g. [`Refusal::WrongSource`]).
    pub fn refuse(&mut self, reason: Refusal) {
        self.refusals.add(reason);
    }

    /// Starts a new handshake with the worker at `endpoint` unless one is under way (sessions
    /// rekey by themselves every two minutes; this is for a peer that lost its sessions).
    pub fn rekey(&mut self, endpoint: SocketAddrV4) {
        let Some(peer) = self.by_endpoint.get(&endpoint).and_then(|k| self.peers.get_mut(k)) else {
            return;
        };
        let mut out = [0u8; MIN_OUT];
        if let TunnResult::WriteToNetwork(d) = peer.tunn.format_handshake_initiation(&mut out, false) {
            self.outbox.push((peer.endpoint, d.to_vec()));
        }
    }

    /// Timers, about once a second: handshake retries, rekeying, keepalives, session expiry;
    /// forgets held initiations and refusals that are too old.
    pub fn tick(&mut self, now: Instant) {
        self.limiter.reset_count();
        let mut out = [0u8; MIN_OUT];
        for peer in self.peers.values_mut() {
            if let TunnResult::WriteToNetwork(d) = peer.tunn.update_timers(&mut out) {
                self.outbox.push((peer.endpoint, d.to_vec()));
            }
        }
        let before = self.held.len();
        self.held.retain(|_, h| now.saturating_duration_since(h.since) < DIRECTORY_WAIT);
        for _ in self.held.len()..before {
            self.refusals.add(Refusal::UnknownPeer);
        }
        self.refused_keys.retain(|_, until| now < *until);
    }

    /// Datagrams to send: handshakes, their answers, keepalives, released packets.
    pub fn take_outbox(&mut self) -> Vec<(SocketAddrV4, Vec<u8>)> {
        std::mem::take(&mut self.outbox)
    }

    pub fn refusals(&self) -> RefusalCounts {
        self.refusals
    }

    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }
}

/// Whether a sealed datagram is a data message (type 4) rather than a handshake.
fn is_data(datagram: &[u8]) -> bool {
    datagram.first() == Some(&4)
}
