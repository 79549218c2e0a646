use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use super::*;
use crate::testutil::{build, L4};

const RANGE: Ipv4Net = Ipv4Net { addr: Ipv4Addr::new(10, 30, 0, 0), prefix: 16 };

struct Worker {
    tunnel: SecureTunnel,
    endpoint: SocketAddrV4,
    /// Packets opened so far.
    received: Vec<(Vec<u8>, PeerKey)>,
}

fn worker(seed: u8) -> Worker {
    Worker {
        tunnel: SecureTunnel::new(StaticKey::from_bytes([seed; KEY_LEN]), RANGE),
        endpoint: SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, seed), 50103),
        received: Vec::new(),
    }
}

fn introduce(a: &mut Worker, b: &mut Worker) {
    a.tunnel.set_peer(b.tunnel.public(), b.endpoint, None);
    b.tunnel.set_peer(a.tunnel.public(), a.endpoint, None);
}

/// Delivers one datagram; what it opened to.
fn deliver(to: &mut Worker, from: SocketAddrV4, datagram: &[u8]) -> Opened {
    let mut out = vec![0u8; datagram.len().max(MIN_OUT)];
    let opened = to.tunnel.open(from, datagram, &mut out, Instant::now());
    if let Opened::Packet { len, peer } = opened {
        to.received.push((out[..len].to_vec(), peer));
    }
    opened
}

/// Exchanges the outboxes of `a` and `b` until both are empty.
fn pump(a: &mut Worker, b: &mut Worker) {
    for _ in 0..10 {
        let from_a = a.tunnel.take_outbox();
        let from_b = b.tunnel.take_outbox();
        if from_a.is_empty() && from_b.is_empty() {
            return;
        }
        for (to, d) in from_a {
            assert_eq!(to, b.endpoint);
            deliver(b, a.endpoint, &d);
        }
        for (to, d) in from_b {
            assert_eq!(to, a.endpoint);
            deliver(a, b.endpoint, &d);
        }
    }
    panic!("the handshake does not settle");
}

fn packet(marker: &[u8]) -> Vec<u8> {
    build(
        Ipv4Addr::new(10, 30, 0, 5),
        Ipv4Addr::new(10, 18, 0, 66),
        L4::Udp { sport: 1, dport: 2, checksum: true },
        marker,
    )
}

/// Seals for `b` once sessions exist.
fn seal(a: &mut Worker, b: &Worker, pkt: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; pkt.len() + OVERHEAD + MIN_OUT];
    match a.tunnel.seal(b.endpoint, pkt, &mut out) {
        Sealed::Ready(n) => out[..n].to_vec(),
        other => panic!("not sealed: {other:?}"),
    }
}

fn connected() -> (Worker, Worker) {
    let (mut a, mut b) = (worker(1), worker(2));
    introduce(&mut a, &mut b);
    let first = packet(b"first packet");
    let mut out = vec![0u8; 2048];
    assert_eq!(a.tunnel.seal(b.endpoint, &first, &mut out), Sealed::Queued, "no session yet");
    pump(&mut a, &mut b);
    assert_eq!(b.received, vec![(first, a.tunnel.public())], "the queued packet follows the handshake");
    b.received.clear();
    (a, b)
}

#[test]
fn sealed_packets_round_trip_and_hide_their_payload() {
    let (mut a, mut b) = connected();
    let pkt = packet(b"SECRET-MARKER-1234");
    let wire = seal(&mut a, &b, &pkt);
    assert_eq!(wire.len(), pkt.len() + OVERHEAD, "constant overhead");
    assert!(!wire.windows(18).any(|w| w == b"SECRET-MARKER-1234"), "payload in clear");
    assert_eq!(deliver(&mut b, a.endpoint, &wire), Opened::Packet { len: pkt.len(), peer: a.tunnel.public() });
    assert_eq!(b.received[0].0, pkt);
    // And back.
    let reply = packet(b"reply");
    let wire = seal(&mut b, &a, &reply);
    assert!(matches!(deliver(&mut a, b.endpoint, &wire), Opened::Packet { .. }));
    assert_eq!(a.received[0].0, reply);
    assert_eq!(a.tunnel.refusals().total() + b.tunnel.refusals().total(), 0);
}

