//! Protocol edge cases driven over raw TCP: garbage, keep-alive, limits, slow consumers.

mod common;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{within, Client, Raw, TestBroker};
use oak_mqtt::BrokerConfig;
use rumqttc::mqttbytes::v4::{Connect, Packet, PubAck, Publish, Subscribe, SubscribeFilter};
use rumqttc::{ConnectReturnCode, QoS, SubscribeReasonCode};
use tokio::io::AsyncWriteExt;

fn encode(packet: Packet) -> Vec<u8> {
    let mut out = BytesMut::new();
    packet.write(&mut out, usize::MAX).unwrap();
    out.to_vec()
}

fn connect_bytes(client_id: &str, user: &str, password: &str) -> Vec<u8> {
    let mut connect = Connect::new(client_id);
    connect.set_login(user, password);
    encode(Packet::Connect(connect))
}

fn subscribe(filters: &[(&str, QoS)]) -> Packet {
    let mut subscribe = Subscribe::new_many(filters.iter().map(|(f, q)| SubscribeFilter::new(f.to_string(), *q)));
    subscribe.pkid = 1;
    Packet::Subscribe(subscribe)
}

/// Deterministic pseudo-random bytes.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (x >> 33) as u8
        })
        .collect()
}

/// A node that must keep working while other connections misbehave.
async fn bystander(broker: &TestBroker) -> Client {
    let mut n1 = Client::connect(broker.addr, "n1", "n1", "pw1").await;
    assert_eq!(
        n1.subscribe("nodes/n1/control/#", QoS::AtLeastOnce).await,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    n1
}

async fn assert_alive(broker: &TestBroker, cluster: &oak_mqtt::LocalClient, n1: &mut Client, tag: &str) {
    assert_eq!(cluster.publish("nodes/n1/control/ping", tag.as_bytes().to_vec()).unwrap(), 1, "{tag}");
    assert_eq!(&n1.next_publish().await.payload[..], tag.as_bytes());
    broker.wait_stats("only the bystander left", |s| s.connections == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_closes_only_that_connection() {
    let broker = TestBroker::start().await;
    let cluster = broker.handle.local_client("cluster");
    let mut n1 = bystander(&broker).await;

    let mut http = b"GET / HTTP/1.1\r\nHost: cluster\r\n\r\n".to_vec();
    http.resize(512, b' ');
    let mqtt31 = [&[0x10u8, 15, 0, 6][..], b"MQIsdp", &[3, 0x02, 0, 10, 0, 1, b'x']].concat();
    let mqtt5 = [&[0x10u8, 14, 0, 4][..], b"MQTT", &[5, 0x02, 0, 10, 0, 0, 1, b'x']].concat();
    let after_connect = |tail: &[u8]| [connect_bytes("g", "n2", "pw2"), tail.to_vec()].concat();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("0xff bytes", vec![0xff; 64]),
        ("reserved packet type 0", vec![0x00, 0x00]),
        ("HTTP request", http),
        ("MQTT 3.1 CONNECT", mqtt31),
        ("MQTT 5 CONNECT", mqtt5),
        ("PUBLISH before CONNECT", encode(Packet::Publish(Publish::new("nodes/n2/x", QoS::AtMostOnce, "x")))),
        ("reserved type 15 after CONNECT", after_connect(&[0xf0, 0x00])),
        ("200 MB remaining length", after_connect(&[0x30, 0xff, 0xff, 0xff, 0x5f])),
        ("second CONNECT", after_connect(&connect_bytes("g", "n2", "pw2"))),
        ("CONNACK from a client", after_connect(&[0x20, 0x02, 0x00, 0x00])),
        (
            "QoS 2 PUBLISH",
            after_connect(&{
                let mut p = Publish::new("nodes/n2/x", QoS::ExactlyOnce, "x");
                p.pkid = 3;
                encode(Packet::Publish(p))
            }),
        ),
        ("QoS 3 PUBLISH", after_connect(&[0x36, 0x07, 0, 1, b'a', 0, 1, b'x', b'y'])),
        ("PUBLISH with packet id 0", after_connect(&[0x32, 0x06, 0, 1, b'a', 0, 0, b'x'])),
        (
            "PUBLISH to a wildcard topic",
            after_connect(&encode(Packet::Publish(Publish::new("nodes/n2/#", QoS::AtMostOnce, "x")))),
        ),
        ("topic length beyond the packet", after_connect(&[0x30, 0x04, 0xff, 0xff, b'a', b'b'])),
        ("invalid UTF-8 topic", after_connect(&[0x30, 0x05, 0, 2, 0xc3, 0x28, b'x'])),
        ("SUBSCRIBE without filters", after_connect(&[0x82, 0x02, 0, 1])),
        ("UNSUBSCRIBE with a short packet id", after_connect(&[0xa2, 0x01, 0])),
    ];
    for (case, bytes) in cases {
        let mut raw = Raw::connect(broker.addr).await;
        raw.send_bytes(&bytes).await;
        let seen = raw.until_closed().await;
        // At most the CONNACK (success, or the protocol-version refusal) comes back.
        assert!(seen.len() <= 1 && seen.iter().all(|p| matches!(p, Packet::ConnAck(_))), "{case}: {seen:?}");
        if case.starts_with("MQTT ") {
            assert!(
                matches!(&seen[..], [Packet::ConnAck(a)] if a.code == ConnectReturnCode::RefusedProtocolVersion),
                "{seen:?}"
            );
        }
        assert_alive(&broker, &cluster, &mut n1, case).await;
    }

    // Noise, with and without a CONNECT in front; the sender half-closes so that a connection
    // waiting for the rest of a plausible packet ends too.
    for seed in 0..300u64 {
        let junk = noise(seed, 1 + (seed as usize * 37) % 700);
        let bytes = if seed % 2 == 0 { after_connect(&junk) } else { junk };
        let mut raw = Raw::connect(broker.addr).await;
        raw.send_bytes(&bytes).await;
        let _ = raw.stream.shutdown().await;
        raw.until_closed().await;
    }
    assert_alive(&broker, &cluster, &mut n1, "after noise").await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_dropped_after_its_keep_alive() {
    let broker = TestBroker::start().await;
    let cluster = broker.handle.local_client("cluster");
    let mut n1 = bystander(&broker).await;

    let mut raw = Raw::login(broker.addr, "k", "n2", "pw2", 1).await;
    raw.send(Packet::PingReq).await;
    assert_eq!(raw.recv().await, Some(Packet::PingResp));
    // Then silence: the broker must hang up (1.5 s here; the bound is the generous test timeout).
    assert_eq!(raw.until_closed().await, vec![]);
    assert_alive(&broker, &cluster, &mut n1, "after keep-alive").await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_must_arrive_in_time() {
    let broker =
        TestBroker::start_with(BrokerConfig { connect_timeout: Duration::from_secs(1), ..Default::default() }).await;
    let mut raw = Raw::connect(broker.addr).await;
    assert_eq!(raw.until_closed().await, vec![]);
    // Half a CONNECT is no better.
    let mut raw = Raw::connect(broker.addr).await;
    raw.send_bytes(&connect_bytes("slow", "n1", "pw1")[..5]).await;
    assert_eq!(raw.until_closed().await, vec![]);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_pipelining_disconnect_and_client_ids() {
    let broker = TestBroker::start().await;

    // CONNECT, SUBSCRIBE and PINGREQ in one segment are all answered, in order.
    let mut raw = Raw::connect(broker.addr).await;
    let batch = [
        connect_bytes("p", "n1", "pw1"),
        encode(subscribe(&[("nodes/n1/bad#", QoS::AtMostOnce), ("nodes/n1/ok", QoS::AtMostOnce)])),
        encode(Packet::PingReq),
    ]
    .concat();
    raw.send_bytes(&batch).await;
    assert!(matches!(raw.recv().await, Some(Packet::ConnAck(a)) if a.code == ConnectReturnCode::Success));
    match raw.recv().await {
        Some(Packet::SubAck(ack)) => {
            assert_eq!(ack.pkid, 1);
            assert_eq!(
                ack.return_codes,
                vec![SubscribeReasonCode::Failure, SubscribeReasonCode::Success(QoS::AtMostOnce)]
            );
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
    assert_eq!(raw.recv().await, Some(Packet::PingResp));
    // PUBACKs for broker-originated messages are accepted, even unsolicited ones.
    raw.send(Packet::PubAck(PubAck::new(42))).await;
    raw.send(Packet::PingReq).await;
    assert_eq!(raw.recv().await, Some(Packet::PingResp));
    raw.send(Packet::Disconnect).await;
    assert_eq!(raw.until_closed().await, vec![]);

    // Empty client id: fine with a clean session, refused without.
    let mut raw = Raw::connect(broker.addr).await;
    raw.send_bytes(&connect_bytes("", "n1", "pw1")).await;
    assert!(matches!(raw.recv().await, Some(Packet::ConnAck(a)) if a.code == ConnectReturnCode::Success));
    let mut raw2 = Raw::connect(broker.addr).await;
    let mut connect = Connect::new("");
    connect.clean_session = false;
    connect.set_login("n1", "pw1");
    raw2.send(Packet::Connect(connect)).await;
    let seen = raw2.until_closed().await;
    assert!(matches!(&seen[..], [Packet::ConnAck(a)] if a.code == ConnectReturnCode::BadClientId), "{seen:?}");
    // Two auto-named clients don't take each other over.
    let mut raw3 = Raw::connect(broker.addr).await;
    raw3.send_bytes(&connect_bytes("", "n1", "pw1")).await;
    assert!(matches!(raw3.recv().await, Some(Packet::ConnAck(a)) if a.code == ConnectReturnCode::Success));
    raw.send(Packet::PingReq).await;
    assert_eq!(raw.recv().await, Some(Packet::PingResp));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_packets_and_connection_limit() {
    let config = BrokerConfig { max_packet_size: 1024, max_connections: 2, ..Default::default() };
    let broker = TestBroker::start_with(config).await;
    let mut cluster = broker.handle.local_client("cluster");
    cluster.subscribe("nodes/#").unwrap();

    let mut raw = Raw::login(broker.addr, "big", "n1", "pw1", 0).await;
    raw.send(Packet::Publish(Publish::new("nodes/n1/information", QoS::AtMostOnce, vec![1u8; 1000]))).await;
    raw.send(Packet::Publish(Publish::new("nodes/n1/information", QoS::AtMostOnce, vec![2u8; 2000]))).await;
    assert_eq!(raw.until_closed().await, vec![]);
    let msg = within("the small message", cluster.recv()).await.unwrap();
    assert_eq!(msg.payload.len(), 1000);
    broker.wait_stats("the oversized sender gone", |s| s.connections == 0).await;

    let _a = Raw::login(broker.addr, "a", "n1", "pw1", 0).await;
    let _b = Raw::login(broker.addr, "b", "n2", "pw2", 0).await;
    let mut c = Raw::connect(broker.addr).await;
    c.send_bytes(&connect_bytes("c", "n3", "pw3")).await;
    assert_eq!(c.until_closed().await, vec![]);
    broker.stop().await;
}

/// A subscriber whose socket buffers fill up because it never reads.
async fn stuck_subscriber(broker: &TestBroker, qos: QoS) -> Raw {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(broker.addr).await.unwrap();
    let mut raw = Raw::from_stream(stream);
    raw.send_bytes(&connect_bytes("stuck", "n1", "pw1")).await;
    assert!(matches!(raw.recv().await, Some(Packet::ConnAck(a)) if a.code == ConnectReturnCode::Success));
    raw.send(subscribe(&[("nodes/n1/control/#", qos)])).await;
    assert!(matches!(raw.recv().await, Some(Packet::SubAck(_))));
    raw
}

/// Publishes big messages for n1 until `done` holds; returns how many were published.
async fn flood(broker: &TestBroker, cluster: &oak_mqtt::LocalClient, done: impl Fn(&oak_mqtt::Stats) -> bool) -> usize {
    let payload = Bytes::from(vec![7u8; 64 * 1024]);
    within("the flood to have an effect", async {
        let mut published = 0;
        while !done(&broker.stats()) {
            cluster.publish("nodes/n1/control/deploy", payload.clone()).unwrap();
            published += 1;
            if published % 8 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        published
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_qos0_subscriber_loses_messages_but_stays_connected() {
    let config = BrokerConfig { outgoing_queue: 4, write_timeout: Duration::from_secs(300), ..Default::default() };
    let broker = TestBroker::start_with(config).await;
    let cluster = broker.handle.local_client("cluster");
    let mut n2 = Client::connect(broker.addr, "n2", "n2", "pw2").await;
    n2.subscribe("nodes/n2/control/#", QoS::AtLeastOnce).await;
    let mut raw = stuck_subscriber(&broker, QoS::AtMostOnce).await;

    let published = flood(&broker, &cluster, |s| s.dropped >= 3).await;
    assert_eq!(broker.stats().connections, 2);

    // Others are unaffected.
    cluster.publish("nodes/n2/control/deploy", b"fine".to_vec()).unwrap();
    assert_eq!(&n2.next_publish().await.payload[..], b"fine");

    // The stuck client catches up on what was queued and is still connected (it answers a
    // ping); deliveries may come before or after the PINGRESP, so reading goes on until the
    // connection has been quiet for a while.
    raw.send(Packet::PingReq).await;
    let (mut received, mut ponged) = (0, false);
    loop {
        match tokio::time::timeout(Duration::from_millis(500), raw.recv()).await {
            Ok(Some(Packet::Publish(p))) => {
                assert_eq!(p.qos, QoS::AtMostOnce);
                received += 1;
            }
            Ok(Some(Packet::PingResp)) => ponged = true,
            Err(_) if ponged => break,
            Err(_) => panic!("no PINGRESP: the stuck client was not kept connected"),
            Ok(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        received >= 1 && received as u64 + broker.stats().dropped <= published as u64,
        "received {received} of {published}"
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_qos1_subscriber_is_disconnected() {
    let config = BrokerConfig { outgoing_queue: 4, write_timeout: Duration::from_secs(300), ..Default::default() };
    let broker = TestBroker::start_with(config).await;
    let cluster = broker.handle.local_client("cluster");
    let mut n2 = Client::connect(broker.addr, "n2", "n2", "pw2").await;
    n2.subscribe("nodes/n2/control/#", QoS::AtLeastOnce).await;
    let mut raw = stuck_subscriber(&broker, QoS::AtLeastOnce).await;

    flood(&broker, &cluster, |s| s.connections == 1).await;
    assert!(broker.stats().dropped >= 1);
    let seen = raw.until_closed().await;
    assert!(seen.iter().all(|p| matches!(p, Packet::Publish(p) if p.qos == QoS::AtLeastOnce)));

    cluster.publish("nodes/n2/control/deploy", b"fine".to_vec()).unwrap();
    assert_eq!(&n2.next_publish().await.payload[..], b"fine");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_stops_reading_is_disconnected_after_the_write_timeout() {
    let config = BrokerConfig { write_timeout: Duration::from_secs(1), ..Default::default() };
    let broker = TestBroker::start_with(config).await;
    let cluster = broker.handle.local_client("cluster");
    let mut raw = stuck_subscriber(&broker, QoS::AtMostOnce).await;
    flood(&broker, &cluster, |s| s.connections == 0).await;
    raw.until_closed().await;
    broker.stop().await;
}
