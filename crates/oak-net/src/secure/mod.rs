//! The authenticated, encrypted tunnel between workers, WireGuard-style: every pair of workers
//! runs a Noise IK handshake with their static X25519 keys ([`handshake`], by `snow`) and then
//! exchanges sealed datagrams ([`session`]: AES-128-GCM where both CPUs accelerate AES, else
//! ChaCha20-Poly1305; a replay window; rekeying every two minutes without dropping a flow).
//! This module routes datagrams to the right peer and session, decides who is a peer, and
//! counts what it refuses.
//!
//! Peers come from the control plane only: a route table names each instance's worker key, and
//! an initiator whose key no table named is held until the cluster's peer directory confirms it
//! ([`Opened::Unknown`], [`SecureTunnel::directory_answer`]). After decryption the inner source
//! address must belong to the sender ([`SecureTunnel::source_allowed`]: cryptokey routing).
//!
//! Like the rest of the crate it does no I/O: datagrams to send for handshakes, keepalives and
//! packets released by a finished handshake collect in an outbox the caller drains.

mod handshake;
mod keys;
mod peer;
mod refusals;
mod replay;
mod session;
#[cfg(test)]
mod tests;
mod wire;

use crate::FastMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use handshake::HandshakeError;
use peer::{Peer, Slot};
use session::OpenError;
use wire::Message;

pub use keys::{KeyError, PeerKey, StaticKey, KEY_LEN};
pub use peer::Traffic;
pub use refusals::{Refusal, RefusalCounts};
pub use session::{Cipher, Offer, SealBatch};
pub use wire::DATA_HEADER;

/// Bytes a sealed data packet adds (header and tag); constant, no padding, so equal-size
/// segments stay equal-size on the wire.
pub const OVERHEAD: usize = wire::DATA_HEADER + wire::TAG_LEN;
/// Smallest output buffer: a handshake message.
pub const MIN_OUT: usize = 148;
/// Handshakes answered per second (each costs key agreements); beyond, initiations are
/// refused as rate-limited until the next tick.
const HANDSHAKES_PER_SECOND: u32 = 100;
/// How long an initiation waits for its response before the next one is sent.
const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// A peer that has sent data and not answered for this long gets a keepalive.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Data sent with nothing authenticated back for this long: the session is presumed lost.
const REPLY_TIMEOUT: Duration = Duration::from_secs(15);
/// Unknown-session notices sent per second at most.
const NOTICES_PER_SECOND: u32 = 100;
/// How long this worker keeps trying to reach a peer for queued packets before dropping them.
const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
/// Initiators waiting for the directory at once; more are refused until answers come.
const MAX_UNKNOWN: usize = 256;
/// How long a held initiation waits for the directory, and how long a refused key stays
/// refused without asking again.
const DIRECTORY_WAIT: Duration = Duration::from_secs(10);

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

/// An initiation held while the directory is asked about its key.
struct Held {
    from: SocketAddrV4,
    datagram: Vec<u8>,
    since: Instant,
}

