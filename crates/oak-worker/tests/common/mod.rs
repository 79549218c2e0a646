//! An in-test cluster for one worker: an axum node API for `/api/node/register` over HTTPS with a
//! CA of its own, a real MQTT broker (Debian's mosquitto, plaintext: the fake cluster tells the
//! worker so, as a cluster with an external `mqtt://` broker does) and an MQTT observer that
//! records everything under `nodes/`.

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

/// The secret of the fake cluster's join token (what the worker sends and the cluster checks).
pub const TOKEN: &str = "0123456789abcdef0123456789abcdef";
/// Generous: tests wait for things to happen, they never time them.
pub const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- broker

/// A mosquitto process on a free loopback port, killed on drop. With authentication, accounts
/// live in a mosquitto password file the fake cluster writes at every registration.
pub struct Broker {
    child: Mutex<Child>,
    binary: PathBuf,
    config: PathBuf,
    passwords: Option<PathBuf>,
    pub port: u16,
    _dir: tempfile::TempDir,
}

pub const OBSERVER_USER: &str = "observer";
pub const OBSERVER_PASSWORD: &str = "observer-password";

impl Broker {
    /// Starts mosquitto, or returns `None` after printing why the test is skipped. Under
    /// `CI=true` a missing broker fails the test instead.
    pub fn start(authenticate: bool) -> Option<Broker> {
        use oak_testenv::Need::Tool;
        if !oak_testenv::can_run("worker test with mosquitto", &[Tool("mosquitto"), Tool("mosquitto_passwd")]) {
            return None;
        }
        let binary = oak_testenv::which("mosquitto").expect("checked by can_run");
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let config = dir.path().join("mosquitto.conf");
        let mut text = format!("listener {port} 127.0.0.1\npersistence false\n");
        let passwords = authenticate.then(|| dir.path().join("passwords"));
        match &passwords {
            Some(file) => {
                run_passwd(&["-c", "-b", path_str(file), OBSERVER_USER, OBSERVER_PASSWORD]);
                // Stay root when run as root: the password file is re-read on every reload.
                text.push_str(&format!("allow_anonymous false\npassword_file {}\nuser root\n", path_str(file)));
            }
            None => text.push_str("allow_anonymous true\n"),
        }
        std::fs::write(&config, text).expect("write mosquitto config");
        let child = Mutex::new(spawn_mosquitto(&binary, &config, port));
        Some(Broker { child, binary, config, passwords, port, _dir: dir })
    }

    /// Creates or replaces an account and makes mosquitto re-read the accounts.
    pub fn set_password(&self, user: &str, password: &str) {
        let Some(file) = &self.passwords else { return };
        run_passwd(&["-b", path_str(file), user, password]);
        self.reload();
    }

    pub fn remove_user(&self, user: &str) {
        let Some(file) = &self.passwords else { return };
        run_passwd(&["-D", path_str(file), user]);
        self.reload();
    }

    fn reload(&self) {
        let pid = self.child.lock().unwrap().id();
        // SAFETY: plain kill(2) on the child process this broker started.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) };
        // mosquitto reloads asynchronously; give it a moment before anyone relies on it.
        std::thread::sleep(Duration::from_millis(300));
    }

    /// Stops and starts mosquitto on the same port: every connection drops.
    pub fn restart(&self) {
        let mut child = self.child.lock().unwrap();
        let _ = child.kill();
        let _ = child.wait();
        *child = spawn_mosquitto(&self.binary, &self.config, self.port);
    }
}