#[test]
fn replayed_datagrams_are_refused_and_counted() {
    let (mut a, mut b) = connected();
    let wire = seal(&mut a, &b, &packet(b"once"));
    assert!(matches!(deliver(&mut b, a.endpoint, &wire), Opened::Packet { .. }));
    assert_eq!(deliver(&mut b, a.endpoint, &wire), Opened::Refused(Refusal::Replayed));
    assert_eq!(deliver(&mut b, a.endpoint, &wire), Opened::Refused(Refusal::Replayed));
    assert_eq!(b.tunnel.refusals().get(Refusal::Replayed), 2);
    assert_eq!(b.received.len(), 1);
}

#[test]
fn forged_and_garbled_datagrams_are_refused_and_counted() {
    let (mut a, mut b) = connected();
    let wire = seal(&mut a, &b, &packet(b"genuine"));
    for at in [16, 30, wire.len() - 1] {
        let mut bad = wire.clone();
        bad[at] ^= 0x40;
        assert_eq!(deliver(&mut b, a.endpoint, &bad), Opened::Refused(Refusal::Unauthenticated), "byte {at}");
    }
    // A plaintext IPv4 packet, as the old tunnel carried them.
    assert_eq!(deliver(&mut b, a.endpoint, &packet(b"forged")), Opened::Refused(Refusal::Malformed));
    // A data message for a session index nobody gave out.
    let mut foreign = wire.clone();
    foreign[4..8].copy_from_slice(&0xdead_0000u32.to_le_bytes());
    assert_eq!(deliver(&mut b, a.endpoint, &foreign), Opened::Refused(Refusal::UnknownPeer));
    // A garbled handshake initiation fails its MAC before any key agreement.
    let (mut c, mut d) = (worker(3), worker(4));
    introduce(&mut c, &mut d);
    c.tunnel.seal(d.endpoint, &packet(b"x"), &mut [0u8; 2048]);
    let (_, mut init) = c.tunnel.take_outbox().remove(0);
    init[60] ^= 1;
    assert_eq!(deliver(&mut d, c.endpoint, &init), Opened::Refused(Refusal::Unauthenticated));
    let r = b.tunnel.refusals();
    assert_eq!((r.get(Refusal::Unauthenticated), r.get(Refusal::Malformed), r.get(Refusal::UnknownPeer)), (3, 1, 1));
    // The genuine datagram still opens: refusals do not disturb the session.
    assert!(matches!(deliver(&mut b, a.endpoint, &wire), Opened::Packet { .. }));
}

#[test]
fn garbage_never_panics() {
    let (_, mut b) = connected();
    let from = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 1), 9);
    let mut state = 0x1234_5678u32;
    for len in 0..400usize {
        let mut d: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state as u8
            })
            .collect();
        if len >= 4 {
            d[0] = (len % 5) as u8; // every message type, with valid and invalid lengths
            d[1..4].fill(0);
        }
        assert!(matches!(deliver(&mut b, from, &d), Opened::Refused(_) | Opened::Control | Opened::Unknown(_)));
    }
    // Too small an output buffer is refused, not a panic.
    assert_eq!(b.tunnel.open(from, &[4, 0, 0, 0], &mut [0u8; 8], Instant::now()), Opened::Refused(Refusal::Malformed));
    assert_eq!(b.tunnel.seal(from, &[0; 100], &mut [0u8; 8]), Sealed::NoPeer);
}

#[test]
fn unknown_initiators_wait_for_the_directory() {
    let (mut a, mut b) = (worker(1), worker(2));
    // `a` knows `b` from a table; `b` has never heard of `a`.
    a.tunnel.set_peer(b.tunnel.public(), b.endpoint, None);
    a.tunnel.seal(b.endpoint, &packet(b"hello"), &mut [0u8; 2048]);
    let (_, init) = a.tunnel.take_outbox().remove(0);
    assert_eq!(deliver(&mut b, a.endpoint, &init), Opened::Unknown(a.tunnel.public()));
    assert_eq!(deliver(&mut b, a.endpoint, &init), Opened::Control, "asked once");
    assert!(b.tunnel.take_outbox().is_empty(), "no answer before the directory confirms");
    let subnet = Ipv4Net::parse("10.18.0.64/26");
    b.tunnel.directory_answer(a.tunnel.public(), Some((a.endpoint, subnet)), Instant::now());
    pump(&mut a, &mut b);
    assert_eq!(b.received, vec![(packet(b"hello"), a.tunnel.public())]);
    assert!(b.tunnel.source_allowed(a.tunnel.public(), Ipv4Addr::new(10, 18, 0, 70), None));

    // A key the directory does not know is refused, and stays refused without asking again.
    let mut c = worker(3);
    c.tunnel.set_peer(b.tunnel.public(), b.endpoint, None);
    c.tunnel.seal(b.endpoint, &packet(b"intruder"), &mut [0u8; 2048]);
    let (_, init) = c.tunnel.take_outbox().remove(0);
    assert_eq!(deliver(&mut b, c.endpoint, &init), Opened::Unknown(c.tunnel.public()));
    b.tunnel.directory_answer(c.tunnel.public(), None, Instant::now());
    assert_eq!(deliver(&mut b, c.endpoint, &init), Opened::Refused(Refusal::UnknownPeer));
    assert_eq!(b.tunnel.refusals().get(Refusal::UnknownPeer), 2);
    assert!(b.tunnel.take_outbox().is_empty());
    assert!(!b.received.iter().any(|(p, _)| p == &packet(b"intruder")));
}

