//! The root's overlay control plane: addresses given with services and instances, released and
//! reused; worker subnets; route-table queries and pushes, with test clusters speaking the
//! cluster channel over TLS.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use oak_api::channel::{self, ClusterMsg, ClusterResources, InstanceReport, ResourceTotals, RootMsg, PROTOCOL_VERSION};
use oak_api::net::RouteTable;
use oak_root::{Root, RootConfig};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};

type Tls = oak_tls::tokio_rustls::client::TlsStream<TcpStream>;
use tower::ServiceExt;

const CLIENTSRVR: &str = include_str!("../../../examples/sla/clientsrvr.json");

type Answer = std::pin::Pin<Box<dyn std::future::Future<Output = axum::response::Response> + Send>>;

/// A root serving its channel on loopback, and its API in-process.
struct TestRoot {
    api: Box<dyn Fn(Request<Body>) -> Answer + Send + Sync>,
    channel: std::net::SocketAddr,
    token: String,
    admin: String,
    stop: tokio::sync::watch::Sender<bool>,
    /// Each test cluster's certificate after its first join, by name: it reconnects with it.
    identities: std::sync::Mutex<std::collections::HashMap<String, oak_tls::Identity>>,
}

async fn start(dir: &std::path::Path) -> TestRoot {
    let root = Root::open(RootConfig {
        api_addr: "127.0.0.1:0".parse().unwrap(),
        channel_addr: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        store_durability: Default::default(),
        admin_password: None,
        fleet: oak_root::fleet::FleetConfig { retry_tick: Duration::from_millis(100), ..Default::default() },
        privileged_roles: Vec::new(),
    })
    .await
    .unwrap();
    let service = root.service();
    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let channel = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let channel_addr = channel.local_addr().unwrap();
    let (stop, mut rx) = tokio::sync::watch::channel(false);
    tokio::spawn(root.serve_on(api, channel, async move {
        let _ = rx.wait_for(|s| *s).await;
    }));
    let api: TestRoot = TestRoot {
        api: Box::new(move |req| {
            let svc = service.clone();
            Box::pin(async move { svc.oneshot(req).await.unwrap() })
        }),
        channel: channel_addr,
        token: std::fs::read_to_string(dir.join("cluster-token")).unwrap().trim().to_string(),
        admin: String::new(),
        stop,
        identities: Default::default(),
    };
    let (s, v) =
        api.call(Method::POST, "/api/auth/login", Some(json!({"username": "Admin", "password": "Admin"}))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    TestRoot { admin: v["token"].as_str().unwrap().to_string(), ..api }
}

impl TestRoot {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path).header("content-type", "application/json");
        if !self.admin.is_empty() {
            req = req.header("authorization", format!("Bearer {}", self.admin));
        }
        let req = req.body(body.map(|b| Body::from(b.to_string())).unwrap_or_else(Body::empty)).unwrap();
        let resp = (self.api)(req).await;
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (s, v) = self.call(method, path, body).await;
        assert_eq!(s, StatusCode::OK, "{path}: {v}");
        v
    }

    /// Creates an application; returns (app id, service ids by name).
    async fn app(&self, sla: Value) -> (String, std::collections::BTreeMap<String, String>) {
        let v = self.ok(Method::POST, "/api/application", Some(sla.clone())).await;
        let name = sla["applications"][0]["application_name"].as_str().unwrap();
        let app = v.as_array().unwrap().iter().find(|a| a["application_name"] == name).unwrap();
        let id = app["_id"].as_str().unwrap().to_string();
        let services = self.ok(Method::GET, &format!("/api/services/{id}"), None).await;
        let ids = services
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["service_name"].as_str().unwrap().to_string(), s["_id"].as_str().unwrap().to_string()))
            .collect();
        (id, ids)
    }

    async fn service(&self, id: &str) -> Value {
        self.ok(Method::GET, &format!("/api/service/{id}"), None).await
    }

    async fn scale_up(&self, id: &str) -> u64 {
        self.ok(Method::POST, &format!("/api/service/{id}/instance"), None).await["instance_number"].as_u64().unwrap()
    }

    async fn instance_ip(&self, id: &str, n: u64) -> String {
        let s = self.service(id).await;
        let inst = s["instance_list"].as_array().unwrap().iter().find(|i| i["instance_number"] == n).cloned();
        inst.unwrap()["instance_ip"].as_str().unwrap().to_string()
    }
}

