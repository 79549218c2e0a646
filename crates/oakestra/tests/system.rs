//! The whole control plane in one process on loopback: a root, two clusters and four workers
//! (fake runtime, real registration, real MQTT, real cluster channel), driven through the public
//! API and the CLI binary.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::{
    admin_client, embedded, eventually, one_cluster_with_one_worker, start_cluster, start_root, start_worker,
};
use oak_api::model::{Cluster, Service};
use oak_api::net::{OverlayInfo, RouteTable, TableQuery};
use oak_api::node::{NodeInfo, RegisterNodeRequest, RegisterNodeResponse};
use oak_client::Client;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_oakestra");
const CLIENTSRVR: &str = include_str!("../../../examples/sla/clientsrvr.json");

async fn active_clusters(client: &Client) -> BTreeMap<String, Cluster> {
    client.list_active_clusters().await.unwrap().into_iter().map(|c| (c.cluster_name.clone(), c)).collect()
}

async fn service(client: &Client, id: &str) -> Service {
    client.get_service(id).await.unwrap()
}

fn all_running(s: &Service, n: usize) -> bool {
    s.instance_list.len() == n && s.instance_list.iter().all(|i| i.status == "RUNNING")
}

fn cli(url: &str, home: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(BIN)
        .args(args)
        .args(["--url", url])
        .env("OAKESTRA_CONFIG_DIR", home)
        .output()
        .unwrap();
    assert!(out.status.success(), "oakestra {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn root_two_clusters_four_workers() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, channel, _root_stop) = start_root(&tmp.path().join("root")).await;
    let token = std::fs::read_to_string(tmp.path().join("root/cluster-token")).unwrap();
    let token = token.trim();

    // A wrong join token is refused with a clear error, and the cluster stops.
    let unknown = format!("{}.{}", token.rsplit_once('.').unwrap().0, "0".repeat(48));
    let bad = start_cluster("intruder", &tmp.path().join("bad"), channel, &unknown, embedded()).await;
    let err = tokio::time::timeout(Duration::from_secs(20), bad.task).await.unwrap().unwrap().unwrap_err();
    assert!(format!("{err:#}").contains("join token is not valid"), "{err:#}");

    let c1 = start_cluster("c1", &tmp.path().join("c1"), channel, token, embedded()).await;
    let c2 = start_cluster("c2", &tmp.path().join("c2"), channel, token, embedded()).await;

    // A worker with a wrong token (c1's CA, another secret) is refused with a clear error.
    let token = common::node_token(&c1);
    let (pinned, _secret) = token.rsplit_once('.').unwrap();
    let wrong = format!("{pinned}.{}", "0".repeat(48));
    let intruder = start_worker("w-bad", &c1, &tmp.path().join("w-bad"), Some(wrong));
    let err = tokio::time::timeout(Duration::from_secs(20), intruder.task).await.unwrap().unwrap().unwrap_err();
    assert!(matches!(err, oak_worker::WorkerError::TokenRefused(_)), "{err}");
    assert!(err.to_string().contains("join token is not valid for cluster \"c1\""), "{err}");

    let mut workers = vec![
        start_worker("w1", &c1, &tmp.path().join("w1"), None),
        start_worker("w2", &c1, &tmp.path().join("w2"), None),
        start_worker("w3", &c2, &tmp.path().join("w3"), None),
        start_worker("w4", &c2, &tmp.path().join("w4"), None),
    ];

    let client = admin_client(&url).await;

    let clusters = eventually("both clusters active with two workers each", async || {
        let c = active_clusters(&client).await;
        (c.len() == 2 && c.values().all(|c| c.active_nodes == 2)).then_some(c)
    })
    .await;
    let c2_view = &clusters["c2"];
    assert_eq!(c2_view.total_cpu_cores, 8.0);
    assert_eq!(c2_view.memory_in_mb, 8192);
    assert_eq!(c2_view.virtualization, vec!["docker".to_string()]);
    assert_eq!(c2_view.cluster_location, "48.1,11.6");
    let free_before = c2_view.memory;

    // Each cluster tells the root about its workers: names, address, capacity, usage, state.
    let c2_id = clusters["c2"].id.clone();
    let listed = eventually("c2's workers listed at the root", async || {
        let w = client.cluster_workers(&c2_id).await.unwrap();
        (w.workers.len() == 2 && w.workers.iter().all(|w| w.active)).then_some(w)
    })
    .await;
    assert_eq!((listed.cluster_name.as_str(), listed.connected), ("c2", true));
    let names: Vec<&str> = listed.workers.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["w3", "w4"]);
    for w in &listed.workers {
        assert_eq!((w.address.as_str(), w.architecture.as_str(), w.cpu_cores), ("127.0.0.1", "amd64", 4), "{w:?}");
        assert_eq!((w.memory_total_mb, w.memory_free_mb, w.cpu_percent), (4096, 4096, 5.0), "{w:?}");
        assert_eq!(w.virtualization, ["docker"]);
        assert!(!w.id.is_empty());
    }
    let c1_workers = client.cluster_workers(&clusters["c1"].id).await.unwrap();
    let names: Vec<&str> = c1_workers.workers.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["w1", "w2"], "each cluster lists its own workers");
    let worker_names: BTreeMap<String, String> =
        listed.workers.iter().map(|w| (w.id.clone(), w.name.clone())).collect();

    // clientsrvr, the nginx service restricted to cluster c2.
    let mut sla: Value = serde_json::from_str(CLIENTSRVR).unwrap();
    sla["applications"][0]["microservices"][1]["constraints"] = json!([{"type": "clusters", "allowed": ["c2"]}]);
    // Three instances share two workers, then one: a host port would hold each worker for one.
    sla["applications"][0]["microservices"][1]["port"] = json!("");
    let apps = client.create_application(&sla).await.unwrap();
    let services = client.list_app_services(&apps[0].id).await.unwrap();
    let nginx = services.iter().find(|s| s.service_name == "nginx").unwrap().id.clone();
    let curl = services.iter().find(|s| s.service_name == "curl").unwrap().id.clone();
    for _ in 0..3 {
        client.request_instance(&nginx).await.unwrap();
    }
    client.request_instance(&curl).await.unwrap();

    let s = eventually("3 nginx instances RUNNING", async || {
        let s = service(&client, &nginx).await;
        all_running(&s, 3).then_some(s)
    })
    .await;
    assert_eq!(s.status.as_deref(), Some("RUNNING"));
    for i in &s.instance_list {
        assert_eq!(i.cluster_id.as_deref(), Some(c2_id.as_str()), "clusters constraint honoured: {i:?}");
        assert!(i.worker_id.is_some(), "{i:?}");
        // Instances name their cluster and worker.
        assert_eq!(i.cluster_name.as_deref(), Some("c2"), "{i:?}");
        assert_eq!(i.worker_name.as_ref(), worker_names.get(i.worker_id.as_ref().unwrap()), "{i:?}");
        assert!(!i.status_detail.is_empty());
        // Without the overlay, peers reach instances at the node's address.
        assert_eq!(i.host_ip.as_deref(), Some("127.0.0.1"), "{i:?}");
    }
    // Overlay addresses: the descriptor's RR IP, one from the pool for curl, one per instance.
    assert_eq!(s.rr_ip.as_deref(), Some("10.30.55.55"));
    assert_eq!(service(&client, &curl).await.rr_ip.as_deref(), Some("10.30.0.0"));
    let instance_ips: BTreeMap<u32, String> =
        s.instance_list.iter().map(|i| (i.instance_number, i.instance_ip.clone().unwrap())).collect();
    assert_eq!(instance_ips.values().collect::<std::collections::BTreeSet<_>>().len(), 3, "{instance_ips:?}");
    eventually("curl RUNNING", async || all_running(&service(&client, &curl).await, 1).then_some(())).await;

    // The CLI shows the same.
    let home = tmp.path().join("cli");
    let out = std::process::Command::new(BIN)
        .args(["login", "--url", &url, "--username", "Admin", "--password", "Admin"])
        .env("OAKESTRA_CONFIG_DIR", &home)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown = cli(&url, &home, &["service", "show", &nginx]);
    assert_eq!(shown.matches("RUNNING").count(), 3 + 1, "{shown}");
    let words: Vec<&str> = shown.split_whitespace().collect();
    assert_eq!(words.iter().filter(|w| **w == "c2").count(), 3, "the cluster's name per instance: {shown}");
    assert_eq!(words.iter().filter(|w| **w == "w3" || **w == "w4").count(), 3, "the worker's name: {shown}");
    let listed = cli(&url, &home, &["clusters"]);
    assert!(listed.contains("c1") && listed.contains("c2"), "{listed}");

    // Logs travel root → cluster → worker and back, through the API and the CLI.
    let first = &s.instance_list[0];
    let expected = format!("output of {}.instance.{}\n", s.job_name, first.instance_number);
    let logs = client.instance_logs(&nginx, first.instance_number, None, false).await.unwrap();
    assert_eq!(logs.text().await.unwrap(), expected);
    let logs = client.instance_logs(&nginx, first.instance_number, Some(0), false).await.unwrap();
    assert_eq!(logs.text().await.unwrap(), "", "tail=0");
    let mut followed = client.instance_logs(&nginx, first.instance_number, Some(5), true).await.unwrap();
    let chunk = tokio::time::timeout(Duration::from_secs(10), followed.chunk()).await.unwrap().unwrap().unwrap();
    assert_eq!(String::from_utf8_lossy(&chunk), expected, "follow starts with the tail");
    drop(followed);
    let missing = client.instance_logs(&nginx, 99, None, false).await.unwrap_err();
    assert_eq!(missing.status(), Some(404), "{missing}");
    let number = first.instance_number.to_string();
    assert_eq!(cli(&url, &home, &["logs", &nginx, &number]), expected);
    assert_eq!(cli(&url, &home, &["logs", &nginx, "--tail", "1"]), format!("output of {}.instance.0\n", s.job_name));

    // Kill the connection of the worker holding most nginx instances: they move to the other
    // worker of c2 and run there; the late reports of the old worker never win.
    let mut per_worker: BTreeMap<String, usize> = BTreeMap::new();
    for i in &s.instance_list {
        *per_worker.entry(i.worker_id.clone().unwrap()).or_default() += 1;
    }
    let (victim_id, _) = per_worker.iter().max_by_key(|(_, n)| **n).unwrap();
    let victim_id = victim_id.clone();
    // Worker ids are node ids; find which of w3/w4 it is from their identity files.
    let victim = workers
        .iter()
        .position(|w| {
            std::fs::read_to_string(tmp.path().join(&w.name).join("node.json")).unwrap_or_default().contains(&victim_id)
        })
        .expect("the victim is one of our workers");
    let w = workers.remove(victim);
    let _ = w.stop.send(true);
    let _ = w.task.await;
    // The root sees the silent worker inactive (after the node timeout), the other still active.
    eventually("the stopped worker inactive at the root", async || {
        let listed = client.cluster_workers(&c2_id).await.unwrap();
        let state: BTreeMap<&str, bool> = listed.workers.iter().map(|w| (w.name.as_str(), w.active)).collect();
        (state.len() == 2 && !state[w.name.as_str()] && state.values().filter(|a| **a).count() == 1).then_some(())
    })
    .await;
    let moved = eventually("nginx re-placed and RUNNING on the surviving worker", async || {
        let s = service(&client, &nginx).await;
        (all_running(&s, 3) && s.instance_list.iter().all(|i| i.worker_id.as_deref() != Some(victim_id.as_str())))
            .then_some(s)
    })
    .await;
    assert!(moved.instance_list.iter().all(|i| i.cluster_id.as_deref() == Some(c2_id.as_str())));
    let kept: BTreeMap<u32, String> =
        moved.instance_list.iter().map(|i| (i.instance_number, i.instance_ip.clone().unwrap())).collect();
    assert_eq!(kept, instance_ips, "instance IPs stay with their instances when they move");

    // Undeploy everything: capacity is released.
    client.delete_application(&apps[0].id).await.unwrap();
    eventually("c2 capacity released", async || {
        let c = active_clusters(&client).await;
        let c2 = c.get("c2")?;
        // One worker of c2 is gone: everything the survivor has is free again.
        (c2.active_nodes == 1 && c2.memory == free_before / 2).then_some(())
    })
    .await;

    for w in workers {
        let _ = w.stop.send(true);
        let _ = w.task.await;
    }
    for c in [c1, c2] {
        let _ = c.stop.send(true);
        let _ = c.task.await;
    }
}