#[test]
fn rekeying_keeps_the_flow() {
    let (mut a, mut b) = connected();
    let old = seal(&mut a, &b, &packet(b"sealed before the rekey"));
    a.tunnel.rekey(b.endpoint);
    pump(&mut a, &mut b);
    let new = seal(&mut a, &b, &packet(b"sealed after the rekey"));
    assert_ne!(old[4..8], new[4..8], "a new session (receiver index) is in use");
    // In flight across the rekey: the old session still opens.
    assert!(matches!(deliver(&mut b, a.endpoint, &old), Opened::Packet { .. }));
    assert!(matches!(deliver(&mut b, a.endpoint, &new), Opened::Packet { .. }));
    let reply = seal(&mut b, &a, &packet(b"answer"));
    assert!(matches!(deliver(&mut a, b.endpoint, &reply), Opened::Packet { .. }));
    assert_eq!(b.received.len(), 2);
    assert_eq!(a.tunnel.refusals().total() + b.tunnel.refusals().total(), 0);
}

#[test]
fn a_restarted_peer_gets_a_new_handshake() {
    let (mut a, b) = connected();
    // `b` restarts with the same key but no sessions; `a` keeps sending on its old session.
    let mut b2 = worker(2);
    b2.tunnel.set_peer(a.tunnel.public(), a.endpoint, None);
    let stale = seal(&mut a, &b, &packet(b"into the void"));
    assert_eq!(deliver(&mut b2, a.endpoint, &stale), Opened::Refused(Refusal::UnknownPeer), "a session it never made");
    // b2 answers with a handshake of its own; afterwards both directions work again.
    pump(&mut a, &mut b2);
    let wire = seal(&mut a, &b2, &packet(b"again"));
    assert!(matches!(deliver(&mut b2, a.endpoint, &wire), Opened::Packet { .. }));
    let back = seal(&mut b2, &a, &packet(b"back"));
    assert!(matches!(deliver(&mut a, b2.endpoint, &back), Opened::Packet { .. }));
}

#[test]
fn a_restarted_peer_behind_a_relay_sends_a_notice_and_the_sender_rekeys_at_once() {
    let (mut a, b) = connected();
    let mut b2 = worker(2);
    b2.tunnel.set_peer(a.tunnel.public(), a.endpoint, None);
    // `a`'s datagrams reach b2 from a relay's address, which b2 cannot map to a peer.
    let relay = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 50), 40000);
    let stale = seal(&mut a, &b, &packet(b"through the relay"));
    assert_eq!(deliver(&mut b2, relay, &stale), Opened::Refused(Refusal::UnknownPeer));
    let notices: Vec<_> = b2.tunnel.take_outbox();
    assert_eq!(notices.len(), 1, "only the notice: b2 cannot start a handshake with a relay");
    assert_eq!(notices[0].0, relay, "back where the datagram came from");
    // The notice (forwarded by the relay) makes `a` start a handshake without waiting.
    assert_eq!(deliver(&mut a, relay, &notices[0].1), Opened::Control);
    pump(&mut a, &mut b2);
    let wire = seal(&mut a, &b2, &packet(b"after the notice"));
    assert!(matches!(deliver(&mut b2, relay, &wire), Opened::Packet { .. }));
    // A notice naming an index `a` does not seal with changes nothing.
    let forged = wire::unknown_session(0xdead_beef);
    assert_eq!(deliver(&mut a, relay, &forged), Opened::Refused(Refusal::NoSession));
    assert!(a.tunnel.take_outbox().is_empty(), "no handshake for a guessed index");
}

