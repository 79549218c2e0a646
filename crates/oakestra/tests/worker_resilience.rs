//! Resilience of the cluster tier, with a real root, cluster and workers on loopback (fake
//! runtimes, real registration, MQTT and cluster channel; the cluster loses a worker after 2 s
//! of silence): placement says why it waits, replicas spread over workers, a lost worker's
//! instances move and its stale copies go when it returns, and `--worker-timeout` is checked.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{admin_client, embedded, eventually, start_cluster, start_root, start_worker_on, Machine, Worker};
use oak_api::model::Service;
use oak_client::Client;
use oak_runtime::FakeRuntime;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_oakestra");

/// One application with one service `name` of `memory` MB (no host port, so replicas may share
/// a worker), created at the root; returns the service.
async fn service_of(client: &Client, name: &str, memory: u64, spread: Option<bool>) -> Service {
    let mut ms = json!({
        "microservice_name": name, "microservice_namespace": "test", "virtualization": "container",
        "code": "docker.io/library/nginx:latest", "memory": memory, "vcpus": 1,
    });
    if let Some(spread) = spread {
        ms["spread"] = json!(spread);
    }
    let sla: Value = json!({
        "sla_version": "v2.0", "customerID": "Admin",
        "applications": [{
            "application_name": format!("app{name}"), "application_namespace": "test",
            "application_desc": "", "microservices": [ms],
        }],
    });
    // The answer lists all of the user's applications.
    let apps = client.create_application(&sla).await.unwrap();
    let app = apps.iter().find(|a| a.application_name == format!("app{name}")).unwrap();
    client.list_app_services(&app.id).await.unwrap().remove(0)
}

fn machine(name: &str, memory_mb: u64) -> Machine {
    Machine { name: name.into(), memory_mb }
}

/// The node id a worker was given (from its identity file).
fn node_id(dir: &Path) -> String {
    let node: Value = serde_json::from_slice(&std::fs::read(dir.join("node.json")).unwrap()).unwrap();
    node["id"].as_str().unwrap().to_string()
}

async fn stop(w: Worker) {
    let _ = w.stop.send(true);
    let _ = w.task.await;
}

async fn active_workers(client: &Client) -> usize {
    client.list_active_clusters().await.unwrap().first().map_or(0, |c| c.active_nodes as usize)
}

/// (a) An instance too big for every worker (though not for the cluster's total, which is what
/// the root sees) says so at the root in the cluster's first scheduling round; a big worker that
/// joins takes it at once, not after the instance's back-off.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unmet_requirement_is_named_and_a_joining_worker_takes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, channel, _root) = start_root(&tmp.path().join("root")).await;
    let token = std::fs::read_to_string(tmp.path().join("root/cluster-token")).unwrap();
    let c1 = start_cluster("alpha", &tmp.path().join("c1"), channel, token.trim(), embedded()).await;
    let rt = || Arc::new(FakeRuntime::new("docker"));
    let w1 = start_worker_on(machine("w1", 4096), rt(), &c1, &tmp.path().join("w1"), None);
    let w2 = start_worker_on(machine("w2", 4096), rt(), &c1, &tmp.path().join("w2"), None);
    let client = admin_client(&url).await;
    eventually("two active workers", async || (active_workers(&client).await == 2).then_some(())).await;

    let s = service_of(&client, "big", 6000, None).await;
    let asked = Instant::now();
    client.request_instance(&s.id).await.unwrap();
    let detail = eventually("the reason at the root", async || {
        let s = client.get_service(&s.id).await.unwrap();
        let i = s.instance_list.first()?;
        (i.status == "NO_WORKER_CAPACITY").then(|| i.status_detail.clone())
    })
    .await;
    // The first round decides (later rounds are 1 s, 2 s, 4 s … apart, and the cluster sends
    // an unchanged reason only once).
    assert!(asked.elapsed() < Duration::from_secs(5), "took {:?}", asked.elapsed());
    assert!(detail.starts_with("no worker with 6000 MB free in cluster alpha"), "{detail}");

    // Let the back-off grow (attempts at 0, 1, 3, 7 s: the next is 8 s after that) …
    tokio::time::sleep(Duration::from_secs(8)).await;
    let big_rt = rt();
    let big = start_worker_on(machine("w-big", 8192), big_rt.clone(), &c1, &tmp.path().join("w-big"), None);
    let joined = Instant::now();
    // … yet the joining worker takes it within moments of its first report (without the reset
    // it would wait about 7 s more).
    let running = eventually("the instance RUNNING on the big worker", async || {
        let s = client.get_service(&s.id).await.unwrap();
        let i = s.instance_list.first()?;
        (i.status == "RUNNING").then(|| i.clone())
    })
    .await;
    assert!(joined.elapsed() < Duration::from_secs(4), "took {:?} after the join", joined.elapsed());
    assert_eq!(running.worker_id.as_deref(), Some(node_id(&tmp.path().join("w-big")).as_str()));
    assert_eq!(running.status_detail, "running");
    assert!(big_rt.status(&s.job_name, 0).is_some());

    for w in [w1, w2, big] {
        stop(w).await;
    }
    let _ = c1.stop.send(true);
    let _ = c1.task.await;
}

