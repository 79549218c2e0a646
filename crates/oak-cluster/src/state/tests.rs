//! Lifecycle rules of the cluster state, without sockets: time is passed in.

use std::sync::Arc;
use std::time::{Duration, Instant};

use oak_api::channel::{ClusterMsg, DeployInstance, InstanceRef};
use oak_api::net::{OverlayInfo, RouteTable, TableQuery};
use oak_api::node::{JobSpec, JobStatusReport, NodeInfo, ResourcesReport, ServiceResources};
use oak_api::sla::Microservice;
use oak_api::status;

use super::{ClusterState, Effect, Timing, PLACED_REPORT_HOLD};
use crate::store::NodeRecord;

fn job(name: &str, memory: u64) -> JobSpec {
    let mut spec: Microservice = serde_json::from_value(serde_json::json!({
        "microservice_name": name, "microservice_namespace": "test",
        "virtualization": "docker", "code": "img"
    }))
    .unwrap();
    spec.memory = memory;
    spec.vcpus = 1;
    JobSpec { id: format!("id-{name}"), job_name: format!("app.test.{name}.test"), image: "img".into(), spec }
}

fn info(name: &str, memory: u64) -> NodeInfo {
    NodeInfo {
        host: name.into(),
        ip: "10.0.0.1".into(),
        vcpus: 4,
        memory,
        memory_total: memory,
        architecture: "amd64".into(),
        virtualization: vec!["docker".into()],
        ..Default::default()
    }
}

/// The timing these tests are written for: workers are lost after 6 s of silence.
fn timing() -> Timing {
    Timing { node_timeout: Duration::from_secs(6), ..Default::default() }
}

fn state(nodes: &[(&str, u64)], t0: Instant) -> ClusterState {
    let mut st = ClusterState::new("c1".into(), timing(), Vec::new(), Vec::new(), t0);
    for (id, mem) in nodes {
        let record =
            NodeRecord { id: id.to_string(), secret_hash: String::new(), info: info(id, *mem), subnet: String::new() };
        st.register_node(record, t0);
        assert!(st.node_information(id, info(id, *mem), t0).is_empty());
    }
    st
}

fn deploy(st: &mut ClusterState, j: &JobSpec, n: u32, t: Instant) -> Vec<Effect> {
    let mut fx = st.deploy(vec![DeployInstance { instance_number: n, job: j.clone(), instance_ip: None }], false, t);
    fx.extend(st.schedule(t));
    fx
}

fn placed_on(fx: &[Effect]) -> Vec<String> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Deploy { node, .. } => Some(node.clone()),
            _ => None,
        })
        .collect()
}

fn running(st: &mut ClusterState, node: &str, j: &JobSpec, n: u32, t: Instant) -> Vec<Effect> {
    let report = ResourcesReport {
        services: vec![ServiceResources {
            job_name: j.job_name.clone(),
            instance: n,
            cpu_percent: "1.5".into(),
            memory_percent: "2".into(),
            ..Default::default()
        }],
    };
    st.resources_report(node, report, t)
}

fn status_of(st: &ClusterState, j: &JobSpec, n: u32) -> String {
    st.instances[&(j.id.clone(), n)].status.clone()
}

#[test]
fn placement_reserves_capacity_until_undeploy() {
    let t = Instant::now();
    let mut st = state(&[("a", 1000)], t);
    let j = job("web", 400);
    assert_eq!(placed_on(&deploy(&mut st, &j, 0, t)), ["a"]);
    assert_eq!(placed_on(&deploy(&mut st, &j, 1, t)), ["a"]);
    // 800 of 1000 MB are reserved: a third 400 MB instance does not fit before any report.
    assert!(placed_on(&deploy(&mut st, &j, 2, t)).is_empty());
    assert_eq!(status_of(&st, &j, 2), status::NO_WORKER_CAPACITY);
    assert_eq!(st.resources(t).totals.free_memory_mb, 200);
    // Undeploying one frees its share; the waiting one is placed at its next try.
    let fx = st.undeploy(&[InstanceRef { job_id: j.id.clone(), instance_number: 0 }]);
    assert!(matches!(&fx[..], [Effect::Delete { node, .. }] if node == "a"));
    assert_eq!(placed_on(&st.schedule(t + Duration::from_secs(5))), ["a"]);
}

#[test]
fn resources_report_makes_instances_running_and_reports_them_once() {
    let t = Instant::now();
    let mut st = state(&[("a", 1000)], t);
    let j = job("web", 100);
    deploy(&mut st, &j, 0, t);
    assert_eq!(status_of(&st, &j, 0), status::NODE_SCHEDULED);
    assert!(running(&mut st, "a", &j, 0, t).is_empty());
    assert_eq!(status_of(&st, &j, 0), status::RUNNING);
    let first = st.root_updates(false, t);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].status, status::RUNNING);
    assert_eq!(first[0].worker_id.as_deref(), Some("a"));
    assert_eq!(first[0].cpu_percent, Some(1.5));
    // Metrics-only changes wait for the metrics interval.
    running(&mut st, "a", &j, 0, t + Duration::from_secs(1));
    st.queue_due_metrics(t + Duration::from_secs(1));
    assert!(st.root_updates(false, t + Duration::from_secs(1)).is_empty());
    st.queue_due_metrics(t + Duration::from_secs(11));
    assert_eq!(st.root_updates(false, t + Duration::from_secs(11)).len(), 1);
}

