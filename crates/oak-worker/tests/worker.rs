//! The worker against an in-test cluster: real HTTP registration, a real MQTT broker, a fake
//! runtime.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use common::*;
use oak_api::node::topic;
use oak_runtime::{FakeRuntime, InstanceStatus};
use oak_worker::WorkerError;
use serde_json::Value;

const JOB: &str = "app.ns.svc.ns";

/// A fresh cluster, data directory and worker (one `docker` fake runtime) with its node id.
struct Setup {
    cluster: FakeCluster,
    dir: tempfile::TempDir,
    docker: Arc<FakeRuntime>,
    worker: RunningWorker,
    node: String,
}

impl Setup {
    async fn start() -> Option<Setup> {
        let cluster = FakeCluster::start().await?;
        let dir = tempfile::tempdir().unwrap();
        let docker = Arc::new(FakeRuntime::new("docker"));
        let worker = RunningWorker::start(cluster.config(dir.path(), TOKEN), vec![docker.clone()]);
        let node = cluster.observer.node_id_after(0).await;
        Some(Setup { cluster, dir, docker, worker, node })
    }

    async fn deploy(&self, cmd: Value) {
        self.cluster.observer.publish(topic::deploy(&self.node), cmd.to_string()).await;
    }

    async fn deploy_raw(&self, payload: &str) {
        self.cluster.observer.publish(topic::deploy(&self.node), payload).await;
    }

    async fn delete(&self, job: &str, instance: u32) {
        self.cluster.observer.publish(topic::delete(&self.node), delete_cmd(job, instance).to_string()).await;
    }

    async fn status(&self, job: &str, instance: u32, status: &str) -> Value {
        self.cluster.observer.job_status(&self.node, job, instance, status).await
    }
}