/// The worker of each RUNNING instance of `s`, by instance number, once `n` run.
async fn running_on(client: &Client, id: &str, n: usize) -> Vec<(u32, String)> {
    eventually("the instances RUNNING", async || {
        let s = client.get_service(id).await.unwrap();
        let all = s.instance_list.len() == n && s.instance_list.iter().all(|i| i.status == "RUNNING");
        all.then(|| s.instance_list.iter().map(|i| (i.instance_number, i.worker_id.clone().unwrap())).collect())
    })
    .await
}

/// (b) Two replicas land on two workers even though one worker has much more free memory (the
/// packing ranking alone would put both there); with `spread: false` they share that worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_spread_over_workers_unless_the_sla_opts_out() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, channel, _root) = start_root(&tmp.path().join("root")).await;
    let token = std::fs::read_to_string(tmp.path().join("root/cluster-token")).unwrap();
    let c1 = start_cluster("alpha", &tmp.path().join("c1"), channel, token.trim(), embedded()).await;
    let rt = || Arc::new(FakeRuntime::new("docker"));
    let w1 = start_worker_on(machine("w1", 16384), rt(), &c1, &tmp.path().join("w1"), None);
    let w2 = start_worker_on(machine("w2", 2048), rt(), &c1, &tmp.path().join("w2"), None);
    let client = admin_client(&url).await;
    eventually("two active workers", async || (active_workers(&client).await == 2).then_some(())).await;
    let (id1, id2) = (node_id(&tmp.path().join("w1")), node_id(&tmp.path().join("w2")));

    let spread = service_of(&client, "spread", 100, None).await;
    for _ in 0..2 {
        client.request_instance(&spread.id).await.unwrap();
    }
    let mut workers: Vec<String> = running_on(&client, &spread.id, 2).await.into_iter().map(|(_, w)| w).collect();
    workers.sort();
    let mut want = vec![id1.clone(), id2.clone()];
    want.sort();
    assert_eq!(workers, want, "one replica per worker");

    let packed = service_of(&client, "packed", 100, Some(false)).await;
    for _ in 0..2 {
        client.request_instance(&packed.id).await.unwrap();
    }
    let workers: Vec<String> = running_on(&client, &packed.id, 2).await.into_iter().map(|(_, w)| w).collect();
    assert_eq!(workers, [id1.clone(), id1], "spread: false packs onto the worker with the most free memory");

    for w in [w1, w2] {
        stop(w).await;
    }
    let _ = c1.stop.send(true);
    let _ = c1.task.await;
}