#[test]
fn silent_worker_loses_its_instances_and_late_reports_are_ignored() {
    let t = Instant::now();
    let mut st = state(&[("a", 1000), ("b", 900)], t);
    let j = job("web", 100);
    assert_eq!(placed_on(&deploy(&mut st, &j, 0, t)), ["a"]);
    running(&mut st, "a", &j, 0, t);
    // b keeps reporting, a goes silent.
    let later = t + Duration::from_secs(7);
    st.node_information("b", info("b", 900), later);
    let fx = st.check_timeouts(later);
    assert!(matches!(&fx[..], [Effect::Delete { node, .. }] if node == "a"), "{fx:?}");
    assert_eq!(status_of(&st, &j, 0), status::FAILED);
    assert_eq!(placed_on(&st.schedule(later)), ["b"]);
    // a comes back and reports the old copy: it must not overwrite, and a is told to stop it.
    let fx = running(&mut st, "a", &j, 0, later);
    assert!(matches!(&fx[..], [Effect::Delete { node, .. }] if node == "a"));
    let old =
        JobStatusReport { sname: j.job_name.clone(), status: status::DEAD.into(), instance: 0, ..Default::default() };
    assert!(st.job_report("a", old, later).is_empty());
    assert_eq!(status_of(&st, &j, 0), status::NODE_SCHEDULED);
    assert_eq!(st.instances[&(j.id.clone(), 0)].worker_id.as_deref(), Some("b"));
}

#[test]
fn failed_instances_are_retried_with_backoff() {
    let t = Instant::now();
    let mut st = state(&[("a", 1000)], t);
    let j = job("web", 100);
    deploy(&mut st, &j, 0, t);
    let failed = JobStatusReport {
        sname: j.job_name.clone(),
        status: status::FAILED.into(),
        status_detail: "image pull failed".into(),
        instance: 0,
        ..Default::default()
    };
    st.job_report("a", failed.clone(), t);
    assert_eq!(status_of(&st, &j, 0), status::FAILED);
    assert_eq!(st.instances[&(j.id.clone(), 0)].detail, "image pull failed");
    assert_eq!(st.resources(t).totals.free_memory_mb, 1000, "failure releases the node's capacity");
    // First retry after 1 s, not before.
    assert!(placed_on(&st.schedule(t)).is_empty());
    let t1 = t + Duration::from_secs(1);
    assert_eq!(placed_on(&st.schedule(t1)), ["a"]);
    st.job_report("a", failed, t1);
    // Second failure: 2 s back-off.
    assert!(placed_on(&st.schedule(t1 + Duration::from_millis(1500))).is_empty());
    assert_eq!(placed_on(&st.schedule(t1 + Duration::from_secs(2))), ["a"]);
}

#[test]
fn a_crash_loop_backs_off_more_each_time_until_it_runs_for_a_while() {
    let t = Instant::now();
    let mut st = state(&[("a", 1000)], t);
    let j = job("crasher", 100);
    deploy(&mut st, &j, 0, t);
    let dead = JobStatusReport {
        sname: j.job_name.clone(),
        status: status::DEAD.into(),
        status_detail: "exited with code 3".into(),
        instance: 0,
        ..Default::default()
    };
    // Starts, crashes a second later, is placed again after 1 s, 2 s, 4 s.
    let mut now = t;
    for delay in [1u64, 2, 4] {
        running(&mut st, "a", &j, 0, now);
        now += Duration::from_secs(1);
        st.job_report("a", dead.clone(), now);
        assert_eq!(status_of(&st, &j, 0), status::DEAD);
        assert!(placed_on(&st.schedule(now + Duration::from_secs(delay) - Duration::from_millis(1))).is_empty());
        now += Duration::from_secs(delay);
        st.node_information("a", info("a", 1000), now);
        assert_eq!(placed_on(&st.schedule(now)), ["a"], "placed again after {delay} s");
    }
    // After a minute of running, a failure waits the shortest delay again.
    running(&mut st, "a", &j, 0, now);
    now += Duration::from_secs(61);
    st.job_report("a", dead, now);
    st.node_information("a", info("a", 1000), now);
    assert!(placed_on(&st.schedule(now + Duration::from_millis(999))).is_empty());
    assert_eq!(placed_on(&st.schedule(now + Duration::from_secs(1))), ["a"]);
}

#[test]
fn completed_one_shot_frees_the_node_and_stays_completed() {
    let t = Instant::now();
    let mut st = state(&[("a", 1000)], t);
    let j = job("batch", 600);
    deploy(&mut st, &j, 0, t);
    running(&mut st, "a", &j, 0, t);
    let done = JobStatusReport {
        sname: j.job_name.clone(),
        status: status::COMPLETED.into(),
        instance: 0,
        ..Default::default()
    };
    st.job_report("a", done, t);
    assert_eq!(status_of(&st, &j, 0), status::COMPLETED);
    assert!(st.schedule(t + Duration::from_secs(60)).is_empty());
    assert_eq!(st.resources(t).totals.free_memory_mb, 1000);
}