#[test]
fn a_peer_that_never_answers_gets_a_new_handshake_and_one_way_flows_get_keepalives() {
    let (mut a, mut b) = connected();
    let t = Instant::now();
    // One-way flow a → b: b owes a reply and sends a keepalive after KEEPALIVE_TIMEOUT...
    let wire = seal(&mut a, &b, &packet(b"one way"));
    assert!(matches!(deliver(&mut b, a.endpoint, &wire), Opened::Packet { .. }));
    b.tunnel.tick(t + KEEPALIVE_TIMEOUT + Duration::from_secs(1));
    let keepalives = b.tunnel.take_outbox();
    assert_eq!(keepalives.len(), 1, "one keepalive");
    assert_eq!(deliver(&mut a, b.endpoint, &keepalives[0].1), Opened::Control);
    // ... so `a`, having heard back, starts no handshake at its reply timeout.
    a.tunnel.tick(t + REPLY_TIMEOUT + Duration::from_secs(1));
    assert!(a.tunnel.take_outbox().is_empty(), "the keepalive answered");
    // Now `b` goes silent for good (its notice lost): `a` rekeys after REPLY_TIMEOUT.
    let t = Instant::now();
    seal(&mut a, &b, &packet(b"unanswered"));
    a.tunnel.tick(t + Duration::from_secs(1));
    assert!(a.tunnel.take_outbox().is_empty(), "not yet");
    a.tunnel.tick(t + REPLY_TIMEOUT + Duration::from_secs(1));
    let out = a.tunnel.take_outbox();
    assert_eq!(out.len(), 1);
    assert!(matches!(wire::Message::parse(&out[0].1), Some(wire::Message::Initiation)), "a new initiation");
}

#[test]
fn a_new_key_takes_over_its_endpoint() {
    let (mut a, mut b) = connected();
    // `b` lost its data dir: same endpoint, new key; the tables now name the new key.
    let mut b2 = worker(9);
    b2.endpoint = b.endpoint;
    introduce(&mut a, &mut b2);
    assert_eq!(a.tunnel.key_of(b.endpoint), Some(b2.tunnel.public()));
    let mut out = vec![0u8; 2048];
    assert_eq!(a.tunnel.seal(b2.endpoint, &packet(b"to the new key"), &mut out), Sealed::Queued);
    pump(&mut a, &mut b2);
    assert_eq!(b2.received, vec![(packet(b"to the new key"), a.tunnel.public())]);
    // The old key no longer speaks for that endpoint's instances.
    assert!(!a.tunnel.source_allowed(b.tunnel.public(), Ipv4Addr::new(10, 30, 0, 5), Some(b.endpoint)));
    assert!(a.tunnel.source_allowed(b2.tunnel.public(), Ipv4Addr::new(10, 30, 0, 5), Some(b.endpoint)));
    b.received.clear();
}

#[test]
fn cryptokey_routing() {
    let (a, b) = connected();
    let pa = a.tunnel.public();
    let t = &b.tunnel;
    let elsewhere = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 77), 50103);
    assert!(t.source_allowed(pa, Ipv4Addr::new(10, 30, 1, 2), Some(a.endpoint)), "the table says a holds it");
    assert!(!t.source_allowed(pa, Ipv4Addr::new(10, 30, 1, 2), Some(elsewhere)), "the table says another worker");
    assert!(t.source_allowed(pa, Ipv4Addr::new(10, 30, 1, 2), None), "an instance IP of a job not known here");
    assert!(!t.source_allowed(pa, Ipv4Addr::new(10, 18, 0, 70), None), "a bridge address, no subnet known");
    assert!(!t.source_allowed(pa, Ipv4Addr::new(8, 8, 8, 8), None));
    assert!(Ipv4Net::parse("10.18.0.64/26").unwrap().contains(Ipv4Addr::new(10, 18, 0, 127)));
    assert!(!Ipv4Net::parse("10.18.0.64/26").unwrap().contains(Ipv4Addr::new(10, 18, 0, 128)));
    assert_eq!(Ipv4Net::parse("10.18.0.64/33"), None);
    assert!(Ipv4Net::parse("0.0.0.0/0").unwrap().contains(Ipv4Addr::new(1, 2, 3, 4)));
}

