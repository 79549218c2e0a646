//! Tunables of the proxy, with the defaults of the spec; tests shorten them.

use std::net::SocketAddrV4;
use std::time::Duration;

/// How long state lives without traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Idle TCP flow.
    pub tcp_idle: Duration,
    /// TCP flow after both FINs or an RST were seen (late segments still translate).
    pub tcp_closed: Duration,
    pub udp_idle: Duration,
    pub icmp_idle: Duration,
    /// A job without local instance whose table was not used for this long loses the interest.
    pub interest_idle: Duration,
    /// A table query unanswered for this long is given up and its queued packets dropped.
    pub query: Duration,
    /// After a failed query, misses for that address are dropped this long without asking again.
    pub negative: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_idle: Duration::from_secs(300),
            tcp_closed: Duration::from_secs(10),
            udp_idle: Duration::from_secs(60),
            icmp_idle: Duration::from_secs(30),
            interest_idle: Duration::from_secs(10),
            query: Duration::from_secs(5),
            negative: Duration::from_secs(1),
        }
    }
}

/// Bounds of the packets waiting for a table query, so a flood cannot exhaust memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Per destination address; the oldest packet is dropped to make room.
    pub per_key: usize,
    /// Over all addresses; a new packet beyond this is dropped.
    pub total: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits { per_key: 64, total: 1024 }
    }
}

/// Configuration of a [`crate::Proxy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyConfig {
    /// This worker's tunnel endpoint as the cluster advertises it (`host_ip:host_port` of its
    /// instances); targets with this endpoint are delivered locally.
    pub own_endpoint: SocketAddrV4,
    pub timeouts: Timeouts,
    pub queue: QueueLimits,
}

impl ProxyConfig {
    /// Defaults for everything but the endpoint.
    pub fn new(own_endpoint: SocketAddrV4) -> Self {
        ProxyConfig { own_endpoint, timeouts: Timeouts::default(), queue: QueueLimits::default() }
    }
}