#[test]
fn stuck_deployments_time_out_and_move() {
    let t = Instant::now();
    let mut st = state(&[("a", 1000)], t);
    let j = job("web", 100);
    deploy(&mut st, &j, 0, t);
    let late = t + Duration::from_secs(121);
    st.node_information("a", info("a", 1000), late);
    let fx = st.check_timeouts(late);
    assert!(matches!(&fx[..], [Effect::Delete { node, .. }] if node == "a"));
    assert_eq!(status_of(&st, &j, 0), status::FAILED);
    assert!(st.instances[&(j.id.clone(), 0)].detail.contains("did not start it"));
}

#[test]
fn periodic_steps_check_every_instance_once_a_second_and_a_silent_worker_at_once() {
    let t = Instant::now();
    let mut st = state(&[("a", 1000), ("b", 1000)], t);
    let j = job("web", 100);
    let k = job("api", 100);
    assert_eq!(placed_on(&deploy(&mut st, &j, 0, t)), ["a"]);
    assert_eq!(placed_on(&deploy(&mut st, &k, 0, t)), ["b"]);
    running(&mut st, "b", &k, 0, t);
    // Steps every 100 ms, as the control loop runs them; worker a keeps reporting, b goes silent
    // after t, and a's deploy of `web` never finishes (the deploy timeout is 120 s).
    let deadline = t + Duration::from_secs(120);
    let mut moved_web = None;
    let mut moved_api = None;
    for step in 1..=1250u64 {
        let now = t + Duration::from_millis(100 * step);
        if step % 20 == 0 {
            st.node_information("a", info("a", 1000), now);
        }
        for e in st.check_timeouts(now) {
            if let Effect::Delete { node, .. } = e {
                let slot = if node == "a" { &mut moved_web } else { &mut moved_api };
                slot.get_or_insert(now);
            }
        }
    }
    // b is silent for more than 6 s from t + 6.1 s on: acted on at that very step.
    assert_eq!(moved_api, Some(t + Duration::from_millis(6100)));
    let moved_web = moved_web.expect("the stuck deploy is found");
    assert!(moved_web > deadline && moved_web <= deadline + Duration::from_secs(1), "{:?}", moved_web - deadline);
    assert!(st.instances[&(j.id.clone(), 0)].detail.contains("did not start it"));
}

#[test]
fn what_the_broker_heard_keeps_an_active_worker_active_but_wakes_no_inactive_one() {
    let t = Instant::now();
    let mut st = state(&[("a", 1000), ("b", 1000)], t);
    // a is heard (pings) until t + 20 s, b is not: only b times out.
    for s in 1..=20 {
        st.heard("a", t + Duration::from_secs(s));
    }
    st.check_timeouts(t + Duration::from_secs(21));
    assert_eq!(st.active_nodes(t + Duration::from_secs(21)), 1);
    // Heard again, b stays inactive until it describes itself.
    st.heard("b", t + Duration::from_secs(22));
    assert_eq!(st.active_nodes(t + Duration::from_secs(22)), 1);
    st.node_information("b", info("b", 1000), t + Duration::from_secs(23));
    assert_eq!(st.active_nodes(t + Duration::from_secs(23)), 2);
    st.heard("nobody", t);
}

#[test]
fn full_desired_set_removes_what_the_root_no_longer_wants() {
    let t = Instant::now();
    let mut st = state(&[("a", 1000)], t);
    let (j1, j2) = (job("one", 100), job("two", 100));
    deploy(&mut st, &j1, 0, t);
    deploy(&mut st, &j2, 0, t);
    let fx = st.deploy(vec![DeployInstance { instance_number: 0, job: j2.clone(), instance_ip: None }], true, t);
    assert!(matches!(&fx[..], [Effect::Delete { cmd, .. }] if cmd.job_name == j1.job_name));
    assert_eq!(st.instances.len(), 1);
    let batch = st.take_batch();
    assert_eq!(batch.removed, vec![(j1.id.clone(), 0)]);
}

#[test]
fn unknown_nodes_and_unknown_jobs_get_clear_answers() {
    let t = Instant::now();
    let mut st = state(&[("a", 1000)], t);
    let fx = st.node_information("ghost", info("ghost", 1), t);
    assert!(
        matches!(&fx[..], [Effect::NodeError { node, message }] if node == "ghost" && message.contains("not registered"))
    );
    let j = job("web", 100);
    let fx = running(&mut st, "a", &j, 3, t);
    assert!(matches!(&fx[..], [Effect::Delete { cmd, .. }] if cmd.instance_number == 3), "orphans are stopped");
}

#[test]
fn direct_constraint_names_nodes() {
    let t = Instant::now();
    let mut st = state(&[("a", 1000), ("b", 500)], t);
    let mut j = job("web", 100);
    j.spec.constraints =
        vec![oak_api::sla::Constraint { kind: "direct".into(), node: Some("b".into()), ..Default::default() }];
    assert_eq!(placed_on(&deploy(&mut st, &j, 0, t)), ["b"]);
}

#[test]
fn created_on_the_worker_means_running() {
    let t = Instant::now();
    let mut st = state(&[("a", 1000)], t);
    let j = job("web", 100);
    deploy(&mut st, &j, 0, t);
    let created = JobStatusReport {
        sname: j.job_name.clone(),
        status: status::CREATED.into(),
        instance: 0,
        ..Default::default()
    };
    assert!(st.job_report("a", created, t).is_empty());
    assert_eq!(status_of(&st, &j, 0), status::RUNNING);
}

