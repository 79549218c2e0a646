//! Why the tunnel refused a datagram, counted per reason so an operator sees forged, replayed and
//! foreign traffic apart.

use std::fmt;

/// Why a datagram received on the tunnel port was dropped before reaching the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Not a tunnel message (wrong type or length): garbage, or a plaintext IPv4 packet.
    Malformed,
    /// A handshake from a key that is no known worker, or a message for a session never made.
    UnknownPeer,
    /// Failed authentication: bad MAC or AEAD tag, wrong key.
    Unauthenticated,
    /// A data counter or handshake timestamp seen before (replay window).
    Replayed,
    /// Authenticated, but the inner source address does not belong to the sending worker.
    WrongSource,
    /// Authenticated, for a session index that no longer has keys (expired or rekeyed away).
    NoSession,
    /// Handshakes beyond the rate limit while under load.
    RateLimited,
}

impl Refusal {
    pub const ALL: [Refusal; 7] = [
        Refusal::Malformed,
        Refusal::UnknownPeer,
        Refusal::Unauthenticated,
        Refusal::Replayed,
        Refusal::WrongSource,
        Refusal::NoSession,
        Refusal::RateLimited,
    ];

    /// Short, stable name (a metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::UnknownPeer => "unknown_peer",
            Refusal::Unauthenticated => "unauthenticated",
            Refusal::Replayed => "replayed",
            Refusal::WrongSource => "wrong_source",
            Refusal::NoSession => "no_session",
            Refusal::RateLimited => "rate_limited",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Refused datagrams per reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefusalCounts([u64; Refusal::ALL.len()]);

impl RefusalCounts {
    pub fn get(&self, reason: Refusal) -> u64 {
        self.0[reason as usize]
    }

    pub fn add(&mut self, reason: Refusal) {
        self.0[reason as usize] += 1;
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Every reason with its count, zeros included (so a counter exists before it first counts).
    pub fn iter(&self) -> impl Iterator<Item = (Refusal, u64)> + '_ {
        Refusal::ALL.iter().map(|r| (*r, self.get(*r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_counts_apart_and_names_round_trip() {
        let mut c = RefusalCounts::default();
        for (i, r) in Refusal::ALL.iter().enumerate() {
            for _ in 0..=i {
                c.add(*r);
            }
            assert_eq!(Refusal::parse(r.as_str()), Some(*r));
        }
        for (i, r) in Refusal::ALL.iter().enumerate() {
            assert_eq!(c.get(*r), i as u64 + 1);
        }
        assert_eq!(c.total(), 28);
        assert_eq!(Refusal::parse("nope"), None);
    }
}