async fn register(cluster: &common::ClusterHandle, id: &str, secret: &str) -> RegisterNodeResponse {
    let token = common::node_token(cluster);
    let overlay = OverlayInfo { public_addr: "192.0.2.8".into(), tunnel_port: 50103, ..Default::default() };
    let node = NodeInfo {
        id: id.into(),
        host: "proxy".into(),
        ip: "192.0.2.8".into(),
        overlay: Some(overlay),
        ..Default::default()
    };
    let req = RegisterNodeRequest { node, token, node_secret: secret.into() };
    let url = format!("https://{}/api/node/register", cluster.api);
    let resp = common::cluster_http(cluster).post(url).json(&req).send().await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
    resp.json().await.unwrap()
}

/// The next route table on the subscribed result topic.
async fn next_table(events: &mut rumqttc::EventLoop, within: Duration) -> RouteTable {
    let wait = async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = events.poll().await.unwrap() {
                return serde_json::from_slice::<RouteTable>(&p.payload).unwrap();
            }
        }
    };
    tokio::time::timeout(within, wait).await.expect("a route table")
}

/// A worker-side client of the overlay's control plane: a node registered with the overlay gets
/// a subnet through the cluster from the root, asks for a service's table by its RR IP over
/// MQTT, and receives every change of it as the service scales.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlay_routes_reach_workers_over_mqtt() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, channel, _root_stop) = start_root(&tmp.path().join("root")).await;
    let token = std::fs::read_to_string(tmp.path().join("root/cluster-token")).unwrap();
    let c1 = start_cluster("c1", &tmp.path().join("c1"), channel, token.trim(), embedded()).await;
    let worker = start_worker("w1", &c1, &tmp.path().join("w1"), None);
    let client = admin_client(&url).await;
    one_cluster_with_one_worker(&client).await;

    // The subnet comes from the root, and stays the node's.
    let node = register(&c1, "", "").await;
    assert_eq!(node.subnet, "10.18.0.0/26");
    let node = register(&c1, &node.id, &node.mqtt_password).await;
    assert_eq!(node.subnet, "10.18.0.0/26");

    let mut sla: Value = serde_json::from_str(CLIENTSRVR).unwrap();
    // Two instances on the one worker: a host port would hold it for one.
    sla["applications"][0]["microservices"][1]["port"] = json!("");
    let apps = client.create_application(&sla).await.unwrap();
    let services = client.list_app_services(&apps[0].id).await.unwrap();
    let nginx = services.iter().find(|s| s.service_name == "nginx").unwrap().clone();
    client.request_instance(&nginx.id).await.unwrap();
    eventually("nginx RUNNING", async || all_running(&service(&client, &nginx.id).await, 1).then_some(())).await;

    let mut options =
        MqttOptions::new(format!("{}-proxy", node.id), "127.0.0.1", node.mqtt_broker_port.parse().unwrap());
    options.set_credentials(node.mqtt_username.clone(), node.mqtt_password.clone());
    options.set_transport(common::broker_tls(&c1));
    let (mqtt, mut events) = AsyncClient::new(options, 16);
    mqtt.subscribe(oak_api::net::topic::table_result(&node.id), QoS::AtLeastOnce).await.unwrap();
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = events.poll().await.unwrap() {
            break;
        }
    }
    let query = TableQuery { sname: String::new(), sip: "10.30.55.55".into() };
    let payload = serde_json::to_vec(&query).unwrap();
    mqtt.publish(oak_api::net::topic::table_query(&node.id), QoS::AtLeastOnce, false, payload).await.unwrap();
    let t = next_table(&mut events, Duration::from_secs(10)).await;
    assert_eq!(
        (t.app_name.as_str(), t.query_key.as_str(), t.error.as_str()),
        (nginx.job_name.as_str(), "10.30.55.55", "")
    );
    assert_eq!((t.service_ip[0].ip_type.as_str(), t.service_ip[0].address.as_str()), ("RR", "10.30.55.55"));
    assert_eq!(t.instance_list.len(), 1);
    let first = t.instance_list[0].clone();
    assert_eq!(first.instance_ip, "10.30.0.1", "curl has 10.30.0.0");
    assert!(!first.worker_id.is_empty() && !first.cluster_id.is_empty(), "{first:?}");

    // Scaling up and down is pushed, each change within a second.
    client.request_instance(&nginx.id).await.unwrap();
    let t = next_table(&mut events, Duration::from_secs(1)).await;
    assert_eq!((t.query_key.as_str(), t.instance_list.len()), (nginx.job_name.as_str(), 2));
    // (Further pushes follow as the new instance is placed and runs.)
    eventually("2 nginx RUNNING", async || all_running(&service(&client, &nginx.id).await, 2).then_some(())).await;
    while tokio::time::timeout(Duration::from_millis(500), events.poll()).await.is_ok() {}
    client.remove_instance(&nginx.id, first.instance_number).await.unwrap();
    let t = next_table(&mut events, Duration::from_secs(1)).await;
    let left: Vec<u32> = t.instance_list.iter().map(|i| i.instance_number).collect();
    assert_eq!(left, [1], "the removed instance is gone from the table");

    // Garbled queries are answered on the node's error topic, and the cluster carries on.
    mqtt.subscribe(format!("nodes/{}/control/error", node.id), QoS::AtLeastOnce).await.unwrap();
    mqtt.publish(oak_api::net::topic::table_query(&node.id), QoS::AtLeastOnce, false, b"{not json".to_vec())
        .await
        .unwrap();
    let error = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = events.poll().await.unwrap() {
                if p.topic.ends_with("control/error") {
                    return String::from_utf8_lossy(&p.payload).to_string();
                }
            }
        }
    })
    .await
    .unwrap();
    assert!(error.contains("malformed net/tablequery/request"), "{error}");

    let _ = worker.stop.send(true);
    let _ = worker.task.await;
    let _ = c1.stop.send(true);
    let _ = c1.task.await;
}