#[test]
fn the_cipher_is_the_fastest_both_run() {
    let (mut a, mut b) = connected();
    let expected = Offer::of_this_cpu().choose(Offer::of_this_cpu());
    assert_eq!(a.tunnel.cipher_for(b.endpoint), expected);
    assert_eq!(b.tunnel.cipher_for(a.endpoint), expected);
    // A worker without fast AES gets ChaCha20-Poly1305, whichever side starts.
    for chacha_starts in [true, false] {
        let mut c = Worker {
            tunnel: SecureTunnel::with_offer(StaticKey::from_bytes([5; KEY_LEN]), RANGE, Offer::chacha_only()),
            endpoint: SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 5), 50103),
            received: Vec::new(),
        };
        let mut d = worker(6);
        introduce(&mut c, &mut d);
        let mut out = vec![0u8; 2048];
        if chacha_starts {
            c.tunnel.seal(d.endpoint, &packet(b"x"), &mut out);
        } else {
            d.tunnel.seal(c.endpoint, &packet(b"x"), &mut out);
        }
        pump(&mut c, &mut d);
        assert_eq!(c.tunnel.cipher_for(d.endpoint).or(d.tunnel.cipher_for(c.endpoint)), Some(Cipher::ChaCha20Poly1305));
        assert_eq!(c.received.len() + d.received.len(), 1);
    }
    let _ = (&mut a, &mut b);
}

#[test]
fn a_replayed_initiation_is_refused_and_leaves_the_session_alone() {
    let (mut a, mut b) = (worker(1), worker(2));
    introduce(&mut a, &mut b);
    a.tunnel.seal(b.endpoint, &packet(b"first"), &mut [0u8; 2048]);
    let (_, init) = a.tunnel.take_outbox().remove(0);
    assert_eq!(deliver(&mut b, a.endpoint, &init), Opened::Control);
    pump(&mut b, &mut a);
    pump(&mut a, &mut b);
    assert_eq!(b.received.len(), 1);
    // An attacker replays the captured initiation: refused, no answer, the session still works.
    assert_eq!(deliver(&mut b, a.endpoint, &init), Opened::Refused(Refusal::Replayed));
    assert!(b.tunnel.take_outbox().is_empty());
    let wire = seal(&mut a, &b, &packet(b"still"));
    assert!(matches!(deliver(&mut b, a.endpoint, &wire), Opened::Packet { .. }));
}

#[test]
fn both_ends_starting_at_once_still_deliver_both_ways() {
    let (mut a, mut b) = (worker(1), worker(2));
    introduce(&mut a, &mut b);
    let mut out = vec![0u8; 2048];
    assert_eq!(a.tunnel.seal(b.endpoint, &packet(b"from a"), &mut out), Sealed::Queued);
    assert_eq!(b.tunnel.seal(a.endpoint, &packet(b"from b"), &mut out), Sealed::Queued);
    pump(&mut a, &mut b);
    assert_eq!(a.received, vec![(packet(b"from b"), b.tunnel.public())]);
    assert_eq!(b.received, vec![(packet(b"from a"), a.tunnel.public())]);
    for i in 0..5 {
        let wire = seal(&mut a, &b, &packet(format!("a{i}").as_bytes()));
        assert!(matches!(deliver(&mut b, a.endpoint, &wire), Opened::Packet { .. }));
        let wire = seal(&mut b, &a, &packet(format!("b{i}").as_bytes()));
        assert!(matches!(deliver(&mut a, b.endpoint, &wire), Opened::Packet { .. }));
    }
    assert_eq!(a.tunnel.refusals().total() + b.tunnel.refusals().total(), 0);
}

#[test]
fn timers_retry_rekey_and_give_up() {
    let (mut a, b) = (worker(1), worker(2));
    a.tunnel.set_peer(b.tunnel.public(), b.endpoint, None);
    let t = Instant::now();
    a.tunnel.seal_at(b.endpoint, &packet(b"lost"), &mut [0u8; 2048], t);
    assert_eq!(a.tunnel.take_outbox().len(), 1);
    a.tunnel.tick(t + Duration::from_secs(1));
    assert!(a.tunnel.take_outbox().is_empty(), "the first initiation is still in flight");
    a.tunnel.tick(t + REKEY_TIMEOUT);
    assert_eq!(a.tunnel.take_outbox().len(), 1, "retried after the timeout");
    let late = t + REKEY_ATTEMPT_TIME + REKEY_TIMEOUT * 2;
    a.tunnel.tick(late);
    assert!(a.tunnel.take_outbox().is_empty(), "gave up: the queued packet is dropped");

    // An established session rekeys on use once it is two minutes old, and keeps sealing.
    let (mut a, mut b) = connected();
    let old = seal(&mut a, &b, &packet(b"old"));
    let mut out = vec![0u8; 2048];
    let later = Instant::now() + session::REKEY_AFTER;
    assert!(matches!(a.tunnel.seal_at(b.endpoint, &packet(b"aged"), &mut out, later), Sealed::Ready(_)));
    assert_eq!(a.tunnel.take_outbox().len(), 1, "a new initiation goes out");
    // Past the reject age the old session neither seals nor opens.
    let dead = Instant::now() + session::REJECT_AFTER;
    assert_eq!(a.tunnel.seal_at(b.endpoint, &packet(b"x"), &mut out, dead), Sealed::Queued);
    let mut buf = vec![0u8; 2048];
    assert_eq!(b.tunnel.open(a.endpoint, &old, &mut buf, dead), Opened::Refused(Refusal::NoSession));
    let _ = &mut b;
}

