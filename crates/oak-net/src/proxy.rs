//! The proxy: translation of packets between local instances and the overlay (spec §4.3).
//!
//! Outbound it does "DNAT service IP → chosen nsIP + SNAT sender nsIP → sender instance IP";
//! inbound it undoes the source part for replies of tracked flows. It never performs I/O: every
//! call returns what the caller must do with the (rewritten in place) packet.

use crate::FastMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use oak_api::net::RouteTable;

use crate::config::ProxyConfig;
use crate::flows::{Flow, FlowKey, FlowTable};
use crate::fragments::FragmentTable;
use crate::packet::{self, PacketInfo};
use crate::queue::{Enqueued, PendingQueue};
use crate::routes::{Resolved, Routes, Target};
use crate::stats::{DropReason, ProxyStats};

/// What to do with a packet read from the TUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outbound {
    /// Send the rewritten packet as the payload of a UDP datagram to this worker endpoint.
    Tunnel(SocketAddrV4),
    /// The target is on this node: write the rewritten packet back into the TUN.
    Local,
    /// The destination's table is unknown: a copy of the packet was queued; ask the cluster for
    /// the table of this address and pass the answer to [`Proxy::apply_table`].
    Query(Ipv4Addr),
    /// A copy was queued behind an outstanding query; nothing to do.
    Queued,
    Drop(DropReason),
}

/// What to do with a packet received from the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    /// Write the (possibly rewritten) packet into the TUN.
    Deliver,
    Drop(DropReason),
}

/// Jobs whose interest expired in [`Proxy::expire`]: the caller tells the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expired {
    /// Sorted job names.
    pub jobs: Vec<String>,
    /// Flows removed for idleness.
    pub flows: usize,
}

/// A table that cannot be applied at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("route table without app_name")]
    MissingJob,
}

/// What applying a table did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableReport {
    /// Queued packets now waiting in [`Proxy::take_released`].
    pub released: usize,
    /// Queued packets dropped because the table reports an error for their address.
    pub failed: usize,
    /// Entries of the table that were ignored, with the reason (for logging).
    pub skipped: Vec<String>,
}

/// A local instance: its namespace address maps to its identity in the overlay.
#[derive(Debug, Clone)]
struct Local {
    instance_ip: Ipv4Addr,
    job: String,
}

/// The translation state of one worker.
#[derive(Debug)]
pub struct Proxy {
    cfg: ProxyConfig,
    locals: FastMap<Ipv4Addr, Local>,
    routes: Routes,
    flows: FlowTable,
    queue: PendingQueue,
    stats: ProxyStats,
    /// Addresses and action of first fragments sent, for their later fragments.
    fragments_out: FragmentTable<(Ipv4Addr, Ipv4Addr, Outbound)>,
    /// Addresses of first fragments delivered, for their later fragments.
    fragments_in: FragmentTable<(Ipv4Addr, Ipv4Addr)>,
    /// The last inbound plain TCP segment's decision, for the next of the same flow.
    inbound_memo: Option<InboundMemo>,
}

/// An inbound TCP segment without SYN, FIN or RST changes nothing that the translation of the
/// next segment of its flow depends on, so a run of one flow's segments (a bulk transfer's
/// dozens per received batch) is looked up once. Valid only for calls with the same `now`
/// and no other call in between: every other `&mut self` method clears it.
#[derive(Debug, Clone, Copy)]
struct InboundMemo {
    key: FlowKey,
    at: Instant,
    /// The source address the flow's replies get (`None`: delivered unchanged).
    new_src: Option<Ipv4Addr>,
}

impl Proxy {
    pub fn new(cfg: ProxyConfig) -> Self {
        Proxy {
            locals: FastMap::default(),
            routes: Routes::new(),
            flows: FlowTable::new(),
            queue: PendingQueue::new(cfg.queue),
            stats: ProxyStats::default(),
            fragments_out: FragmentTable::default(),
            fragments_in: FragmentTable::default(),
            inbound_memo: None,
            cfg,
        }
    }

    /// The worker's advertised tunnel endpoint changed (e.g. new public address).
    pub fn set_own_endpoint(&mut self, ep: SocketAddrV4) {
        self.inbound_memo = None;
        self.cfg.own_endpoint = ep;
    }

    pub fn own_endpoint(&self) -> SocketAddrV4 {
        self.cfg.own_endpoint
    }

