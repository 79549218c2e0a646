//! Broker counters, cheap enough to bump on every message.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A snapshot of the broker's counters (see [`Broker::stats`](crate::Broker::stats)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// TCP connections open now (including ones that have not finished CONNECT).
    pub connections: u64,
    /// TCP connections accepted since start.
    pub connections_total: u64,
    /// Messages accepted for routing: PUBLISH packets from TCP clients plus local-client publishes.
    pub messages_in: u64,
    /// Deliveries queued to a subscriber (one message to three subscribers counts three).
    pub messages_out: u64,
    /// Deliveries dropped because the subscriber's queue was full.
    pub dropped: u64,
    /// CONNECTs refused for bad credentials or an unacceptable principal.
    pub auth_failures: u64,
    /// PUBLISH or SUBSCRIBE attempts outside the client's topic space.
    pub acl_denials: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub connections: AtomicU64,
    pub connections_total: AtomicU64,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub dropped: AtomicU64,
    pub auth_failures: AtomicU64,
    pub acl_denials: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> Stats {
        Stats {
            connections: self.connections.load(Relaxed),
            connections_total: self.connections_total.load(Relaxed),
            messages_in: self.messages_in.load(Relaxed),
            messages_out: self.messages_out.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            auth_failures: self.auth_failures.load(Relaxed),
            acl_denials: self.acl_denials.load(Relaxed),
        }
    }

    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }
}
