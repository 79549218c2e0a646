//! Counters of the proxy, with a fixed set of drop reasons so they fit in an array.

use std::fmt;

use crate::packet::PacketError;

/// Why the proxy dropped a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Truncated or inconsistent headers.
    Malformed,
    NotIpv4,
    Fragment,
    /// Neither TCP, UDP nor ICMP echo.
    UnsupportedProtocol,
    /// Outbound source is not a registered local instance (e.g. a host process).
    NotFromLocal,
    /// Inbound destination is not a registered local instance.
    NotForLocal,
    /// The destination is known but no instance can receive traffic.
    NoRoutableInstance,
    /// A recent table query for the destination failed (negative cache).
    UnknownDestination,
    /// The queue of packets waiting for tables is full.
    QueueFull,
    /// Waited for a table longer than the query timeout.
    QueueExpired,
    /// The table query for the destination was answered with an error.
    QueryFailed,
}

impl DropReason {
    pub const ALL: [DropReason; 11] = [
        DropReason::Malformed,
        DropReason::NotIpv4,
        DropReason::Fragment,
        DropReason::UnsupportedProtocol,
        DropReason::NotFromLocal,
        DropReason::NotForLocal,
        DropReason::NoRoutableInstance,
        DropReason::UnknownDestination,
        DropReason::QueueFull,
        DropReason::QueueExpired,
        DropReason::QueryFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed packet",
            DropReason::NotIpv4 => "not IPv4",
            DropReason::Fragment => "IPv4 fragment without its first",
            DropReason::UnsupportedProtocol => "unsupported protocol",
            DropReason::NotFromLocal => "not from a local instance",
            DropReason::NotForLocal => "not for a local instance",
            DropReason::NoRoutableInstance => "no routable instance",
            DropReason::UnknownDestination => "unknown destination",
            DropReason::QueueFull => "query queue full",
            DropReason::QueueExpired => "table query timed out",
            DropReason::QueryFailed => "table query failed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<PacketError> for DropReason {
    fn from(e: PacketError) -> Self {
        match e {
            PacketError::NotIpv4(_) => DropReason::NotIpv4,
            PacketError::Fragment => DropReason::Fragment,
            PacketError::UnsupportedProtocol(_) | PacketError::UnsupportedIcmp(_) => DropReason::UnsupportedProtocol,
            PacketError::TooShort
            | PacketError::BadHeaderLength
            | PacketError::BadTotalLength
            | PacketError::TransportTruncated => DropReason::Malformed,
        }
    }
}

/// Dropped packets per reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounts([u64; DropReason::ALL.len()]);

impl DropCounts {
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason.index()]
    }

    pub fn add(&mut self, reason: DropReason, n: u64) {
        self.0[reason.index()] += n;
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Reasons with a non-zero count.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(|r| (*r, self.get(*r))).filter(|(_, n)| *n > 0)
    }
}

/// A snapshot of the proxy's counters and table sizes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Packets given to `outbound`.
    pub packets_out: u64,
    /// Packets given to `inbound`.
    pub packets_in: u64,
    /// Outbound packets sent over the tunnel.
    pub tunneled: u64,
    /// Outbound packets delivered on this node.
    pub local: u64,
    /// Inbound packets delivered to a local instance.
    pub delivered: u64,
    /// Table queries asked for.
    pub queries: u64,
    /// Queued packets released by an arriving table.
    pub released: u64,
    pub drops: DropCounts,
    /// Current flows.
    pub flows: usize,
    /// Current packets waiting for a table.
    pub queued: usize,
    /// Current jobs with a table.
    pub jobs: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_counter() {
        let mut c = DropCounts::default();
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
            c.add(*r, i as u64 + 1);
        }
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(c.get(*r), i as u64 + 1);
        }
        assert_eq!(c.total(), (1..=DropReason::ALL.len() as u64).sum::<u64>());
        assert_eq!(DropReason::NotFromLocal.to_string(), "not from a local instance");
        assert_eq!(DropReason::NotForLocal.as_str(), "not for a local instance");
    }
}
