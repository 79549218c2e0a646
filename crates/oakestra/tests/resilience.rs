//! Resilience at the root (issue 16): a cluster cut off (packets held, no FIN) is lost after
//! `--cluster-timeout` counted from its last frame, its instances run on the other cluster with
//! their instance IPs and the reason, and its own copies are removed when it returns; `direct`
//! node constraints reach the cluster holding the node; instances spread over clusters; a root
//! killed with SIGKILL and restarted on its data dir keeps everything without redeploying, and
//! killed during a burst of concurrent instance requests keeps every one it answered.
//!
//! Root, clusters and workers run in this process (fake runtime, real registration, MQTT and
//! cluster channel) except for the restart test, whose root is a real `oakestra root` process.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    admin_client, embedded, eventually, start_cluster, start_root_with, start_worker_on, ClusterHandle, Machine,
};
use oak_api::model::{Cluster, Instance, Service};
use oak_client::Client;
use oak_runtime::FakeRuntime;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP relay between a cluster and the root that can be cut: while cut it forwards nothing,
/// not even a close (a partition drops packets; it sends no FIN), and holds what it read until
/// the link heals, as TCP would retransmit it.
struct Cuttable {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
}

impl Cuttable {
    async fn to(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, rx) = watch::channel(false);
        tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let rx = rx.clone();
                tokio::spawn(async move {
                    // No connection gets through a cut link.
                    let _ = rx.clone().wait_for(|c| !c).await;
                    let Ok(up) = TcpStream::connect(upstream).await else { return };
                    let (dr, dw) = down.into_split();
                    let (ur, uw) = up.into_split();
                    tokio::join!(pipe(dr, uw, rx.clone()), pipe(ur, dw, rx));
                });
            }
        });
        Cuttable { addr, cut }
    }

    fn set(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

async fn pipe(mut rd: impl AsyncRead + Unpin, mut wr: impl AsyncWrite + Unpin, mut cut: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = rd.read(&mut buf).await;
        // Whatever happened (data, close, error) reaches the other side only once healed.
        let _ = cut.wait_for(|c| !c).await;
        match n {
            Ok(n) if n > 0 => {
                if wr.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            _ => {
                let _ = wr.shutdown().await;
                return;
            }
        }
    }
}

fn fleet(cluster_timeout: Duration) -> oak_root::fleet::FleetConfig {
    oak_root::fleet::FleetConfig { retry_tick: Duration::from_millis(200), cluster_timeout, ..Default::default() }
}

/// An application with one service per `(name, extra fields)`; answers the service ids by name.
async fn create_app(client: &Client, app: &str, services: &[(&str, Value)]) -> BTreeMap<String, String> {
    let microservices: Vec<Value> = services
        .iter()
        .map(|(name, extra)| {
            let mut ms = json!({
                "microserviceID": "", "microservice_name": name, "microservice_namespace": "test",
                "virtualization": "container", "cmd": [], "memory": 1000, "vcpus": 1, "vgpus": 0,
                "code": "docker.io/library/nginx:latest", "port": "", "constraints": []
            });
            for (k, v) in extra.as_object().unwrap() {
                ms[k] = v.clone();
            }
            ms
        })
        .collect();
    let sla = json!({
        "sla_version": "v2.0", "customerID": "Admin",
        "applications": [{
            "applicationID": "", "application_name": app, "application_namespace": "test",
            "application_desc": "", "microservices": microservices
        }]
    });
    let apps = client.create_application(&sla).await.unwrap();
    let services = client.list_app_services(&apps[0].id).await.unwrap();
    services.into_iter().map(|s| (s.spec.microservice_name.clone(), s.id)).collect()
}

async fn clusters_by_name(client: &Client) -> BTreeMap<String, Cluster> {
    client.list_clusters().await.unwrap().into_iter().map(|c| (c.cluster_name.clone(), c)).collect()
}

/// Waits until the named clusters are active with the given numbers of active workers.
async fn clusters_ready(client: &Client, want: &[(&str, u64)]) -> BTreeMap<String, Cluster> {
    eventually("clusters active with their workers", async || {
        let c = clusters_by_name(client).await;
        want.iter().all(|(name, nodes)| c.get(*name).is_some_and(|c| c.active && c.active_nodes == *nodes)).then_some(c)
    })
    .await
}

/// Waits until the service has `n` instances, all RUNNING; on timeout the failure shows where
/// each instance was stuck (status, detail, cluster, worker), not just that it was.
async fn running(client: &Client, service: &str, n: usize) -> Service {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = client.get_service(service).await.unwrap();
        if s.instance_list.len() == n && s.instance_list.iter().all(|i| i.status == "RUNNING") {
            return s;
        }
        if Instant::now() >= deadline {
            let seen: Vec<_> = s
                .instance_list
                .iter()
                .map(|i| (i.instance_number, &i.status, &i.status_detail, &i.cluster_id, &i.worker_name))
                .collect();
            panic!("timed out waiting for {n} instances of {service} RUNNING; last seen: {seen:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn on_cluster<'a>(s: &'a Service, cluster: &Cluster) -> Vec<&'a Instance> {
    s.instance_list.iter().filter(|i| i.cluster_id.as_deref() == Some(cluster.id.as_str())).collect()
}

struct Site {
    cluster: ClusterHandle,
    runtimes: Vec<Arc<FakeRuntime>>,
    _workers: Vec<common::Worker>,
}

impl Site {
    /// The runtime of a site with one worker.
    fn runtime(&self) -> &FakeRuntime {
        assert_eq!(self.runtimes.len(), 1, "a site with one worker");
        &self.runtimes[0]
    }
}

/// A cluster dialling the root at `channel`, with workers of the given names, each on a runtime
/// of its own as on machines of their own. (Two workers on one runtime each list the other's
/// instances as strays, and the cluster rightly tells them to stop them.)
async fn site(tmp: &Path, name: &str, channel: SocketAddr, token: &str, workers: &[&str]) -> Site {
    let cluster = start_cluster(name, &tmp.join(name), channel, token, embedded()).await;
    let runtimes: Vec<_> = workers.iter().map(|_| Arc::new(FakeRuntime::new("docker"))).collect();
    let workers = workers
        .iter()
        .zip(&runtimes)
        .map(|(w, runtime)| start_worker_on(Machine::new(w), runtime.clone(), &cluster, &tmp.join(w), None))
        .collect();
    Site { cluster, runtimes, _workers: workers }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_cluster_is_lost_at_its_timeout_and_its_instances_move_and_return_once() {
    let tmp = tempfile::tempdir().unwrap();
    let timeout = Duration::from_secs(4);
    let (url, channel, _root) = start_root_with(&tmp.path().join("root"), fleet(timeout)).await;
    let token = std::fs::read_to_string(tmp.path().join("root/cluster-token")).unwrap();
    let link = Cuttable::to(channel).await;
    let alpha = site(tmp.path(), "alpha", link.addr, token.trim(), &["a1"]).await;
    let beta = site(tmp.path(), "beta", channel, token.trim(), &["b1"]).await;
    let client = admin_client(&url).await;
    let clusters = clusters_ready(&client, &[("alpha", 1), ("beta", 1)]).await;
    assert_eq!(clusters["alpha"].status, "active");

    // Spread: one instance on each cluster.
    let ids = create_app(&client, "shop", &[("web", json!({}))]).await;
    let web = &ids["web"];
    for _ in 0..2 {
        client.request_instance(web).await.unwrap();
    }
    let before = running(&client, web, 2).await;
    let on_alpha = on_cluster(&before, &clusters["alpha"]);
    assert_eq!(on_alpha.len(), 1, "one instance per cluster: {:?}", before.instance_list);
    let moved = on_alpha[0].clone();
    let ip = moved.instance_ip.clone().expect("an instance IP");
    let job = before.job_name.clone();
    assert!(alpha.runtime().status(&job, moved.instance_number).is_some());

    // The link is cut: no frame, no FIN. The cluster and its worker keep running.
    link.set(true);
    let cut = Instant::now();
    eventually("alpha lost", async || (clusters_by_name(&client).await["alpha"].status == "lost").then_some(())).await;
    let lost_after = cut.elapsed();
    // Counted from the last frame (at most a keepalive before the cut), not from a channel
    // idle timeout noticed later: well before the old 30 s + timeout.
    assert!(lost_after + Duration::from_secs(1) >= timeout, "lost after {lost_after:?}, before the timeout");
    assert!(lost_after < timeout + Duration::from_secs(10), "lost only after {lost_after:?}");
    assert!(!clusters_by_name(&client).await["alpha"].active);

    // Its instance runs on beta, with its IP, saying why.
    let after = eventually("the instance RUNNING on beta", async || {
        let s = client.get_service(web).await.unwrap();
        let i = s.instance_list.iter().find(|i| i.instance_number == moved.instance_number)?.clone();
        (i.status == "RUNNING" && i.cluster_id.as_deref() == Some(clusters["beta"].id.as_str())).then_some(s)
    })
    .await;
    let now = after.instance_list.iter().find(|i| i.instance_number == moved.instance_number).unwrap();
    assert_eq!(now.instance_ip.as_deref(), Some(ip.as_str()), "the instance IP moved with it");
    assert!(
        now.status_detail.contains("re-placed from cluster alpha: lost"),
        "the reason is shown: {:?}",
        now.status_detail
    );
    assert!(beta.runtime().status(&job, moved.instance_number).is_some());
    // Meanwhile the cut-off cluster still runs its copy: it cannot know.
    assert!(alpha.runtime().status(&job, moved.instance_number).is_some());

    // The link heals: alpha resyncs and removes its copy; beta keeps the instance.
    link.set(false);
    eventually("alpha active again", async || {
        (clusters_by_name(&client).await["alpha"].status == "active").then_some(())
    })
    .await;
    eventually("alpha's copy undeployed", async || {
        alpha.runtime().status(&job, moved.instance_number).is_none().then_some(())
    })
    .await;
    let settled = running(&client, web, 2).await;
    let now = settled.instance_list.iter().find(|i| i.instance_number == moved.instance_number).unwrap();
    assert_eq!(now.cluster_id.as_deref(), Some(clusters["beta"].id.as_str()));
    assert!(beta.runtime().status(&job, moved.instance_number).is_some());
    // The other instance never moved.
    let stayed = before.instance_list.iter().find(|i| i.instance_number != moved.instance_number).unwrap();
    let stayed_now = settled.instance_list.iter().find(|i| i.instance_number == stayed.instance_number).unwrap();
    assert_eq!(stayed_now.cluster_id, stayed.cluster_id);
    drop(alpha.cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn placement_at_the_root_resolves_nodes_spreads_and_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, channel, _root) = start_root_with(&tmp.path().join("root"), fleet(Duration::from_secs(30))).await;
    let token = std::fs::read_to_string(tmp.path().join("root/cluster-token")).unwrap();
    // alpha: two workers (8 GB), beta: one (4 GB).
    let _alpha = site(tmp.path(), "alpha", channel, token.trim(), &["a1", "a2"]).await;
    let beta = site(tmp.path(), "beta", channel, token.trim(), &["b1"]).await;
    let client = admin_client(&url).await;
    let clusters = clusters_ready(&client, &[("alpha", 2), ("beta", 1)]).await;
    // The root learns the node names from the clusters' worker lists.
    eventually("the workers known at the root", async || {
        let w = client.cluster_workers(&clusters["beta"].id).await.unwrap();
        (w.workers.len() == 1).then_some(())
    })
    .await;

    let ids = create_app(
        &client,
        "place",
        &[
            ("spread", json!({})),
            ("packed", json!({"spread": false})),
            ("pinned", json!({"constraints": [{"type": "direct", "node": "b1"}]})),
            ("nowhere", json!({"constraints": [{"type": "direct", "node": "zz"}]})),
            ("huge", json!({"memory": 50000})),
        ],
    )
    .await;
    let count = |s: &Service, name: &str| on_cluster(s, &clusters[name]).len();

    // Four spreading instances: two per cluster although alpha has twice the memory.
    for _ in 0..4 {
        client.request_instance(&ids["spread"]).await.unwrap();
    }
    let s = running(&client, &ids["spread"], 4).await;
    assert_eq!((count(&s, "alpha"), count(&s, "beta")), (2, 2), "{:?}", s.instance_list);

    // Opting out packs by free capacity: alpha (6 GB free) beats beta (2 GB free) each time.
    for _ in 0..3 {
        client.request_instance(&ids["packed"]).await.unwrap();
    }
    let s = running(&client, &ids["packed"], 3).await;
    assert_eq!((count(&s, "alpha"), count(&s, "beta")), (3, 0), "{:?}", s.instance_list);

    // A node named without its cluster: resolved at the root, so both land on beta's b1.
    for _ in 0..2 {
        client.request_instance(&ids["pinned"]).await.unwrap();
    }
    let s = running(&client, &ids["pinned"], 2).await;
    assert_eq!(count(&s, "beta"), 2, "{:?}", s.instance_list);
    assert!(s.instance_list.iter().all(|i| i.worker_name.as_deref() == Some("b1")), "{:?}", s.instance_list);
    assert_eq!(beta.runtime().deploy_calls(), 4, "two spreading and two pinned instances, nothing packed");

    // No cluster has the node: said so, and retried (still waiting, never on a wrong cluster).
    let r = client.request_instance(&ids["nowhere"]).await.unwrap();
    assert_eq!(r.status, "TargetClusterNotFound");
    let i = &client.get_service(&ids["nowhere"]).await.unwrap().instance_list[0];
    assert_eq!(i.status_detail, "no cluster has node \"zz\"");
    assert_eq!(i.cluster_id, None);

    // Too big for every cluster: the unmet requirement is named.
    let r = client.request_instance(&ids["huge"]).await.unwrap();
    assert_eq!(r.status, "NoActiveClusterWithCapacity");
    let i = &client.get_service(&ids["huge"]).await.unwrap().instance_list[0];
    assert!(
        i.status_detail.starts_with("no active cluster has 50000 MB of free memory (most: "),
        "{:?}",
        i.status_detail
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let i = &client.get_service(&ids["nowhere"]).await.unwrap().instance_list[0];
    assert_eq!((i.status.as_str(), i.cluster_id.as_deref()), ("TargetClusterNotFound", None));
}

/// A real `oakestra root` process: killed with SIGKILL, started again on its data dir and ports.
struct RootProcess {
    child: Child,
}

impl RootProcess {
    fn start(data: &Path, api: u16, channel: u16) -> Self {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(data.with_extension("log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_oakestra"))
            .args(["root", "--api-addr", "127.0.0.1", "--api-port", &api.to_string()])
            .args(["--cluster-port", &channel.to_string(), "--data-dir"])
            .arg(data)
            .args(["--admin-password", "admin-secret"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("oakestra binary runs");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", api)).is_err() {
            assert!(Instant::now() < deadline, "root did not listen on port {api}");
            std::thread::sleep(Duration::from_millis(50));
        }
        RootProcess { child }
    }

    /// SIGKILL: no shutdown code runs.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RootProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn login(url: &str) -> Client {
    let mut client = Client::new(url);
    let login = client.login("Admin", "admin-secret", None).await.unwrap();
    client.set_token(Some(login.token));
    client
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_root_killed_and_restarted_keeps_everything_without_redeploying() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("root");
    let (api, port) = (free_port(), free_port());
    let root = RootProcess::start(&data, api, port);
    let url = format!("http://127.0.0.1:{api}");
    let channel: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let token = std::fs::read_to_string(data.join("cluster-token")).unwrap();
    let alpha = site(tmp.path(), "alpha", channel, token.trim(), &["a1"]).await;
    let beta = site(tmp.path(), "beta", channel, token.trim(), &["b1"]).await;
    let client = login(&url).await;
    clusters_ready(&client, &[("alpha", 1), ("beta", 1)]).await;
    let ids = create_app(&client, "keep", &[("web", json!({})), ("api", json!({"memory": 200}))]).await;
    for _ in 0..2 {
        client.request_instance(&ids["web"]).await.unwrap();
        client.request_instance(&ids["api"]).await.unwrap();
    }
    let web = running(&client, &ids["web"], 2).await;
    let api_before = running(&client, &ids["api"], 2).await;
    let deploys = (alpha.runtime().deploy_calls(), beta.runtime().deploy_calls());
    assert_eq!(deploys.0 + deploys.1, 4);

    root.kill();
    let _root = RootProcess::start(&data, api, port);
    let client = login(&url).await;
    clusters_ready(&client, &[("alpha", 1), ("beta", 1)]).await;
    // Give the resync time to do anything it would wrongly do.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let place = |s: &Service| -> Vec<String> {
        s.instance_list
            .iter()
            .map(|i| format!("{} {:?} {:?} {:?}", i.instance_number, i.cluster_id, i.worker_id, i.instance_ip))
            .collect()
    };
    let web_after = running(&client, &ids["web"], 2).await;
    let api_after = running(&client, &ids["api"], 2).await;
    assert_eq!(place(&web_after), place(&web), "same instances, clusters, workers and IPs");
    assert_eq!(place(&api_after), place(&api_before));
    assert_eq!((alpha.runtime().deploy_calls(), beta.runtime().deploy_calls()), deploys, "nothing redeployed");
    assert_eq!(alpha.runtime().undeploy_calls() + beta.runtime().undeploy_calls(), 0, "nothing stopped");
    assert!(clusters_by_name(&client).await.values().all(|c| c.status == "active"));

    // The restarted root still places: a new instance runs.
    client.request_instance(&ids["web"]).await.unwrap();
    running(&client, &ids["web"], 3).await;
}

/// Issue 18: the root answers an instance request only once the instance is committed (group
/// commit batches concurrent requests into one transaction, but answers none before it). A
/// root killed with SIGKILL in the middle of a burst of concurrent requests has, after a
/// restart on its data dir, every instance whose request was answered with a 2xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_root_killed_during_a_burst_of_requests_keeps_every_answered_instance() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("root");
    let (api, port) = (free_port(), free_port());
    let root = RootProcess::start(&data, api, port);
    let url = format!("http://127.0.0.1:{api}");
    let client = login(&url).await;
    let ids = create_app(&client, "burst", &[("web", json!({})), ("api", json!({}))]).await;
    let services: Vec<String> = ids.values().cloned().collect();

    // 32 clients request instances as fast as they are answered until the root is gone; the
    // root is killed the moment the 200th answer arrives, with the others' requests in flight
    // (an answer given before its commit would be lost right then).
    let answered = Arc::new(std::sync::Mutex::new(Vec::<(String, u32)>::new()));
    let enough = Arc::new(tokio::sync::Notify::new());
    let mut senders = tokio::task::JoinSet::new();
    for k in 0..32 {
        let (client, answered, enough) = (client.clone(), answered.clone(), enough.clone());
        let service = services[k % services.len()].clone();
        senders.spawn(async move {
            let mut failures = 0;
            while failures < 3 {
                match client.request_instance(&service).await {
                    Ok(ok) => {
                        let mut list = answered.lock().unwrap();
                        list.push((service.clone(), ok.instance_number));
                        if list.len() == 200 {
                            enough.notify_one();
                        }
                    }
                    Err(_) => failures += 1,
                }
            }
        });
    }
    tokio::time::timeout(Duration::from_secs(60), enough.notified()).await.expect("200 instance requests answered");
    root.kill();
    while senders.join_next().await.is_some() {}
    let answered = std::mem::take(&mut *answered.lock().unwrap());

    let _root = RootProcess::start(&data, api, port);
    let client = login(&url).await;
    let mut stored = std::collections::BTreeSet::new();
    for id in &services {
        for i in client.get_service(id).await.unwrap().instance_list {
            assert!(
                stored.insert((id.clone(), i.instance_number)),
                "instance {} of {id} stored twice",
                i.instance_number
            );
        }
    }
    let missing: Vec<_> = answered.iter().filter(|a| !stored.contains(*a)).collect();
    assert!(missing.is_empty(), "{} of {} answered requests lost: {missing:?}", missing.len(), answered.len());
    // Numbers are not handed out twice after the restart either.
    let next = client.request_instance(&services[0]).await.unwrap().instance_number;
    assert!(
        !stored.contains(&(services[0].clone(), next)),
        "instance number {next} handed out again after the restart"
    );
}
