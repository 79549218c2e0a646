//! The cluster's MQTT side for real: against Debian's Mosquitto as an external broker, and the
//! embedded broker's per-node topic isolation with credentials handed out at registration.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{
    admin_client, embedded, eventually, one_cluster_with_one_worker, start_cluster, start_root, start_worker,
};
use oak_api::node::{NodeInfo, RegisterNodeRequest, RegisterNodeResponse};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
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

fn mosquitto(dir: &Path) -> Option<Mosquitto> {
    if !oak_e2e::can_run("cluster with Mosquitto", &[oak_e2e::Need::Tool("mosquitto")]) {
        return None;
    }
    let bin = oak_e2e::which("mosquitto").expect("checked by can_run");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(&conf, format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")).unwrap();
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
    let Some(broker) = mosquitto(tmp.path()) else { return };
    let (url, channel, _root) = start_root(&tmp.path().join("root")).await;
    let token = std::fs::read_to_string(tmp.path().join("root/cluster-token")).unwrap();
    let mode = oak_cluster::MqttMode::External { url: format!("mqtt://127.0.0.1:{}", broker.port) };
    let cluster = start_cluster("edge", &tmp.path().join("edge"), channel, token.trim(), mode).await;
    let worker = start_worker("w1", &cluster, &tmp.path().join("w1"), None);

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
    let _ = cluster.stop.send(true);
    let _ = cluster.task.await;
}

async fn register(api: std::net::SocketAddr, token: &str, name: &str) -> RegisterNodeResponse {
    let req = RegisterNodeRequest {
        node: NodeInfo { host: name.into(), vcpus: 1, memory: 100, ..Default::default() },
        token: token.into(),
        node_secret: String::new(),
    };
    let resp = reqwest::Client::new().post(format!("http://{api}/api/node/register")).json(&req).send().await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
    resp.json().await.unwrap()
}

/// Connects as a node; returns the client and its event loop after the CONNACK.
async fn connect(port: u16, creds: &RegisterNodeResponse, password: &str) -> (AsyncClient, rumqttc::EventLoop, bool) {
    let mut options = MqttOptions::new(format!("{}-test", creds.id), "127.0.0.1", port);
    options.set_credentials(creds.mqtt_username.clone(), password.to_string());
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
    let node_token = std::fs::read_to_string(tmp.path().join("c/node-token")).unwrap();
    let a = register(cluster.api, node_token.trim(), "a").await;
    let b = register(cluster.api, node_token.trim(), "b").await;
    assert_ne!(a.id, b.id);
    let port: u16 = a.mqtt_broker_port.parse().unwrap();

    // A wrong password is refused at CONNECT.
    let (_, _, ok) = connect(port, &a, "not-the-password").await;
    assert!(!ok, "a wrong password must be refused");

    let (client, mut events, ok) = connect(port, &a, &a.mqtt_password).await;
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