fn overlay(mut i: NodeInfo, public_addr: &str) -> NodeInfo {
    i.overlay = Some(OverlayInfo {
        public_addr: public_addr.into(),
        tunnel_port: 50103,
        subnet: "10.18.0.64/26".into(),
        ..Default::default()
    });
    i
}

#[test]
fn overlay_instances_carry_their_addresses_and_the_tunnel_endpoint() {
    let t = Instant::now();
    let mut st = state(&[("a", 1000)], t);
    st.node_information("a", overlay(info("a", 1000), "203.0.113.5"), t);
    let j = job("web", 100);
    let d = DeployInstance { instance_number: 0, job: j.clone(), instance_ip: Some("10.30.0.7".into()) };
    let mut fx = st.deploy(vec![d], false, t);
    fx.extend(st.schedule(t));
    match &fx[..] {
        [Effect::Deploy { cmd, .. }] => {
            assert_eq!((cmd.instance_ip.as_deref(), cmd.netns.as_deref()), (Some("10.30.0.7"), None))
        }
        other => panic!("{other:?}"),
    }
    let created = JobStatusReport {
        sname: j.job_name.clone(),
        status: status::CREATED.into(),
        instance: 0,
        nsip: "10.18.0.66".into(),
        ..Default::default()
    };
    st.job_report("a", created, t);
    let r = st.root_updates(false, t).remove(0);
    assert_eq!(r.status, status::RUNNING);
    assert_eq!(
        (r.namespace_ip.as_deref(), r.host_ip.as_deref(), r.host_port.as_deref()),
        (Some("10.18.0.66"), Some("203.0.113.5"), Some("50103"))
    );
    let stored = st.take_batch().instances.remove(0);
    assert_eq!(
        (stored.instance_ip.as_deref(), stored.namespace_ip.as_deref()),
        (Some("10.30.0.7"), Some("10.18.0.66"))
    );

    // The node's public address changes: its instances are reported again with the new one.
    st.node_information("a", overlay(info("a", 1000), "203.0.113.5"), t);
    assert!(st.root_updates(false, t).is_empty(), "nothing changed");
    st.node_information("a", overlay(info("a", 1000), "198.51.100.9"), t);
    let r = st.root_updates(false, t);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].host_ip.as_deref(), Some("198.51.100.9"));
    assert_eq!(st.take_batch().nodes.len(), 1, "the new endpoint is stored");

    // The worker lost its tunnel key and made a new one: the tables must name the new key.
    let with_key = |key: &str, refused: u64| {
        let mut i = overlay(info("a", 1000), "198.51.100.9");
        let o = i.overlay.as_mut().unwrap();
        o.public_key = key.into();
        o.refused.insert("unauthenticated".into(), refused);
        i
    };
    st.node_information("a", with_key(&"aa".repeat(32), 0), t);
    assert_eq!(st.root_updates(false, t)[0].tunnel_key, Some("aa".repeat(32)));
    st.take_batch();
    st.node_information("a", with_key(&"aa".repeat(32), 7), t);
    assert!(st.root_updates(false, t).is_empty(), "counters are no news for the root");
    assert!(st.take_batch().nodes.is_empty(), "nor worth a store write");
    st.node_information("a", with_key(&"bb".repeat(32), 7), t);
    assert_eq!(st.root_updates(false, t)[0].tunnel_key, Some("bb".repeat(32)));

    // An instance that fails leaves its bridge address behind.
    let dead =
        JobStatusReport { sname: j.job_name.clone(), status: status::DEAD.into(), instance: 0, ..Default::default() };
    st.job_report("a", dead, t);
    let r = st.root_updates(false, t).remove(0);
    assert_eq!((r.status.as_str(), r.namespace_ip), (status::DEAD, None));
    assert_eq!(st.instances[&(j.id.clone(), 0)].instance_ip.as_deref(), Some("10.30.0.7"), "kept for its next node");

    // Without the overlay, peers reach instances at the node's address, without a port.
    let mut st = state(&[("b", 1000)], t);
    deploy(&mut st, &j, 0, t);
    let r = st.root_updates(false, t + PLACED_REPORT_HOLD).remove(0);
    assert_eq!((r.host_ip.as_deref(), r.host_port), (Some("10.0.0.1"), None));
}

