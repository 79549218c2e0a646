//! The state machine driven directly (no broker): the orderings that are hard to provoke through
//! MQTT — commands and events arriving while a runtime call is still running, and observations
//! that started before a change.

use std::time::Duration;

use oak_api::node::JobStatusReport;
use oak_runtime::FakeRuntime;
use serde_json::json;

use super::*;

const JOB: &str = "app.ns.svc.ns";
const WAIT: Duration = Duration::from_secs(30);

struct Harness {
    docker: Arc<FakeRuntime>,
    shared: Arc<Shared>,
    inbox: mpsc::UnboundedSender<EngineMsg>,
    outbox: mpsc::UnboundedReceiver<Outgoing>,
    _stop: oneshot::Sender<()>,
    dir: tempfile::TempDir,
}

impl Harness {
    fn start() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let docker = Arc::new(FakeRuntime::new("docker"));
        let shared = Arc::new(Shared::new());
        let (outbox_tx, outbox) = mpsc::unbounded_channel();
        let (inbox, inbox_rx) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel();
        let engine =
            Engine::new(vec![docker.clone() as Arc<dyn Runtime>], dir.path().into(), shared.clone(), outbox_tx);
        tokio::spawn(engine.run(inbox_rx, stopped));
        Harness { docker, shared, inbox, outbox, _stop: stop, dir }
    }

    fn deploy(&self, instance: u32, image: &str, one_shot: bool) {
        let cmd = json!({
            "_id": "s1", "job_name": JOB, "image": image, "instance_number": instance,
            "microservice_name": "svc", "microservice_namespace": "ns", "virtualization": "docker",
            "code": image, "one_shot": one_shot,
        });
        self.inbox.send(EngineMsg::Deploy(cmd.to_string().into_bytes())).unwrap();
    }

    fn delete(&self, instance: u32) {
        let cmd = json!({"job_name": JOB, "virtualization": "docker", "instance_number": instance});
        self.inbox.send(EngineMsg::Delete(cmd.to_string().into_bytes())).unwrap();
    }

    /// The next status report (resources reports are skipped).
    async fn next_job(&mut self) -> JobStatusReport {
        loop {
            match tokio::time::timeout(WAIT, self.outbox.recv()).await.expect("a report in time").expect("engine alive")
            {
                Outgoing::Job(report) => return report,
                _ => continue,
            }
        }
    }

    /// The next resources report.
    async fn next_resources(&mut self) -> Vec<ServiceResources> {
        loop {
            match tokio::time::timeout(WAIT, self.outbox.recv()).await.expect("a report in time").expect("engine alive")
            {
                Outgoing::Resources(report) => return report.services,
                Outgoing::Job(report) => panic!("unexpected status report {report:?}"),
                Outgoing::Info(_) => continue,
                Outgoing::Logs(answer) => panic!("unexpected logs answer {answer:?}"),
                other => panic!("unexpected overlay message {other:?}"),
            }
        }
    }

    /// The next logs answer (status reports are skipped).
    async fn next_logs(&mut self) -> oak_api::node::LogsAnswer {
        loop {
            match tokio::time::timeout(WAIT, self.outbox.recv())
                .await
                .expect("an answer in time")
                .expect("engine alive")
            {
                Outgoing::Logs(answer) => return answer,
                _ => continue,
            }
        }
    }

    /// Waits until the engine handled every message sent so far: a malformed command is
    /// answered in order.
    async fn barrier(&mut self) {
        self.inbox.send(EngineMsg::Deploy(b"barrier".to_vec())).unwrap();
        let report = self.next_job().await;
        assert_eq!(report.status, "FAILED", "{report:?}");
        assert!(report.status_detail.starts_with("malformed deploy command"), "{report:?}");
    }

    async fn observe(&self, seq: u64) {
        let observation =
            Observation { instances: self.docker.list().await.unwrap(), stats: self.docker.stats().await.unwrap() };
        self.inbox.send(EngineMsg::Observed { seq, runtimes: vec![Ok(observation)] }).unwrap();
    }

    fn seq(&self) -> u64 {
        self.shared.seq.load(Ordering::SeqCst)
    }

    async fn wait_until(&self, what: &str, check: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !check() {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn desired(&self) -> Vec<DeployCommand> {
        desired::load(self.dir.path()).await
    }
}

fn status_of(report: &JobStatusReport) -> (&str, u32, &str) {
    (report.sname.as_str(), report.instance, report.status.as_str())
}

#[tokio::test]
async fn a_delete_during_a_deploy_undeploys_when_the_deploy_returns() {
    let mut h = Harness::start();
    let gate = h.docker.hold_image("slow");
    h.deploy(0, "slow", false);
    h.wait_until("deploy started", || h.docker.status(JOB, 0).is_some()).await;
    h.delete(0);
    h.barrier().await;
    gate.release();
    let report = h.next_job().await;
    assert_eq!(status_of(&report), (JOB, 0, "UNDEPLOYED"), "no CREATED for a deleted instance");
    h.wait_until("instance removed", || h.docker.status(JOB, 0).is_none()).await;
    assert!(h.desired().await.is_empty());
}

#[tokio::test]
async fn an_exit_during_a_deploy_is_reported_after_created() {
    let mut h = Harness::start();
    let gate = h.docker.hold_image("slow");
    h.deploy(0, "slow", true);
    h.wait_until("deploy started", || h.docker.status(JOB, 0).is_some()).await;
    h.inbox.send(EngineMsg::Exited { runtime: 0, job_name: JOB.into(), instance: 0, code: 0 }).unwrap();
    h.barrier().await;
    gate.release();
    assert_eq!(status_of(&h.next_job().await), (JOB, 0, "CREATED"));
    assert_eq!(status_of(&h.next_job().await), (JOB, 0, "COMPLETED"));
    h.wait_until("exited instance cleaned up", || h.docker.status(JOB, 0).is_none()).await;
}

#[tokio::test]
async fn a_redeploy_during_a_delete_runs_after_it() {
    let mut h = Harness::start();
    h.deploy(0, "img", false);
    assert_eq!(status_of(&h.next_job().await), (JOB, 0, "CREATED"));
    let gate = h.docker.hold_undeploys();
    h.delete(0);
    h.deploy(0, "img-v2", false);
    h.barrier().await;
    assert_eq!(h.docker.deploy_calls(), 1, "the new deploy waits for the undeploy");
    gate.release();
    assert_eq!(status_of(&h.next_job().await), (JOB, 0, "UNDEPLOYED"));
    assert_eq!(status_of(&h.next_job().await), (JOB, 0, "CREATED"));
    assert_eq!(h.docker.command(JOB, 0).unwrap().job.image, "img-v2");
    let desired = h.desired().await;
    assert_eq!(desired.len(), 1);
    assert_eq!(desired[0].job.image, "img-v2");
}

#[tokio::test]
async fn an_observation_older_than_a_deploy_does_not_kill_it() {
    let mut h = Harness::start();
    let before = h.seq();
    h.deploy(0, "img", false);
    assert_eq!(status_of(&h.next_job().await), (JOB, 0, "CREATED"));

    // Listed before the deploy finished: the instance is missing, but that proves nothing.
    h.inbox.send(EngineMsg::Observed { seq: before, runtimes: vec![Ok(Observation::default())] }).unwrap();
    assert!(h.next_resources().await.is_empty());

    // A current listing that misses it does.
    h.docker.vanish(JOB, 0);
    h.observe(h.seq()).await;
    let report = h.next_job().await;
    assert_eq!(status_of(&report), (JOB, 0, "DEAD"));
    assert_eq!(report.status_detail, "instance no longer exists in runtime docker");
}

#[tokio::test]
async fn an_observation_older_than_a_delete_does_not_report_the_deleted_instance() {
    let mut h = Harness::start();
    h.deploy(0, "img", false);
    assert_eq!(status_of(&h.next_job().await), (JOB, 0, "CREATED"));
    let before = h.seq();
    let stale = Observation { instances: h.docker.list().await.unwrap(), stats: h.docker.stats().await.unwrap() };
    h.delete(0);
    assert_eq!(status_of(&h.next_job().await), (JOB, 0, "UNDEPLOYED"));

    h.inbox.send(EngineMsg::Observed { seq: before, runtimes: vec![Ok(stale)] }).unwrap();
    assert!(h.next_resources().await.is_empty(), "stale usage of a deleted instance");
    assert_eq!(h.docker.undeploy_calls(), 1, "no second clean-up");
}

#[tokio::test]
async fn unknown_running_instances_are_reported_and_left_alone() {
    let mut h = Harness::start();
    // Started behind the engine's back (e.g. before a lost state file).
    let cmd: DeployCommand = serde_json::from_value(json!({
        "_id": "s9", "job_name": "app.ns.orphan.ns", "image": "img", "instance_number": 3,
        "microservice_name": "orphan", "microservice_namespace": "ns", "virtualization": "docker", "code": "img",
    }))
    .unwrap();
    h.docker.deploy(&cmd).await.unwrap();
    h.observe(h.seq()).await;
    let services = h.next_resources().await;
    assert_eq!(services.len(), 1);
    assert_eq!((services[0].job_name.as_str(), services[0].instance), ("app.ns.orphan.ns", 3));
    assert_eq!(h.docker.undeploy_calls(), 0);

    // Once it exits, it is cleaned up without a status report.
    h.docker.exit("app.ns.orphan.ns", 3, 1);
    h.observe(h.seq()).await;
    assert!(h.next_resources().await.is_empty());
    h.wait_until("exited orphan removed", || h.docker.status("app.ns.orphan.ns", 3).is_none()).await;
}

#[tokio::test]
async fn a_failed_runtime_listing_changes_nothing() {
    let mut h = Harness::start();
    h.deploy(0, "img", false);
    assert_eq!(status_of(&h.next_job().await), (JOB, 0, "CREATED"));
    let failed = Err(RuntimeError::Unavailable("socket gone".into()));
    h.inbox.send(EngineMsg::Observed { seq: h.seq(), runtimes: vec![failed] }).unwrap();
    assert!(h.next_resources().await.is_empty());
    h.observe(h.seq()).await;
    assert_eq!(h.next_resources().await.len(), 1, "still running, still tracked");
}

#[tokio::test]
async fn deploy_progress_is_reported_as_creating_until_the_instance_started() {
    let mut h = Harness::start();
    let gate = h.docker.hold_image("slow");
    h.deploy(0, "slow", false);
    h.barrier().await;
    let progress =
        |detail: &str| EngineMsg::Progress { runtime: 0, job_name: JOB.into(), instance: 0, detail: detail.into() };
    h.inbox.send(progress("pulling image slow")).unwrap();
    let report = h.next_job().await;
    assert_eq!(status_of(&report), (JOB, 0, "CREATING"));
    assert_eq!(report.status_detail, "pulling image slow");
    // Progress of an instance nobody deploys, or of another runtime, says nothing.
    h.inbox
        .send(EngineMsg::Progress { runtime: 0, job_name: "other".into(), instance: 0, detail: "x".into() })
        .unwrap();
    h.inbox.send(EngineMsg::Progress { runtime: 1, job_name: JOB.into(), instance: 0, detail: "x".into() }).unwrap();
    gate.release();
    assert_eq!(status_of(&h.next_job().await), (JOB, 0, "CREATED"));
    // A late event after the start must not make it look as if it were starting again.
    h.inbox.send(progress("unpacking image slow")).unwrap();
    h.barrier().await;
}

#[tokio::test]
async fn logs_queries_are_answered_from_the_runtime() {
    let mut h = Harness::start();
    h.deploy(0, "img", false);
    assert_eq!(status_of(&h.next_job().await), (JOB, 0, "CREATED"));
    let query = |id: u64, instance: u32, cursor: Option<serde_json::Value>| {
        let q = json!({"request_id": id, "job_name": JOB, "instance_number": instance, "tail": 100, "cursor": cursor});
        EngineMsg::Logs(q.to_string().into_bytes())
    };
    h.inbox.send(query(7, 0, None)).unwrap();
    let answer = h.next_logs().await;
    assert_eq!(answer.request_id, 7);
    assert_eq!(answer.data, format!("output of {JOB}.instance.0\n"));
    assert!(answer.error.is_empty());
    // Following: nothing new after the cursor.
    let cursor = serde_json::to_value(answer.cursor).unwrap();
    h.inbox.send(query(8, 0, Some(cursor))).unwrap();
    let answer = h.next_logs().await;
    assert_eq!((answer.request_id, answer.data.as_str(), answer.error.as_str()), (8, "", ""));
    // Unknown instance: an error naming it; a garbled query is ignored.
    h.inbox.send(EngineMsg::Logs(b"{garbled".to_vec())).unwrap();
    h.inbox.send(query(9, 5, None)).unwrap();
    let answer = h.next_logs().await;
    assert_eq!(answer.request_id, 9);
    assert!(answer.error.contains("instance 5"), "{answer:?}");
}

#[tokio::test]
async fn a_deploy_that_cannot_be_recorded_fails_clearly_and_keeps_the_state() {
    let mut h = Harness::start();
    h.deploy(0, "img", false);
    assert_eq!(status_of(&h.next_job().await), (JOB, 0, "CREATED"));
    assert_eq!(h.desired().await.len(), 1);

    // The state file can no longer be written (as on a full disk: the temporary file cannot
    // be created; root ignores permissions, so a directory in its place stands in for ENOSPC).
    let blocker = h.dir.path().join("instances.json.tmp");
    std::fs::create_dir(&blocker).unwrap();
    h.deploy(1, "img", false);
    let report = h.next_job().await;
    assert_eq!(status_of(&report), (JOB, 1, "FAILED"), "{report:?}");
    assert!(
        report.status_detail.starts_with("not deployed: the worker cannot record the instance in")
            && report.status_detail.contains("instances.json"),
        "{report:?}"
    );
    assert!(h.docker.status(JOB, 1).is_none(), "the instance must not run unrecorded");
    assert_eq!(h.docker.deploy_calls(), 1);
    // Nothing was lost: instance 0 is still recorded and still running.
    let desired = h.desired().await;
    assert_eq!(desired.iter().map(|d| d.instance_number).collect::<Vec<_>>(), [0]);
    assert!(h.docker.status(JOB, 0).is_some());
    // The engine goes on answering.
    h.barrier().await;

    // Space again: the same deploy succeeds and is recorded next to instance 0.
    std::fs::remove_dir(&blocker).unwrap();
    h.deploy(1, "img", false);
    assert_eq!(status_of(&h.next_job().await), (JOB, 1, "CREATED"));
    let desired = h.desired().await;
    assert_eq!(desired.iter().map(|d| d.instance_number).collect::<Vec<_>>(), [0, 1]);
}

#[tokio::test]
async fn metrics_show_each_observed_instance_with_its_service_until_it_goes() {
    let mut h = Harness::start();
    h.deploy(2, "img", false);
    assert_eq!(status_of(&h.next_job().await), (JOB, 2, "CREATED"));
    h.observe(h.seq()).await;
    assert_eq!(h.next_resources().await.len(), 1);
    let text = h.shared.metrics.render();
    let labels = format!("service_id=\"s1\",job_name=\"{JOB}\",instance_number=\"2\"");
    for line in [
        format!("oakestra_instance_memory_bytes{{{labels}}} 1048576\n"),
        format!("oakestra_instance_state{{{labels},state=\"running\"}} 1\n"),
        format!("oakestra_instance_cpu_seconds_total{{{labels}}} 0.5\n"),
        "oakestra_runtime_operation_seconds_count{runtime=\"docker\",operation=\"deploy\"} 1\n".to_string(),
    ] {
        assert!(text.contains(&line), "missing {line:?} in\n{text}");
    }
    h.delete(2);
    assert_eq!(status_of(&h.next_job().await), (JOB, 2, "UNDEPLOYED"));
    h.observe(h.seq()).await;
    assert!(h.next_resources().await.is_empty());
    let text = h.shared.metrics.render();
    assert!(!text.contains(JOB), "the undeployed instance's series are gone: {text}");
    assert!(text.contains("operation=\"undeploy\"} 1\n"), "{text}");
}

#[tokio::test]
async fn deploys_queued_together_are_recorded_and_started_together() {
    let mut h = Harness::start();
    // Queued before the engine first runs: one batch (one write of the desired set).
    for n in 0..4 {
        h.deploy(n, "img", false);
    }
    h.deploy(2, "img", false); // the same instance twice in one batch: deployed once
    h.inbox.send(EngineMsg::Deploy(b"not json".to_vec())).unwrap(); // refused alone
    let mut created = std::collections::BTreeSet::new();
    while created.len() < 4 {
        let report = h.next_job().await;
        if report.status == "CREATED" {
            created.insert(report.instance);
        }
    }
    assert_eq!(created.into_iter().collect::<Vec<_>>(), [0, 1, 2, 3]);
    assert_eq!(h.docker.deploy_calls(), 4);
    let desired = h.desired().await;
    assert_eq!(desired.iter().map(|d| d.instance_number).collect::<Vec<_>>(), [0, 1, 2, 3]);

    // A batch whose record fails: its new instances fail, an already running one is untouched.
    let blocker = h.dir.path().join("instances.json.tmp");
    std::fs::create_dir(&blocker).unwrap();
    h.deploy(0, "img", false);
    h.deploy(7, "img", false);
    h.deploy(8, "img", false);
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let r = h.next_job().await;
        seen.push((r.instance, r.status.clone()));
    }
    seen.sort();
    assert_eq!(seen, [(0, "RUNNING".into()), (7, "FAILED".into()), (8, "FAILED".into())]);
    assert!(h.docker.status(JOB, 7).is_none() && h.docker.status(JOB, 8).is_none());
    assert_eq!(h.desired().await.len(), 4);
}

