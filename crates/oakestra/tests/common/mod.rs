//! Shared pieces of the in-process system tests: a root, clusters and workers on loopback.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oak_api::node::NodeInfo;
use oak_runtime::FakeRuntime;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A fixed machine: 4 cores, 4 GB unless told otherwise.
pub struct Machine {
    pub name: String,
    pub memory_mb: u64,
}

impl Machine {
    pub fn new(name: &str) -> Self {
        Machine { name: name.into(), memory_mb: 4096 }
    }
}

#[async_trait::async_trait]
impl oak_worker::NodeInfoSource for Machine {
    async fn sample(&self) -> NodeInfo {
        NodeInfo {
            host: self.name.clone(),
            ip: "127.0.0.1".into(),
            vcpus: 4,
            memory: self.memory_mb,
            memory_total: self.memory_mb,
            architecture: "amd64".into(),
            cpu_percent: 5.0,
            memory_percent: 10.0,
            ..Default::default()
        }
    }
}

pub struct Worker {
    pub name: String,
    pub stop: watch::Sender<bool>,
    pub task: tokio::task::JoinHandle<Result<(), oak_worker::WorkerError>>,
}

pub struct ClusterHandle {
    pub api: SocketAddr,
    pub dir: PathBuf,
    pub stop: watch::Sender<bool>,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub fn stopped(rx: &watch::Receiver<bool>) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut rx = rx.clone();
    async move {
        let _ = rx.wait_for(|s| *s).await;
    }
}

pub async fn start_root(dir: &Path) -> (String, SocketAddr, watch::Sender<bool>) {
    start_root_with(dir, oak_root::fleet::FleetConfig { retry_tick: Duration::from_millis(200), ..Default::default() })
        .await
}

/// A root whose fleet runs with `fleet` (timeouts, quotas).
pub async fn start_root_with(
    dir: &Path,
    fleet: oak_root::fleet::FleetConfig,
) -> (String, SocketAddr, watch::Sender<bool>) {
    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let channel = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (api_addr, channel_addr) = (api.local_addr().unwrap(), channel.local_addr().unwrap());
    let root = oak_root::Root::open(oak_root::RootConfig {
        api_addr,
        channel_addr,
        data_dir: dir.to_path_buf(),
        store_durability: Default::default(),
        admin_password: None,
        fleet,
        privileged_roles: Vec::new(),
    })
    .await
    .unwrap();
    let (stop, rx) = watch::channel(false);
    tokio::spawn(root.serve_on(api, channel, stopped(&rx)));
    (format!("http://{api_addr}"), channel_addr, stop)
}

pub async fn start_cluster(
    name: &str,
    dir: &Path,
    channel: SocketAddr,
    token: &str,
    mqtt: oak_cluster::MqttMode,
) -> ClusterHandle {
    let timing = oak_cluster::state::Timing { node_timeout: Duration::from_secs(2), ..Default::default() };
    start_cluster_timed(name, dir, channel, token, mqtt, timing).await
}

/// [`start_cluster`] with the given timeouts.
pub async fn start_cluster_timed(
    name: &str,
    dir: &Path,
    channel: SocketAddr,
    token: &str,
    mqtt: oak_cluster::MqttMode,
    timing: oak_cluster::state::Timing,
) -> ClusterHandle {
    let config = oak_cluster::ClusterConfig {
        name: name.into(),
        location: "48.1,11.6".into(),
        root_channel: channel.to_string(),
        root_url: String::new(),
        root_token: token.into(),
        api_addr: "127.0.0.1:0".parse().unwrap(),
        mqtt,
        mqtt_advertise: None,
        data_dir: dir.to_path_buf(),
        report_interval: Duration::from_millis(300),
        timing,
        metrics_token: None,
    };
    let cluster = oak_cluster::Cluster::open(config).await.unwrap();
    let api = cluster.api_addr();
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(cluster.run(stopped(&rx)));
    ClusterHandle { api, dir: dir.to_path_buf(), stop, task }
}

pub fn start_worker(name: &str, cluster: &ClusterHandle, dir: &Path, token: Option<String>) -> Worker {
    start_worker_on(Machine::new(name), Arc::new(FakeRuntime::new("docker")), cluster, dir, token)
}

/// A worker on `machine` running its instances in `runtime` (which outlives the worker, as
/// containers outlive a stopped worker process).
pub fn start_worker_on(
    machine: Machine,
    runtime: Arc<FakeRuntime>,
    cluster: &ClusterHandle,
    dir: &Path,
    token: Option<String>,
) -> Worker {
    start_worker_configured(machine, runtime, cluster, dir, token, |_| {})
}

/// [`start_worker_on`] with `tweak` applied to the worker's configuration.
pub fn start_worker_configured(
    machine: Machine,
    runtime: Arc<FakeRuntime>,
    cluster: &ClusterHandle,
    dir: &Path,
    token: Option<String>,
    tweak: impl FnOnce(&mut oak_worker::WorkerConfig),
) -> Worker {
    let name = machine.name.clone();
    let name = name.as_str();
    let token = token.unwrap_or_else(|| std::fs::read_to_string(cluster.dir.join("node-token")).unwrap());
    let mut config = oak_worker::WorkerConfig::new("127.0.0.1", dir, token.trim());
    config.cluster_port = cluster.api.port();
    config.node_name = name.into();
    config.report_interval = Duration::from_millis(300);
    tweak(&mut config);
    let deps = oak_worker::WorkerDeps { runtimes: vec![runtime], node_source: Arc::new(machine) };
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(oak_worker::run(config, deps, stopped(&rx)));
    Worker { name: name.into(), stop, task }
}

/// The cluster's worker join token (it pins the cluster's CA).
pub fn node_token(cluster: &ClusterHandle) -> String {
    std::fs::read_to_string(cluster.dir.join("node-token")).unwrap().trim().to_string()
}

/// A client of the cluster's node API (HTTPS), trusting the cluster's CA as its workers do.
pub fn cluster_http(cluster: &ClusterHandle) -> reqwest::Client {
    oak_worker::cluster_client_builder(&node_token(cluster)).unwrap().build().unwrap()
}

/// The transport to the cluster's embedded broker (MQTT over TLS), trusting the cluster's CA as
/// its workers do.
pub fn broker_tls(cluster: &ClusterHandle) -> rumqttc::Transport {
    let token = oak_tls::JoinToken::parse(&node_token(cluster), oak_tls::TokenKind::Node).unwrap();
    let config = oak_tls::pinned_client_config(token.ca, oak_tls::CLUSTER_SERVER_NAME, None).unwrap();
    rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(config))
}

pub async fn eventually<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The embedded broker on a free loopback port.
pub fn embedded() -> oak_cluster::MqttMode {
    oak_cluster::MqttMode::Embedded { addr: "127.0.0.1:0".parse().unwrap() }
}

/// A client of the root at `url`, logged in as the seeded Admin.
pub async fn admin_client(url: &str) -> oak_client::Client {
    let mut client = oak_client::Client::new(url);
    let login = client.login("Admin", "Admin", None).await.unwrap();
    client.set_token(Some(login.token));
    client
}

/// Waits until the root lists exactly one active cluster, with one active worker.
pub async fn one_cluster_with_one_worker(client: &oak_client::Client) {
    eventually("the cluster with its worker", async || {
        let c = client.list_active_clusters().await.unwrap();
        (c.len() == 1 && c[0].active_nodes == 1).then_some(())
    })
    .await;
}