#[test]
fn nodes_keep_their_subnet_and_silent_ones_are_forgotten() {
    let t = Instant::now();
    let timing = Timing { node_forget_after: Duration::from_secs(100), ..timing() };
    let mut st = ClusterState::new("c1".into(), timing, Vec::new(), Vec::new(), t);
    for id in ["a", "b"] {
        let record = NodeRecord {
            id: id.into(),
            secret_hash: "h".into(),
            info: overlay(info(id, 1000), "203.0.113.5"),
            subnet: format!("10.18.0.{}/26", if id == "a" { 0 } else { 64 }),
        };
        st.register_node(record, t);
        st.node_information(id, info(id, 1000), t);
    }
    assert_eq!(st.node_subnet("b"), Some("10.18.0.64/26"));
    assert_eq!(st.node_subnet("nope"), None);
    st.take_batch();

    // b asks for a table; when it goes silent it loses its interest, and the cluster its own.
    let fx = st.table_query("b", TableQuery { sname: "app.test.web.test".into(), sip: String::new() }, true, t);
    let id = match &fx[..] {
        [Effect::Root(m)] => match **m {
            ClusterMsg::TableQuery { request_id, .. } => request_id,
            ref other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    };
    st.routes.answer(id, RouteTable { app_name: "app.test.web.test".into(), ..Default::default() });
    let fx = st.table_query("ghost", TableQuery::default(), true, t);
    assert!(matches!(&fx[..], [Effect::NodeError { node, .. }] if node == "ghost"));

    // a keeps reporting; b is silent: inactive after 6 s, forgotten after 100 s.
    let later = t + Duration::from_secs(7);
    st.node_information("a", info("a", 1000), later);
    let fx = st.check_timeouts(later);
    assert!(
        matches!(&fx[..], [Effect::Root(m)] if **m == ClusterMsg::Uninterest { job_name: "app.test.web.test".into() }),
        "{fx:?}"
    );
    let much_later = t + Duration::from_secs(101);
    st.node_information("a", info("a", 1000), much_later);
    let fx = st.check_timeouts(much_later);
    assert_eq!(fx, [Effect::Forgotten { node: "b".into() }]);
    assert!(st.node_secret_hash("b").is_none(), "its credentials are gone");
    assert_eq!(st.node_ids().collect::<Vec<_>>(), ["a"]);
    assert_eq!(st.take_batch().forgotten, ["b"]);
    assert!(st.check_timeouts(much_later).is_empty());
}

fn mapping(name: &str, port: &str) -> JobSpec {
    let mut j = job(name, 100);
    j.spec.port = port.into();
    j
}

fn detail_of(st: &ClusterState, j: &JobSpec, n: u32) -> String {
    st.instances[&(j.id.clone(), n)].detail.clone()
}

/// Host ports are a placement resource: on a one-node cluster a second instance mapping the same
/// host port waits (one deploy at a time, and both in one burst), and gets the node once the
/// first one left; with two nodes they land on different nodes.
#[test]
fn host_port_clash_one_node() {
    let t = Instant::now();
    let mut st = state(&[("a", 8000)], t);
    let web = mapping("web", "8080:80");
    let api = mapping("api", "8080:81;9090/udp");
    assert_eq!(placed_on(&deploy(&mut st, &web, 0, t)), ["a"]);
    assert!(placed_on(&deploy(&mut st, &api, 0, t)).is_empty());
    assert_eq!(status_of(&st, &api, 0), status::NO_WORKER_CAPACITY);
    assert_eq!(
        detail_of(&st, &api, 0),
        "host port 8080/tcp is taken on every qualified worker with the requested free resources"
    );
    assert!(placed_on(&deploy(&mut st, &web, 1, t)).is_empty(), "another instance of the same service");
    // Another protocol, or another port, is free.
    assert_eq!(placed_on(&deploy(&mut st, &mapping("dns", "8080/udp"), 0, t)), ["a"]);
    // The first one leaves: one waiting instance gets the port, the other keeps waiting.
    st.undeploy(&[InstanceRef { job_id: web.id.clone(), instance_number: 0 }]);
    let later = t + Duration::from_secs(5);
    assert_eq!(placed_on(&st.schedule(later)).len(), 1);
    let waiting = [status_of(&st, &api, 0), status_of(&st, &web, 1)];
    assert!(waiting.contains(&status::NODE_SCHEDULED.to_string()), "{waiting:?}");
    assert!(waiting.contains(&status::NO_WORKER_CAPACITY.to_string()), "{waiting:?}");

    // Both in one scheduling pass.
    let mut st = state(&[("a", 8000)], t);
    let both = vec![
        DeployInstance { instance_number: 0, job: web.clone(), instance_ip: None },
        DeployInstance { instance_number: 0, job: api.clone(), instance_ip: None },
    ];
    st.deploy(both, false, t);
    assert_eq!(placed_on(&st.schedule(t)), ["a"]);
}

#[test]
fn host_port_clash_two_nodes() {
    let t = Instant::now();
    let mut st = state(&[("a", 8000), ("b", 4000)], t);
    let web = mapping("web", "8080");
    let both = vec![
        DeployInstance { instance_number: 0, job: web.clone(), instance_ip: None },
        DeployInstance { instance_number: 1, job: web.clone(), instance_ip: None },
    ];
    st.deploy(both, false, t);
    let mut nodes = placed_on(&st.schedule(t));
    nodes.sort();
    assert_eq!(nodes, ["a", "b"], "without the port rule both would go to a, the one with more memory");
    // A third has nowhere to go.
    assert!(placed_on(&deploy(&mut st, &web, 2, t)).is_empty());
    assert_eq!(status_of(&st, &web, 2), status::NO_WORKER_CAPACITY);
}

/// Ports held by instances come back with a restarted cluster, and a node's tunnel port is taken.
#[test]
fn host_ports_survive_a_restart_and_the_tunnel_port_is_taken() {
    let t = Instant::now();
    let mut st = state(&[("a", 8000)], t);
    let web = mapping("web", "8080");
    deploy(&mut st, &web, 0, t);
    let batch = st.take_batch();
    let mut restarted = ClusterState::new("c1".into(), timing(), batch.nodes, batch.instances, t);
    restarted.node_information("a", info("a", 8000), t);
    assert!(placed_on(&deploy(&mut restarted, &web, 1, t)).is_empty());
    assert_eq!(status_of(&restarted, &web, 1), status::NO_WORKER_CAPACITY);

    // A worker started with `--tunnel-port 40000`.
    let mut st = state(&[("a", 8000)], t);
    let mut tunneled = overlay(info("a", 8000), "192.0.2.1");
    tunneled.overlay.as_mut().unwrap().tunnel_port = 40000;
    st.node_information("a", tunneled, t);
    let tcp = mapping("tcp", "40000:53/tcp");
    assert_eq!(placed_on(&deploy(&mut st, &tcp, 0, t)), ["a"], "the tunnel is UDP only");
    let udp = mapping("udp", "40000:53/udp");
    assert!(placed_on(&deploy(&mut st, &udp, 0, t)).is_empty(), "the worker would refuse it");
    assert!(detail_of(&st, &udp, 0).contains("host port 40000/udp is taken"));
}

/// An instance without `memory` is counted as the worker limits it: [`DEFAULT_MEMORY_MB`].
#[test]
fn memory_less_instances_count_the_default() {
    let t = Instant::now();
    let mut st = state(&[("a", 300)], t);
    let j = job("web", 0);
    assert_eq!(placed_on(&deploy(&mut st, &j, 0, t)), ["a"]);
    assert_eq!(st.resources(t).totals.free_memory_mb, 300 - oak_api::sla::DEFAULT_MEMORY_MB);
    assert!(placed_on(&deploy(&mut st, &j, 1, t)).is_empty());
    assert_eq!(status_of(&st, &j, 1), status::NO_WORKER_CAPACITY);
}

/// A descriptor updated while its instance is on a node: the node holds the new ports and
/// demand, and frees exactly those when the instance leaves.
#[test]
fn an_updated_descriptor_moves_what_its_node_holds() {
    let t = Instant::now();
    let mut st = state(&[("a", 1000)], t);
    let old = mapping("web", "8080");
    deploy(&mut st, &old, 0, t);
    let mut new = old.clone();
    new.spec.port = "9090".into();
    new.spec.memory = 300;
    st.deploy(vec![DeployInstance { instance_number: 0, job: new.clone(), instance_ip: None }], false, t);
    let held: Vec<String> = st.nodes["a"].ports.keys().map(|p| p.to_string()).collect();
    assert_eq!((held, st.nodes["a"].placed.memory_mb), (vec!["9090/tcp".to_string()], 300));
    assert_eq!(placed_on(&deploy(&mut st, &mapping("other", "8080"), 0, t)), ["a"], "8080 is free again");
    st.undeploy(&[InstanceRef { job_id: new.id.clone(), instance_number: 0 }]);
    let held: Vec<String> = st.nodes["a"].ports.keys().map(|p| p.to_string()).collect();
    assert_eq!((held, st.nodes["a"].placed.memory_mb), (vec!["8080/tcp".to_string()], 100));
}

fn needs_addon(name: &str, addon: &str) -> JobSpec {
    let mut j = job(name, 100);
    j.spec.constraints = vec![serde_json::from_value(serde_json::json!({"type": "addons", "needs": [addon]})).unwrap()];
    j
}

fn with_addon(name: &str, addon: &str) -> NodeInfo {
    NodeInfo { supported_addons: vec![addon.into()], ..info(name, 1000) }
}

/// An instance no worker can run says why in the first round (and the root hears it), retries
/// 1 s, 2 s, 4 s … apart up to 30 s, and a worker that joins takes it at once.
#[test]
fn unplaced_instances_say_why_back_off_and_a_joining_worker_takes_them() {
    let t = Instant::now();
    let mut st = state(&[("a", 1000)], t);
    let j = needs_addon("gpu", "gpu-magic");
    assert!(placed_on(&deploy(&mut st, &j, 0, t)).is_empty());
    assert_eq!(status_of(&st, &j, 0), status::NO_QUALIFIED_WORKER_FOUND);
    let updates = st.root_updates(false, t);
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].status_detail, "no active worker offers addon \"gpu-magic\"");
    // Attempts at 1 s, then 2 s, 4 s, 8 s, 16 s, 30 s (capped) later; nothing in between, and
    // an unchanged reason is not sent again.
    let mut at = t;
    for gap in [1, 2, 4, 8, 16, 30, 30] {
        let next = at + Duration::from_secs(gap);
        // a keeps reporting (a worker that comes back would reset the back-off).
        for s in 1..gap {
            st.node_information("a", info("a", 1000), at + Duration::from_secs(s));
        }
        st.schedule(next - Duration::from_millis(10));
        assert_eq!(st.instances[&(j.id.clone(), 0)].next_try, next, "gap {gap}");
        st.schedule(next);
        at = next;
    }
    assert!(st.root_updates(false, at).is_empty());

    // A worker with the add-on joins: it is tried at its first report, back-off or not.
    let later = at + Duration::from_secs(1);
    let record =
        NodeRecord { id: "b".into(), secret_hash: String::new(), info: info("b", 1000), subnet: String::new() };
    st.register_node(record, later);
    st.node_information("a", info("a", 1000), later);
    st.node_information("b", with_addon("b", "gpu-magic"), later);
    assert_eq!(placed_on(&st.schedule(later)), ["b"]);
    assert_eq!(st.instances[&(j.id.clone(), 0)].tries, 0);

    // No active worker at all names that.
    let mut empty = ClusterState::new("alpha".into(), timing(), Vec::new(), Vec::new(), t);
    assert!(placed_on(&deploy(&mut empty, &j, 0, t)).is_empty());
    assert_eq!(empty.instances[&(j.id.clone(), 0)].detail, "no active worker in cluster alpha");
    // Too big for every worker: the memory asked for.
    let big = job("big", 4096);
    deploy(&mut st, &big, 0, later);
    assert!(
        detail_of(&st, &big, 0).starts_with("no worker with 4096 MB free in cluster c1"),
        "{}",
        detail_of(&st, &big, 0)
    );
}

