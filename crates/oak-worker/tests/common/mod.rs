//! An in-test cluster for one worker: an axum node API for `/api/node/register`, a real MQTT
//! broker (Debian's mosquitto) and an MQTT observer that records everything under `nodes/`.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use oak_api::node::{NodeInfo, RegisterNodeRequest, RegisterNodeResponse};
use oak_api::ErrorBody;
use oak_runtime::FakeRuntime;
use oak_worker::{NodeInfoSource, WorkerConfig, WorkerDeps, WorkerError};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

pub const TOKEN: &str = "join-token-for-tests";
/// Generous: tests wait for things to happen, they never time them.
pub const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- broker

/// A mosquitto process on a free loopback port, killed on drop.
pub struct Broker {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

fn find_mosquitto() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join("mosquitto")).find(|p| p.is_file())
}

impl Broker {
    /// Starts mosquitto, or returns `None` after printing why the test is skipped. Under
    /// `CI=true` a missing broker fails the test instead.
    pub fn start() -> Option<Broker> {
        let Some(binary) = find_mosquitto() else {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("mosquitto is not installed (CI=true): run scripts/install-deps.sh");
            }
            eprintln!("SKIPPED: mosquitto is not installed; `apt-get install -y mosquitto` to run this test");
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let config = dir.path().join("mosquitto.conf");
        std::fs::write(&config, format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"))
            .expect("write mosquitto config");
        let child = Command::new(binary)
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        let broker = Broker { child, port, _dir: dir };
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not start listening on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(broker)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

// ---------------------------------------------------------------- node API

#[derive(Default)]
pub struct ClusterState {
    /// Every registration request received, in order.
    pub registrations: Vec<RegisterNodeRequest>,
    /// Node id → the password handed out last.
    pub secrets: HashMap<String, String>,
    /// Answers given, in order.
    pub answers: Vec<RegisterNodeResponse>,
    next: u32,
}

pub struct FakeCluster {
    pub http: SocketAddr,
    pub broker: Broker,
    pub state: Arc<Mutex<ClusterState>>,
    pub observer: Observer,
    server: JoinHandle<()>,
}

impl Drop for FakeCluster {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeCluster {
    pub async fn start() -> Option<FakeCluster> {
        let broker = Broker::start()?;
        let state = Arc::new(Mutex::new(ClusterState::default()));
        let app = Router::new()
            .route("/api/node/register", post(register))
            .with_state(AppState { cluster: state.clone(), broker_port: broker.port });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind node API");
        let http = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve node API");
        });
        let observer = Observer::connect(broker.port).await;
        Some(FakeCluster { http, broker, state, observer, server })
    }

    pub fn config(&self, data_dir: &Path, token: &str) -> WorkerConfig {
        let mut config = WorkerConfig::new("127.0.0.1", data_dir, token);
        config.cluster_port = self.http.port();
        config.node_name = "worker-a".into();
        config.report_interval = Duration::from_millis(200);
        config
    }

    pub fn registrations(&self) -> Vec<RegisterNodeRequest> {
        self.state.lock().unwrap().registrations.clone()
    }

    pub fn answers(&self) -> Vec<RegisterNodeResponse> {
        self.state.lock().unwrap().answers.clone()
    }
}

#[derive(Clone)]
struct AppState {
    cluster: Arc<Mutex<ClusterState>>,
    broker_port: u16,
}

async fn register(State(app): State<AppState>, Json(req): Json<RegisterNodeRequest>) -> Response {
    let mut cluster = app.cluster.lock().unwrap();
    cluster.registrations.push(req.clone());
    if req.token != TOKEN {
        let body = ErrorBody { code: 401, message: "invalid join token".into(), field: None, errors: vec![] };
        return (StatusCode::UNAUTHORIZED, Json(body)).into_response();
    }
    cluster.next += 1;
    let known = cluster.secrets.get(&req.node.id).is_some_and(|s| *s == req.node_secret);
    let id = if known { req.node.id.clone() } else { format!("node-{}", cluster.next) };
    let password = format!("pw-{}", cluster.next);
    cluster.secrets.insert(id.clone(), password.clone());
    let answer = RegisterNodeResponse {
        id: id.clone(),
        mqtt_broker_port: app.broker_port.to_string(),
        mqtt_host: "127.0.0.1".into(),
        mqtt_username: id,
        mqtt_password: password,
    };
    cluster.answers.push(answer.clone());
    Json(answer).into_response()
}

// ---------------------------------------------------------------- observer

#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub body: Value,
}

/// An MQTT client subscribed to `nodes/#` that records every message.
pub struct Observer {
    client: AsyncClient,
    messages: Arc<Mutex<Vec<Msg>>>,
    changed: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Observer {
    async fn connect(port: u16) -> Observer {
        let mut options = MqttOptions::new(format!("observer-{port}"), "127.0.0.1", port);
        options.set_max_packet_size(16 << 20, 16 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        client.subscribe("nodes/#", QoS::AtLeastOnce).await.expect("subscribe");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let changed = Arc::new(Notify::new());
        let (subscribed_tx, subscribed_rx) = oneshot::channel();
        let task = tokio::spawn({
            let messages = messages.clone();
            let changed = changed.clone();
            async move {
                let mut subscribed = Some(subscribed_tx);
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            if let Some(tx) = subscribed.take() {
                                let _ = tx.send(());
                            }
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let body = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                            messages.lock().unwrap().push(Msg { topic: p.topic.clone(), body });
                            changed.notify_waiters();
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            }
        });
        tokio::time::timeout(WAIT, subscribed_rx).await.expect("observer subscribed").expect("observer task");
        Observer { client, messages, changed, task }
    }

    pub async fn publish(&self, topic: String, payload: impl Into<Vec<u8>>) {
        self.client.publish(topic, QoS::AtLeastOnce, false, payload.into()).await.expect("publish");
    }

    pub fn messages(&self) -> Vec<Msg> {
        self.messages.lock().unwrap().clone()
    }

    /// Waits until `check` finds something in the messages so far.
    pub async fn wait_for<T>(&self, what: &str, check: impl Fn(&[Msg]) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notified = self.changed.notified();
            if let Some(found) = check(&self.messages.lock().unwrap()) {
                return found;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let seen: Vec<String> = self
                    .messages()
                    .iter()
                    .filter(|m| !m.topic.ends_with("/information"))
                    .map(|m| format!("{} {}", m.topic, m.body))
                    .collect();
                panic!("timed out waiting for {what}; messages seen:\n{}", seen.join("\n"));
            }
        }
    }

    /// The id of the first node that published its information after message `from`.
    pub async fn node_id_after(&self, from: usize) -> String {
        self.wait_for("node information", |msgs| {
            msgs.iter().skip(from).find(|m| m.topic.ends_with("/information")).map(|m| node_of(&m.topic))
        })
        .await
    }

    /// The first `nodes/<node>/job` report for `job`/`instance` with `status`, after message
    /// `from`.
    pub async fn job_status(&self, node: &str, job: &str, instance: u32, status: &str) -> Value {
        let topic = format!("nodes/{node}/job");
        self.wait_for(&format!("{status} for {job}/{instance}"), |msgs| {
            msgs.iter()
                .find(|m| m.topic == topic && m.body["sname"] == job && m.body["instance"] == instance && m.body["status"] == status)
                .map(|m| m.body.clone())
        })
        .await
    }

    /// Waits for a resources report (after message `from`) that satisfies `check`.
    pub async fn resources_where(&self, node: &str, from: usize, what: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let topic = format!("nodes/{node}/jobs/resources");
        self.wait_for(what, |msgs| {
            msgs.iter().skip(from).filter(|m| m.topic == topic).find_map(|m| {
                let services = m.body["services"].as_array()?.clone();
                check(&services).then_some(services)
            })
        })
        .await
    }

    /// Job reports on `node`, in order.
    pub fn job_reports(&self, node: &str) -> Vec<Value> {
        let topic = format!("nodes/{node}/job");
        self.messages().into_iter().filter(|m| m.topic == topic).map(|m| m.body).collect()
    }
}

pub fn node_of(topic: &str) -> String {
    topic.split('/').nth(1).unwrap_or_default().to_string()
}

pub fn has_instance(services: &[Value], job: &str, instance: u32) -> bool {
    services.iter().any(|s| s["job_name"] == job && s["instance"] == instance)
}

// ---------------------------------------------------------------- worker

/// A fixed node description, as a hollow worker would report.
pub struct FixedInfo;

#[async_trait]
impl NodeInfoSource for FixedInfo {
    async fn sample(&self) -> NodeInfo {
        NodeInfo {
            ip: "127.0.0.2".into(),
            vcpus: 4,
            memory: 4096,
            memory_total: 8192,
            architecture: "amd64".into(),
            ..NodeInfo::default()
        }
    }
}

pub struct RunningWorker {
    handle: JoinHandle<Result<(), WorkerError>>,
    stop: Option<oneshot::Sender<()>>,
}

impl RunningWorker {
    pub fn start(config: WorkerConfig, runtimes: Vec<Arc<FakeRuntime>>) -> RunningWorker {
        let deps = WorkerDeps {
            runtimes: runtimes.into_iter().map(|r| r as Arc<dyn oak_runtime::Runtime>).collect(),
            node_source: Arc::new(FixedInfo),
            http: reqwest::Client::new(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(oak_worker::run(config, deps, async move {
            let _ = stopped.await;
        }));
        RunningWorker { handle, stop: Some(stop) }
    }

    /// Asks the worker to stop and returns what `run` returned.
    pub async fn stop(mut self) -> Result<(), WorkerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(WAIT, &mut self.handle).await.expect("worker stopped in time").expect("worker task")
    }

    /// Waits for `run` to return by itself.
    pub async fn finished(mut self) -> Result<(), WorkerError> {
        tokio::time::timeout(WAIT, &mut self.handle).await.expect("worker finished in time").expect("worker task")
    }

    pub fn is_running(&self) -> bool {
        !self.handle.is_finished()
    }
}

// ---------------------------------------------------------------- commands

pub fn deploy_cmd(job: &str, instance: u32, image: &str, virtualization: &str, one_shot: bool) -> Value {
    let parts: Vec<&str> = job.split('.').collect();
    json!({
        "_id": format!("id-{job}"),
        "job_name": job,
        "image": image,
        "instance_number": instance,
        "microservice_name": parts.get(2).copied().unwrap_or("svc"),
        "microservice_namespace": parts.get(3).copied().unwrap_or("test"),
        "virtualization": virtualization,
        "code": image,
        "one_shot": one_shot,
        "memory": 100,
        "vcpus": 1,
        "status": "NODE_SCHEDULED",
        "instance_list": [{"instance_number": instance}],
    })
}

pub fn delete_cmd(job: &str, instance: u32) -> Value {
    json!({"job_name": job, "virtualization": "docker", "instance_number": instance})
}
