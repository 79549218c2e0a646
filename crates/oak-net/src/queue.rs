//! Packets waiting for a route table, so a flow's first packets survive the table query instead
//! of being lost (the original blocked the whole data path for up to 5 s instead, spec §4.5).
//!
//! One query per destination address is outstanding at a time; a failed query is remembered
//! briefly so that a packet storm towards an unknown address does not become a query storm.

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::Instant;

use crate::config::{QueueLimits, Timeouts};

/// What happened to a packet offered to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Queued, and no query is outstanding for this address: the caller must ask for its table.
    Ask,
    /// Queued behind an outstanding query.
    Waiting,
    /// Not queued: the queue is full.
    Full,
    /// Not queued: a query for this address failed recently.
    KnownUnknown,
}

#[derive(Debug)]
struct Pending {
    asked_at: Instant,
    packets: VecDeque<(Instant, Vec<u8>)>,
}

/// Counts of packets the queue discarded, by cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Discarded {
    /// Waited longer than the query timeout.
    pub expired: usize,
    /// Made room for newer packets of the same address.
    pub overflow: usize,
    /// Their query failed.
    pub failed: usize,
}

/// The waiting packets, per destination address.
#[derive(Debug)]
pub struct PendingQueue {
    limits: QueueLimits,
    pending: HashMap<Ipv4Addr, Pending>,
    /// Failed addresses and until when misses for them are dropped.
    negative: HashMap<Ipv4Addr, Instant>,
    released: Vec<Vec<u8>>,
    total: usize,
    discarded: Discarded,
}

impl PendingQueue {
    pub fn new(limits: QueueLimits) -> Self {
        PendingQueue {
            limits,
            pending: HashMap::new(),
            negative: HashMap::new(),
            released: Vec::new(),
            total: 0,
            discarded: Discarded::default(),
        }
    }

    /// Queues a copy of `pkt` for `dst`. A query older than `t.query` counts as given up: its
    /// packets are dropped and the caller is asked to query again.
    pub fn push(&mut self, dst: Ipv4Addr, pkt: &[u8], now: Instant, t: &Timeouts) -> Enqueued {
        if let Some(until) = self.negative.get(&dst) {
            if now < *until {
                return Enqueued::KnownUnknown;
            }
            self.negative.remove(&dst);
        }
        if self.pending.get(&dst).is_some_and(|p| now.saturating_duration_since(p.asked_at) >= t.query) {
            let n = self.drop_key(&dst);
            self.discarded.expired += n;
        }
        let per_key = self.limits.per_key;
        let is_new = !self.pending.contains_key(&dst);
        if per_key == 0 || (self.total >= self.limits.total && is_new) {
            return Enqueued::Full;
        }
        let entry = self.pending.entry(dst).or_insert_with(|| Pending { asked_at: now, packets: VecDeque::new() });
        if entry.packets.len() >= per_key {
            entry.packets.pop_front();
            self.total -= 1;
            self.discarded.overflow += 1;
        } else if self.total >= self.limits.total {
            return Enqueued::Full;
        }
        entry.packets.push_back((now, pkt.to_vec()));
        self.total += 1;
        if is_new {
            Enqueued::Ask
        } else {
            Enqueued::Waiting
        }
    }

    /// Whether a query for `dst` is outstanding.
    pub fn is_pending(&self, dst: Ipv4Addr) -> bool {
        self.pending.contains_key(&dst)
    }

    /// The table for `dst` arrived: its packets become available via [`Self::take_released`].
    pub fn release(&mut self, dst: Ipv4Addr) -> usize {
        self.negative.remove(&dst);
        let Some(p) = self.pending.remove(&dst) else {
            return 0;
        };
        let n = p.packets.len();
        self.total -= n;
        self.released.extend(p.packets.into_iter().map(|(_, pkt)| pkt));
        n
    }

    /// The query for `dst` failed: drop its packets and refuse misses for it until
    /// `now + t.negative`. Returns the number of packets dropped.
    pub fn fail(&mut self, dst: Ipv4Addr, now: Instant, t: &Timeouts) -> usize {
        let n = self.drop_key(&dst);
        self.discarded.failed += n;
        self.negative.insert(dst, now + t.negative);
        n
    }