/// The clientsrvr descriptor under another application name; nginx keeps rr_ip 10.30.55.55
/// unless `rr` says otherwise (`None`: no addresses at all).
fn sla(name: &str, rr: Option<&str>) -> Value {
    let mut v: Value = serde_json::from_str(CLIENTSRVR).unwrap();
    v["applications"][0]["application_name"] = json!(name);
    let nginx = v["applications"][0]["microservices"][1].as_object_mut().unwrap();
    match rr {
        Some(ip) => nginx.insert("addresses".into(), json!({"rr_ip": ip})),
        None => nginx.remove("addresses"),
    };
    v
}

/// Dials the root's channel over TLS, trusting only the CA `token` pins, presenting `identity`.
async fn dial_tls(
    addr: std::net::SocketAddr,
    token: &str,
    identity: Option<&oak_tls::Identity>,
) -> oak_tls::tokio_rustls::client::TlsStream<TcpStream> {
    let pin = oak_tls::JoinToken::parse(token, oak_tls::TokenKind::Cluster).unwrap().ca;
    let config = oak_tls::pinned_client_config(pin, oak_tls::ROOT_SERVER_NAME, identity).unwrap();
    let name = oak_tls::rustls::pki_types::ServerName::try_from(oak_tls::ROOT_SERVER_NAME).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    oak_tls::tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.unwrap()
}

/// A cluster speaking the channel protocol.
struct TestCluster {
    rd: BufReader<ReadHalf<Tls>>,
    wr: WriteHalf<Tls>,
    id: String,
    next_request: u64,
}

impl TestCluster {
    /// Joins as `name`: with the join token the first time, with its certificate after.
    async fn join(root: &TestRoot, name: &str) -> Self {
        let identity = root.identities.lock().unwrap().get(name).cloned();
        let key = oak_tls::ClientKey::generate().unwrap();
        let stream = dial_tls(root.channel, &root.token, identity.as_ref()).await;
        let ca = stream.get_ref().1.peer_certificates().unwrap()[1].clone().into_owned();
        let (rd, wr) = tokio::io::split(stream);
        let mut c = TestCluster { rd: BufReader::new(rd), wr, id: String::new(), next_request: 0 };
        let (token, csr) = match identity {
            Some(_) => (String::new(), String::new()),
            None => (root.token.clone(), key.request(name).unwrap()),
        };
        c.send(ClusterMsg::Hello {
            protocol: PROTOCOL_VERSION,
            token,
            csr,
            cluster_id: String::new(),
            cluster_name: name.into(),
            cluster_location: String::new(),
            metrics_port: 0,
        })
        .await;
        match c.next().await {
            RootMsg::Welcome { cluster_id, certificate } => {
                c.id = cluster_id;
                if !certificate.is_empty() {
                    let identity = key.identity(&certificate, &ca).unwrap();
                    root.identities.lock().unwrap().insert(name.to_string(), identity);
                }
            }
            other => panic!("expected a welcome, got {other:?}"),
        }
        match c.next().await {
            RootMsg::Deploy { full: true, .. } => {}
            other => panic!("expected the desired set, got {other:?}"),
        }
        c
    }

    async fn send(&mut self, msg: ClusterMsg) {
        self.wr.write_all(&channel::encode(&msg)).await.unwrap();
    }

    async fn next(&mut self) -> RootMsg {
        let read = async {
            let mut header = [0u8; 4];
            self.rd.read_exact(&mut header).await.unwrap();
            let mut body = vec![0u8; channel::frame_len(header).unwrap()];
            self.rd.read_exact(&mut body).await.unwrap();
            serde_json::from_slice(&body).unwrap()
        };
        tokio::time::timeout(Duration::from_secs(10), read).await.expect("a message from the root within 10 s")
    }