    /// Registers a local instance; its job's table is kept while it exists. Re-registering an
    /// nsIP replaces the old instance and forgets its flows.
    pub fn add_local(&mut self, ns_ip: Ipv4Addr, instance_ip: Ipv4Addr, job: &str) {
        self.inbound_memo = None;
        let old = self.locals.insert(ns_ip, Local { instance_ip, job: job.to_string() });
        if old.is_some() {
            self.flows.retain(|k, _| k.src != ns_ip);
        }
    }

    /// Unregisters a local instance and forgets the flows it started.
    pub fn remove_local(&mut self, ns_ip: Ipv4Addr) {
        self.inbound_memo = None;
        if self.locals.remove(&ns_ip).is_some() {
            self.flows.retain(|k, _| k.src != ns_ip);
        }
    }

    /// Applies a table query answer or pushed update: replaces everything known about its job,
    /// releases packets waiting for any of its addresses and drops flows whose instance is gone.
    /// An answer with `error` set only fails the query it answers (`query_key` as an IP).
    pub fn apply_table(&mut self, table: &RouteTable, now: Instant) -> Result<TableReport, TableError> {
        self.inbound_memo = None;
        if !table.error.is_empty() {
            let failed = match table.query_key.trim().parse::<Ipv4Addr>() {
                Ok(ip) => self.queue.fail(ip, now, &self.cfg.timeouts),
                Err(_) => 0,
            };
            self.collect_queue_drops();
            return Ok(TableReport { failed, ..TableReport::default() });
        }
        if table.app_name.trim().is_empty() {
            return Err(TableError::MissingJob);
        }
        let replaced = self.routes.replace(table, now);
        let job = table.app_name.as_str();
        let routes = &self.routes;
        self.flows.retain(|k, f| f.job != job || routes.still_routes(job, k.dst, &f.target));
        let mut released = 0;
        for ip in &replaced.addresses {
            released += self.queue.release(*ip);
        }
        self.stats.released += released as u64;
        Ok(TableReport { released, failed: 0, skipped: replaced.skipped })
    }

    /// Forgets a job's table and its flows.
    pub fn remove_job(&mut self, job: &str) {
        self.inbound_memo = None;
        self.routes.remove(job);
        self.flows.retain(|_, f| f.job != job);
    }

    /// Translates a packet sent by a local instance (read from the TUN), in place.
    pub fn outbound(&mut self, pkt: &mut [u8], now: Instant) -> Outbound {
        self.inbound_memo = None;
        self.stats.packets_out += 1;
        let fragment = packet::fragment_key(pkt);
        let action = match fragment {
            Some((key, false)) => self.outbound_later_fragment(key, pkt, now),
            _ => self.translate_outbound(pkt, now),
        };
        if let (Some((key, true)), Outbound::Tunnel(_) | Outbound::Local) = (fragment, action) {
            let (src, dst) = packet::addresses(pkt);
            self.fragments_out.insert(key, (src, dst, action), now);
        }
        match action {
            Outbound::Tunnel(_) => self.stats.tunneled += 1,
            Outbound::Local => self.stats.local += 1,
            Outbound::Query(_) => self.stats.queries += 1,
            Outbound::Queued => {}
            Outbound::Drop(reason) => self.stats.drops.add(reason, 1),
        }
        action
    }

    /// Translates a packet received from the tunnel for a local instance, in place.
    pub fn inbound(&mut self, pkt: &mut [u8], now: Instant) -> Inbound {
        self.stats.packets_in += 1;
        let fragment = packet::fragment_key(pkt);
        if fragment.is_none() {
            if let Some(action) = self.inbound_memoized(pkt, now) {
                return action;
            }
        }
        let action = match (fragment, packet::parse(pkt)) {
            (Some((key, false)), _) => self.inbound_later_fragment(key, pkt, now),
            (_, Err(e)) => Inbound::Drop(e.into()),
            (_, Ok(info)) => self.translate_inbound(pkt, &info, now),
        };
        if let (Some((key, true)), Inbound::Deliver) = (fragment, action) {
            self.fragments_in.insert(key, packet::addresses(pkt), now);
        }
        match action {
            Inbound::Deliver => self.stats.delivered += 1,
            Inbound::Drop(reason) => self.stats.drops.add(reason, 1),
        }
        action
    }