/// The tunnel state of one worker: its key, its peers and their sessions.
pub struct SecureTunnel {
    own: StaticKey,
    offer: Offer,
    peers: FastMap<PeerKey, Peer>,
    /// Local session (and pending handshake) indices → the peer they belong to.
    by_index: FastMap<u32, PeerKey>,
    by_endpoint: FastMap<SocketAddrV4, PeerKey>,
    /// Instance IPs (the overlay's service range): sources a peer may use before its table is
    /// known here.
    instance_range: Ipv4Net,
    held: FastMap<PeerKey, Held>,
    /// Keys the directory did not know, until when they stay refused.
    refused_keys: FastMap<PeerKey, Instant>,
    /// Initiations read since the last tick (the rate limit).
    handshakes: u32,
    /// Unknown-session notices sent since the last tick.
    notices: u32,
    /// The newest timestamp this worker put in an initiation (they must grow).
    last_timestamp: u64,
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
        Self::with_offer(own, instance_range, Offer::of_this_cpu())
    }

    /// A tunnel that offers only `offer`'s ciphers (tests, and machines where AES is slow).
    pub fn with_offer(own: StaticKey, instance_range: Ipv4Net, offer: Offer) -> Self {
        SecureTunnel {
            own,
            offer,
            peers: FastMap::default(),
            by_index: FastMap::default(),
            by_endpoint: FastMap::default(),
            instance_range,
            held: FastMap::default(),
            refused_keys: FastMap::default(),
            handshakes: 0,
            notices: 0,
            last_timestamp: 0,
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
        let peer = self.peers.entry(key).or_insert_with(|| Peer::new(endpoint, subnet));
        peer.endpoint = endpoint;
        if subnet.is_some() {
            peer.subnet = subnet;
        }
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

    /// The cipher of the session that seals for `endpoint`, once there is one.
    pub fn cipher_for(&self, endpoint: SocketAddrV4) -> Option<Cipher> {
        let key = self.by_endpoint.get(&endpoint)?;
        self.peers.get(key)?.current.as_ref().map(|s| s.cipher)
    }

    /// Seals `packet` for the worker at `endpoint` into `out` (at least `packet.len() +
    /// OVERHEAD` and [`MIN_OUT`] bytes; shorter buffers are refused as [`Sealed::NoPeer`] would
    /// be, never a panic).
    pub fn seal(&mut self, endpoint: SocketAddrV4, packet: &[u8], out: &mut [u8]) -> Sealed {
        self.seal_at(endpoint, packet, out, Instant::now())
    }

    fn seal_at(&mut self, endpoint: SocketAddrV4, packet: &[u8], out: &mut [u8], now: Instant) -> Sealed {
        let Some(&key) = self.by_endpoint.get(&endpoint) else {
            return Sealed::NoPeer;
        };
        if out.len() < (packet.len() + OVERHEAD).max(MIN_OUT) || !self.peers.contains_key(&key) {
            return Sealed::NoPeer;
        }
        let peer = self.peers.get_mut(&key).expect("checked above");
        if let Some(session) = peer.sealing(now) {
            let n = session.seal(packet, out);
            let rekey = session.wants_rekey(now);
            peer.sent_data(now);
            peer.count_sent(1, packet.len());
            if rekey && peer.pending.is_none() {
                self.initiate(key, now);
            }
            return Sealed::Ready(n);
        }
        peer.enqueue(packet);
        if peer.pending.is_none() {
            peer.trying_since.get_or_insert(now);
            self.initiate(key, now);
        }
        Sealed::Queued
    }

    /// Reserves `count` datagrams' counters of the session with the worker at `endpoint`, to
    /// seal outside this tunnel's lock (see [`SealBatch`]); `None` when there is no usable
    /// session yet: [`SecureTunnel::seal`] then queues the packets and starts a handshake.
    /// `bytes`: the packets' total size (counted as sent).
    pub fn reserve(&mut self, endpoint: SocketAddrV4, count: usize, bytes: usize) -> Option<SealBatch> {
        let now = Instant::now();
        let key = *self.by_endpoint.get(&endpoint)?;
        let peer = self.peers.get_mut(&key)?;
        let session = peer.sealing(now)?;
        let batch = session.reserve(count as u64);
        let rekey = session.wants_rekey(now);
        peer.sent_data(now);
        peer.count_sent(count, bytes);
        if rekey && peer.pending.is_none() {
            self.initiate(key, now);
        }
        Some(batch)
    }

    /// Sends a new initiation to `key` (replacing one in flight).
    fn initiate(&mut self, key: PeerKey, now: Instant) {
        let index = self.new_index(key);
        let timestamp = self.next_timestamp();
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        let (pending, datagram) = handshake::initiate(&self.own, &key, index, timestamp, self.offer, now);
        if let Some(old) = peer.pending.replace(pending) {
            self.by_index.remove(&old.local_index);
        }
        self.outbox.push((peer.endpoint, datagram));
    }

    /// A fresh random local index, registered for `key`.
    fn new_index(&mut self, key: PeerKey) -> u32 {
        loop {
            let mut bytes = [0u8; 4];
            getrandom::getrandom(&mut bytes).expect("the system's random source");
            let index = u32::from_le_bytes(bytes);
            if index != 0 && !self.by_index.contains_key(&index) {
                self.by_index.insert(index, key);
                return index;
            }
        }
    }

    /// Wall-clock nanoseconds, strictly growing across this tunnel's initiations (and across
    /// restarts as long as the clock does not go back).
    fn next_timestamp(&mut self) -> u64 {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        self.last_timestamp = wall.max(self.last_timestamp + 1);
        self.last_timestamp
    }

    fn forget_indices(&mut self, indices: Vec<u32>) {
        for i in indices {
            self.by_index.remove(&i);
        }
    }

    /// Authenticates and opens a datagram from `from` into `out` (at least the datagram's
    /// length and [`MIN_OUT`] bytes; shorter buffers refuse it).
    pub fn open(&mut self, from: SocketAddrV4, datagram: &[u8], out: &mut [u8], now: Instant) -> Opened {
        if out.len() < datagram.len().max(MIN_OUT) {
            self.refusals.add(Refusal::Malformed);
            return Opened::Refused(Refusal::Malformed);
        }
        out[..datagram.len()].copy_from_slice(datagram);
        let opened = self.open_in_place(from, &mut out[..datagram.len()], now);
        if let Opened::Packet { len, .. } = opened {
            out.copy_within(DATA_HEADER..DATA_HEADER + len, 0);
        }
        opened
    }

    /// [`SecureTunnel::open`] where the datagram lies, without a copy: an opened packet is at
    /// `datagram[DATA_HEADER..][..len]`.
    pub fn open_in_place(&mut self, from: SocketAddrV4, datagram: &mut [u8], now: Instant) -> Opened {
        let data = match Message::parse(datagram) {
            Some(Message::Data { receiver, counter, .. }) => Some((receiver, counter)),
            _ => None,
        };
        let opened = match data {
            Some((receiver, counter)) => self.open_data(from, receiver, counter, &mut datagram[DATA_HEADER..], now),
            None => self.open_control(from, datagram, now),
        };
        if let Opened::Refused(reason) = opened {
            self.refusals.add(reason);
        }
        opened
    }

    /// Handshake messages (and anything that parses as no message at all).
    fn open_control(&mut self, from: SocketAddrV4, datagram: &[u8], now: Instant) -> Opened {
        match Message::parse(datagram) {
            None | Some(Message::Data { .. }) => Opened::Refused(Refusal::Malformed),
            Some(Message::Unknown { index }) => self.unknown_session(index, now),
            Some(Message::Response { receiver, .. }) => self.complete(receiver, datagram, now),
            Some(Message::Initiation) => {
                if self.handshakes >= HANDSHAKES_PER_SECOND {
                    return Opened::Refused(Refusal::RateLimited);
                }
                self.handshakes += 1;
                let init = match handshake::read_initiation(&self.own, datagram) {
                    Ok(init) => init,
                    Err(_) => return Opened::Refused(Refusal::Unauthenticated),
                };
                if !self.peers.contains_key(&init.peer) {
                    return self.hold(init.peer, from, datagram, now);
                }
                self.answer(init, from, now)
            }
        }
    }

    fn open_data(
        &mut self,
        from: SocketAddrV4,
        receiver: u32,
        counter: u64,
        sealed: &mut [u8],
        now: Instant,
    ) -> Opened {
        let Some(&key) = self.by_index.get(&receiver) else {
            // A peer still using a session this worker forgot (it restarted): a new handshake
            // from here if the sender is a known endpoint, and a notice back in any case (it
            // may come through a relay or NAT), so its flows do not wait for its timers.
            self.rekey(from);
            if self.notices < NOTICES_PER_SECOND {
                self.notices += 1;
                self.outbox.push((from, wire::unknown_session(receiver).to_vec()));
            }
            return Opened::Refused(Refusal::UnknownPeer);
        };
        let Some(peer) = self.peers.get_mut(&key) else {
            return Opened::Refused(Refusal::UnknownPeer);
        };
        let Some(slot) = peer.slot_of(receiver) else {
            // The index of a handshake still in flight: no keys yet.
            return Opened::Refused(Refusal::NoSession);
        };
        let session = peer.session_mut(slot).expect("the slot holds a session");
        let len = match session.open_in_place(counter, sealed, now) {
            Ok(len) => len,
            Err(OpenError::Replayed) => return Opened::Refused(Refusal::Replayed),
            Err(OpenError::Unauthenticated) => return Opened::Refused(Refusal::Unauthenticated),
            Err(OpenError::Expired) => return Opened::Refused(Refusal::NoSession),
        };
        peer.received(len > 0, now);
        if len > 0 {
            peer.traffic.received_packets += 1;
            peer.traffic.received_bytes += len as u64;
        }
        if slot == Slot::Next {
            let retired = peer.promote_next();
            self.forget_indices(retired);
            self.flush(key, now);
        }
        if len == 0 {
            return Opened::Control; // a keepalive
        }
        if sealed[0] >> 4 != 4 {
            return Opened::Refused(Refusal::Malformed);
        }
        Opened::Packet { len, peer: key }
    }

    /// Answers an initiation from a known peer.
    fn answer(&mut self, init: handshake::Initiation, from: SocketAddrV4, now: Instant) -> Opened {
        let key = init.peer;
        let Some(peer) = self.peers.get(&key) else {
            return Opened::Refused(Refusal::UnknownPeer);
        };
        if init.timestamp <= peer.last_timestamp {
            return Opened::Refused(Refusal::Replayed);
        }
        let timestamp = init.timestamp;
        let index = self.new_index(key);
        match handshake::respond(init, self.offer, index, now) {
            Ok((session, response)) => {
                let peer = self.peers.get_mut(&key).expect("checked above");
                peer.last_timestamp = timestamp;
                let retired = peer.install_responded(session);
                self.forget_indices(retired);
                self.outbox.push((from, response));
                Opened::Control
            }
            Err(e) => {
                self.by_index.remove(&index);
                Opened::Refused(match e {
                    HandshakeError::Unauthenticated => Refusal::Unauthenticated,
                    HandshakeError::NoCommonCipher => Refusal::Malformed,
                })
            }
        }
    }

    /// Completes our initiation with its response; queued packets (or a keepalive that
    /// confirms the session) follow at once.
    fn complete(&mut self, receiver: u32, datagram: &[u8], now: Instant) -> Opened {
        let Some(&key) = self.by_index.get(&receiver) else {
            return Opened::Refused(Refusal::UnknownPeer);
        };
        let own = self.own.public();
        let Some(peer) = self.peers.get_mut(&key) else {
            return Opened::Refused(Refusal::UnknownPeer);
        };
        let Some(pending) = peer.pending.take_if(|p| p.local_index == receiver) else {
            return Opened::Refused(Refusal::NoSession);
        };
        match handshake::complete(pending, &own, datagram, now) {
            Ok(session) => {
                peer.received(false, now);
                let retired = peer.install_initiated(session);
                let confirm = peer.queue.is_empty();
                self.forget_indices(retired);
                if confirm {
                    self.keepalive(key, now);
                }
                self.flush(key, now);
                Opened::Control
            }
            Err(_) => {
                // The handshake state is spent; the next seal or tick starts another.
                self.by_index.remove(&receiver);
                Opened::Refused(Refusal::Unauthenticated)
            }
        }
    }

    /// Seals the packets queued for `key` into the outbox, now that a session seals.
    fn flush(&mut self, key: PeerKey, now: Instant) {
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        let endpoint = peer.endpoint;
        while peer.sealing(now).is_some() {
            let Some(packet) = peer.queue.pop_front() else {
                break;
            };
            let mut out = vec![0u8; packet.len() + OVERHEAD];
            let session = peer.sealing(now).expect("checked by the loop");
            let n = session.seal(&packet, &mut out);
            out.truncate(n);
            self.outbox.push((endpoint, out));
            peer.sent_data(now);
            peer.count_sent(1, packet.len());
        }
    }

    /// An empty data message: tells the responder its session works.
    fn keepalive(&mut self, key: PeerKey, now: Instant) {
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        let endpoint = peer.endpoint;
        if let Some(session) = peer.sealing(now) {
            let mut out = vec![0u8; OVERHEAD];
            let n = session.seal(&[], &mut out);
            out.truncate(n);
            self.outbox.push((endpoint, out));
            peer.reply_owed_since = None;
        }
    }

    /// A peer says a data message named a session it does not have (it restarted): if that
    /// is the session this worker seals with for some peer, a new handshake starts at once.
    /// Anything else (an old or guessed index) is ignored.
    fn unknown_session(&mut self, index: u32, now: Instant) -> Opened {
        let stale = self.peers.iter().find_map(|(key, p)| {
            let current = p.current.as_ref().is_some_and(|s| s.remote_index == index);
            (current && p.pending.is_none()).then_some(*key)
        });
        match stale {
            Some(key) => {
                self.initiate(key, now);
                Opened::Control
            }
            None => Opened::Refused(Refusal::NoSession),
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
            let opened = match handshake::read_initiation(&self.own, &h.datagram) {
                Ok(init) if init.peer == key => self.answer(init, h.from, now),
                _ => Opened::Refused(Refusal::Unauthenticated),
            };
            if let Opened::Refused(reason) = opened {
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
        let Some(&key) = self.by_endpoint.get(&endpoint) else {
            return;
        };
        if self.peers.get(&key).is_some_and(|p| p.pending.is_none()) {
            self.initiate(key, Instant::now());
        }
    }

    /// Timers, about once a second: handshake retries, session expiry, giving up on a peer that
    /// never answers; forgets held initiations and refusals that are too old.
    pub fn tick(&mut self, now: Instant) {
        self.handshakes = 0;
        self.notices = 0;
        let mut retired = Vec::new();
        let mut retry = Vec::new();
        let mut keepalives = Vec::new();
        for (key, peer) in self.peers.iter_mut() {
            retired.extend(peer.expire(now));
            if let Some(p) = peer.pending.take_if(|p| now.saturating_duration_since(p.sent) >= REKEY_TIMEOUT) {
                retired.push(p.local_index);
            }
            if peer.reply_owed_since.is_some_and(|t| now.saturating_duration_since(t) >= KEEPALIVE_TIMEOUT) {
                keepalives.push(*key);
            }
            let silent = peer.awaiting_reply_since.is_some_and(|t| now.saturating_duration_since(t) >= REPLY_TIMEOUT);
            if silent && peer.pending.is_none() {
                peer.awaiting_reply_since = None;
                retry.push(*key);
                continue;
            }
            let waiting = !peer.queue.is_empty() && peer.sealing(now).is_none();
            if !waiting || peer.pending.is_some() {
                continue;
            }
            let since = *peer.trying_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= REKEY_ATTEMPT_TIME {
                peer.queue.clear();
                peer.trying_since = None;
            } else {
                retry.push(*key);
            }
        }
        self.forget_indices(retired);
        for key in retry {
            self.initiate(key, now);
        }
        for key in keepalives {
            self.keepalive(key, now);
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

    /// What each peer and this worker exchanged, by the peer's endpoint.
    pub fn peer_traffic(&self) -> Vec<(SocketAddrV4, Traffic)> {
        self.peers.values().map(|p| (p.endpoint, p.traffic)).collect()
    }

    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }
}