/// Replicas spread over the nodes by default even when one node is much bigger; with
/// `spread: false` they pack by the usual ranking.
#[test]
fn replicas_spread_over_nodes_unless_the_sla_opts_out() {
    let t = Instant::now();
    let mut st = state(&[("big", 8000), ("small", 1000)], t);
    let j = job("web", 100);
    let mut placed: Vec<String> = (0..4).flat_map(|n| placed_on(&deploy(&mut st, &j, n, t))).collect();
    placed.sort();
    assert_eq!(placed, ["big", "big", "small", "small"]);
    // Another service counts its own instances only.
    let other = job("db", 100);
    assert_eq!(placed_on(&deploy(&mut st, &other, 0, t)), ["big"]);
    assert_eq!(placed_on(&deploy(&mut st, &other, 1, t)), ["small"]);

    let mut st = state(&[("big", 8000), ("small", 1000)], t);
    let mut packed = job("batch", 100);
    packed.spec.spread = false;
    let placed: Vec<String> = (0..3).flat_map(|n| placed_on(&deploy(&mut st, &packed, n, t))).collect();
    assert_eq!(placed, ["big", "big", "big"]);
}

/// A worker declared lost whose instance now runs elsewhere: whatever it reports about its old
/// copy (running, failed, created) changes nothing, and each of its reports tells it to stop it.
#[test]
fn a_returning_worker_is_told_to_stop_its_stale_copies() {
    let t = Instant::now();
    let mut st = state(&[("a", 1000), ("b", 900)], t);
    let j = job("web", 100);
    assert_eq!(placed_on(&deploy(&mut st, &j, 0, t)), ["a"]);
    running(&mut st, "a", &j, 0, t);
    let later = t + Duration::from_secs(7);
    st.node_information("b", info("b", 900), later);
    st.check_timeouts(later);
    assert_eq!(placed_on(&st.schedule(later)), ["b"]);
    running(&mut st, "b", &j, 0, later);
    st.root_updates(false, later);

    // a comes back: active again, and its reports are answered with deletes every time.
    let back = later + Duration::from_secs(1);
    st.node_information("a", info("a", 1000), back);
    for _ in 0..2 {
        let fx = running(&mut st, "a", &j, 0, back);
        assert!(matches!(&fx[..], [Effect::Delete { node, cmd }] if node == "a" && cmd.instance_number == 0), "{fx:?}");
    }
    for s in [status::RUNNING, status::CREATED, status::FAILED] {
        let report = JobStatusReport { sname: j.job_name.clone(), status: s.into(), instance: 0, ..Default::default() };
        let fx = st.job_report("a", report, back);
        let deleted = matches!(&fx[..], [Effect::Delete { node, .. }] if node == "a");
        assert_eq!(deleted, s != status::FAILED, "{s}: {fx:?}");
    }
    assert_eq!(status_of(&st, &j, 0), status::RUNNING);
    assert_eq!(st.instances[&(j.id.clone(), 0)].worker_id.as_deref(), Some("b"));
    assert!(st.root_updates(false, back).is_empty(), "nothing changed for the root");
    // b's copy is the one counted: a holds nothing.
    assert_eq!(st.nodes["a"].placed, Default::default());
}