#[tokio::test]
async fn a_batch_message_deploys_each_of_its_commands_and_rejects_only_the_bad_one() {
    let mut h = Harness::start();
    let cmd = |n: u32| {
        json!({
            "_id": "s1", "job_name": JOB, "image": "img", "instance_number": n,
            "microservice_name": "svc", "microservice_namespace": "ns", "virtualization": "docker", "code": "img",
        })
    };
    let batch = json!([cmd(0), {"job_name": JOB, "instance_number": 1, "virtualization": ""}, cmd(2)]);
    h.inbox.send(EngineMsg::Deploy(batch.to_string().into_bytes())).unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let report = h.next_job().await;
        let (job, n, status) = status_of(&report);
        seen.push((job.to_string(), n, status.to_string()));
    }
    seen.sort();
    let want = |n: u32, s: &str| (JOB.to_string(), n, s.to_string());
    assert_eq!(seen, vec![want(0, "CREATED"), want(1, "FAILED"), want(2, "CREATED")]);
    assert_eq!(h.docker.deploy_calls(), 2);
}

#[tokio::test]
async fn a_quiet_worker_reports_usage_only_when_it_is_news() {
    let mut h = Harness::start();
    h.shared.quiet_reports.store(true, Ordering::Relaxed);
    h.observe(h.seq()).await;
    h.deploy(0, "img", false);
    assert_eq!(status_of(&h.next_job().await), (JOB, 0, "CREATED"));
    h.observe(h.seq()).await;
    assert_eq!(h.next_resources().await.len(), 1, "a new instance is news");
    // The same usage again: nothing goes out before the barrier's answer.
    h.observe(h.seq()).await;
    h.inbox.send(EngineMsg::Deploy(b"barrier".to_vec())).unwrap();
    match tokio::time::timeout(WAIT, h.outbox.recv()).await.expect("an answer in time").expect("engine alive") {
        Outgoing::Job(report) => assert_eq!(report.status, "FAILED", "{report:?}"),
        other => panic!("an unchanged usage report went out: {other:?}"),
    }
    // A second instance is news again; a new broker session republishes.
    h.deploy(1, "img", false);
    assert_eq!(status_of(&h.next_job().await), (JOB, 1, "CREATED"));
    h.observe(h.seq()).await;
    assert_eq!(h.next_resources().await.len(), 2);
    h.shared.sessions.fetch_add(1, Ordering::Relaxed);
    h.observe(h.seq()).await;
    assert_eq!(h.next_resources().await.len(), 2, "a new session hears the usage at once");
}