    /// Skips messages until `f` takes one.
    async fn until<T>(&mut self, mut f: impl FnMut(RootMsg) -> Option<T>) -> T {
        loop {
            if let Some(v) = f(self.next().await) {
                return v;
            }
        }
    }

    /// Resources enough for the root to place on this cluster.
    async fn report(&mut self) {
        let totals = ResourceTotals {
            nodes: 1,
            total_cpu_cores: 16.0,
            free_vcpus: 16.0,
            memory_in_mb: 16_000,
            free_memory_mb: 16_000,
            ..Default::default()
        };
        let resources =
            ClusterResources { active_nodes: 1, totals, virtualization: vec!["docker".into()], ..Default::default() };
        self.send(ClusterMsg::Report { resources }).await;
    }

    /// A table query, and its answer (messages before it are skipped).
    async fn query(&mut self, job_name: &str, ip: &str) -> RouteTable {
        self.next_request += 1;
        let id = self.next_request;
        self.send(ClusterMsg::TableQuery { request_id: id, job_name: job_name.into(), ip: ip.into() }).await;
        self.until(|m| match m {
            RootMsg::Table { request_id, table } if request_id == id => Some(table),
            _ => None,
        })
        .await
    }

    /// The next message must be the answer to a table query (nothing was pushed before it).
    async fn query_first(&mut self, job_name: &str) -> RouteTable {
        self.next_request += 1;
        let id = self.next_request;
        self.send(ClusterMsg::TableQuery { request_id: id, job_name: job_name.into(), ip: String::new() }).await;
        match self.next().await {
            RootMsg::Table { request_id, table } if request_id == id => table,
            other => panic!("expected only the table answer, got {other:?}"),
        }
    }

    async fn subnet(&mut self, node: &str) -> (String, String) {
        self.next_request += 1;
        let id = self.next_request;
        self.send(ClusterMsg::SubnetRequest { request_id: id, node_id: node.into() }).await;
        self.until(|m| match m {
            RootMsg::Subnet { request_id, subnet, error, .. } if request_id == id => Some((subnet, error)),
            _ => None,
        })
        .await
    }

    async fn routes(&mut self) -> RouteTable {
        self.until(|m| match m {
            RootMsg::Routes { table } => Some(table),
            _ => None,
        })
        .await
    }
}

