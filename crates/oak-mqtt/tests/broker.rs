//! The broker against real `rumqttc` clients.

mod common;

use bytes::Bytes;
use common::{options, within, Client, Ev, Raw, TestBroker};
use oak_mqtt::{LocalError, Message};
use rumqttc::{ConnectReturnCode, Packet, QoS, SubscribeReasonCode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_credentials_connect_bad_ones_are_refused() {
    let broker = TestBroker::start().await;

    let _ok = Client::connect(broker.addr, "n1", "n1", "pw1").await;

    let refusals = [
        ("wrong password", Some(("n1", "nope"))),
        ("other node's password", Some(("n1", "pw2"))),
        ("unknown user", Some(("n9", "pw1"))),
        ("no credentials", None),
    ];
    for (case, login) in refusals {
        let mut client = Client::start(options(broker.addr, "n1-bad", login));
        let (error, seen) = client.closed().await;
        assert!(seen.is_empty(), "{case}: {seen:?}");
        assert!(error.contains("ConnectionRefused(BadUserNamePassword)"), "{case}: {error}");
    }
    let stats = broker.stats();
    assert_eq!(stats.auth_failures, 4);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_publish_on_its_own_topic_reaches_the_local_client() {
    let broker = TestBroker::start().await;
    let mut cluster = broker.handle.local_client("cluster");
    cluster.subscribe("nodes/+/information").unwrap();
    cluster.subscribe("nodes/+/job").unwrap();

    let mut n1 = Client::connect(broker.addr, "n1", "n1", "pw1").await;
    n1.client.publish("nodes/n1/information", QoS::AtLeastOnce, false, b"{\"cpu\":1}".to_vec()).await.unwrap();
    n1.wait_for("PUBACK", |ev| matches!(ev, Ev::In(Packet::PubAck(_))).then_some(())).await;
    n1.client.publish("nodes/n1/job", QoS::AtMostOnce, false, b"job".to_vec()).await.unwrap();
    // Not subscribed by anyone: accepted and dropped silently.
    n1.client.publish("nodes/n1/jobs/resources", QoS::AtMostOnce, false, b"r".to_vec()).await.unwrap();

    let first = within("first message", cluster.recv()).await.unwrap();
    assert_eq!(first, Message { topic: "nodes/n1/information".into(), payload: Bytes::from_static(b"{\"cpu\":1}") });
    let second = within("second message", cluster.recv()).await.unwrap();
    assert_eq!(second.topic, "nodes/n1/job");
    assert_eq!(&second.payload[..], b"job");

    let stats = broker.wait_stats("three messages in", |s| s.messages_in == 3).await;
    assert_eq!(stats.messages_out, 2);
    assert_eq!(stats.dropped, 0);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_publish_reaches_the_node_at_its_subscription_qos() {
    let broker = TestBroker::start().await;
    let cluster = broker.handle.local_client("cluster");

    let mut n1 = Client::connect(broker.addr, "n1", "n1", "pw1").await;
    assert_eq!(
        n1.subscribe("nodes/n1/control/#", QoS::AtLeastOnce).await,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    let mut n2 = Client::connect(broker.addr, "n2", "n2", "pw2").await;
    assert_eq!(
        n2.subscribe("nodes/n2/control/+", QoS::AtMostOnce).await,
        SubscribeReasonCode::Success(QoS::AtMostOnce)
    );

    assert_eq!(cluster.publish("nodes/n1/control/deploy", b"{\"job\":1}".to_vec()).unwrap(), 1);
    let p = n1.next_publish().await;
    assert_eq!(
        (p.topic.as_str(), p.qos, &p.payload[..]),
        ("nodes/n1/control/deploy", QoS::AtLeastOnce, &b"{\"job\":1}"[..])
    );
    assert_ne!(p.pkid, 0);

    // min(publish QoS, subscription QoS).
    cluster.publish("nodes/n2/control/delete", Bytes::from_static(b"x")).unwrap();
    let p = n2.next_publish().await;
    assert_eq!((p.topic.as_str(), p.qos), ("nodes/n2/control/delete", QoS::AtMostOnce));
    cluster.publish_with_qos("nodes/n1/control/delete", b"y".to_vec(), QoS::AtMostOnce).unwrap();
    let p = n1.next_publish().await;
    assert_eq!((p.topic.as_str(), p.qos), ("nodes/n1/control/delete", QoS::AtMostOnce));

    // Several publishes in a row get distinct packet ids.
    let publisher = cluster.publisher();
    for i in 0..5 {
        publisher.publish("nodes/n1/control/deploy", format!("{i}")).unwrap();
    }
    let mut ids = Vec::new();
    for i in 0..5 {
        let p = n1.next_publish().await;
        assert_eq!(&p.payload[..], format!("{i}").as_bytes());
        ids.push(p.pkid);
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 5);

    // Nobody listens there.
    assert_eq!(cluster.publish("nodes/n3/control/deploy", b"z".to_vec()).unwrap(), 0);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_outside_the_own_prefix_are_refused() {
    let broker = TestBroker::start().await;
    let cluster = broker.handle.local_client("cluster");
    let mut n1 = Client::connect(broker.addr, "n1", "n1", "pw1").await;

    assert_eq!(n1.subscribe("nodes/n2/#", QoS::AtLeastOnce).await, SubscribeReasonCode::Failure);
    assert_eq!(n1.subscribe("nodes/+/information", QoS::AtLeastOnce).await, SubscribeReasonCode::Failure);
    assert_eq!(n1.subscribe("nodes/#", QoS::AtMostOnce).await, SubscribeReasonCode::Failure);
    assert_eq!(n1.subscribe("#", QoS::AtMostOnce).await, SubscribeReasonCode::Failure);
    assert_eq!(n1.subscribe("+/n1/control", QoS::AtMostOnce).await, SubscribeReasonCode::Failure);

    // One SUBSCRIBE with allowed and refused filters: one code each, in order.
    n1.client
        .subscribe_many([
            rumqttc::SubscribeFilter::new("nodes/n1/control/#".into(), QoS::AtLeastOnce),
            rumqttc::SubscribeFilter::new("nodes/n2/control/#".into(), QoS::AtLeastOnce),
            rumqttc::SubscribeFilter::new("nodes/n1/x/+".into(), QoS::ExactlyOnce),
        ])
        .await
        .unwrap();
    let codes = n1
        .wait_for("SUBACK", |ev| match ev {
            Ev::In(Packet::SubAck(ack)) => Some(ack.return_codes.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        codes,
        vec![
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::Failure,
            // QoS 2 is granted as QoS 1.
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
        ]
    );

    // The refused filters deliver nothing, the connection is still up.
    assert_eq!(cluster.publish("nodes/n2/control/deploy", b"secret".to_vec()).unwrap(), 0);
    assert_eq!(cluster.publish("nodes/n1/control/deploy", b"mine".to_vec()).unwrap(), 1);
    let p = n1.next_publish().await;
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("nodes/n1/control/deploy", &b"mine"[..]));

    assert_eq!(broker.stats().acl_denials, 6);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_on_another_nodes_topic_disconnects_and_is_dropped() {
    let broker = TestBroker::start().await;
    let mut cluster = broker.handle.local_client("cluster");
    cluster.subscribe("#").unwrap();

    let mut n1 = Client::connect(broker.addr, "n1", "n1", "pw1").await;
    n1.client.publish("nodes/n2/job", QoS::AtLeastOnce, false, b"forged".to_vec()).await.unwrap();
    let (error, seen) = n1.closed().await;
    assert!(seen.iter().all(|p| !matches!(p, Packet::PubAck(_))), "forged publish was acknowledged: {seen:?}");
    assert!(!error.is_empty());

    // Also outside `nodes/`, and at QoS 0.
    let mut n1 = Client::connect(broker.addr, "n1", "n1", "pw1").await;
    n1.client.publish("jobs/x/updates_available", QoS::AtMostOnce, false, b"forged".to_vec()).await.unwrap();
    n1.closed().await;

    // A legitimate message afterwards is the first thing the cluster sees.
    let n2 = Client::connect(broker.addr, "n2", "n2", "pw2").await;
    n2.client.publish("nodes/n2/job", QoS::AtLeastOnce, false, b"legit".to_vec()).await.unwrap();
    let msg = within("legit message", cluster.recv()).await.unwrap();
    assert_eq!((msg.topic.as_str(), &msg.payload[..]), ("nodes/n2/job", &b"legit"[..]));
    assert_eq!(cluster.try_recv(), None);

    let stats = broker.stats();
    assert_eq!(stats.acl_denials, 2);
    assert_eq!(stats.messages_in, 1);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_client_id_takes_over_within_a_principal_only() {
    let broker = TestBroker::start().await;
    let cluster = broker.handle.local_client("cluster");

    let mut old = Client::connect(broker.addr, "n1", "n1", "pw1").await;
    old.subscribe("nodes/n1/control/#", QoS::AtLeastOnce).await;
    let mut new = Client::connect(broker.addr, "n1", "n1", "pw1").await;
    old.closed().await;

    // The old subscription went with the old connection.
    assert_eq!(cluster.publish("nodes/n1/control/deploy", b"a".to_vec()).unwrap(), 0);
    new.subscribe("nodes/n1/control/#", QoS::AtLeastOnce).await;

    // Another node using the same client id is a different session and kicks nobody.
    let mut other = Client::connect(broker.addr, "n1", "n2", "pw2").await;
    other.subscribe("nodes/n2/control/#", QoS::AtLeastOnce).await;

    assert_eq!(cluster.publish("nodes/n1/control/deploy", b"b".to_vec()).unwrap(), 1);
    assert_eq!(&new.next_publish().await.payload[..], b"b");
    assert_eq!(cluster.publish("nodes/n2/control/deploy", b"c".to_vec()).unwrap(), 1);
    assert_eq!(&other.next_publish().await.payload[..], b"c");
    assert_eq!(broker.stats().connections, 2);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_subscriptions_deliver_once_at_the_highest_qos() {
    let broker = TestBroker::start().await;
    let cluster = broker.handle.local_client("cluster");
    let mut n1 = Client::connect(broker.addr, "n1", "n1", "pw1").await;
    n1.subscribe("nodes/n1/control/#", QoS::AtMostOnce).await;
    n1.subscribe("nodes/n1/control/deploy", QoS::AtLeastOnce).await;
    n1.subscribe("nodes/n1/+/+", QoS::AtMostOnce).await;

    assert_eq!(cluster.publish("nodes/n1/control/deploy", b"once".to_vec()).unwrap(), 1);
    assert_eq!(cluster.publish("nodes/n1/control/marker", b"marker".to_vec()).unwrap(), 1);
    let p = n1.next_publish().await;
    assert_eq!((&p.payload[..], p.qos), (&b"once"[..], QoS::AtLeastOnce));
    let p = n1.next_publish().await;
    assert_eq!((&p.payload[..], p.qos), (&b"marker"[..], QoS::AtMostOnce));

    // Unsubscribing one filter leaves the others.
    n1.client.unsubscribe("nodes/n1/control/#").await.unwrap();
    n1.wait_for("UNSUBACK", |ev| matches!(ev, Ev::In(Packet::UnsubAck(_))).then_some(())).await;
    n1.client.unsubscribe("nodes/n1/+/+").await.unwrap();
    n1.wait_for("UNSUBACK", |ev| matches!(ev, Ev::In(Packet::UnsubAck(_))).then_some(())).await;
    assert_eq!(cluster.publish("nodes/n1/control/marker", b"gone".to_vec()).unwrap(), 0);
    assert_eq!(cluster.publish("nodes/n1/control/deploy", b"still".to_vec()).unwrap(), 1);
    assert_eq!(&n1.next_publish().await.payload[..], b"still");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_clients_talk_to_each_other_and_validate_input() {
    let broker = TestBroker::start().await;
    let mut a = broker.handle.local_client("a");
    let b = broker.handle.local_client("b");
    assert_eq!(a.name(), "a");
    a.subscribe("jobs/+/updates_available").unwrap();
    assert_eq!(b.publish("jobs/web/updates_available", b"1".to_vec()).unwrap(), 1);
    assert_eq!(within("local message", a.recv()).await.unwrap().topic, "jobs/web/updates_available");

    assert!(matches!(b.publish("nodes/+/x", b"".to_vec()), Err(LocalError::InvalidTopic(_))));
    assert!(matches!(b.publish("", b"".to_vec()), Err(LocalError::InvalidTopic(_))));
    assert!(matches!(b.subscribe("a/#/b"), Err(LocalError::InvalidFilter(_))));
    assert!(matches!(b.publish("big", vec![0u8; 2 * 1024 * 1024]), Err(LocalError::TooLarge { .. })));

    assert!(a.unsubscribe("jobs/+/updates_available").unwrap());
    assert_eq!(b.publish("jobs/web/updates_available", b"2".to_vec()).unwrap(), 0);
    drop(a);
    broker.stop().await;
    assert_eq!(b.publish("x", b"".to_vec()), Err(LocalError::Closed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_node_and_shutdown_close_connections() {
    let broker = TestBroker::start().await;
    let mut cluster = broker.handle.local_client("cluster");
    let mut n1 = Client::connect(broker.addr, "n1", "n1", "pw1").await;
    let mut n2 = Client::connect(broker.addr, "n2", "n2", "pw2").await;

    assert_eq!(broker.handle.disconnect_node("n1"), 1);
    n1.closed().await;
    assert_eq!(broker.handle.disconnect_node("n9"), 0);
    broker.wait_stats("n1 gone", |s| s.connections == 1).await;

    let handle = broker.handle.clone();
    broker.stop().await;
    n2.closed().await;
    assert_eq!(within("local client end", cluster.recv()).await, None);
    assert!(handle.is_shut_down());
    assert_eq!(handle.stats().connections, 0);
    // A local client made after shutdown is simply closed.
    let mut late = handle.local_client("late");
    assert_eq!(late.subscribe("#"), Err(LocalError::Closed));
    assert_eq!(late.recv().await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_heard_follows_each_nodes_last_packet_and_connection() {
    let broker = TestBroker::start().await;
    let heard = |node: &str| broker.handle.nodes_heard().into_iter().find(|(n, _)| n == node).map(|(_, at)| at);
    assert!(broker.handle.nodes_heard().is_empty());
    let before = std::time::Instant::now();
    let mut n1 = Raw::login(broker.addr, "n1-ne", "n1", "pw1", 30).await;
    let _n2 = Raw::login(broker.addr, "n2-ne", "n2", "pw2", 30).await;
    let connected = heard("n1").expect("n1 is connected");
    assert!(connected >= before - std::time::Duration::from_millis(5), "stamped at CONNECT");
    assert!(heard("n2").is_some());
    // A keep-alive ping is enough to be heard.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let pinged = std::time::Instant::now();
    n1.send(Packet::PingReq).await;
    assert!(matches!(n1.recv().await, Some(Packet::PingResp)));
    let after_ping = heard("n1").unwrap();
    assert!(after_ping > connected && after_ping >= pinged - std::time::Duration::from_millis(5), "{after_ping:?}");
    assert_eq!(heard("n2").map(|t| t <= after_ping), Some(true));
    // Gone with its connection.
    assert_eq!(broker.handle.disconnect_node("n1"), 1);
    n1.until_closed().await;
    broker.wait_stats("n1 gone", |s| s.connections == 1).await;
    assert_eq!(heard("n1"), None);
    assert!(heard("n2").is_some());
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connect_codes_follow_the_authorizer() {
    use oak_mqtt::{from_fn, AuthError, Broker, Principal};
    use std::sync::Arc;

    let auth = from_fn(|client_id, user, _password| match (client_id, user) {
        (_, Some("n1")) => Ok(Principal::node("n1")),
        (_, Some("escape")) => Ok(Principal::node("n1/../n2")),
        (_, Some("ops")) => Ok(Principal::Unrestricted("ops".into())),
        (_, Some("locked")) => Err(AuthError::NotAuthorized),
        (_, Some("down")) => Err(AuthError::Unavailable("db".into())),
        _ => Err(AuthError::BadClientId),
    });
    let broker = Broker::bind("127.0.0.1:0".parse().unwrap(), Arc::new(auth)).await.unwrap();
    let addr = broker.local_addr();
    let mut cluster = broker.local_client("cluster");
    cluster.subscribe("nodes/#").unwrap();
    tokio::spawn(broker.run(std::future::pending()));

    for (user, code) in [
        ("locked", ConnectReturnCode::NotAuthorized),
        ("escape", ConnectReturnCode::NotAuthorized),
        ("down", ConnectReturnCode::ServiceUnavailable),
        ("who", ConnectReturnCode::BadClientId),
    ] {
        let mut client = Client::start(options(addr, "c", Some((user, "x"))));
        let (error, _) = client.closed().await;
        assert!(error.contains(&format!("ConnectionRefused({code:?})")), "{user}: {error}");
    }

    // An unrestricted principal may publish anywhere.
    let ops = Client::connect(addr, "ops", "ops", "x").await;
    ops.client.publish("nodes/n7/control/deploy", QoS::AtMostOnce, false, b"op".to_vec()).await.unwrap();
    let msg = within("operator message", cluster.recv()).await.unwrap();
    assert_eq!(msg.topic, "nodes/n7/control/deploy");
}

/// A worker connects with `clean_session = 0`: what the cluster sends while it is away (a
/// restart, a dropped connection) reaches it when it comes back; a clean session starts empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_gets_the_commands_sent_while_it_was_away() {
    let broker = TestBroker::start().await;
    let cluster = broker.handle.local_client("cluster");
    let persistent = || {
        let mut o = options(broker.addr, "n1-ne", Some(("n1", "pw1")));
        o.set_clean_session(false);
        o
    };
    let connack = |ev: &Ev| match ev {
        Ev::In(Packet::ConnAck(ack)) => Some((ack.code, ack.session_present)),
        _ => None,
    };

    let mut n1 = Client::start(persistent());
    assert_eq!(n1.wait_for("CONNACK", connack).await, (ConnectReturnCode::Success, false));
    n1.subscribe("nodes/n1/control/#", QoS::AtLeastOnce).await;
    drop(n1);
    broker.wait_stats("n1 gone", |s| s.connections == 0).await;

    // Kept: QoS 1, in order. Not kept: QoS 0, other nodes' topics.
    assert_eq!(cluster.publish("nodes/n1/control/deploy", b"d1".to_vec()).unwrap(), 1);
    assert_eq!(cluster.publish_with_qos("nodes/n1/control/deploy", b"q0".to_vec(), QoS::AtMostOnce).unwrap(), 0);
    assert_eq!(cluster.publish("nodes/n1/control/delete", b"d2".to_vec()).unwrap(), 1);
    assert_eq!(cluster.publish("nodes/n2/control/deploy", b"other".to_vec()).unwrap(), 0);

    let mut n1 = Client::start(persistent());
    assert_eq!(n1.wait_for("CONNACK", connack).await, (ConnectReturnCode::Success, true));
    let first = n1.next_publish().await;
    assert_eq!(
        (first.topic.as_str(), first.qos, &first.payload[..]),
        ("nodes/n1/control/deploy", QoS::AtLeastOnce, &b"d1"[..])
    );
    let second = n1.next_publish().await;
    assert_eq!((second.topic.as_str(), &second.payload[..]), ("nodes/n1/control/delete", &b"d2"[..]));
    // The subscription came back with the session: live messages flow without a new SUBSCRIBE.
    assert_eq!(cluster.publish("nodes/n1/control/deploy", b"live".to_vec()).unwrap(), 1);
    assert_eq!(&n1.next_publish().await.payload[..], b"live");
    drop(n1);
    broker.wait_stats("n1 gone again", |s| s.connections == 0).await;

    // A clean session throws the kept session away.
    assert_eq!(cluster.publish("nodes/n1/control/deploy", b"stale".to_vec()).unwrap(), 1);
    let mut n1 = Client::start(options(broker.addr, "n1-ne", Some(("n1", "pw1"))));
    assert_eq!(n1.wait_for("CONNACK", connack).await, (ConnectReturnCode::Success, false));
    n1.subscribe("nodes/n1/control/#", QoS::AtLeastOnce).await;
    assert_eq!(cluster.publish("nodes/n1/control/deploy", b"fresh".to_vec()).unwrap(), 1);
    assert_eq!(&n1.next_publish().await.payload[..], b"fresh", "the stale command must not be delivered");
    drop(n1);
    broker.wait_stats("n1 gone a third time", |s| s.connections == 0).await;
    // … and keeps nothing after it.
    assert_eq!(cluster.publish("nodes/n1/control/deploy", b"x".to_vec()).unwrap(), 0);

    // The cluster ends a re-registering node's connections (new password): its session is kept
    // for the connection that follows.
    let mut n1 = Client::start(persistent());
    assert_eq!(n1.wait_for("CONNACK", connack).await, (ConnectReturnCode::Success, false));
    n1.subscribe("nodes/n1/control/#", QoS::AtLeastOnce).await;
    assert_eq!(broker.handle.disconnect_node("n1"), 1);
    n1.closed().await;
    broker.wait_stats("n1 disconnected", |s| s.connections == 0).await;
    assert_eq!(cluster.publish("nodes/n1/control/deploy", b"after kick".to_vec()).unwrap(), 1);
    let mut n1 = Client::start(persistent());
    assert_eq!(n1.wait_for("CONNACK", connack).await, (ConnectReturnCode::Success, true));
    assert_eq!(&n1.next_publish().await.payload[..], b"after kick");
    broker.stop().await;
}

/// Connections keep small buffers and grow them for a big message, both ways; the small messages
/// around big ones arrive whole and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_much_bigger_than_the_buffers_pass_both_ways_between_small_ones() {
    let broker = TestBroker::start().await;
    let mut cluster = broker.handle.local_client("cluster");
    cluster.subscribe("nodes/+/job").unwrap();
    let mut n1 = Client::connect(broker.addr, "n1", "n1", "pw1").await;
    assert_eq!(
        n1.subscribe("nodes/n1/control/#", QoS::AtMostOnce).await,
        SubscribeReasonCode::Success(QoS::AtMostOnce)
    );
    let sizes = [10usize, 100_000, 3_000, 10, 700_000, 10, 5_000];
    let payload = |i: usize, len: usize| -> Vec<u8> { (0..len).map(|j| (i * 31 + j * 7) as u8).collect() };
    for (i, &len) in sizes.iter().enumerate() {
        n1.client.publish("nodes/n1/job", QoS::AtMostOnce, false, payload(i, len)).await.unwrap();
        assert_eq!(cluster.publish("nodes/n1/control/deploy", payload(i, len)).unwrap(), 1);
    }
    for (i, &len) in sizes.iter().enumerate() {
        let up = within("a message from the node", cluster.recv()).await.unwrap();
        assert_eq!((up.payload.len(), up.payload == payload(i, len)), (len, true), "message {i} up");
        let down = n1.next_publish().await;
        assert_eq!((down.payload.len(), down.payload == payload(i, len)), (len, true), "message {i} down");
    }
    broker.stop().await;
}