#[test]
fn report_ages_count_from_the_last_registration_or_report() {
    let t = Instant::now();
    let mut st = state(&[("a", 1000), ("b", 1000)], t);
    st.node_information("b", info("b", 1000), t + Duration::from_secs(3));
    let ages: Vec<(&str, Duration)> = st.report_ages(t + Duration::from_secs(5)).collect();
    assert_eq!(ages, [("a", Duration::from_secs(5)), ("b", Duration::from_secs(2))]);
    // Silent past the timeout: still listed, still counting.
    st.check_timeouts(t + Duration::from_secs(20));
    assert_eq!(st.report_ages(t + Duration::from_secs(20)).next(), Some(("a", Duration::from_secs(20))));
}

/// A worker that stays active but starts offering what a waiting instance needs (restarted
/// with a new add-on within the worker timeout) takes it at once too; usage changes alone do
/// not cut the back-off short.
#[test]
fn a_worker_offering_more_cuts_the_back_off_short() {
    let t = Instant::now();
    let mut st = state(&[("a", 1000)], t);
    let j = needs_addon("gpu", "gpu-magic");
    deploy(&mut st, &j, 0, t);
    for s in 1..=3 {
        let at = t + Duration::from_secs(s);
        st.node_information("a", info("a", 1000), at);
        st.schedule(at);
    }
    let waiting_until = st.instances[&(j.id.clone(), 0)].next_try;
    assert_eq!(waiting_until, t + Duration::from_secs(7), "tries at 0, 1 and 3 s: the next at 7 s");
    let at = t + Duration::from_secs(4);
    st.node_information("a", NodeInfo { memory: 900, cpu_percent: 50.0, ..info("a", 1000) }, at);
    assert!(placed_on(&st.schedule(at)).is_empty());
    assert_eq!(st.instances[&(j.id.clone(), 0)].next_try, waiting_until, "usage alone changes nothing");
    st.node_information("a", with_addon("a", "gpu-magic"), at);
    assert_eq!(placed_on(&st.schedule(at)), ["a"]);
}