#[test]
fn initiation_floods_are_rate_limited() {
    let mut b = worker(2);
    let mut refused = 0;
    for seed in 0..(HANDSHAKES_PER_SECOND + 20) {
        let mut x = worker(100 + (seed % 100) as u8);
        x.endpoint = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 7), 1000 + seed as u16);
        x.tunnel.set_peer(b.tunnel.public(), b.endpoint, None);
        x.tunnel.seal(b.endpoint, &packet(b"x"), &mut [0u8; 2048]);
        let (_, init) = x.tunnel.take_outbox().remove(0);
        if deliver(&mut b, x.endpoint, &init) == Opened::Refused(Refusal::RateLimited) {
            refused += 1;
        }
    }
    assert_eq!(refused, 20);
    b.tunnel.tick(Instant::now());
    let (mut c, mut b2) = (worker(3), b);
    introduce(&mut c, &mut b2);
    c.tunnel.seal(b2.endpoint, &packet(b"after the tick"), &mut [0u8; 2048]);
    pump(&mut c, &mut b2);
    assert!(b2.received.iter().any(|(p, _)| p == &packet(b"after the tick")));
}

#[test]
fn batches_sealed_outside_the_tunnel_open_at_the_peer_in_order() {
    let (mut a, mut b) = (worker(1), worker(2));
    introduce(&mut a, &mut b);
    assert!(a.tunnel.reserve(b.endpoint, 3, 300).is_none(), "no session yet: nothing to reserve");
    let (mut a, mut b) = connected();
    let mut batch = a.tunnel.reserve(b.endpoint, 3, 300).expect("a session");
    let before = b.received.len();
    for marker in [&b"batch one"[..], b"batch two", b"batch three"] {
        let pkt = packet(marker);
        let mut buf = vec![0u8; pkt.len() + OVERHEAD];
        buf[DATA_HEADER..DATA_HEADER + pkt.len()].copy_from_slice(&pkt);
        let n = batch.seal_in_place(&mut buf, pkt.len());
        assert!(matches!(deliver(&mut b, a.endpoint, &buf[..n]), Opened::Packet { .. }));
        assert_eq!(b.received.last().unwrap().0, pkt);
    }
    assert_eq!(b.received.len(), before + 3);
    let unknown = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 99), 50103);
    assert!(a.tunnel.reserve(unknown, 1, 100).is_none(), "no peer there");
}

#[test]
fn traffic_per_peer_counts_packets_and_bytes_both_ways() {
    let (mut a, mut b) = connected();
    let sent = |w: &Worker, to: SocketAddrV4| w.tunnel.peer_traffic().into_iter().find(|(e, _)| *e == to).unwrap().1;
    let (a0, b0) = (sent(&a, b.endpoint), sent(&b, a.endpoint));
    let pkt = packet(b"counted");
    let wire = seal(&mut a, &b, &pkt);
    assert!(matches!(deliver(&mut b, a.endpoint, &wire), Opened::Packet { .. }));
    let _ = a.tunnel.reserve(b.endpoint, 3, 300).expect("a session");
    let (a1, b1) = (sent(&a, b.endpoint), sent(&b, a.endpoint));
    assert_eq!(a1.sent_packets - a0.sent_packets, 4);
    assert_eq!(a1.sent_bytes - a0.sent_bytes, pkt.len() as u64 + 300);
    assert_eq!(b1.received_packets - b0.received_packets, 1);
    assert_eq!(b1.received_bytes - b0.received_bytes, pkt.len() as u64);
    assert_eq!((a1.received_packets, b1.sent_packets), (a0.received_packets, b0.sent_packets));
}
