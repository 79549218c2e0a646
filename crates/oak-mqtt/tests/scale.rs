//! Many concurrent node connections on one broker: every node reports, the cluster sees every
//! report, and the cluster reaches every node. Checks correctness at scale, not speed (timings are
//! printed for information only).

mod common;

use std::sync::Arc;
use std::time::Instant;

use common::{within, Raw, TestBroker};
use oak_mqtt::{from_fn, AuthError, BrokerConfig, Principal};
use rumqttc::mqttbytes::v4::{Packet, Publish, Subscribe};
use rumqttc::QoS;
use tokio::task::JoinSet;

const NODES: usize = 1000;
const ROUNDS: usize = 3;

/// Two file descriptors per connection (both ends live in this process).
fn node_count() -> usize {
    let soft_limit = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
            line.split_whitespace().nth(3)?.parse::<usize>().ok()
        })
        .unwrap_or(usize::MAX);
    let fit = soft_limit.saturating_sub(200) / 2;
    if fit < NODES {
        eprintln!("open-file limit {soft_limit}: testing {fit} instead of {NODES} connections");
    }
    NODES.min(fit)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_nodes_report_and_receive() {
    let nodes = node_count();
    // Every user `nK` with password `pw-nK` is node `nK`.
    let auth = from_fn(|_client_id, user, password| match (user, password) {
        (Some(user), Some(password)) if password == format!("pw-{user}").as_bytes() => Ok(Principal::node(user)),
        _ => Err(AuthError::BadCredentials),
    });
    let broker = TestBroker::start_with_auth(BrokerConfig::default(), Arc::new(auth)).await;
    let addr = broker.addr;
    let mut cluster = broker.handle.local_client("cluster");
    cluster.subscribe("nodes/+/information").unwrap();

    let started = Instant::now();
    let mut connecting = JoinSet::new();
    for k in 0..nodes {
        connecting.spawn(async move {
            let node = format!("n{k}");
            let mut raw = Raw::login(addr, &node, &node, &format!("pw-{node}"), 60).await;
            let mut subscribe = Subscribe::new(format!("nodes/{node}/control/+"), QoS::AtLeastOnce);
            subscribe.pkid = 1;
            raw.send(Packet::Subscribe(subscribe)).await;
            assert!(matches!(raw.recv().await, Some(Packet::SubAck(_))));
            (k, raw)
        });
    }
    let mut conns: Vec<Option<Raw>> = (0..nodes).map(|_| None).collect();
    while let Some(joined) = within("connections", connecting.join_next()).await {
        let (k, raw) = joined.unwrap();
        conns[k] = Some(raw);
    }
    assert_eq!(broker.stats().connections, nodes as u64);
    eprintln!("{nodes} connections established in {:?}", started.elapsed());

    // Every node reports ROUNDS times at QoS 1 and gets its PUBACKs.
    let started = Instant::now();
    let mut reporting = JoinSet::new();
    for (k, raw) in conns.into_iter().enumerate() {
        let mut raw = raw.unwrap();
        reporting.spawn(async move {
            for round in 0..ROUNDS {
                let mut publish = Publish::new(format!("nodes/n{k}/information"), QoS::AtLeastOnce, format!("{round}"));
                publish.pkid = round as u16 + 1;
                raw.send(Packet::Publish(publish)).await;
            }
            for _ in 0..ROUNDS {
                assert!(matches!(raw.recv().await, Some(Packet::PubAck(_))));
            }
            (k, raw)
        });
    }
    let mut received = vec![0usize; nodes];
    for _ in 0..nodes * ROUNDS {
        let msg = within("node reports", cluster.recv()).await.unwrap();
        let k: usize =
            msg.topic.strip_prefix("nodes/n").and_then(|t| t.strip_suffix("/information")).unwrap().parse().unwrap();
        assert_eq!(&msg.payload[..], received[k].to_string().as_bytes(), "per-node order");
        received[k] += 1;
    }
    assert!(received.iter().all(|&n| n == ROUNDS));
    let mut conns: Vec<Option<Raw>> = (0..nodes).map(|_| None).collect();
    while let Some(joined) = within("PUBACKs", reporting.join_next()).await {
        let (k, raw) = joined.unwrap();
        conns[k] = Some(raw);
    }
    eprintln!("{} reports routed in {:?}", nodes * ROUNDS, started.elapsed());

    // The cluster reaches each node on its own control topic, and only that node.
    for k in 0..nodes {
        assert_eq!(cluster.publish(format!("nodes/n{k}/control/deploy"), format!("job-{k}")).unwrap(), 1);
    }
    let mut receiving = JoinSet::new();
    for (k, raw) in conns.into_iter().enumerate() {
        let mut raw = raw.unwrap();
        receiving.spawn(async move {
            match raw.recv().await {
                Some(Packet::Publish(p)) => {
                    assert_eq!(p.topic, format!("nodes/n{k}/control/deploy"));
                    assert_eq!(p.payload, format!("job-{k}").as_bytes());
                }
                other => panic!("node {k}: expected its deploy message, got {other:?}"),
            }
        });
    }
    while let Some(joined) = within("deploy messages", receiving.join_next()).await {
        joined.unwrap();
    }

    let stats = broker.stats();
    assert_eq!(stats.messages_in, (nodes * (ROUNDS + 1)) as u64);
    assert_eq!(stats.messages_out, (nodes * (ROUNDS + 1)) as u64);
    assert_eq!(stats.dropped, 0);
    broker.stop().await;
}
