//! What the proxy did with the first fragment of a datagram, so the later fragments (which carry
//! no ports to look a flow up by) get the same addresses and go the same way.
//!
//! The host's kernel fragments datagrams larger than the overlay MTU (a big UDP message, a
//! `ping -s 2000`) on their way into the TUN; fragments are translated one by one instead of
//! being reassembled, so the proxy holds no payload. A later fragment that arrives before its
//! first finds no entry and is dropped (a fragmented datagram is lost whole anyway).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::packet::FragmentKey;

/// How long a first fragment's choice is kept. A sender emits a datagram's fragments back to
/// back; the receiving kernel gives up reassembly after 30 s anyway.
pub const FRAGMENT_TTL: Duration = Duration::from_secs(5);

/// At most this many datagrams in flight per direction; beyond it new ones are not tracked
/// (their later fragments are dropped) rather than memory growing under a fragment flood.
pub const MAX_FRAGMENTED: usize = 4096;

/// First-fragment decisions of one direction, by datagram.
#[derive(Debug)]
pub struct FragmentTable<V> {
    entries: HashMap<FragmentKey, (V, Instant)>,
}

impl<V: Copy> Default for FragmentTable<V> {
    fn default() -> Self {
        Self { entries: HashMap::new() }
    }
}

impl<V: Copy> FragmentTable<V> {
    /// Remembers what was done with the first fragment of `key`'s datagram. Returns false if
    /// the table is full of live entries.
    pub fn insert(&mut self, key: FragmentKey, value: V, now: Instant) -> bool {
        if self.entries.len() >= MAX_FRAGMENTED && !self.entries.contains_key(&key) {
            self.expire(now);
            if self.entries.len() >= MAX_FRAGMENTED {
                return false;
            }
        }
        self.entries.insert(key, (value, now));
        true
    }

    /// The decision for a later fragment of `key`'s datagram, if its first one was seen lately.
    pub fn get(&self, key: &FragmentKey, now: Instant) -> Option<V> {
        let (value, at) = self.entries.get(key)?;
        (now.saturating_duration_since(*at) < FRAGMENT_TTL).then_some(*value)
    }

    /// Forgets entries older than [`FRAGMENT_TTL`].
    pub fn expire(&mut self, now: Instant) {
        self.entries.retain(|_, (_, at)| now.saturating_duration_since(*at) < FRAGMENT_TTL);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn key(id: u16) -> FragmentKey {
        FragmentKey { src: Ipv4Addr::new(10, 18, 0, 2), dst: Ipv4Addr::new(10, 30, 0, 1), protocol: 17, id }
    }

    #[test]
    fn entries_live_for_the_ttl_and_the_table_is_bounded() {
        let t0 = Instant::now();
        let mut table = FragmentTable::default();
        assert!(table.insert(key(1), 'a', t0));
        assert_eq!(table.get(&key(1), t0 + Duration::from_secs(1)), Some('a'));
        assert_eq!(table.get(&key(2), t0), None);
        assert_eq!(table.get(&key(1), t0 + FRAGMENT_TTL), None, "expired entries are not used");
        for id in 2..MAX_FRAGMENTED as u16 + 1 {
            assert!(table.insert(key(id), 'b', t0));
        }
        assert_eq!(table.len(), MAX_FRAGMENTED);
        assert!(!table.insert(key(0), 'c', t0 + Duration::from_secs(1)), "full of live entries");
        assert!(table.insert(key(1), 'd', t0 + Duration::from_secs(1)), "a known datagram is updated");
        // Once the old entries expired there is room again.
        assert!(table.insert(key(0), 'c', t0 + FRAGMENT_TTL));
        assert_eq!(table.len(), 2);
        table.expire(t0 + FRAGMENT_TTL * 3);
        assert!(table.is_empty());
    }
}