    /// Packets released by tables since the last call; feed each through [`Self::outbound`].
    pub fn take_released(&mut self) -> Vec<Vec<u8>> {
        self.inbound_memo = None;
        self.queue.take_released()
    }

    /// Periodic housekeeping: drops idle flows and stale queued packets, and removes the tables
    /// of jobs without local instance unused for the interest timeout.
    pub fn expire(&mut self, now: Instant) -> Expired {
        self.inbound_memo = None;
        let t = self.cfg.timeouts;
        let flows = self.flows.expire(now, &t);
        self.fragments_out.expire(now);
        self.fragments_in.expire(now);
        self.queue.expire(now, &t);
        self.collect_queue_drops();
        let mut jobs: Vec<String> = self
            .routes
            .job_names()
            .filter(|job| !self.locals.values().any(|l| l.job == *job))
            .filter(|job| {
                self.routes.last_used(job).is_some_and(|at| now.saturating_duration_since(at) >= t.interest_idle)
            })
            .map(str::to_string)
            .collect();
        jobs.sort();
        for job in &jobs {
            self.remove_job(job);
        }
        self.routes.prune_rtts(self.cfg.own_endpoint);
        Expired { jobs, flows }
    }

    /// Records a measured round-trip time to a worker, for the closest policy.
    pub fn set_rtt(&mut self, peer: SocketAddrV4, rtt: Duration) {
        self.inbound_memo = None;
        self.routes.set_rtt(peer, rtt);
    }

    /// Workers to probe: endpoints of instances of jobs with a closest address, except this one.
    pub fn probe_targets(&self) -> Vec<SocketAddrV4> {
        self.routes.probe_targets(self.cfg.own_endpoint)
    }

    /// The endpoint of the worker that the known tables say runs the instance with instance IP
    /// `ip` (cryptokey routing checks inbound sources against it).
    pub fn instance_endpoint(&self, ip: Ipv4Addr) -> Option<SocketAddrV4> {
        self.routes.instance_endpoint(ip)
    }

    /// Whether the table of `job` is known.
    pub fn has_job(&self, job: &str) -> bool {
        self.routes.has_job(job)
    }

    /// The last probed round-trip time to each worker (read for metrics).
    pub fn peer_rtts(&self) -> Vec<(SocketAddrV4, std::time::Duration)> {
        self.routes.rtts().collect()
    }

    pub fn stats(&self) -> ProxyStats {
        ProxyStats { flows: self.flows.len(), queued: self.queue.len(), jobs: self.routes.len(), ..self.stats }
    }

    fn translate_outbound(&mut self, pkt: &mut [u8], now: Instant) -> Outbound {
        let info = match packet::parse(pkt) {
            Ok(info) => info,
            Err(e) => return Outbound::Drop(e.into()),
        };
        let Some(sender) = self.locals.get(&info.src) else {
            return Outbound::Drop(DropReason::NotFromLocal);
        };
        let client_instance_ip = sender.instance_ip;
        let key = FlowKey::of(&info);
        let target = match self.existing_choice(&key, info.tcp_flags, now) {
            Some(target) => target,
            None => match self.routes.resolve(info.dst, self.cfg.own_endpoint) {
                Resolved::Unknown => return self.enqueue(info.dst, pkt, now),
                Resolved::NoTarget { job } => {
                    self.routes.touch(&job, now);
                    return Outbound::Drop(DropReason::NoRoutableInstance);
                }
                Resolved::Target { job, target } => {
                    self.routes.touch(&job, now);
                    self.flows.insert(key, Flow::new(job, client_instance_ip, target, now));
                    self.flows.touch_outbound(&key, info.tcp_flags, now);
                    target
                }
            },
        };
        packet::rewrite_addresses(pkt, &info, client_instance_ip, target.ns_ip);
        if target.endpoint != self.cfg.own_endpoint {
            return Outbound::Tunnel(target.endpoint);
        }
        let local_info = PacketInfo { src: client_instance_ip, dst: target.ns_ip, ..info };
        match self.translate_inbound(pkt, &local_info, now) {
            Inbound::Deliver => Outbound::Local,
            Inbound::Drop(reason) => Outbound::Drop(reason),
        }
    }

