//! Data path of the overlay network on a worker (spec `oakestra-net.md` §4): a user-space proxy
//! between the TUN device that receives every packet for the semantic range (10.30.0.0/16) and the
//! UDP tunnel to the other workers.
//!
//! Everything except [`tun`] is pure logic: no sockets, no clock reads (the caller passes
//! `Instant`s), so the whole translation can be tested packet by packet. The caller owns the I/O
//! loop: read from the TUN → [`Proxy::outbound`] → [`SecureTunnel::seal`], read from the tunnel
//! socket → [`SecureTunnel::open`] → [`Proxy::inbound`], and act on the returned action (with
//! `--insecure-plaintext-overlay`, [`probe::classify`] takes the place of the secure tunnel).

pub mod config;
pub mod flows;
pub mod fragments;
pub mod gso;
pub mod packet;
pub mod probe;
pub mod proxy;
pub mod queue;
pub mod routes;
pub mod secure;
pub mod stats;
pub mod tun;

#[cfg(test)]
mod proxy_tests;
#[cfg(test)]
mod testutil;

/// The hash map of the per-packet tables (flows, routes, locals, tunnel peers): SipHash, std's
/// default, showed up as a quarter of the receive path's CPU. foldhash seeds every map at random,
/// so an instance cannot precompute colliding flows, and the tables are bounded anyway.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

pub use config::{ProxyConfig, QueueLimits, Timeouts};
pub use packet::{PacketError, Protocol};
pub use probe::{classify, Datagram, Probe, ProbeKind};
pub use proxy::{Expired, Inbound, Outbound, Proxy, TableError, TableReport};
pub use routes::Target;
pub use secure::{Ipv4Net, Opened, PeerKey, Refusal, RefusalCounts, Sealed, SecureTunnel, StaticKey, Traffic};
pub use stats::{DropCounts, DropReason, ProxyStats};
pub use tun::Tun;