#[test]
fn equal_nodes_go_by_name_even_after_a_rename() {
    let t0 = Instant::now();
    // Ids sort the other way round from the names.
    let mut st = ClusterState::new("c1".into(), timing(), Vec::new(), Vec::new(), t0);
    for (id, host) in [("a", "zeta"), ("b", "mu"), ("c", "eta")] {
        let record =
            NodeRecord { id: id.into(), secret_hash: String::new(), info: info(host, 4000), subnet: String::new() };
        st.register_node(record, t0);
        assert!(st.node_information(id, info(host, 4000), t0).is_empty());
    }
    let mut packed = job("packed", 100);
    packed.spec.spread = false;
    assert_eq!(placed_on(&deploy(&mut st, &packed, 0, t0)), ["c"], "eta is the lowest name");
    st.undeploy(&[InstanceRef { job_id: packed.id.clone(), instance_number: 0 }]);
    // The node renames itself: the order follows.
    assert!(st.node_information("a", info("alpha", 4000), t0).is_empty());
    assert_eq!(placed_on(&deploy(&mut st, &packed, 1, t0)), ["a"], "alpha is now the lowest name");
}

/// Instances of one job with the same descriptor share one copy of it, also after a restart; a
/// different descriptor gets its own.
#[test]
fn instances_of_a_job_share_its_descriptor() {
    let t = Instant::now();
    let mut st = state(&[("a", 8000)], t);
    let web = job("web", 100);
    for n in 0..3 {
        deploy(&mut st, &web, n, t);
    }
    let key = |n: u32| (web.id.clone(), n);
    let shared =
        |st: &ClusterState, a: u32, b: u32| Arc::ptr_eq(&st.instances[&key(a)].job, &st.instances[&key(b)].job);
    assert!(shared(&st, 0, 1) && shared(&st, 0, 2));
    let mut bigger = web.clone();
    bigger.spec.memory = 200;
    deploy(&mut st, &bigger, 3, t);
    assert!(!shared(&st, 0, 3));
    assert_eq!(st.instances[&key(3)].job.spec.memory, 200);

    let batch = st.take_batch();
    let restarted = ClusterState::new("c1".into(), timing(), batch.nodes, batch.instances, t);
    assert!(shared(&restarted, 0, 1) && shared(&restarted, 0, 2));
    assert_eq!(restarted.instances[&key(3)].job.spec.memory, 200);
}

/// The root hears of a placement only if the worker has not answered within the hold: a quick
/// start is one report (`RUNNING`), a slow one two; an instance no node takes is reported at once.
#[test]
fn a_placement_waits_briefly_for_the_worker_before_the_root_hears_of_it() {
    let t = Instant::now();
    let mut st = state(&[("a", 8000)], t);
    let web = job("web", 100);
    assert_eq!(placed_on(&deploy(&mut st, &web, 0, t)), ["a"]);
    assert!(st.root_updates(false, t).is_empty(), "held for the worker's answer");
    let soon = t + PLACED_REPORT_HOLD / 2;
    running(&mut st, "a", &web, 0, soon);
    let r = st.root_updates(false, soon);
    assert_eq!(r.iter().map(|r| r.status.as_str()).collect::<Vec<_>>(), [status::RUNNING]);
    assert!(st.root_updates(false, t + PLACED_REPORT_HOLD).is_empty(), "reported once");

    deploy(&mut st, &web, 1, t);
    assert!(st.root_updates(false, t + PLACED_REPORT_HOLD / 2).is_empty());
    let r = st.root_updates(false, t + PLACED_REPORT_HOLD);
    assert_eq!((r.len(), r[0].status.as_str(), r[0].instance_number), (1, status::NODE_SCHEDULED, 1));
    assert!(st.root_updates(false, t + PLACED_REPORT_HOLD * 2).is_empty());

    let huge = job("huge", 100_000);
    deploy(&mut st, &huge, 0, t);
    let r = st.root_updates(false, t);
    assert_eq!((r.len(), r[0].status.as_str()), (1, status::NO_WORKER_CAPACITY), "no node: said at once");

    deploy(&mut st, &web, 2, t);
    assert_eq!(st.root_updates(true, t).len(), 4, "a full report has every instance, held ones too");
    assert!(st.root_updates(false, t + PLACED_REPORT_HOLD).is_empty(), "and nothing stays held");
}
