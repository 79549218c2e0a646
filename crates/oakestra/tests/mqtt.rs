//! The cluster's MQTT side for real: against Debian's Mosquitto as an external broker (plaintext
//! and over TLS), and the embedded broker's TLS and per-node topic isolation with credentials
//! handed out at registration.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{
    admin_client, broker_tls, cluster_http, embedded, eventually, node_token, one_cluster_with_one_worker,
    start_cluster, start_cluster_timed, start_root, start_worker, ClusterHandle,
};
use oak_api::node::{NodeInfo, RegisterNodeRequest, RegisterNodeResponse};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode, Transport};
use serde_json::Value;

const NGINX: &str = include_str!("../../../examples/sla/nginx.json");

/// Mosquitto on a free loopback port, killed on drop.
struct Mosquitto {
    child: Child,
    port: u16,
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Mosquitto, plaintext or (with `tls`, the CA that signs its certificate) over TLS.
fn mosquitto(dir: &Path, tls: Option<&oak_tls::Authority>) -> Option<Mosquitto> {
    if !oak_e2e::can_run("cluster with Mosquitto", &[oak_e2e::Need::Tool("mosquitto")]) {
        return None;
    }
    let bin = oak_e2e::which("mosquitto").expect("checked by can_run");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let conf = dir.join("mosquitto.conf");
    let mut text = format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n");
    if let Some(ca) = tls {
        // The name workers and the cluster dial; the broker's certificate must carry it.
        let identity = ca.issue_server("mosquitto.test", &["127.0.0.1".into()]).unwrap();
        let (chain, key) = identity.to_pem();
        let file = |name: &str, content: &str| {
            let path = dir.join(name);
            std::fs::write(&path, content).unwrap();
            path.display().to_string()
        };
        text.push_str(&format!(
            "cafile {}\ncertfile {}\nkeyfile {}\n",
            file("broker-ca.pem", ca.cert_pem()),
            file("broker.pem", &chain),
            file("broker-key.pem", &key)
        ));
    }
    std::fs::write(&conf, text).unwrap();
    let child = Command::new(bin).arg("-c").arg(&conf).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    // Owned from here on: dropping it kills and reaps the broker.
    let broker = Mosquitto { child, port };
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(broker);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("mosquitto did not listen on {port}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_on_an_external_mosquitto_broker() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(broker) = mosquitto(tmp.path(), None) else { return };
    let mode = oak_cluster::MqttMode::External { url: format!("mqtt://127.0.0.1:{}", broker.port), ca: None };
    let cluster = an_instance_runs_through(tmp.path(), mode).await;
    let _ = cluster.stop.send(true);
    let _ = cluster.task.await;
}

/// `mqtts://` with `--mqtt-ca`: the cluster and its worker reach Mosquitto over TLS, the worker
/// with the CA the cluster handed it at registration (over HTTPS).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_on_an_external_mosquitto_broker_over_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = oak_tls::Authority::generate("broker CA").unwrap();
    let Some(broker) = mosquitto(tmp.path(), Some(&ca)) else { return };
    let url = format!("mqtts://127.0.0.1:{}", broker.port);
    let mode = oak_cluster::MqttMode::External { url, ca: Some(tmp.path().join("broker-ca.pem")) };
    let cluster = an_instance_runs_through(tmp.path(), mode).await;
    // A plaintext client gets nowhere with a TLS-only Mosquitto.
    let answer = register(&cluster, &node_token(&cluster), "probe").await;
    assert_eq!((answer.mqtt_scheme.as_str(), answer.mqtt_ca.as_str()), ("mqtts", ca.cert_pem()));
    let (_, _, ok) = connect(broker.port, &answer, &answer.mqtt_password, Transport::Tcp).await;
    assert!(!ok, "plaintext MQTT reached a TLS listener");
    let _ = cluster.stop.send(true);
    let _ = cluster.task.await;
}

/// A root, a cluster on `mode` and a worker; one nginx instance runs. Returns the cluster.
async fn an_instance_runs_through(dir: &Path, mode: oak_cluster::MqttMode) -> ClusterHandle {
    let (url, channel, _root) = start_root(&dir.join("root")).await;
    let token = std::fs::read_to_string(dir.join("root/cluster-token")).unwrap();
    let cluster = start_cluster("edge", &dir.join("edge"), channel, token.trim(), mode).await;
    let worker = start_worker("w1", &cluster, &dir.join("w1"), None);

    let client = admin_client(&url).await;
    one_cluster_with_one_worker(&client).await;
    let sla: Value = serde_json::from_str(NGINX).unwrap();
    let apps = client.create_application(&sla).await.unwrap();
    let service = client.list_app_services(&apps[0].id).await.unwrap().remove(0);
    client.request_instance(&service.id).await.unwrap();
    let s = eventually("the instance RUNNING through mosquitto", async || {
        let s = client.get_service(&service.id).await.unwrap();
        (s.instance_list.len() == 1 && s.instance_list[0].status == "RUNNING").then_some(s)
    })
    .await;
    assert!(s.instance_list[0].worker_id.is_some());
    let _ = worker.stop.send(true);
    cluster
}

async fn register(cluster: &ClusterHandle, token: &str, name: &str) -> RegisterNodeResponse {
    register_as(cluster, token, NodeInfo { host: name.into(), vcpus: 1, memory: 100, ..Default::default() }).await
}

async fn register_as(cluster: &ClusterHandle, token: &str, node: NodeInfo) -> RegisterNodeResponse {
    let req = RegisterNodeRequest { node, token: token.into(), node_secret: String::new() };
    let url = format!("https://{}/api/node/register", cluster.api);
    let resp = cluster_http(cluster).post(url).json(&req).send().await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
    resp.json().await.unwrap()
}

/// Connects as a node; returns the client and its event loop after the CONNACK.
async fn connect(
    port: u16,
    creds: &RegisterNodeResponse,
    password: &str,
    transport: Transport,
) -> (AsyncClient, rumqttc::EventLoop, bool) {
    let mut options = MqttOptions::new(format!("{}-test", creds.id), "127.0.0.1", port);
    options.set_credentials(creds.mqtt_username.clone(), password.to_string());
    options.set_transport(transport);
    let (client, mut events) = AsyncClient::new(options, 16);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.poll()).await.unwrap() {
            Ok(Event::Incoming(Packet::ConnAck(_))) => return (client, events, true),
            Ok(_) => {}
            Err(_) => return (client, events, false),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_cannot_use_another_nodes_topics() {
    let tmp = tempfile::tempdir().unwrap();
    let (_url, channel, _root) = start_root(&tmp.path().join("root")).await;
    let token = std::fs::read_to_string(tmp.path().join("root/cluster-token")).unwrap();
    let cluster = start_cluster("c", &tmp.path().join("c"), channel, token.trim(), embedded()).await;
    let a = register(&cluster, &node_token(&cluster), "a").await;
    let b = register(&cluster, &node_token(&cluster), "b").await;
    assert_ne!(a.id, b.id);
    assert_eq!(
        (a.mqtt_scheme.as_str(), a.mqtt_ca.as_str()),
        ("mqtts", ""),
        "the embedded broker: TLS, the cluster's CA"
    );
    let port: u16 = a.mqtt_broker_port.parse().unwrap();

    // Plaintext MQTT is refused even with valid credentials, and a wrong password at CONNECT.
    let (_, _, ok) = connect(port, &a, &a.mqtt_password, Transport::Tcp).await;
    assert!(!ok, "plaintext MQTT must be refused");
    let (_, _, ok) = connect(port, &a, "not-the-password", broker_tls(&cluster)).await;
    assert!(!ok, "a wrong password must be refused");

    let (client, mut events, ok) = connect(port, &a, &a.mqtt_password, broker_tls(&cluster)).await;
    assert!(ok);
    client.subscribe(format!("nodes/{}/control/deploy", a.id), QoS::AtLeastOnce).await.unwrap();
    client.subscribe(format!("nodes/{}/control/deploy", b.id), QoS::AtLeastOnce).await.unwrap();
    client.subscribe("nodes/+/control/deploy", QoS::AtLeastOnce).await.unwrap();
    let mut codes = Vec::new();
    while codes.len() < 3 {
        if let Event::Incoming(Packet::SubAck(ack)) = events.poll().await.unwrap() {
            codes.push(ack.return_codes[0]);
        }
    }
    assert_eq!(codes[0], SubscribeReasonCode::Success(QoS::AtLeastOnce), "own topics are allowed");
    assert_eq!(codes[1], SubscribeReasonCode::Failure, "another node's topics are refused");
    assert_eq!(codes[2], SubscribeReasonCode::Failure, "wildcards over nodes are refused");

    // Publishing as another node ends the connection.
    client.publish(format!("nodes/{}/job", b.id), QoS::AtLeastOnce, false, b"{}".to_vec()).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if events.poll().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the broker must close a connection that publishes on another node's topic");
    let _ = cluster.stop.send(true);
    let _ = cluster.task.await;
}

/// Instances a step places on one worker reach it as one `control/deploy` message (a JSON array)
/// when the worker announces the `deploy_batch` feature, as the real worker does.
/// Quiet reports: with its default worker timeout (15 s) the cluster offers them, and a worker
/// that says nothing after its first description, keep-alive pings aside, stays active; once
/// its connection is gone it goes inactive after the timeout. A cluster with a 2 s timeout
/// does not offer them (a ping every few seconds could not keep a worker active there).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quiet_worker_stays_active_on_keep_alive_pings_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, channel, _root) = start_root(&tmp.path().join("root")).await;
    let token = std::fs::read_to_string(tmp.path().join("root/cluster-token")).unwrap();
    let timing = oak_cluster::state::Timing { node_timeout: Duration::from_secs(15), ..Default::default() };
    let cluster = start_cluster_timed("c", &tmp.path().join("c"), channel, token.trim(), embedded(), timing).await;
    let info = NodeInfo {
        host: "quiet".into(),
        vcpus: 4,
        memory: 4096,
        memory_total: 4096,
        architecture: "amd64".into(),
        virtualization: vec!["docker".into()],
        ..Default::default()
    };
    let me = register_as(&cluster, &node_token(&cluster), info.clone()).await;
    assert_eq!(me.features, [oak_api::node::features::QUIET_REPORTS]);
    let port: u16 = me.mqtt_broker_port.parse().unwrap();
    let mut options = MqttOptions::new(format!("{}-ne", me.id), "127.0.0.1", port);
    options.set_credentials(me.mqtt_username.clone(), me.mqtt_password.clone());
    options.set_transport(broker_tls(&cluster));
    options.set_keep_alive(Duration::from_secs(5));
    let (mqtt, mut events) = AsyncClient::new(options, 16);
    let pump = tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let info = NodeInfo { id: me.id.clone(), ..info };
    let payload = serde_json::to_vec(&info).unwrap();
    mqtt.publish(oak_api::node::topic::information(&me.id), QoS::AtLeastOnce, false, payload).await.unwrap();
    let client = admin_client(&url).await;
    one_cluster_with_one_worker(&client).await;
    let active = async || client.list_active_clusters().await.unwrap().first().map_or(0, |c| c.active_nodes);
    // Well past the timeout with nothing but pings.
    let quiet_since = std::time::Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(20) {
        assert_eq!(active().await, 1, "inactive {:?} after its last description", quiet_since.elapsed());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Gone: inactive once the timeout has passed since the broker last heard it.
    pump.abort();
    drop(mqtt);
    let gone = std::time::Instant::now();
    eventually("the worker inactive", async || (active().await == 0).then_some(())).await;
    // Its last ping came at most a keep-alive period (5 s) before its connection went.
    assert!(gone.elapsed() >= Duration::from_secs(9), "inactive after {:?}", gone.elapsed());

    let other = start_cluster("d", &tmp.path().join("d"), channel, token.trim(), embedded()).await;
    let answer = register(&other, &node_token(&other), "loud").await;
    assert!(answer.features.is_empty(), "{:?}", answer.features);
    for c in [cluster, other] {
        let _ = c.stop.send(true);
        let _ = c.task.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batching_worker_gets_a_steps_instances_in_one_message() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, channel, _root) = start_root(&tmp.path().join("root")).await;
    let token = std::fs::read_to_string(tmp.path().join("root/cluster-token")).unwrap();
    let cluster = start_cluster("c", &tmp.path().join("c"), channel, token.trim(), embedded()).await;
    let info = NodeInfo {
        host: "batcher".into(),
        vcpus: 4,
        memory: 4096,
        memory_total: 4096,
        architecture: "amd64".into(),
        virtualization: vec!["docker".into()],
        features: vec![oak_api::node::features::DEPLOY_BATCH.into()],
        ..Default::default()
    };
    let me = register_as(&cluster, &node_token(&cluster), info.clone()).await;
    let port: u16 = me.mqtt_broker_port.parse().unwrap();
    let (mqtt, mut events, ok) = connect(port, &me, &me.mqtt_password, broker_tls(&cluster)).await;
    assert!(ok);
    mqtt.subscribe(oak_api::node::topic::deploy(&me.id), QoS::AtLeastOnce).await.unwrap();
    // Reports every second, as a worker does, so the node stays active.
    let info = NodeInfo { id: me.id.clone(), ..info };
    let (reporter, id) = (mqtt.clone(), me.id.clone());
    tokio::spawn(async move {
        loop {
            let payload = serde_json::to_vec(&info).unwrap();
            if reporter.publish(oak_api::node::topic::information(&id), QoS::AtLeastOnce, false, payload).await.is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });

    let deliveries = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let seen = deliveries.clone();
    tokio::spawn(async move {
        while let Ok(event) = events.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = event {
                seen.lock().unwrap().push(serde_json::from_slice(&p.payload).unwrap());
            }
        }
    });
    let client = admin_client(&url).await;
    one_cluster_with_one_worker(&client).await;
    let mut sla: Value = serde_json::from_str(NGINX).unwrap();
    // Without its host port, which holds a node for one instance.
    sla["applications"][0]["microservices"][0]["port"] = Value::from("");
    let apps = client.create_application(&sla).await.unwrap();
    let service = client.list_app_services(&apps[0].id).await.unwrap().remove(0);
    client.request_instances(&service.id, 3).await.unwrap();
    let got = eventually("the deploy commands", async || {
        let got = deliveries.lock().unwrap().clone();
        let commands: usize = got.iter().map(|m| m.as_array().map_or(1, Vec::len)).sum();
        (commands >= 3).then_some(got)
    })
    .await;
    assert_eq!(got.len(), 1, "one message for the three instances: {got:?}");
    let numbers: Vec<u64> = got[0].as_array().unwrap().iter().map(|c| c["instance_number"].as_u64().unwrap()).collect();
    assert_eq!(numbers, vec![0, 1, 2]);
    let _ = cluster.stop.send(true);
    let _ = cluster.task.await;
}