#[tokio::test]
async fn service_and_instance_ips_are_given_kept_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let root = start(dir.path()).await;

    // The descriptor's rr_ip is claimed; a service without one gets the lowest free address.
    let (app, ids) = root.app(sla("shop", Some("10.30.55.55"))).await;
    let (curl, nginx) = (ids["curl"].clone(), ids["nginx"].clone());
    assert_eq!(root.service(&nginx).await["RR_ip"], "10.30.55.55");
    assert_eq!(root.service(&curl).await["RR_ip"], "10.30.0.0");
    assert!(root.service(&curl).await.get("closest_ip").is_none());

    // A closest IP is claimed too, and stays unique across services and kinds.
    let mut with_closest = sla("near", Some("10.30.60.1"));
    with_closest["applications"][0]["microservices"][1]["addresses"]["closest_ip"] = json!("10.30.60.2");
    let (near, near_ids) = root.app(with_closest).await;
    let near_nginx = root.service(&near_ids["nginx"]).await;
    assert_eq!(
        (near_nginx["RR_ip"].as_str(), near_nginx["closest_ip"].as_str()),
        (Some("10.30.60.1"), Some("10.30.60.2"))
    );
    let mut clash = sla("clash", Some("10.30.61.1"));
    clash["applications"][0]["microservices"][1]["addresses"]["closest_ip"] = json!("10.30.60.1");
    let (s, v) = root.call(Method::POST, "/api/application", Some(clash)).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(v["message"].as_str().unwrap().contains("10.30.60.1"), "{v}");
    let (s, v) = root.call(Method::POST, "/api/application", Some(sla("bad", Some("10.30.0.255")))).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "never handed out by the pool: {v}");
    // Nothing of the refused requests is kept: the next service gets the next address.
    let (_, other) = root.app(sla("other", Some("10.30.62.1"))).await;
    assert_eq!(root.service(&other["curl"]).await["RR_ip"], "10.30.0.2", "after curl of {near}");

    // Instances get their own IPs; a removed instance's IP is reused, lowest first.
    let n0 = root.scale_up(&curl).await;
    let n1 = root.scale_up(&curl).await;
    assert_eq!(root.instance_ip(&curl, n0).await, "10.30.0.3");
    assert_eq!(root.instance_ip(&curl, n1).await, "10.30.0.4");
    root.ok(Method::DELETE, &format!("/api/service/{curl}/instance/{n0}"), None).await;
    let n2 = root.scale_up(&curl).await;
    assert_eq!((n2, root.instance_ip(&curl, n2).await.as_str()), (2, "10.30.0.3"));

    // Re-placement keeps the instance IP: the instances waited for a cluster, now one joins and
    // gets them with their addresses.
    let mut cluster = TestCluster::join(&root, "c1").await;
    cluster.report().await;
    let mut sent: Vec<(u32, Option<String>)> = Vec::new();
    while sent.len() < 2 {
        let placed = cluster
            .until(|m| match m {
                RootMsg::Deploy { instances, .. } if !instances.is_empty() => Some(instances),
                _ => None,
            })
            .await;
        sent.extend(placed.into_iter().map(|d| (d.instance_number, d.instance_ip)));
    }
    sent.sort();
    assert_eq!(sent, [(1, Some("10.30.0.4".into())), (2, Some("10.30.0.3".into()))]);
    assert_eq!(root.instance_ip(&curl, n1).await, "10.30.0.4");
    let s = root.service(&curl).await;
    assert!(s["instance_list"].as_array().unwrap().iter().all(|i| i["cluster_id"] == cluster.id.as_str()), "{s}");

    // An update naming another rr_ip moves the service there and gives the old one back.
    let mut ms: Value = sla("x", None)["applications"][0]["microservices"][0].clone();
    ms["addresses"] = json!({"rr_ip": "10.30.70.1"});
    let v = root.ok(Method::PUT, &format!("/api/service/{curl}"), Some(ms)).await;
    assert_eq!(v["RR_ip"], "10.30.70.1");
    let (_, fresh) = root.app(sla("fresh", Some("10.30.62.2"))).await;
    assert_eq!(root.service(&fresh["curl"]).await["RR_ip"], "10.30.0.0", "the old RR IP is free again");
    // Without an rr_ip an update keeps the service's address.
    let ms: Value = sla("x", None)["applications"][0]["microservices"][0].clone();
    let v = root.ok(Method::PUT, &format!("/api/service/{curl}"), Some(ms)).await;
    assert_eq!(v["RR_ip"], "10.30.70.1");

    // Deleting the application releases its service and instance IPs.
    root.ok(Method::DELETE, &format!("/api/application/{app}"), None).await;
    let (_, again) = root.app(sla("again", Some("10.30.55.55"))).await;
    assert_eq!(root.service(&again["curl"]).await["RR_ip"], "10.30.0.3", "lowest released address");
    let n = root.scale_up(&again["curl"]).await;
    assert_eq!(root.instance_ip(&again["curl"], n).await, "10.30.0.4");

    // A restarted root rebuilds its pools from the documents: no address is handed out twice.
    drop(cluster);
    let _ = root.stop.send(true);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let root = start(dir.path()).await;
    let (_, later) = root.app(sla("later", Some("10.30.62.3"))).await;
    assert_eq!(root.service(&later["curl"]).await["RR_ip"], "10.30.0.5");
    let (s, v) = root.call(Method::POST, "/api/application", Some(sla("dup", Some("10.30.0.4")))).await;
    assert_eq!(s, StatusCode::CONFLICT, "an instance holds it: {v}");
}

