//! What this worker holds for one peer worker: where it is, its sessions and the packets
//! waiting for one.
//!
//! Sessions rotate without dropping a flow: `current` seals; `previous` still opens what was in
//! flight when a new session took over; `next` is a session this worker answered but the peer
//! has not used yet: it takes over at the first datagram that opens on it (key confirmation),
//! so a lost response never leaves this side sealing with keys the peer does not have.

use std::collections::VecDeque;
use std::net::SocketAddrV4;
use std::time::Instant;

use super::handshake::Pending;
use super::session::Session;
use super::Ipv4Net;

/// Packets kept per peer while its handshake runs; older ones are dropped first.
pub const MAX_QUEUED: usize = 128;

/// What one peer and this worker exchanged (for metrics): IPv4 packets and their bytes, without
/// the tunnel's overhead; keepalives and handshakes are not counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub sent_packets: u64,
    pub sent_bytes: u64,
    pub received_packets: u64,
    pub received_bytes: u64,
}

pub struct Peer {
    /// Where its datagrams go: the endpoint of its table entries, or where it last spoke from.
    pub endpoint: SocketAddrV4,
    /// Its /26, when the directory told it.
    pub subnet: Option<Ipv4Net>,
    pub current: Option<Session>,
    pub previous: Option<Session>,
    pub next: Option<Session>,
    /// Our initiation in flight.
    pub pending: Option<Pending>,
    /// Since when this worker has been trying to get a session (cleared once it has one).
    pub trying_since: Option<Instant>,
    pub queue: VecDeque<Vec<u8>>,
    pub traffic: Traffic,
    /// The newest initiation timestamp accepted from it: older or equal ones are replays.
    pub last_timestamp: u64,
    /// Since when data went to it with nothing authenticated back: long enough, and its
    /// session is presumed lost (it restarted, its keys expired) and a handshake starts.
    pub awaiting_reply_since: Option<Instant>,
    /// Since when data came from it with nothing sent back: long enough, and a keepalive goes,
    /// so its own reply timer does not fire on a one-way flow.
    pub reply_owed_since: Option<Instant>,
}

/// Which of a peer's sessions a local index named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Current,
    Previous,
    Next,
}

impl Peer {
    pub fn new(endpoint: SocketAddrV4, subnet: Option<Ipv4Net>) -> Peer {
        Peer {
            endpoint,
            subnet,
            current: None,
            previous: None,
            next: None,
            pending: None,
            trying_since: None,
            queue: VecDeque::new(),
            traffic: Traffic::default(),
            last_timestamp: 0,
            awaiting_reply_since: None,
            reply_owed_since: None,
        }
    }

    pub fn slot_of(&self, index: u32) -> Option<Slot> {
        let is = |s: &Option<Session>| s.as_ref().is_some_and(|s| s.local_index == index);
        if is(&self.current) {
            Some(Slot::Current)
        } else if is(&self.previous) {
            Some(Slot::Previous)
        } else if is(&self.next) {
            Some(Slot::Next)
        } else {
            None
        }
    }

    pub fn session_mut(&mut self, slot: Slot) -> Option<&mut Session> {
        match slot {
            Slot::Current => self.current.as_mut(),
            Slot::Previous => self.previous.as_mut(),
            Slot::Next => self.next.as_mut(),
        }
    }

    /// Installs a session this worker initiated: it seals from now on. Returns the local
    /// indices that no longer name a session.
    pub fn install_initiated(&mut self, session: Session) -> Vec<u32> {
        self.trying_since = None;
        let old = self.previous.take();
        self.previous = self.current.replace(session);
        old.map(|s| s.local_index).into_iter().collect()
    }

    /// Installs a session this worker answered, as `next`. Returns the retired indices.
    pub fn install_responded(&mut self, session: Session) -> Vec<u32> {
        self.next.replace(session).map(|s| s.local_index).into_iter().collect()
    }

    /// The peer used `next`: it becomes `current`. Returns the retired indices.
    pub fn promote_next(&mut self) -> Vec<u32> {
        let Some(next) = self.next.take() else {
            return Vec::new();
        };
        self.trying_since = None;
        let old = self.previous.take();
        self.previous = self.current.replace(next);
        old.map(|s| s.local_index).into_iter().collect()
    }

    /// A session that may seal now.
    pub fn sealing(&mut self, now: Instant) -> Option<&mut Session> {
        self.current.as_mut().filter(|s| !s.expired(now))
    }

    /// Data went out now.
    pub fn sent_data(&mut self, now: Instant) {
        self.awaiting_reply_since.get_or_insert(now);
        self.reply_owed_since = None;
    }

    /// Something authenticated came in now (`data`: not just a keepalive).
    pub fn received(&mut self, data: bool, now: Instant) {
        self.awaiting_reply_since = None;
        if data {
            self.reply_owed_since.get_or_insert(now);
        }
    }

    /// Packets of `bytes` in total went out to it.
    pub fn count_sent(&mut self, packets: usize, bytes: usize) {
        self.traffic.sent_packets += packets as u64;
        self.traffic.sent_bytes += bytes as u64;
    }

    pub fn enqueue(&mut self, packet: &[u8]) {
        if self.queue.len() >= MAX_QUEUED {
            self.queue.pop_front();
        }
        self.queue.push_back(packet.to_vec());
    }

    /// Drops expired sessions; returns their indices.
    pub fn expire(&mut self, now: Instant) -> Vec<u32> {
        let mut gone = Vec::new();
        for slot in [&mut self.current, &mut self.previous, &mut self.next] {
            if slot.as_ref().is_some_and(|s| s.expired(now)) {
                gone.extend(slot.take().map(|s| s.local_index));
            }
        }
        gone
    }
}
