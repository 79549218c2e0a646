//! End-to-end tests of the proxy, pure: packets are handed between two `Proxy` values as the
//! tunnel would carry them.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use oak_api::net::{RouteInstance, RouteTable, ServiceIp, IP_TYPE_CLOSEST, IP_TYPE_RR};

use crate::packet::{parse, Protocol, TCP_ACK, TCP_SYN};
use crate::testutil::{build, fragment, full_checksums_ok, reassemble, L4};
use crate::{DropReason, Inbound, Outbound, Proxy, ProxyConfig};

const CLIENT_JOB: &str = "app.ns.client.ns";
const SERVER_JOB: &str = "app.ns.server.ns";

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn ep(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

const NODE_A: &str = "192.168.1.1:50103";
const NODE_B: &str = "192.168.1.2:50103";
const NODE_C: &str = "192.168.1.3:50103";

// Client on node A.
const CLIENT_NS: &str = "10.18.0.66";
const CLIENT_IIP: &str = "10.30.0.2";
// Server instances.
const RR_IP: &str = "10.30.1.30";
const S0_NS: &str = "10.18.0.130";
const S0_IIP: &str = "10.30.0.6";
const S1_NS: &str = "10.18.0.194";
const S1_IIP: &str = "10.30.0.7";

fn instance(n: u32, iip: &str, ns: &str, node: &str) -> RouteInstance {
    let node = ep(node);
    RouteInstance {
        instance_number: n,
        instance_ip: iip.into(),
        namespace_ip: ns.into(),
        host_ip: node.ip().to_string(),
        host_port: node.port(),
        worker_id: format!("worker-{}", node.ip()),
        cluster_id: "cluster-1".into(),
        public_key: String::new(),
    }
}

fn table(job: &str, sips: &[(&str, &str)], instances: Vec<RouteInstance>) -> RouteTable {
    RouteTable {
        app_name: job.into(),
        job_id: format!("id-{job}"),
        service_ip: sips.iter().map(|(t, a)| ServiceIp { ip_type: t.to_string(), address: a.to_string() }).collect(),
        instance_list: instances,
        ..Default::default()
    }
}

fn client_table() -> RouteTable {
    table(CLIENT_JOB, &[(IP_TYPE_RR, "10.30.1.2")], vec![instance(0, CLIENT_IIP, CLIENT_NS, NODE_A)])
}

/// Server with instance 0 on B and instance 1 on C.
fn server_table() -> RouteTable {
    table(
        SERVER_JOB,
        &[(IP_TYPE_RR, RR_IP)],
        vec![instance(1, S1_IIP, S1_NS, NODE_C), instance(0, S0_IIP, S0_NS, NODE_B)],
    )
}

fn node(endpoint: &str) -> Proxy {
    Proxy::new(ProxyConfig::new(ep(endpoint)))
}

fn node_a(t0: Instant) -> Proxy {
    let mut a = node(NODE_A);
    a.add_local(ip(CLIENT_NS), ip(CLIENT_IIP), CLIENT_JOB);
    a.apply_table(&client_table(), t0).unwrap();
    a
}

fn tcp(src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> Vec<u8> {
    build(ip(src), ip(dst), L4::Tcp { sport, dport, flags }, b"payload")
}

fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Vec<u8> {
    build(ip(src), ip(dst), L4::Udp { sport, dport, checksum: true }, b"dgram")
}

/// Source and destination of a packet, checking its checksums on the way.
fn addrs(pkt: &[u8]) -> (Ipv4Addr, Ipv4Addr) {
    assert!(full_checksums_ok(pkt), "checksums must be valid after rewriting");
    let info = parse(pkt).unwrap();
    (info.src, info.dst)
}

#[test]
fn tcp_connection_across_two_nodes() {
    let t0 = Instant::now();
    let mut a = node_a(t0);
    a.apply_table(&server_table(), t0).unwrap();
    let mut b = node(NODE_B);
    b.add_local(ip(S0_NS), ip(S0_IIP), SERVER_JOB);
    b.apply_table(&server_table(), t0).unwrap();

    // A: SYN to the RR IP goes to instance 0 (lowest number first) on B.
    let mut syn = tcp(CLIENT_NS, 34278, RR_IP, 30443, TCP_SYN);
    assert_eq!(a.outbound(&mut syn, t0), Outbound::Tunnel(ep(NODE_B)));
    assert_eq!(addrs(&syn), (ip(CLIENT_IIP), ip(S0_NS)));
    let info = parse(&syn).unwrap();
    assert_eq!((info.src_port, info.dst_port, info.tcp_flags), (34278, 30443, TCP_SYN));

    // B: delivered unchanged, the server sees the client's instance IP.
    let before = syn.clone();
    assert_eq!(b.inbound(&mut syn, t0), Inbound::Deliver);
    assert_eq!(syn, before);

    // B: the SYN-ACK goes out through B's outbound path, which needs the client's table.
    let mut synack = tcp(S0_NS, 30443, CLIENT_IIP, 34278, TCP_SYN | TCP_ACK);
    assert_eq!(b.outbound(&mut synack, t0), Outbound::Query(ip(CLIENT_IIP)));
    let report = b.apply_table(&client_table(), t0).unwrap();
    assert_eq!(report.released, 1);
    let mut released = b.take_released();
    assert_eq!(released.len(), 1);
    let mut synack = released.pop().unwrap();
    assert_eq!(b.outbound(&mut synack, t0), Outbound::Tunnel(ep(NODE_A)));
    assert_eq!(addrs(&synack), (ip(S0_IIP), ip(CLIENT_NS)));

    // A: the reply gets the RR IP back as source, so the client's socket accepts it.
    assert_eq!(a.inbound(&mut synack, t0), Inbound::Deliver);
    assert_eq!(addrs(&synack), (ip(RR_IP), ip(CLIENT_NS)));
    let info = parse(&synack).unwrap();
    assert_eq!((info.src_port, info.dst_port), (30443, 34278));

    // Following packets stick to the same instance.
    for _ in 0..3 {
        let mut ack = tcp(CLIENT_NS, 34278, RR_IP, 30443, TCP_ACK);
        assert_eq!(a.outbound(&mut ack, t0), Outbound::Tunnel(ep(NODE_B)));
        assert_eq!(addrs(&ack), (ip(CLIENT_IIP), ip(S0_NS)));
        assert_eq!(b.inbound(&mut ack, t0), Inbound::Deliver);
        assert_eq!(addrs(&ack), (ip(CLIENT_IIP), ip(S0_NS)));
    }
    // A new connection rotates to instance 1 on C.
    let mut other = tcp(CLIENT_NS, 34279, RR_IP, 30443, TCP_SYN);
    assert_eq!(a.outbound(&mut other, t0), Outbound::Tunnel(ep(NODE_C)));
    assert_eq!(addrs(&other), (ip(CLIENT_IIP), ip(S1_NS)));

    let sa = a.stats();
    assert_eq!((sa.packets_out, sa.tunneled, sa.packets_in, sa.delivered), (5, 5, 1, 1));
    assert_eq!((sa.flows, sa.jobs, sa.drops.total()), (2, 2, 0));
    let sb = b.stats();
    assert_eq!((sb.queries, sb.released, sb.packets_in, sb.flows), (1, 1, 4, 1));
}

#[test]
fn icmp_echo_across_two_nodes() {
    let t0 = Instant::now();
    let mut a = node_a(t0);
    a.apply_table(&server_table(), t0).unwrap();
    let mut b = node(NODE_B);
    b.add_local(ip(S0_NS), ip(S0_IIP), SERVER_JOB);
    b.apply_table(&client_table(), t0).unwrap();

    let mut ping = build(ip(CLIENT_NS), ip(RR_IP), L4::Icmp { kind: 8, id: 77, seq: 1 }, b"abc");
    assert_eq!(a.outbound(&mut ping, t0), Outbound::Tunnel(ep(NODE_B)));
    assert_eq!(addrs(&ping), (ip(CLIENT_IIP), ip(S0_NS)));
    assert_eq!(b.inbound(&mut ping, t0), Inbound::Deliver);
    let mut pong = build(ip(S0_NS), ip(CLIENT_IIP), L4::Icmp { kind: 0, id: 77, seq: 1 }, b"abc");
    assert_eq!(b.outbound(&mut pong, t0), Outbound::Tunnel(ep(NODE_A)));
    assert_eq!(a.inbound(&mut pong, t0), Inbound::Deliver);
    assert_eq!(addrs(&pong), (ip(RR_IP), ip(CLIENT_NS)));
    assert_eq!(parse(&pong).unwrap().protocol, Protocol::Icmp);
}

/// A datagram larger than the overlay MTU arrives in fragments: the later ones follow the first
/// (same instance, same addresses) both ways, also when the first waited for the table, and the
/// receiver's kernel can join them into a valid datagram.
#[test]
fn fragmented_datagrams_follow_their_first_fragment() {
    let t0 = Instant::now();
    let mut a = node_a(t0);
    let mut b = node(NODE_B);
    b.add_local(ip(S0_NS), ip(S0_IIP), SERVER_JOB);
    b.apply_table(&client_table(), t0).unwrap();
    let big = |src: &str, dst: &str, l4: L4| build(ip(src), ip(dst), l4, &[7u8; 3000]);

    // The server's table is not known yet: both fragments wait, then go to instance 0 on B.
    let request = big(CLIENT_NS, RR_IP, L4::Udp { sport: 4000, dport: 53, checksum: true });
    let (mut first, mut later) = fragment(&request, 1400);
    assert_eq!(a.outbound(&mut first, t0), Outbound::Query(ip(RR_IP)));
    assert_eq!(a.outbound(&mut later, t0), Outbound::Queued);
    assert_eq!(a.apply_table(&server_table(), t0).unwrap().released, 2);
    let mut released = a.take_released().into_iter();
    let (mut first, mut later) = (released.next().unwrap(), released.next().unwrap());
    assert_eq!(a.outbound(&mut first, t0), Outbound::Tunnel(ep(NODE_B)));
    assert_eq!(a.outbound(&mut later, t0), Outbound::Tunnel(ep(NODE_B)));
    for f in [&mut first, &mut later] {
        assert_eq!(b.inbound(f, t0), Inbound::Deliver);
    }
    let joined = reassemble(&first, &later);
    assert!(full_checksums_ok(&joined));
    assert_eq!(addrs(&joined), (ip(CLIENT_IIP), ip(S0_NS)));

    // The fragmented answer gets the RR IP back as source in every fragment.
    let answer = big(S0_NS, CLIENT_IIP, L4::Udp { sport: 53, dport: 4000, checksum: true });
    let (mut first, mut later) = fragment(&answer, 1400);
    assert_eq!(b.outbound(&mut first, t0), Outbound::Tunnel(ep(NODE_A)));
    assert_eq!(b.outbound(&mut later, t0), Outbound::Tunnel(ep(NODE_A)));
    assert_eq!(a.inbound(&mut first, t0), Inbound::Deliver);
    assert_eq!(a.inbound(&mut later, t0), Inbound::Deliver);
    let joined = reassemble(&first, &later);
    assert_eq!(addrs(&joined), (ip(RR_IP), ip(CLIENT_NS)));
    assert_eq!(&joined[28..], &[7u8; 3000][..]);

    // A big ping, fragmented the same way.
    let ping = big(CLIENT_NS, RR_IP, L4::Icmp { kind: 8, id: 9, seq: 1 });
    let (mut first, mut later) = fragment(&ping, 1400);
    let to = a.outbound(&mut first, t0);
    assert_eq!(a.outbound(&mut later, t0), to, "the later fragment goes where the first went");
    assert_eq!(addrs(&reassemble(&first, &later)).0, ip(CLIENT_IIP));

    // Fragments left over after the TTL are not matched any more.
    let (_, mut stale) = fragment(&request, 1400);
    a.expire(t0 + crate::fragments::FRAGMENT_TTL);
    let late = t0 + crate::fragments::FRAGMENT_TTL;
    assert_eq!(a.outbound(&mut stale, late), Outbound::Drop(DropReason::Fragment));
    assert_eq!(a.stats().drops.total(), 1);
}

#[test]
fn miss_queries_once_queues_and_releases() {
    let t0 = Instant::now();
    let mut a = node_a(t0);
    let mut first = udp(CLIENT_NS, 5000, RR_IP, 53);
    let original = first.clone();
    assert_eq!(a.outbound(&mut first, t0), Outbound::Query(ip(RR_IP)));
    assert_eq!(first, original, "a queued packet is not rewritten");
    let mut second = udp(CLIENT_NS, 5001, RR_IP, 53);
    assert_eq!(a.outbound(&mut second, t0), Outbound::Queued);
    assert_eq!(a.outbound(&mut udp(CLIENT_NS, 5002, RR_IP, 53), t0), Outbound::Queued);
    assert_eq!(a.stats().queued, 3);
    assert_eq!(a.stats().queries, 1);
    assert!(a.take_released().is_empty());

    let report = a.apply_table(&server_table(), t0).unwrap();
    assert_eq!((report.released, report.failed), (3, 0));
    assert!(report.skipped.is_empty());
    let released = a.take_released();
    assert_eq!(released.len(), 3);
    assert_eq!(released[0], original);
    let mut endpoints = Vec::new();
    for mut pkt in released {
        match a.outbound(&mut pkt, t0) {
            Outbound::Tunnel(e) => endpoints.push(e),
            other => panic!("{other:?}"),
        }
    }
    // Three new flows: round robin B, C, B.
    assert_eq!(endpoints, vec![ep(NODE_B), ep(NODE_C), ep(NODE_B)]);
    assert_eq!(a.stats().queued, 0);
}

#[test]
fn unanswered_query_is_given_up_and_asked_again() {
    let t0 = Instant::now();
    let mut a = node_a(t0);
    assert_eq!(a.outbound(&mut udp(CLIENT_NS, 1, RR_IP, 53), t0), Outbound::Query(ip(RR_IP)));
    a.expire(t0 + Duration::from_secs(5));
    assert_eq!(a.stats().queued, 0);
    assert_eq!(a.stats().drops.get(DropReason::QueueExpired), 1);
    let later = t0 + Duration::from_secs(6);
    assert_eq!(a.outbound(&mut udp(CLIENT_NS, 1, RR_IP, 53), later), Outbound::Query(ip(RR_IP)));
}

#[test]
fn error_table_drops_queue_and_caches_the_miss() {
    let t0 = Instant::now();
    let mut a = node_a(t0);
    let unknown = "10.30.9.9";
    assert_eq!(a.outbound(&mut udp(CLIENT_NS, 1, unknown, 53), t0), Outbound::Query(ip(unknown)));
    assert_eq!(a.outbound(&mut udp(CLIENT_NS, 2, unknown, 53), t0), Outbound::Queued);
    let failed = RouteTable { query_key: unknown.into(), error: "unknown service IP".into(), ..Default::default() };
    let report = a.apply_table(&failed, t0).unwrap();
    assert_eq!(report.failed, 2);
    assert!(a.take_released().is_empty());
    assert_eq!(a.stats().queued, 0);
    assert_eq!(a.stats().drops.get(DropReason::QueryFailed), 2);

    // A storm within the negative period neither queues nor asks.
    for i in 0..100u16 {
        let at = t0 + Duration::from_millis(u64::from(i) * 9);
        assert_eq!(
            a.outbound(&mut udp(CLIENT_NS, 10 + i, unknown, 53), at),
            Outbound::Drop(DropReason::UnknownDestination)
        );
    }
    assert_eq!(a.stats().queries, 1);
    assert_eq!(a.stats().drops.get(DropReason::UnknownDestination), 100);
    let after = t0 + Duration::from_secs(1);
    assert_eq!(a.outbound(&mut udp(CLIENT_NS, 1, unknown, 53), after), Outbound::Query(ip(unknown)));
}

#[test]
fn removed_instance_makes_the_flow_re_pick_the_survivor() {
    let t0 = Instant::now();
    let mut a = node_a(t0);
    a.apply_table(&server_table(), t0).unwrap();
    let mut p = tcp(CLIENT_NS, 40000, RR_IP, 80, TCP_SYN);
    assert_eq!(a.outbound(&mut p, t0), Outbound::Tunnel(ep(NODE_B)));
    assert_eq!(a.stats().flows, 1);

    // Instance 0 (on B) is gone: the flow is dropped and the next packet goes to instance 1.
    let survivor_only = table(SERVER_JOB, &[(IP_TYPE_RR, RR_IP)], vec![instance(1, S1_IIP, S1_NS, NODE_C)]);
    a.apply_table(&survivor_only, t0).unwrap();
    assert_eq!(a.stats().flows, 0);
    let mut p = tcp(CLIENT_NS, 40000, RR_IP, 80, TCP_ACK);
    assert_eq!(a.outbound(&mut p, t0), Outbound::Tunnel(ep(NODE_C)));
    assert_eq!(addrs(&p), (ip(CLIENT_IIP), ip(S1_NS)));

    // Instance 1 moves to B with a new nsIP (same number): re-picked with the new address.
    let moved = table(SERVER_JOB, &[(IP_TYPE_RR, RR_IP)], vec![instance(1, S1_IIP, "10.18.0.140", NODE_B)]);
    a.apply_table(&moved, t0).unwrap();
    let mut p = tcp(CLIENT_NS, 40000, RR_IP, 80, TCP_ACK);
    assert_eq!(a.outbound(&mut p, t0), Outbound::Tunnel(ep(NODE_B)));
    assert_eq!(addrs(&p), (ip(CLIENT_IIP), ip("10.18.0.140")));

    // No instance left: dropped.
    a.apply_table(&table(SERVER_JOB, &[(IP_TYPE_RR, RR_IP)], vec![]), t0).unwrap();
    assert_eq!(
        a.outbound(&mut tcp(CLIENT_NS, 40000, RR_IP, 80, TCP_ACK), t0),
        Outbound::Drop(DropReason::NoRoutableInstance)
    );
}

#[test]
fn target_on_the_same_node_is_delivered_locally() {
    let t0 = Instant::now();
    let mut a = node_a(t0);
    let local_server = table(SERVER_JOB, &[(IP_TYPE_RR, RR_IP)], vec![instance(0, S0_IIP, "10.18.0.67", NODE_A)]);
    a.add_local(ip("10.18.0.67"), ip(S0_IIP), SERVER_JOB);
    a.apply_table(&local_server, t0).unwrap();

    let mut req = tcp(CLIENT_NS, 41000, RR_IP, 8080, TCP_SYN);
    assert_eq!(a.outbound(&mut req, t0), Outbound::Local);
    assert_eq!(addrs(&req), (ip(CLIENT_IIP), ip("10.18.0.67")));
    let mut resp = tcp("10.18.0.67", 8080, CLIENT_IIP, 41000, TCP_SYN | TCP_ACK);
    assert_eq!(a.outbound(&mut resp, t0), Outbound::Local);
    assert_eq!(addrs(&resp), (ip(RR_IP), ip(CLIENT_NS)));
    let s = a.stats();
    assert_eq!((s.local, s.tunneled, s.flows), (2, 0, 2));

    // The table says "here" but the instance is not registered: refused, not looped.
    a.remove_local(ip("10.18.0.67"));
    assert_eq!(
        a.outbound(&mut tcp(CLIENT_NS, 41000, RR_IP, 8080, TCP_ACK), t0),
        Outbound::Drop(DropReason::NotForLocal)
    );
}

#[test]
fn endpoint_change_turns_remote_into_local() {
    let t0 = Instant::now();
    let mut b = node(NODE_C);
    b.add_local(ip(S0_NS), ip(S0_IIP), SERVER_JOB);
    b.add_local(ip(CLIENT_NS), ip(CLIENT_IIP), CLIENT_JOB);
    b.apply_table(&server_table(), t0).unwrap();
    assert_eq!(b.outbound(&mut tcp(CLIENT_NS, 1, S0_IIP, 80, TCP_SYN), t0), Outbound::Tunnel(ep(NODE_B)));
    b.set_own_endpoint(ep(NODE_B));
    assert_eq!(b.own_endpoint(), ep(NODE_B));
    assert_eq!(b.outbound(&mut tcp(CLIENT_NS, 1, S0_IIP, 80, TCP_ACK), t0), Outbound::Local);
}

#[test]
fn interest_expires_after_idle_but_never_with_a_local_instance() {
    let t0 = Instant::now();
    let mut a = node_a(t0);
    a.apply_table(&server_table(), t0).unwrap();
    assert!(a.expire(t0 + Duration::from_secs(9)).jobs.is_empty());
    // Use at 8 s keeps it until 18 s.
    let at8 = t0 + Duration::from_secs(8);
    assert_eq!(a.outbound(&mut udp(CLIENT_NS, 1, RR_IP, 53), at8), Outbound::Tunnel(ep(NODE_B)));
    assert!(a.expire(t0 + Duration::from_secs(17)).jobs.is_empty());
    // A refresh pushed by the cluster is not a use.
    a.apply_table(&server_table(), t0 + Duration::from_secs(17)).unwrap();
    let gone = a.expire(t0 + Duration::from_secs(18));
    assert_eq!(gone.jobs, vec![SERVER_JOB.to_string()]);
    assert_eq!(gone.flows, 0, "the UDP flow is not idle for 60 s yet, but left with its job");
    assert!(!a.has_job(SERVER_JOB));
    assert_eq!(a.stats().flows, 0);
    // The client's own job stays forever.
    assert!(a.expire(t0 + Duration::from_secs(1000)).jobs.is_empty());
    assert!(a.has_job(CLIENT_JOB));
    // Without the server table again, the next packet asks.
    assert_eq!(
        a.outbound(&mut udp(CLIENT_NS, 1, RR_IP, 53), t0 + Duration::from_secs(1001)),
        Outbound::Query(ip(RR_IP))
    );
    // Once the local instance is gone, its job expires too.
    a.remove_local(ip(CLIENT_NS));
    assert_eq!(a.expire(t0 + Duration::from_secs(1002)).jobs, vec![CLIENT_JOB.to_string()]);
}

#[test]
fn replies_keep_interest_alive() {
    let t0 = Instant::now();
    let mut a = node_a(t0);
    a.apply_table(&server_table(), t0).unwrap();
    a.outbound(&mut udp(CLIENT_NS, 1, RR_IP, 53), t0);
    let mut reply = udp(S0_IIP, 53, CLIENT_NS, 1);
    assert_eq!(a.inbound(&mut reply, t0 + Duration::from_secs(9)), Inbound::Deliver);
    assert_eq!(addrs(&reply), (ip(RR_IP), ip(CLIENT_NS)));
    assert!(a.expire(t0 + Duration::from_secs(18)).jobs.is_empty());
    assert_eq!(a.expire(t0 + Duration::from_secs(19)).jobs, vec![SERVER_JOB.to_string()]);
}

#[test]
fn idle_flows_expire_with_configured_timeouts() {
    let t0 = Instant::now();
    let mut cfg = ProxyConfig::new(ep(NODE_A));
    cfg.timeouts.udp_idle = Duration::from_secs(2);
    cfg.timeouts.interest_idle = Duration::from_secs(3600);
    let mut a = Proxy::new(cfg);
    a.add_local(ip(CLIENT_NS), ip(CLIENT_IIP), CLIENT_JOB);
    a.apply_table(&server_table(), t0).unwrap();
    assert_eq!(a.outbound(&mut udp(CLIENT_NS, 7, RR_IP, 53), t0), Outbound::Tunnel(ep(NODE_B)));
    assert_eq!(a.expire(t0 + Duration::from_secs(1)).flows, 0);
    assert_eq!(a.expire(t0 + Duration::from_secs(2)).flows, 1);
    // The 5-tuple is new again: round robin moves on to instance 1.
    assert_eq!(
        a.outbound(&mut udp(CLIENT_NS, 7, RR_IP, 53), t0 + Duration::from_secs(3)),
        Outbound::Tunnel(ep(NODE_C))
    );
    // A late reply of the expired flow is delivered untranslated.
    let mut late = udp(S0_IIP, 53, CLIENT_NS, 7);
    assert_eq!(a.inbound(&mut late, t0 + Duration::from_secs(3)), Inbound::Deliver);
    assert_eq!(addrs(&late), (ip(S0_IIP), ip(CLIENT_NS)));
}

#[test]
fn refused_packets_and_drop_counters() {
    let t0 = Instant::now();
    let mut a = node_a(t0);
    a.apply_table(&server_table(), t0).unwrap();
    // Host process (TUN address) or unknown source.
    assert_eq!(a.outbound(&mut udp("10.19.1.254", 1, RR_IP, 53), t0), Outbound::Drop(DropReason::NotFromLocal));
    assert_eq!(a.outbound(&mut [0x45, 0, 0], t0), Outbound::Drop(DropReason::Malformed));
    assert_eq!(a.outbound(&mut [0x60; 40], t0), Outbound::Drop(DropReason::NotIpv4));
    // A later fragment whose first was never seen.
    let (_, mut later) =
        fragment(&build(ip(CLIENT_NS), ip(RR_IP), L4::Udp { sport: 1, dport: 53, checksum: true }, &[0; 64]), 16);
    assert_eq!(a.outbound(&mut later, t0), Outbound::Drop(DropReason::Fragment));
    let unreachable = &mut build(ip(CLIENT_NS), ip(RR_IP), L4::Icmp { kind: 3, id: 0, seq: 0 }, b"");
    assert_eq!(a.outbound(unreachable, t0), Outbound::Drop(DropReason::UnsupportedProtocol));
    // Inbound for an address that is not a local instance.
    assert_eq!(a.inbound(&mut udp(S0_IIP, 53, "10.18.0.99", 1), t0), Inbound::Drop(DropReason::NotForLocal));
    assert_eq!(a.inbound(&mut [0u8; 10], t0), Inbound::Drop(DropReason::NotIpv4));
    let s = a.stats();
    assert_eq!(s.drops.get(DropReason::NotFromLocal), 1);
    assert_eq!(s.drops.get(DropReason::Malformed), 1);
    assert_eq!(s.drops.get(DropReason::NotIpv4), 2);
    assert_eq!(s.drops.get(DropReason::NotForLocal), 1);
    assert_eq!(s.drops.total(), 7);
    assert_eq!(s.flows, 0);
    assert_eq!(s.drops.iter().count(), 6);
}

#[test]
fn instance_ip_without_placement_is_not_routable() {
    let t0 = Instant::now();
    let mut a = node_a(t0);
    let t = table(
        SERVER_JOB,
        &[(IP_TYPE_RR, RR_IP)],
        vec![
            instance(0, S0_IIP, S0_NS, NODE_B),
            RouteInstance { instance_number: 1, instance_ip: S1_IIP.into(), ..Default::default() },
        ],
    );
    a.apply_table(&t, t0).unwrap();
    assert_eq!(a.outbound(&mut udp(CLIENT_NS, 1, S1_IIP, 9), t0), Outbound::Drop(DropReason::NoRoutableInstance));
    let mut p = udp(CLIENT_NS, 1, S0_IIP, 9);
    assert_eq!(a.outbound(&mut p, t0), Outbound::Tunnel(ep(NODE_B)));
    assert_eq!(addrs(&p), (ip(CLIENT_IIP), ip(S0_NS)));
}

#[test]
fn closest_uses_measured_rtts_and_probe_targets() {
    let t0 = Instant::now();
    let mut a = node_a(t0);
    let closest_ip = "10.30.2.30";
    let t = table(
        SERVER_JOB,
        &[(IP_TYPE_RR, RR_IP), (IP_TYPE_CLOSEST, closest_ip)],
        vec![instance(0, S0_IIP, S0_NS, NODE_B), instance(1, S1_IIP, S1_NS, NODE_C)],
    );
    a.apply_table(&t, t0).unwrap();
    assert_eq!(a.probe_targets(), vec![ep(NODE_B), ep(NODE_C)]);
    // Nothing measured: lower instance number.
    assert_eq!(a.outbound(&mut udp(CLIENT_NS, 1, closest_ip, 9), t0), Outbound::Tunnel(ep(NODE_B)));
    a.set_rtt(ep(NODE_B), Duration::from_millis(30));
    a.set_rtt(ep(NODE_C), Duration::from_millis(3));
    assert_eq!(a.outbound(&mut udp(CLIENT_NS, 2, closest_ip, 9), t0), Outbound::Tunnel(ep(NODE_C)));
    // The existing flow keeps its choice.
    assert_eq!(a.outbound(&mut udp(CLIENT_NS, 1, closest_ip, 9), t0), Outbound::Tunnel(ep(NODE_B)));
    // Without a closest address nothing needs probing.
    a.apply_table(&server_table(), t0).unwrap();
    assert!(a.probe_targets().is_empty());
}

#[test]
fn bad_tables_are_refused_or_partially_applied() {
    let t0 = Instant::now();
    let mut a = node_a(t0);
    let nameless = RouteTable { app_name: " ".into(), ..server_table() };
    assert!(a.apply_table(&nameless, t0).is_err());
    let mut garbled = server_table();
    garbled.instance_list.push(RouteInstance {
        instance_number: 7,
        instance_ip: "10.30.0.99".into(),
        namespace_ip: "999.1.1.1".into(),
        host_ip: "192.168.1.9".into(),
        host_port: 50103,
        ..Default::default()
    });
    garbled.service_ip.push(ServiceIp { ip_type: "Fancy".into(), address: "10.30.5.5".into() });
    let report = a.apply_table(&garbled, t0).unwrap();
    assert_eq!(report.skipped.len(), 2, "{:?}", report.skipped);
    assert_eq!(a.outbound(&mut udp(CLIENT_NS, 1, RR_IP, 9), t0), Outbound::Tunnel(ep(NODE_B)));
}

#[test]
fn re_registered_local_instance_gets_fresh_flows() {
    let t0 = Instant::now();
    let mut a = node_a(t0);
    a.apply_table(&server_table(), t0).unwrap();
    a.outbound(&mut udp(CLIENT_NS, 1, RR_IP, 9), t0);
    assert_eq!(a.stats().flows, 1);
    a.add_local(ip(CLIENT_NS), ip("10.30.0.3"), CLIENT_JOB);
    assert_eq!(a.stats().flows, 0);
    let mut p = udp(CLIENT_NS, 1, RR_IP, 9);
    a.outbound(&mut p, t0);
    assert_eq!(addrs(&p).0, ip("10.30.0.3"));
    a.remove_job(SERVER_JOB);
    assert_eq!(a.stats().flows, 0);
    assert!(!a.has_job(SERVER_JOB));
}

/// A run of one flow's plain segments (as one received batch delivers them, with one `now`)
/// is translated like the first, another flow or a FIN in the run is looked up, and nothing done in
/// between (here: the client instance going away) is skipped by the shortcut.
#[test]
fn a_run_of_one_flows_segments_is_translated_like_its_first() {
    let t0 = Instant::now();
    let mut a = node_a(t0);
    a.apply_table(&server_table(), t0).unwrap();
    let mut syn = tcp(CLIENT_NS, 34278, RR_IP, 30443, TCP_SYN);
    assert_eq!(a.outbound(&mut syn, t0), Outbound::Tunnel(ep(NODE_B)));

    let t1 = t0 + Duration::from_millis(1);
    for _ in 0..5 {
        let mut seg = tcp(S0_IIP, 30443, CLIENT_NS, 34278, TCP_ACK);
        assert_eq!(a.inbound(&mut seg, t1), Inbound::Deliver);
        assert_eq!(addrs(&seg), (ip(RR_IP), ip(CLIENT_NS)));
    }
    // Another flow's segment in the run is looked up on its own (no flow: unchanged).
    let mut stray = tcp(S1_IIP, 30443, CLIENT_NS, 34278, TCP_ACK);
    assert_eq!(a.inbound(&mut stray, t1), Inbound::Deliver);
    assert_eq!(addrs(&stray), (ip(S1_IIP), ip(CLIENT_NS)));
    let mut fin = tcp(S0_IIP, 30443, CLIENT_NS, 34278, TCP_ACK | crate::packet::TCP_FIN);
    assert_eq!(a.inbound(&mut fin, t1), Inbound::Deliver);
    assert_eq!(addrs(&fin), (ip(RR_IP), ip(CLIENT_NS)));
    let s = a.stats();
    assert_eq!((s.packets_in, s.delivered), (7, 7));

    // The client goes away between two segments of the run: the next one is refused.
    let mut seg = tcp(S0_IIP, 30443, CLIENT_NS, 34278, TCP_ACK);
    assert_eq!(a.inbound(&mut seg, t1), Inbound::Deliver);
    a.remove_local(ip(CLIENT_NS));
    let mut seg = tcp(S0_IIP, 30443, CLIENT_NS, 34278, TCP_ACK);
    assert_eq!(a.inbound(&mut seg, t1), Inbound::Drop(DropReason::NotForLocal));
}