#[tokio::test]
async fn worker_subnets_are_kept_per_node_and_released_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = start(dir.path()).await;
    let mut c1 = TestCluster::join(&root, "c1").await;
    assert_eq!(c1.subnet("n1").await, ("10.18.0.0/26".into(), String::new()));
    assert_eq!(c1.subnet("n1").await.0, "10.18.0.0/26", "asked twice: the same subnet");
    assert_eq!(c1.subnet("n2").await.0, "10.18.0.64/26");
    let (subnet, error) = c1.subnet("").await;
    assert!(subnet.is_empty() && error.contains("not a node id"), "{error}");

    // Another cluster's node of the same id is another node.
    let mut c2 = TestCluster::join(&root, "c2").await;
    assert_eq!(c2.subnet("n1").await.0, "10.18.0.128/26");
    // c1 no longer knows n1: its subnet goes back and is reused; c2's stays.
    c1.send(ClusterMsg::Nodes { node_ids: vec!["n2".into()] }).await;
    assert_eq!(c1.subnet("n3").await.0, "10.18.0.0/26");
    assert_eq!(c2.subnet("n1").await.0, "10.18.0.128/26");
    assert_eq!(c1.subnet("n2").await.0, "10.18.0.64/26");

    // Assignments survive a restart of the root.
    let _ = root.stop.send(true);
    drop((c1, c2));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let identities = std::mem::take(&mut *root.identities.lock().unwrap());
    let root = start(dir.path()).await;
    *root.identities.lock().unwrap() = identities;
    let mut c1 = TestCluster::join(&root, "c1").await;
    assert_eq!(c1.subnet("n2").await.0, "10.18.0.64/26");
    assert_eq!(c1.subnet("n4").await.0, "10.18.0.192/26");
}