    /// A fragment after the first goes where its first went, with the same addresses; one
    /// whose first waits for a table waits behind it.
    fn outbound_later_fragment(&mut self, key: packet::FragmentKey, pkt: &mut [u8], now: Instant) -> Outbound {
        if !self.locals.contains_key(&key.src) {
            return Outbound::Drop(DropReason::NotFromLocal);
        }
        match self.fragments_out.get(&key, now) {
            Some((src, dst, action)) => {
                packet::rewrite_ip_addresses(pkt, src, dst);
                action
            }
            None if self.queue.is_pending(key.dst) => self.enqueue(key.dst, pkt, now),
            None => Outbound::Drop(DropReason::Fragment),
        }
    }

    /// A later fragment from the tunnel: rewritten like its first was (a reply's source back to
    /// the service IP), delivered unchanged otherwise, as requests are.
    fn inbound_later_fragment(&mut self, key: packet::FragmentKey, pkt: &mut [u8], now: Instant) -> Inbound {
        if !self.locals.contains_key(&key.dst) {
            return Inbound::Drop(DropReason::NotForLocal);
        }
        if let Some((src, dst)) = self.fragments_in.get(&key, now) {
            packet::rewrite_ip_addresses(pkt, src, dst);
        }
        Inbound::Deliver
    }

    /// The target of an existing flow if it may keep it; a flow whose instance is gone is dropped
    /// so the caller re-picks.
    fn existing_choice(&mut self, key: &FlowKey, tcp_flags: u8, now: Instant) -> Option<Target> {
        let flow = self.flows.get(key)?;
        if !self.routes.still_routes(&flow.job, key.dst, &flow.target) {
            self.flows.remove(key);
            return None;
        }
        let flow = self.flows.touch_outbound(key, tcp_flags, now)?;
        self.routes.touch(&flow.job, now);
        Some(flow.target)
    }

    fn enqueue(&mut self, dst: Ipv4Addr, pkt: &[u8], now: Instant) -> Outbound {
        let outcome = self.queue.push(dst, pkt, now, &self.cfg.timeouts);
        self.collect_queue_drops();
        match outcome {
            Enqueued::Ask => Outbound::Query(dst),
            Enqueued::Waiting => Outbound::Queued,
            Enqueued::Full => Outbound::Drop(DropReason::QueueFull),
            Enqueued::KnownUnknown => Outbound::Drop(DropReason::UnknownDestination),
        }
    }

    fn translate_inbound(&mut self, pkt: &mut [u8], info: &PacketInfo, now: Instant) -> Inbound {
        self.inbound_memo = None;
        if !self.locals.contains_key(&info.dst) {
            return Inbound::Drop(DropReason::NotForLocal);
        }
        let reply = FlowKey::of(info);
        let mut new_src = None;
        if let Some((orig, flow)) = self.flows.match_reply(&reply, info.tcp_flags, now) {
            packet::rewrite_addresses(pkt, info, orig.dst, info.dst);
            self.routes.touch(&flow.job, now);
            new_src = Some(orig.dst);
        }
        if plain_tcp(info) {
            self.inbound_memo = Some(InboundMemo { key: reply, at: now, new_src });
        }
        Inbound::Deliver
    }

    /// Delivers a plain TCP segment of the flow the last call translated, as it did (see
    /// [`InboundMemo`]); `None` if the memo does not apply.
    fn inbound_memoized(&mut self, pkt: &mut [u8], now: Instant) -> Option<Inbound> {
        let memo = self.inbound_memo?;
        if memo.at != now {
            return None;
        }
        let info = packet::parse(pkt).ok()?;
        if !plain_tcp(&info) || FlowKey::of(&info) != memo.key {
            return None;
        }
        if let Some(src) = memo.new_src {
            packet::rewrite_addresses(pkt, &info, src, info.dst);
        }
        self.stats.delivered += 1;
        Some(Inbound::Deliver)
    }

    /// Moves the queue's discard counters into the drop statistics.
    fn collect_queue_drops(&mut self) {
        let d = self.queue.take_discarded();
        self.stats.drops.add(DropReason::QueueExpired, d.expired as u64);
        self.stats.drops.add(DropReason::QueueFull, d.overflow as u64);
        self.stats.drops.add(DropReason::QueryFailed, d.failed as u64);
    }
}

/// A TCP segment that opens, closes or resets nothing.
fn plain_tcp(info: &PacketInfo) -> bool {
    info.protocol == packet::Protocol::Tcp
        && info.tcp_flags & (packet::TCP_SYN | packet::TCP_FIN | packet::TCP_RST) == 0
}