#[tokio::test]
async fn registers_and_reuses_the_persisted_id() {
    let Some(cluster) = FakeCluster::start().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let docker = Arc::new(FakeRuntime::new("docker"));

    let worker = RunningWorker::start(cluster.config(dir.path(), TOKEN), vec![docker.clone()]);
    let node = cluster.observer.node_id_after(0).await;
    let first = &cluster.registrations()[0];
    assert_eq!((first.node.id.as_str(), first.node_secret.as_str()), ("", ""));
    assert_eq!(first.token, TOKEN);
    assert_eq!(first.node.host, "worker-a");
    assert_eq!(first.node.virtualization, ["docker"]);
    assert_eq!(first.node.vcpus, 4);

    let stored: Value = serde_json::from_slice(&std::fs::read(dir.path().join("node.json")).unwrap()).unwrap();
    let answer = cluster.answers()[0].clone();
    assert_eq!(stored["id"], node.as_str());
    assert_eq!(stored["id"], answer.id.as_str());
    assert_eq!(stored["node_secret"], answer.mqtt_password.as_str());
    let mode = std::fs::metadata(dir.path().join("node.json")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // Information reports carry the full description, not just the dynamic part.
    let info = cluster
        .observer
        .wait_for("node information", |msgs| {
            msgs.iter().find(|m| m.topic == topic::information(&node)).map(|m| m.body.clone())
        })
        .await;
    assert_eq!(info["id"], node.as_str());
    assert_eq!(info["host"], "worker-a");
    assert_eq!(info["architecture"], "amd64");
    assert_eq!(info["virtualization"], serde_json::json!(["docker"]));
    worker.stop().await.unwrap();

    // The restarted worker asks for its old id, proving it with the stored secret.
    let seen = cluster.observer.messages().len();
    let worker = RunningWorker::start(cluster.config(dir.path(), TOKEN), vec![docker]);
    let again = cluster.observer.node_id_after(seen).await;
    assert_eq!(again, node);
    let second = &cluster.registrations()[1];
    assert_eq!(second.node.id, node);
    assert_eq!(second.node_secret, answer.mqtt_password);
    let stored: Value = serde_json::from_slice(&std::fs::read(dir.path().join("node.json")).unwrap()).unwrap();
    assert_eq!(stored["node_secret"], cluster.answers()[1].mqtt_password.as_str());
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_wrong_token_is_a_fatal_error_naming_the_token() {
    let Some(cluster) = FakeCluster::start().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let wrong = "f".repeat(32);
    let worker = RunningWorker::start(cluster.config(dir.path(), &wrong), vec![Arc::new(FakeRuntime::new("docker"))]);
    let err = worker.finished().await.unwrap_err();
    assert!(matches!(err, WorkerError::TokenRefused(_)), "{err:?}");
    assert_eq!(err.to_string(), "cluster refused the join token: invalid join token");
    assert!(!dir.path().join("node.json").exists());
}

#[tokio::test]
async fn deploy_reports_created_then_usage_once_per_instance() {
    let Some(cluster) = FakeCluster::start().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let docker = Arc::new(FakeRuntime::new("docker"));
    let unikernel = Arc::new(FakeRuntime::new("unikernel"));
    let worker = RunningWorker::start(cluster.config(dir.path(), TOKEN), vec![docker.clone(), unikernel.clone()]);
    let node = cluster.observer.node_id_after(0).await;
    let obs = &cluster.observer;

    obs.publish(topic::deploy(&node), deploy_cmd(JOB, 0, "nginx", "docker", false).to_string()).await;
    obs.publish(topic::deploy(&node), deploy_cmd("app.ns.uk.ns", 1, "kernel", "unikernel", false).to_string()).await;
    let created = obs.job_status(&node, JOB, 0, "CREATED").await;
    assert_eq!(created["publicip"], "127.0.0.2");
    obs.job_status(&node, "app.ns.uk.ns", 1, "CREATED").await;
    assert_eq!(docker.status(JOB, 0), Some(InstanceStatus::Running));
    assert_eq!(unikernel.status("app.ns.uk.ns", 1), Some(InstanceStatus::Running));

    let services = obs
        .resources_where(&node, 0, "both instances in a resources report", |s| {
            has_instance(s, JOB, 0) && has_instance(s, "app.ns.uk.ns", 1)
        })
        .await;
    assert_eq!(services.len(), 2, "one entry per instance: {services:?}");
    let docker_entry = services.iter().find(|s| s["job_name"] == JOB).unwrap();
    assert_eq!(docker_entry["virtualization"], "docker");
    assert_eq!(docker_entry["cpu_percent"], "0.500000");

    let desired: Value = serde_json::from_slice(&std::fs::read(dir.path().join("instances.json")).unwrap()).unwrap();
    assert_eq!(desired["instances"].as_array().unwrap().len(), 2);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn bad_deploys_fail_with_the_reason_and_the_agent_stays_alive() {
    let Some(s) = Setup::start().await else { return };
    s.docker.fail_image("missing:1", "manifest unknown");

    s.deploy_raw("{\"job_name\": \"broken").await;
    let failed = s
        .cluster
        .observer
        .wait_for("FAILED for malformed JSON", |msgs| {
            msgs.iter()
                .find(|m| {
                    m.body["status"] == "FAILED"
                        && m.body["status_detail"].as_str().is_some_and(|d| d.starts_with("malformed deploy command"))
                })
                .map(|m| m.body.clone())
        })
        .await;
    assert_eq!(failed["sname"], "");

    let mut no_image = deploy_cmd(JOB, 4, "nginx", "docker", false);
    no_image.as_object_mut().unwrap().remove("image");
    s.deploy(no_image).await;
    let failed = s.status(JOB, 4, "FAILED").await;
    assert!(failed["status_detail"].as_str().unwrap().contains("missing field `image`"), "{failed}");

    s.deploy(deploy_cmd(JOB, 5, "nginx", "wasm", false)).await;
    let failed = s.status(JOB, 5, "FAILED").await;
    assert_eq!(failed["status_detail"], "unknown virtualization \"wasm\": this worker runs docker");

    s.deploy(deploy_cmd(JOB, 6, "missing:1", "docker", false)).await;
    let failed = s.status(JOB, 6, "FAILED").await;
    assert_eq!(failed["status_detail"], "image missing:1: manifest unknown");

    // Still alive and serving.
    s.deploy(deploy_cmd(JOB, 7, "nginx", "docker", false)).await;
    s.status(JOB, 7, "CREATED").await;
    assert!(s.worker.is_running());
    let desired: Value = serde_json::from_slice(&std::fs::read(s.dir.path().join("instances.json")).unwrap()).unwrap();
    assert_eq!(desired["instances"].as_array().unwrap().len(), 1, "only the deployed instance is desired");
    s.worker.stop().await.unwrap();
}

#[tokio::test]
async fn delete_reports_undeployed_even_for_unknown_instances() {
    let Some(s) = Setup::start().await else { return };
    s.deploy(deploy_cmd(JOB, 0, "nginx", "docker", false)).await;
    s.status(JOB, 0, "CREATED").await;

    let seen = s.cluster.observer.messages().len();
    s.delete(JOB, 0).await;
    s.status(JOB, 0, "UNDEPLOYED").await;
    assert_eq!(s.docker.status(JOB, 0), None);
    s.cluster
        .observer
        .resources_where(&s.node, seen, "a resources report without the deleted instance", |svc| {
            !has_instance(svc, JOB, 0)
        })
        .await;

    s.delete("app.ns.never.ns", 9).await;
    s.status("app.ns.never.ns", 9, "UNDEPLOYED").await;
    let desired: Value = serde_json::from_slice(&std::fs::read(s.dir.path().join("instances.json")).unwrap()).unwrap();
    assert!(desired["instances"].as_array().unwrap().is_empty());
    s.worker.stop().await.unwrap();
}

#[tokio::test]
async fn exits_report_dead_or_completed() {
    let Some(s) = Setup::start().await else { return };
    s.deploy(deploy_cmd(JOB, 0, "nginx", "docker", false)).await;
    s.deploy(deploy_cmd("app.ns.batch.ns", 0, "batch", "docker", true)).await;
    s.deploy(deploy_cmd("app.ns.batch.ns", 1, "batch", "docker", true)).await;
    s.deploy(deploy_cmd("app.ns.gone.ns", 0, "nginx", "docker", false)).await;
    for (job, n) in [(JOB, 0), ("app.ns.batch.ns", 0), ("app.ns.batch.ns", 1), ("app.ns.gone.ns", 0)] {
        s.status(job, n, "CREATED").await;
    }

    assert!(s.docker.exit(JOB, 0, 0));
    let dead = s.status(JOB, 0, "DEAD").await;
    assert_eq!(dead["status_detail"], "exited with code 0");
    assert!(s.docker.exit("app.ns.batch.ns", 0, 0));
    s.status("app.ns.batch.ns", 0, "COMPLETED").await;
    assert!(s.docker.exit("app.ns.batch.ns", 1, 2));
    let dead = s.status("app.ns.batch.ns", 1, "DEAD").await;
    assert_eq!(dead["status_detail"], "exited with code 2");

    // Disappearing without an event is noticed by the periodic observation.
    assert!(s.docker.vanish("app.ns.gone.ns", 0));
    let dead = s.status("app.ns.gone.ns", 0, "DEAD").await;
    assert_eq!(dead["status_detail"], "instance no longer exists in runtime docker");

    // Exited instances are cleaned up and no longer desired.
    s.cluster
        .observer
        .wait_for("exited instances removed from the runtime", |_| {
            (s.docker.status(JOB, 0).is_none() && s.docker.status("app.ns.batch.ns", 0).is_none()).then_some(())
        })
        .await;
    let reports = s.cluster.observer.job_reports(&s.node);
    let for_job: Vec<&str> =
        reports.iter().filter(|r| r["sname"] == JOB).map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(for_job, ["CREATED", "DEAD"], "no report after the exit: {reports:?}");
    s.worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_duplicate_deploy_is_not_run_twice() {
    let Some(s) = Setup::start().await else { return };
    s.deploy(deploy_cmd(JOB, 0, "nginx", "docker", false)).await;
    s.status(JOB, 0, "CREATED").await;
    s.deploy(deploy_cmd(JOB, 0, "nginx", "docker", false)).await;
    let again = s.status(JOB, 0, "RUNNING").await;
    assert_eq!(again["status_detail"], "instance is already running");
    assert_eq!(s.docker.deploy_calls(), 1);
    s.worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_slow_deploy_does_not_block_other_commands() {
    let Some(s) = Setup::start().await else { return };
    let gate = s.docker.hold_image("huge-image");
    s.deploy(deploy_cmd("app.ns.slow.ns", 0, "huge-image", "docker", false)).await;
    s.deploy(deploy_cmd(JOB, 0, "nginx", "docker", false)).await;
    s.status(JOB, 0, "CREATED").await;
    s.delete(JOB, 0).await;
    s.status(JOB, 0, "UNDEPLOYED").await;
    assert_eq!(s.docker.status("app.ns.slow.ns", 0), Some(InstanceStatus::Creating));
    gate.release();
    s.status("app.ns.slow.ns", 0, "CREATED").await;
    s.worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_restarted_worker_adopts_running_instances() {
    let Some(s) = Setup::start().await else { return };
    for job in ["app.ns.keep.ns", "app.ns.died.ns", "app.ns.gone.ns"] {
        s.deploy(deploy_cmd(job, 0, "nginx", "docker", false)).await;
        s.status(job, 0, "CREATED").await;
    }
    let Setup { cluster, dir, docker, worker, node } = s;
    worker.stop().await.unwrap();

    // While the worker is down one instance exits and one disappears.
    assert!(docker.exit("app.ns.died.ns", 0, 137));
    assert!(docker.vanish("app.ns.gone.ns", 0));
    let deploys = docker.deploy_calls();

    let worker = RunningWorker::start(cluster.config(dir.path(), TOKEN), vec![docker.clone()]);
    let obs = &cluster.observer;
    let adopted = obs.job_status(&node, "app.ns.keep.ns", 0, "RUNNING").await;
    assert_eq!(adopted["status_detail"], "adopted after a worker restart");
    let dead = obs.job_status(&node, "app.ns.died.ns", 0, "DEAD").await;
    assert_eq!(dead["status_detail"], "exited with code 137");
    let gone = obs.job_status(&node, "app.ns.gone.ns", 0, "DEAD").await;
    assert_eq!(gone["status_detail"], "instance stopped while the worker was down");

    let seen = obs.messages().len();
    let services = obs
        .resources_where(&node, seen, "the adopted instance in a resources report", |svc| {
            has_instance(svc, "app.ns.keep.ns", 0)
        })
        .await;
    assert_eq!(services.len(), 1, "{services:?}");
    assert_eq!(docker.status("app.ns.keep.ns", 0), Some(InstanceStatus::Running));
    assert_eq!(docker.deploy_calls(), deploys, "nothing redeployed");

    // The adopted instance is fully managed again.
    obs.publish(topic::delete(&node), delete_cmd("app.ns.keep.ns", 0).to_string()).await;
    obs.job_status(&node, "app.ns.keep.ns", 0, "UNDEPLOYED").await;
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn registration_is_retried_while_the_cluster_is_unavailable() {
    let Some(cluster) = FakeCluster::start().await else { return };
    cluster.state.lock().unwrap().unavailable = 1;
    let dir = tempfile::tempdir().unwrap();
    let worker = RunningWorker::start(cluster.config(dir.path(), TOKEN), vec![Arc::new(FakeRuntime::new("docker"))]);
    let node = cluster.observer.node_id_after(0).await;
    assert_eq!(cluster.registrations().len(), 2);
    assert_eq!(cluster.answers()[0].id, node);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_refused_stored_identity_registers_as_a_new_node() {
    let Some(cluster) = FakeCluster::start().await else { return };
    cluster.state.lock().unwrap().secrets.insert("node-taken".into(), "current".into());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("node.json"), r#"{"id":"node-taken","node_secret":"stale"}"#).unwrap();

    let worker = RunningWorker::start(cluster.config(dir.path(), TOKEN), vec![Arc::new(FakeRuntime::new("docker"))]);
    let node = cluster.observer.node_id_after(0).await;
    assert_ne!(node, "node-taken");
    let registrations = cluster.registrations();
    assert_eq!(registrations[0].node.id, "node-taken");
    assert_eq!(registrations[1].node.id, "");
    let stored: Value = serde_json::from_slice(&std::fs::read(dir.path().join("node.json")).unwrap()).unwrap();
    assert_eq!(stored["id"], node.as_str());
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn refused_broker_credentials_make_the_worker_register_again() {
    let Some(cluster) = FakeCluster::start_with_auth().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let docker = Arc::new(FakeRuntime::new("docker"));
    let worker = RunningWorker::start(cluster.config(dir.path(), TOKEN), vec![docker.clone()]);
    let node = cluster.observer.node_id_after(0).await;
    let first = cluster.answers()[0].clone();

    // The cluster forgets the node: its broker account is gone and its connection dropped.
    cluster.broker.remove_user(&node);
    cluster.broker.restart();
    let seen = cluster.observer.messages().len();

    let again = cluster.observer.node_id_after(seen).await;
    assert_eq!(again, node, "re-registered under the same id");
    let registrations = cluster.registrations();
    assert!(registrations.len() >= 2);
    assert_eq!(registrations[1].node.id, node);
    assert_eq!(registrations[1].node_secret, first.mqtt_password);

    // Commands work on the new connection.
    cluster.observer.publish(topic::deploy(&node), deploy_cmd(JOB, 0, "nginx", "docker", false).to_string()).await;
    cluster.observer.job_status(&node, JOB, 0, "CREATED").await;
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_worker_without_runtimes_joins_and_refuses_deploys() {
    let Some(cluster) = FakeCluster::start().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let worker = RunningWorker::start(cluster.config(dir.path(), TOKEN), Vec::new());
    let node = cluster.observer.node_id_after(0).await;
    assert!(cluster.registrations()[0].node.virtualization.is_empty());
    cluster.observer.publish(topic::deploy(&node), deploy_cmd(JOB, 0, "nginx", "docker", false).to_string()).await;
    let failed = cluster.observer.job_status(&node, JOB, 0, "FAILED").await;
    assert_eq!(failed["status_detail"], "unknown virtualization \"docker\": this worker has no runtime");
    worker.stop().await.unwrap();
}