    /// Released packets, oldest first, to be fed through the outbound path again.
    pub fn take_released(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.released)
    }

    /// Drops packets older than the query timeout, gives up queries older than it and forgets
    /// elapsed negative entries.
    pub fn expire(&mut self, now: Instant, t: &Timeouts) {
        let mut dropped = 0;
        self.pending.retain(|_, p| {
            let before = p.packets.len();
            p.packets.retain(|(at, _)| now.saturating_duration_since(*at) < t.query);
            dropped += before - p.packets.len();
            let keep = now.saturating_duration_since(p.asked_at) < t.query;
            if !keep {
                dropped += p.packets.len();
            }
            keep
        });
        self.total -= dropped;
        self.discarded.expired += dropped;
        self.negative.retain(|_, until| now < *until);
    }

    /// Packets currently waiting.
    pub fn len(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Returns and resets the discard counters.
    pub fn take_discarded(&mut self) -> Discarded {
        std::mem::take(&mut self.discarded)
    }

    fn drop_key(&mut self, dst: &Ipv4Addr) -> usize {
        let n = self.pending.remove(dst).map_or(0, |p| p.packets.len());
        self.total -= n;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 30, 1, last)
    }

    #[test]
    fn asks_once_then_waits_then_releases_in_order() {
        let t = Timeouts::default();
        let now = Instant::now();
        let mut q = PendingQueue::new(QueueLimits::default());
        assert_eq!(q.push(ip(1), b"a", now, &t), Enqueued::Ask);
        assert_eq!(q.push(ip(1), b"b", now, &t), Enqueued::Waiting);
        assert_eq!(q.push(ip(2), b"c", now, &t), Enqueued::Ask);
        assert_eq!(q.len(), 3);
        assert_eq!(q.release(ip(1)), 2);
        assert_eq!(q.take_released(), vec![b"a".to_vec(), b"b".to_vec()]);
        assert!(q.take_released().is_empty());
        assert_eq!(q.len(), 1);
        assert_eq!(q.push(ip(1), b"d", now, &t), Enqueued::Ask, "a new miss after release asks again");
    }

    #[test]
    fn bounded_per_key_and_in_total() {
        let t = Timeouts::default();
        let now = Instant::now();
        let mut q = PendingQueue::new(QueueLimits { per_key: 2, total: 3 });
        q.push(ip(1), b"1", now, &t);
        q.push(ip(1), b"2", now, &t);
        assert_eq!(q.push(ip(1), b"3", now, &t), Enqueued::Waiting);
        assert_eq!(q.len(), 2);
        assert_eq!(q.take_discarded().overflow, 1);
        assert_eq!(q.push(ip(2), b"x", now, &t), Enqueued::Ask);
        assert_eq!(q.push(ip(3), b"y", now, &t), Enqueued::Full);
        assert_eq!(q.push(ip(2), b"z", now, &t), Enqueued::Full);
        assert_eq!(q.len(), 3);
        q.release(ip(1));
        assert_eq!(q.take_released(), vec![b"2".to_vec(), b"3".to_vec()]);
    }

    #[test]
    fn stale_packets_and_queries_expire() {
        let t = Timeouts::default();
        let t0 = Instant::now();
        let mut q = PendingQueue::new(QueueLimits::default());
        assert_eq!(q.push(ip(1), b"old", t0, &t), Enqueued::Ask);
        assert_eq!(q.push(ip(1), b"new", t0 + Duration::from_secs(3), &t), Enqueued::Waiting);
        q.expire(t0 + Duration::from_millis(4999), &t);
        assert_eq!(q.len(), 2);
        q.expire(t0 + Duration::from_secs(5), &t);
        assert_eq!(q.len(), 0, "the query itself is given up after 5 s");
        assert_eq!(q.take_discarded().expired, 2);
        assert!(!q.is_pending(ip(1)));
        // Without an expire call, a miss after the timeout still asks again.
        assert_eq!(q.push(ip(2), b"a", t0, &t), Enqueued::Ask);
        assert_eq!(q.push(ip(2), b"b", t0 + Duration::from_secs(6), &t), Enqueued::Ask);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn failure_drops_and_caches_negatively() {
        let t = Timeouts::default();
        let t0 = Instant::now();
        let mut q = PendingQueue::new(QueueLimits::default());
        q.push(ip(1), b"a", t0, &t);
        q.push(ip(1), b"b", t0, &t);
        assert_eq!(q.fail(ip(1), t0, &t), 2);
        assert_eq!(q.len(), 0);
        assert_eq!(q.push(ip(1), b"c", t0 + Duration::from_millis(999), &t), Enqueued::KnownUnknown);
        assert_eq!(q.push(ip(1), b"d", t0 + Duration::from_secs(1), &t), Enqueued::Ask);
        assert_eq!(q.take_discarded().failed, 2);
    }
}