fn spawn_mosquitto(binary: &Path, config: &Path, port: u16) -> Child {
    let child = Command::new(binary)
        .arg("-c")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mosquitto");
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not start listening on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn run_passwd(args: &[&str]) {
    let binary = oak_testenv::which("mosquitto_passwd").expect("mosquitto_passwd");
    let status = Command::new(binary).args(args).stdout(Stdio::null()).status().expect("run mosquitto_passwd");
    assert!(status.success(), "mosquitto_passwd {args:?} failed");
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

impl Drop for Broker {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap();
        let _ = child.kill();
        let _ = child.wait();
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
    /// Answer this many registrations with 503 first.
    pub unavailable: u32,
    next: u32,
}

pub struct FakeCluster {
    pub http: SocketAddr,
    pub ca: oak_tls::Authority,
    pub broker: Arc<Broker>,
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
        Self::start_with(false).await
    }

    /// With a broker that only accepts the credentials this cluster handed out.
    pub async fn start_with_auth() -> Option<FakeCluster> {
        Self::start_with(true).await
    }

    async fn start_with(authenticate: bool) -> Option<FakeCluster> {
        let broker = Arc::new(Broker::start(authenticate)?);
        let state = Arc::new(Mutex::new(ClusterState::default()));
        let app = Router::new()
            .route("/api/node/register", post(register))
            .with_state(AppState { cluster: state.clone(), broker: broker.clone() });
        let ca = oak_tls::Authority::generate("fake cluster CA").expect("CA");
        let identity = ca.issue_server(oak_tls::CLUSTER_SERVER_NAME, &[]).expect("server certificate");
        let tls = oak_tls::server_config(&identity, oak_tls::ClientAuth::None).expect("TLS config");
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind node API");
        let listener = oak_tls::TlsListener::new(tcp, tls, Arc::new(|_, _| {})).expect("TLS listener");
        let http = listener.local_addr();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve node API");
        });
        let observer = Observer::connect(broker.port).await;
        Some(FakeCluster { http, ca, broker, state, observer, server })
    }

    /// A join token of this cluster with `secret`.
    pub fn token(&self, secret: &str) -> String {
        format!("oakn.v1.{}.{secret}", self.ca.fingerprint())
    }

    pub fn config(&self, data_dir: &Path, secret: &str) -> WorkerConfig {
        let mut config = WorkerConfig::new("127.0.0.1", data_dir, self.token(secret));
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
    broker: Arc<Broker>,
}

async fn register(State(app): State<AppState>, Json(req): Json<RegisterNodeRequest>) -> Response {
    let answer = {
        let mut cluster = app.cluster.lock().unwrap();
        cluster.registrations.push(req.clone());
        if cluster.unavailable > 0 {
            cluster.unavailable -= 1;
            return error(StatusCode::SERVICE_UNAVAILABLE, "the cluster is starting");
        }
        if req.token != TOKEN {
            return error(StatusCode::UNAUTHORIZED, "invalid join token");
        }
        cluster.next += 1;
        let id = match req.node.id.as_str() {
            "" => format!("node-{}", cluster.next),
            claimed => match cluster.secrets.get(claimed) {
                Some(secret) if *secret != req.node_secret => {
                    return error(StatusCode::CONFLICT, "node id belongs to another worker");
                }
                _ => claimed.to_string(),
            },
        };
        let password = format!("pw-{}", cluster.next);
        cluster.secrets.insert(id.clone(), password.clone());
        let answer = RegisterNodeResponse {
            id: id.clone(),
            mqtt_broker_port: app.broker.port.to_string(),
            mqtt_host: "127.0.0.1".into(),
            mqtt_username: id,
            mqtt_password: password,
            subnet: String::new(),
            mqtt_scheme: "mqtt".into(),
            mqtt_ca: String::new(),
            features: Vec::new(),
        };
        cluster.answers.push(answer.clone());
        answer
    };
    app.broker.set_password(&answer.mqtt_username, &answer.mqtt_password);
    Json(answer).into_response()
}

fn error(code: StatusCode, message: &str) -> Response {
    let body = ErrorBody { code: code.as_u16(), message: message.into(), field: None, errors: vec![] };
    (code, Json(body)).into_response()
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
        options.set_max_packet_size(16 << 20, 16 << 20).set_credentials(OBSERVER_USER, OBSERVER_PASSWORD);
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let messages = Arc::new(Mutex::new(Vec::new()));
        let changed = Arc::new(Notify::new());
        let (subscribed_tx, subscribed_rx) = oneshot::channel();
        let task = tokio::spawn({
            let messages = messages.clone();
            let changed = changed.clone();
            let client = client.clone();
            async move {
                let mut subscribed = Some(subscribed_tx);
                loop {
                    match eventloop.poll().await {
                        // Subscribe on every connect: a restarted broker forgot the subscription.
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            client.try_subscribe("nodes/#", QoS::AtLeastOnce).expect("subscribe");
                        }
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
                .find(|m| {
                    m.topic == topic
                        && m.body["sname"] == job
                        && m.body["instance"] == instance
                        && m.body["status"] == status
                })
                .map(|m| m.body.clone())
        })
        .await
    }

    /// Waits for a resources report (after message `from`) that satisfies `check`.
    pub async fn resources_where(
        &self,
        node: &str,
        from: usize,
        what: &str,
        check: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
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

/// Waits (up to [`WAIT`]) until `check` holds.
pub async fn eventually_sync(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
