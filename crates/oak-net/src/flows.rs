//! Connection tracking: which instance a flow was balanced to, so that every packet of a
//! connection goes to the same instance and replies get their original service IP back.
//!
//! Keyed by the full 5-tuple as the local client sent it (spec §9, replacing the original's
//! port-indexed ring), with a reverse index keyed by the 5-tuple of the replies.

use crate::FastMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::config::Timeouts;
use crate::packet::{PacketInfo, Protocol, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use crate::routes::Target;

/// A 5-tuple as seen in one direction (ports are the echo id for ICMP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub protocol: Protocol,
    pub src: Ipv4Addr,
    pub src_port: u16,
    pub dst: Ipv4Addr,
    pub dst_port: u16,
}

impl FlowKey {
    pub fn of(info: &PacketInfo) -> Self {
        FlowKey {
            protocol: info.protocol,
            src: info.src,
            src_port: info.src_port,
            dst: info.dst,
            dst_port: info.dst_port,
        }
    }
}

/// The translation chosen for a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    /// Job of the service address the client used.
    pub job: String,
    /// The client's instance IP (the rewritten source).
    pub client_instance_ip: Ipv4Addr,
    pub target: Target,
    pub last_used: Instant,
    fin_out: bool,
    fin_in: bool,
    rst: bool,
}

impl Flow {
    pub fn new(job: String, client_instance_ip: Ipv4Addr, target: Target, now: Instant) -> Self {
        Flow { job, client_instance_ip, target, last_used: now, fin_out: false, fin_in: false, rst: false }
    }

    /// Whether the TCP connection was torn down (both FINs or an RST seen).
    pub fn closed(&self) -> bool {
        self.rst || (self.fin_out && self.fin_in)
    }

    fn note(&mut self, tcp_flags: u8, outbound: bool, now: Instant) {
        self.last_used = now;
        if tcp_flags & TCP_SYN != 0 && tcp_flags & TCP_ACK == 0 && outbound {
            // The client reuses the 5-tuple for a new connection.
            self.fin_out = false;
            self.fin_in = false;
            self.rst = false;
        }
        self.rst |= tcp_flags & TCP_RST != 0;
        if tcp_flags & TCP_FIN != 0 {
            if outbound {
                self.fin_out = true;
            } else {
                self.fin_in = true;
            }
        }
    }

    fn idle_limit(&self, protocol: Protocol, t: &Timeouts) -> Duration {
        match protocol {
            Protocol::Tcp if self.closed() => t.tcp_closed,
            Protocol::Tcp => t.tcp_idle,
            Protocol::Udp => t.udp_idle,
            Protocol::Icmp => t.icmp_idle,
        }
    }
}

/// Key of the replies of a flow: from the target's instance IP back to the client's nsIP.
fn reply_key(key: &FlowKey, flow: &Flow) -> FlowKey {
    FlowKey {
        protocol: key.protocol,
        src: flow.target.instance_ip,
        src_port: key.dst_port,
        dst: key.src,
        dst_port: key.src_port,
    }
}

/// Flows by outbound 5-tuple, with the reverse index of their replies.
#[derive(Debug, Default)]
pub struct FlowTable {
    forward: FastMap<FlowKey, Flow>,
    reverse: FastMap<FlowKey, FlowKey>,
}