/// (c) A worker that stops reporting is declared lost after the cluster's worker timeout (2 s
/// here): its instances move to the other worker. Its runtime keeps running them (as
/// containers outlive a stopped worker); when it comes back it adopts and reports them, and the
/// cluster has it undeploy these stale copies: in the end each instance runs exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_workers_instances_move_and_its_stale_copies_go_when_it_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, channel, _root) = start_root(&tmp.path().join("root")).await;
    let token = std::fs::read_to_string(tmp.path().join("root/cluster-token")).unwrap();
    let c1 = start_cluster("alpha", &tmp.path().join("c1"), channel, token.trim(), embedded()).await;
    let (rt1, rt2) = (Arc::new(FakeRuntime::new("docker")), Arc::new(FakeRuntime::new("docker")));
    let (dir1, dir2) = (tmp.path().join("w1"), tmp.path().join("w2"));
    let w1 = start_worker_on(machine("w1", 4096), rt1.clone(), &c1, &dir1, None);
    let w2 = start_worker_on(machine("w2", 4096), rt2.clone(), &c1, &dir2, None);
    let client = admin_client(&url).await;
    eventually("two active workers", async || (active_workers(&client).await == 2).then_some(())).await;
    let (id1, id2) = (node_id(&dir1), node_id(&dir2));

    let s = service_of(&client, "web", 100, None).await;
    for _ in 0..2 {
        client.request_instance(&s.id).await.unwrap();
    }
    let placed = running_on(&client, &s.id, 2).await;
    let (on_w2, _) = placed.iter().find(|(_, w)| *w == id2).cloned().expect("spread puts one on w2");
    assert!(rt2.status(&s.job_name, on_w2).is_some());

    // w2 goes silent; its copy keeps running in its runtime.
    stop(w2).await;
    let moved = eventually("both instances RUNNING on w1", async || {
        let on = running_on(&client, &s.id, 2).await;
        on.iter().all(|(_, w)| *w == id1).then_some(on)
    })
    .await;
    assert_eq!(moved.len(), 2);
    assert!(rt1.status(&s.job_name, on_w2).is_some(), "w1 runs the moved instance");
    assert!(rt2.status(&s.job_name, on_w2).is_some(), "the lost worker's copy is still there");

    // w2 returns: within a reconcile or two its stale copy is gone, and the moved instance
    // stays RUNNING on w1 throughout.
    let back = Instant::now();
    let w2 = start_worker_on(machine("w2", 4096), rt2.clone(), &c1, &dir2, None);
    eventually("w2's stale copy undeployed", async || {
        let s = client.get_service(&s.id).await.unwrap();
        assert!(
            s.instance_list.iter().all(|i| i.status == "RUNNING" && i.worker_id.as_deref() == Some(id1.as_str())),
            "a stale report moved an instance: {:?}",
            s.instance_list
        );
        rt2.status(&s.job_name, on_w2).is_none().then_some(())
    })
    .await;
    assert!(back.elapsed() < Duration::from_secs(15), "took {:?}", back.elapsed());
    eventually("w2 active again", async || (active_workers(&client).await == 2).then_some(())).await;
    for (n, _) in &moved {
        let copies = [&rt1, &rt2].iter().filter(|rt| rt.status(&s.job_name, *n).is_some()).count();
        assert_eq!(copies, 1, "instance {n} runs exactly once");
    }
    assert_eq!(node_id(&dir2), id2, "w2 came back as the same node");

    for w in [w1, w2] {
        stop(w).await;
    }
    let _ = c1.stop.send(true);
    let _ = c1.task.await;
}

/// `oakestra cluster` with the given extra flags, which must fail before it touches anything;
/// returns its error output.
fn cluster_refuses(extra: &[&str]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .args(["cluster", "--name", "c1", "--root-channel", "127.0.0.1:1", "--token", "t", "--data-dir"])
        .arg(tmp.path())
        .args(extra)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{extra:?} was accepted");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// (d) `--worker-timeout` (alias `--node-timeout`) is documented in the help and validated.
#[test]
fn worker_timeout_flag_is_validated() {
    let help = std::process::Command::new(BIN).args(["cluster", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--worker-timeout") && help.contains("node-timeout"), "{help}");
    assert!(help.contains("[default: 15]"), "{help}");
    for bad in ["0", "-1", "601", "NaN"] {
        let err = cluster_refuses(&[&format!("--worker-timeout={bad}")]);
        assert!(err.contains("--worker-timeout must be"), "{bad}: {err}");
    }
    let err = cluster_refuses(&["--node-timeout", "900"]);
    assert!(err.contains("--worker-timeout must be at most 600 seconds"), "{err}");
    let err = cluster_refuses(&["--worker-timeout", "soon"]);
    assert!(err.contains("invalid value 'soon'"), "{err}");
    let err = cluster_refuses(&["--worker-timeout", "100", "--node-forget-after", "50"]);
    assert!(err.contains("--node-forget-after must be longer than --worker-timeout"), "{err}");
}