fn running(job_id: &str, n: u32, ns: &str) -> InstanceReport {
    InstanceReport {
        job_id: job_id.into(),
        instance_number: n,
        status: "RUNNING".into(),
        status_detail: "running".into(),
        worker_id: Some("w1".into()),
        host_ip: Some("192.0.2.10".into()),
        host_port: Some("50103".into()),
        namespace_ip: Some(ns.into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn route_tables_are_answered_and_changes_pushed_to_interested_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let root = start(dir.path()).await;
    let (_, ids) = root.app(sla("shop", Some("10.30.55.55"))).await;
    let nginx = ids["nginx"].clone();
    let job = "shop.test.nginx.test";
    let mut c1 = TestCluster::join(&root, "c1").await;
    c1.report().await;
    let mut c2 = TestCluster::join(&root, "c2").await;
    // Let c1's report arrive before placing, so both instances go there (c2 never reports).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n0 = root.scale_up(&nginx).await as u32;
    let n1 = root.scale_up(&nginx).await as u32;
    let ip0 = root.instance_ip(&nginx, n0 as u64).await;
    let ip1 = root.instance_ip(&nginx, n1 as u64).await;

    // By job name, by the RR IP and by an instance IP: the same table, keyed by what was asked.
    let by_name = c1.query(job, "").await;
    assert_eq!(
        (by_name.app_name.as_str(), by_name.job_id.as_str(), by_name.query_key.as_str()),
        (job, nginx.as_str(), job)
    );
    assert_eq!(by_name.service_ip.len(), 1);
    assert_eq!((by_name.service_ip[0].ip_type.as_str(), by_name.service_ip[0].address.as_str()), ("RR", "10.30.55.55"));
    let listed: Vec<(u32, &str)> =
        by_name.instance_list.iter().map(|i| (i.instance_number, i.instance_ip.as_str())).collect();
    assert_eq!(listed, [(n0, ip0.as_str()), (n1, ip1.as_str())]);
    assert!(by_name.instance_list.iter().all(|i| i.namespace_ip.is_empty()), "nothing runs yet");
    let by_rr = c1.query("", "10.30.55.55").await;
    assert_eq!((by_rr.app_name.as_str(), by_rr.query_key.as_str()), (job, "10.30.55.55"));
    let by_instance = c1.query("", &ip1).await;
    assert_eq!((by_instance.app_name.as_str(), by_instance.instance_list.len()), (job, 2));
    let unknown = c1.query("shop.test.nope.test", "").await;
    assert_eq!(
        (unknown.error.as_str(), unknown.query_key.as_str()),
        ("no service with job name shop.test.nope.test", "shop.test.nope.test")
    );
    let unknown = c1.query("", "10.30.99.99").await;
    assert_eq!(unknown.error, "no service with address 10.30.99.99");
    assert_eq!(c1.query("", "garbage").await.error, "no service with address garbage");

    // An instance report that makes one routable is pushed to c1 at once; c2 is not interested.
    c1.send(ClusterMsg::Instances { full: false, updates: vec![running(&nginx, n0, "10.18.0.66")], last: true }).await;
    let pushed = c1.routes().await;
    assert_eq!((pushed.app_name.as_str(), pushed.query_key.as_str()), (job, job));
    let entry = pushed.instance_list.iter().find(|i| i.instance_number == n0).unwrap();
    assert_eq!(
        (entry.namespace_ip.as_str(), entry.host_ip.as_str(), entry.host_port, entry.worker_id.as_str()),
        ("10.18.0.66", "192.0.2.10", 50103, "w1")
    );
    assert_eq!(entry.cluster_id, c1.id);
    let stored = root.service(&nginx).await;
    let doc = stored["instance_list"].as_array().unwrap().iter().find(|i| i["instance_number"] == n0).unwrap();
    assert_eq!((doc["namespace_ip"].as_str(), doc["host_port"].as_str()), (Some("10.18.0.66"), Some("50103")));
    let t = c2.query_first(job).await;
    assert_eq!(t.instance_list.iter().filter(|i| !i.namespace_ip.is_empty()).count(), 1, "c2 reads the same");

    // A report that changes nothing route-wise pushes nothing; a failure does.
    let mut metrics = running(&nginx, n0, "10.18.0.66");
    metrics.cpu_percent = Some(3.0);
    c1.send(ClusterMsg::Instances { full: false, updates: vec![metrics], last: true }).await;
    let mut failed = running(&nginx, n0, "10.18.0.66");
    failed.status = "FAILED".into();
    c1.send(ClusterMsg::Instances { full: false, updates: vec![failed], last: true }).await;
    for c in [&mut c1, &mut c2] {
        let t = c.routes().await;
        assert!(t.instance_list.iter().all(|i| i.namespace_ip.is_empty()), "{t:?}");
    }

    // Scaling down is pushed with the instance gone; scaling up with the new one listed.
    root.ok(Method::DELETE, &format!("/api/service/{nginx}/instance/{n1}"), None).await;
    let t = c1.routes().await;
    assert_eq!(t.instance_list.iter().map(|i| i.instance_number).collect::<Vec<_>>(), [n0]);
    assert_eq!(c2.routes().await, t);
    let n2 = root.scale_up(&nginx).await as u32;
    let t = c1.routes().await;
    assert!(t.instance_list.iter().any(|i| i.instance_number == n2), "{t:?}");
    assert_eq!(c2.routes().await, t);

    // Without interest no more pushes: c2's next message is the answer to its next query.
    c2.send(ClusterMsg::Uninterest { job_name: job.into() }).await;
    let _ = c2.query_first("shop.test.curl.test").await;
    c1.send(ClusterMsg::Instances { full: false, updates: vec![running(&nginx, n0, "10.18.0.67")], last: true }).await;
    assert_eq!(c1.routes().await.instance_list[0].namespace_ip, "10.18.0.67");
    let t = c2.query_first(job).await;
    assert_eq!(t.instance_list[0].namespace_ip, "10.18.0.67");

    // Deleting the service pushes an empty table.
    root.ok(Method::DELETE, &format!("/api/service/{nginx}"), None).await;
    for c in [&mut c1, &mut c2] {
        let t = c.routes().await;
        assert_eq!(t.app_name, job);
        assert!(t.instance_list.is_empty() && t.service_ip.is_empty(), "{t:?}");
    }
    // A reconnecting cluster has to ask again: its old interests (curl, asked above) are gone.
    drop(c2);
    let mut c2 = TestCluster::join(&root, "c2").await;
    root.scale_up(&ids["curl"]).await;
    let t = c2.query_first("shop.test.curl.test").await;
    assert_eq!(t.instance_list.len(), 1, "the new instance, read by the answer and not pushed before it");
}