impl FlowTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, key: &FlowKey) -> Option<&Flow> {
        self.forward.get(key)
    }

    /// Records an outbound packet of an existing flow; returns its flow.
    pub fn touch_outbound(&mut self, key: &FlowKey, tcp_flags: u8, now: Instant) -> Option<&Flow> {
        let flow = self.forward.get_mut(key)?;
        flow.note(tcp_flags, true, now);
        Some(flow)
    }

    /// Inserts or replaces the flow of `key` (a re-pick replaces the old choice).
    pub fn insert(&mut self, key: FlowKey, flow: Flow) {
        self.remove(&key);
        self.reverse.insert(reply_key(&key, &flow), key);
        self.forward.insert(key, flow);
    }

    /// Finds the flow a reply with 5-tuple `reply` belongs to and records the packet; returns
    /// the original outbound key (its `dst` is the service IP the client used).
    pub fn match_reply(&mut self, reply: &FlowKey, tcp_flags: u8, now: Instant) -> Option<(FlowKey, &Flow)> {
        let key = *self.reverse.get(reply)?;
        let flow = self.forward.get_mut(&key)?;
        flow.note(tcp_flags, false, now);
        Some((key, flow))
    }

    pub fn remove(&mut self, key: &FlowKey) -> Option<Flow> {
        let flow = self.forward.remove(key)?;
        let rk = reply_key(key, &flow);
        // A newer flow may own the same reply key; only drop the index if it still points here.
        if self.reverse.get(&rk) == Some(key) {
            self.reverse.remove(&rk);
        }
        Some(flow)
    }

    /// Keeps only flows for which `keep` holds; returns how many were removed.
    pub fn retain(&mut self, mut keep: impl FnMut(&FlowKey, &Flow) -> bool) -> usize {
        let gone: Vec<FlowKey> = self.forward.iter().filter(|(k, f)| !keep(k, f)).map(|(k, _)| *k).collect();
        for k in &gone {
            self.remove(k);
        }
        gone.len()
    }

    /// Drops flows idle longer than their protocol's timeout; returns how many.
    pub fn expire(&mut self, now: Instant, t: &Timeouts) -> usize {
        self.retain(|k, f| now.saturating_duration_since(f.last_used) < f.idle_limit(k.protocol, t))
    }

    pub fn len(&self) -> usize {
        self.forward.len()
    }

    pub fn is_empty(&self) -> bool {
        self.forward.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn key(protocol: Protocol, sport: u16) -> FlowKey {
        FlowKey { protocol, src: ip("10.18.0.66"), src_port: sport, dst: ip("10.30.1.1"), dst_port: 80 }
    }

    fn flow(now: Instant) -> Flow {
        let target = Target {
            instance_number: 1,
            ns_ip: ip("10.18.0.130"),
            instance_ip: ip("10.30.0.11"),
            endpoint: "192.168.1.3:50103".parse().unwrap(),
        };
        Flow::new("j".into(), ip("10.30.0.2"), target, now)
    }

    fn reply(k: &FlowKey) -> FlowKey {
        FlowKey { protocol: k.protocol, src: ip("10.30.0.11"), src_port: k.dst_port, dst: k.src, dst_port: k.src_port }
    }

    fn timeouts() -> Timeouts {
        Timeouts {
            tcp_idle: Duration::from_secs(300),
            tcp_closed: Duration::from_secs(10),
            udp_idle: Duration::from_secs(60),
            icmp_idle: Duration::from_secs(30),
            ..Timeouts::default()
        }
    }

    #[test]
    fn reverse_lookup_finds_the_original_flow() {
        let now = Instant::now();
        let mut t = FlowTable::new();
        let k = key(Protocol::Tcp, 40000);
        t.insert(k, flow(now));
        let (orig, f) = t.match_reply(&reply(&k), TCP_ACK, now).unwrap();
        assert_eq!(orig, k);
        assert_eq!(orig.dst, ip("10.30.1.1"));
        assert_eq!(f.client_instance_ip, ip("10.30.0.2"));
        // Wrong source, port or protocol: no match.
        assert!(t.match_reply(&FlowKey { src: ip("10.30.0.12"), ..reply(&k) }, 0, now).is_none());
        assert!(t.match_reply(&FlowKey { dst_port: 1, ..reply(&k) }, 0, now).is_none());
        assert!(t.match_reply(&FlowKey { protocol: Protocol::Udp, ..reply(&k) }, 0, now).is_none());
        t.remove(&k);
        assert!(t.match_reply(&reply(&k), 0, now).is_none());
        assert!(t.is_empty());
    }

    #[test]
    fn replacing_a_flow_keeps_the_reverse_index_consistent() {
        let now = Instant::now();
        let mut t = FlowTable::new();
        let k = key(Protocol::Udp, 5000);
        t.insert(k, flow(now));
        let mut moved = flow(now);
        moved.target.instance_ip = ip("10.30.0.12");
        t.insert(k, moved);
        assert!(t.match_reply(&reply(&k), 0, now).is_none(), "old reply key gone");
        let new_reply = FlowKey { src: ip("10.30.0.12"), ..reply(&k) };
        assert_eq!(t.match_reply(&new_reply, 0, now).map(|(k, _)| k), Some(k));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn expiry_per_protocol() {
        let t0 = Instant::now();
        let mut t = FlowTable::new();
        let (tcp, udp, icmp) = (key(Protocol::Tcp, 1), key(Protocol::Udp, 2), key(Protocol::Icmp, 3));
        for k in [tcp, udp, icmp] {
            t.insert(k, flow(t0));
        }
        let to = timeouts();
        assert_eq!(t.expire(t0 + Duration::from_secs(29), &to), 0);
        assert_eq!(t.expire(t0 + Duration::from_secs(30), &to), 1);
        assert!(t.get(&icmp).is_none());
        assert_eq!(t.expire(t0 + Duration::from_secs(59), &to), 0);
        assert_eq!(t.expire(t0 + Duration::from_secs(60), &to), 1);
        assert!(t.get(&udp).is_none());
        assert_eq!(t.expire(t0 + Duration::from_secs(299), &to), 0);
        assert_eq!(t.expire(t0 + Duration::from_secs(300), &to), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn traffic_keeps_a_flow_alive() {
        let t0 = Instant::now();
        let mut t = FlowTable::new();
        let k = key(Protocol::Udp, 2);
        t.insert(k, flow(t0));
        t.touch_outbound(&k, 0, t0 + Duration::from_secs(50));
        t.match_reply(&reply(&k), 0, t0 + Duration::from_secs(100));
        assert_eq!(t.expire(t0 + Duration::from_secs(159), &timeouts()), 0);
        assert_eq!(t.expire(t0 + Duration::from_secs(160), &timeouts()), 1);
    }

    #[test]
    fn closed_tcp_expires_early() {
        let t0 = Instant::now();
        let to = timeouts();
        let mut t = FlowTable::new();
        let (fins, rst, half) = (key(Protocol::Tcp, 1), key(Protocol::Tcp, 2), key(Protocol::Tcp, 3));
        for k in [fins, rst, half] {
            t.insert(k, flow(t0));
        }
        t.touch_outbound(&fins, TCP_FIN | TCP_ACK, t0);
        t.match_reply(&reply(&fins), TCP_FIN | TCP_ACK, t0);
        t.match_reply(&reply(&rst), TCP_RST, t0);
        t.touch_outbound(&half, TCP_FIN | TCP_ACK, t0);
        assert!(t.get(&fins).unwrap().closed());
        assert!(!t.get(&half).unwrap().closed());
        assert_eq!(t.expire(t0 + Duration::from_secs(10), &to), 2);
        assert!(t.get(&half).is_some());
        // A new SYN on a closed 5-tuple reopens it.
        t.insert(fins, flow(t0));
        t.touch_outbound(&fins, TCP_RST, t0);
        t.touch_outbound(&fins, TCP_SYN, t0);
        assert!(!t.get(&fins).unwrap().closed());
    }
}
