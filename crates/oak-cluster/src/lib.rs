//! The Oakestra cluster orchestrator: registers workers (node API, port 10100), talks to them
//! over MQTT (embedded broker on 10003, or an external one), places the instances the root sends
//! onto them, and reports resources and instance states to the root over the cluster channel.
//!
//! One [`Ctx`] holds the working state behind a mutex; every input (a worker's MQTT message, a
//! root command, a registration, a timer tick) locks it, applies a transition from
//! [`state::ClusterState`] and performs the returned effects after unlocking.

mod bus;
mod credentials;
mod deploy_batches;
mod logs;
mod metrics;
mod node_api;
pub mod peers;
mod root_link;
pub mod root_trust;
pub mod routes;
pub mod state;
pub mod store;
mod subnets;
mod tls;
mod workers;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use oak_api::channel::{ClusterMsg, DeployInstance, RootMsg};
use oak_api::net::{InterestRemove, TableQuery};
use oak_api::node::{topic, JobStatusReport, NodeInfo, ResourcesReport};
use tokio::sync::{mpsc, watch};

pub use bus::MqttMode;
pub use root_link::Refused;
use state::{ClusterState, Effect, Timing};
use store::ClusterStore;
pub use tls::TLS_DIR;

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub name: String,
    /// `lat,long[,radius_m]` or a free name.
    pub location: String,
    /// `host:port` of the root's cluster channel.
    pub root_channel: String,
    /// The root's API URL (shown to operators; the channel carries all traffic).
    pub root_url: String,
    /// Join token issued by the root (`oakc.v1.<root CA hash>.<secret>`); may be empty once
    /// the cluster holds its certificate from an earlier join (`<data_dir>/tls/`).
    pub root_token: String,
    pub api_addr: SocketAddr,
    pub mqtt: MqttMode,
    /// Broker host workers should use, when it is not the address they registered with.
    pub mqtt_advertise: Option<String>,
    pub data_dir: PathBuf,
    pub report_interval: Duration,
    pub timing: Timing,
    /// The scrape token `/metrics` asks for when the node API listens beyond loopback.
    pub metrics_token: Option<String>,
}

/// Period of the control loop (timeouts, placement, reports, store writes) when nothing wakes it.
const TICK: Duration = Duration::from_millis(100);
/// How often the cluster asks whether its server certificate is due for renewal.
const CERT_CHECK: Duration = Duration::from_secs(3600);
/// Least and most time between two steps when woken early, so a stream of events cannot make
/// the loop spin; events in between are handled together. Within these bounds the gap is the
/// last step's duration times [`STEP_SHARE_INVERSE`].
const MIN_TICK_GAP: Duration = Duration::from_millis(1);
const MAX_TICK_GAP: Duration = Duration::from_millis(50);
const STEP_SHARE_INVERSE: u32 = 5;
/// How often the control loop asks the broker whom it heard from.
const HEARD_PULL: Duration = Duration::from_secs(1);

/// Shortest worker timeout with which workers may report quietly: a quiet worker is heard at
/// least at each keep-alive ping (every 5 s), so the timeout must span three of them.
const QUIET_MIN_NODE_TIMEOUT: Duration = Duration::from_secs(15);

/// Messages queued for the root; beyond this the connection is dropped and resynced.
const ROOT_QUEUE: usize = 16 * 1024;

/// Everything the cluster's tasks share.
pub struct Ctx {
    config: ClusterConfig,
    state: Mutex<ClusterState>,
    store: ClusterStore,
    bus: bus::Bus,
    node_token_hash: String,
    /// Connections the node API and the broker refused during the TLS handshake.
    tls_refusals: Arc<tls::Refusals>,
    /// The CA and the server certificate, kept for the certificate's renewals.
    _tls: Arc<tls::ClusterTls>,
    /// The root this cluster trusts and its identity there (join token, then certificate).
    root_trust: root_trust::RootTrust,
    root: Mutex<Option<mpsc::Sender<ClusterMsg>>>,
    /// Parts of the root's full desired set received so far on this connection; applied as one
    /// set when the last part arrives.
    full_deploy: Mutex<Vec<DeployInstance>>,
    logs: Mutex<logs::Relay>,
    /// Registrations waiting for a subnet from the root.
    subnets: Mutex<subnets::Waits>,
    /// The worker summaries the root holds from this connection.
    workers_sent: Mutex<workers::Sent>,
    /// The registry behind `/metrics` and who may read it.
    metrics: metrics::ClusterMetrics,
    /// The node API's bound port (told to the root for its scrape targets).
    api_port: u16,
    /// Wakes the control loop early: a deploy to place or a state change to pass on should not
    /// wait for the next 100 ms tick (that wait would be most of a deploy's latency).
    wake: tokio::sync::Notify,
    /// When the broker was last asked whom it heard from.
    heard_pulled: Mutex<Option<Instant>>,
}

/// A cluster orchestrator bound to its ports, ready to run.
pub struct Cluster {
    ctx: Arc<Ctx>,
    /// The node API, HTTPS only.
    api: oak_tls::TlsListener,
    incoming: mpsc::Receiver<(String, bytes::Bytes)>,
}

impl Cluster {
    /// Opens the data directory and binds the node API and the broker. Errors here are
    /// configuration problems (bad directory, port in use, unreachable external broker URL).
    pub async fn open(config: ClusterConfig) -> anyhow::Result<Self> {
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create data directory {}", dir.display()))?;
        let store = ClusterStore::open(&dir.join("cluster.db"))
            .with_context(|| format!("cannot open the database in {}", dir.display()))?;
        let tls = Arc::new(tls::ClusterTls::load(&config)?);
        // The renewal check ends with the cluster (the context holds the only strong reference).
        let renewing = Arc::downgrade(&tls);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(CERT_CHECK).await;
                match renewing.upgrade() {
                    Some(tls) => tls.renew_if_due(),
                    None => return,
                }
            }
        });
        let token = credentials::node_token(dir, tls.authority.fingerprint())?;
        let root_trust = root_trust::RootTrust::open(dir, &config.root_token)?;
        let now = Instant::now();
        let state =
            ClusterState::new(config.name.clone(), config.timing.clone(), store.nodes()?, store.instances()?, now);
        let api = tokio::net::TcpListener::bind(config.api_addr)
            .await
            .with_context(|| format!("cannot listen on {}", config.api_addr))?;
        let api = oak_tls::TlsListener::new(api, tls.server.clone(), tls.refusals.callback("node_api"))?;
        let ctx_cell: Arc<std::sync::OnceLock<std::sync::Weak<Ctx>>> = Arc::new(std::sync::OnceLock::new());
        let (bus, incoming) = bus::Bus::start(&config.mqtt, bus::node_authorizer(ctx_cell.clone()), &tls).await?;
        let metrics = metrics::ClusterMetrics::new(state.placement_seconds.clone(), config.metrics_token.clone());
        metrics.access.listening_on(api.local_addr());
        if metrics.access.exposed() && !metrics.access.has_token() {
            tracing::warn!(
                "the node API listens beyond loopback and no --metrics-token is set: /metrics refuses every scrape"
            );
        }
        let ctx = Arc::new(Ctx {
            node_token_hash: credentials::hash(token.secret.as_bytes()),
            tls_refusals: tls.refusals.clone(),
            _tls: tls.clone(),
            root_trust,
            state: Mutex::new(state),
            store,
            bus,
            root: Mutex::new(None),
            full_deploy: Mutex::new(Vec::new()),
            logs: Mutex::new(logs::Relay::default()),
            subnets: Mutex::new(subnets::Waits::default()),
            workers_sent: Mutex::new(workers::Sent::default()),
            wake: tokio::sync::Notify::new(),
            heard_pulled: Mutex::new(None),
            metrics,
            api_port: api.local_addr().port(),
            config,
        });
        let _ = ctx_cell.set(Arc::downgrade(&ctx));
        Ok(Cluster { ctx, api, incoming })
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.api.local_addr()
    }

    pub fn mqtt_port(&self) -> u16 {
        self.ctx.bus.worker_port()
    }

    /// Runs until `shutdown` resolves. Fails if the root refuses this cluster.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let Cluster { ctx, api, mut incoming } = self;
        tracing::info!(name = %ctx.config.name, api = %api.local_addr(), mqtt_port = ctx.bus.worker_port(),
            root = %ctx.config.root_channel, "cluster orchestrator started");
        let (stop_tx, stop_rx) = watch::channel(false);

        let http = {
            let mut stop = stop_rx.clone();
            let app = node_api::router(ctx.clone());
            tokio::spawn(async move {
                let _ = axum::serve(api, app)
                    .with_graceful_shutdown(async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
                    .await;
            })
        };
        let mqtt = {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                while let Some((topic, payload)) = incoming.recv().await {
                    ctx.on_mqtt(&topic, &payload);
                }
            })
        };
        let ticker = {
            let ctx = ctx.clone();
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(TICK);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut last_report = Instant::now();
                let mut last_tick = Instant::now();
                let mut gap = MIN_TICK_GAP;
                loop {
                    let woken = tokio::select! {
                        _ = tick.tick() => false,
                        _ = ctx.wake.notified() => true,
                        _ = stop.wait_for(|s| *s) => break,
                    };
                    // A burst of wake-ups shares one step (they coalesce meanwhile).
                    let since = last_tick.elapsed();
                    if woken && since < gap {
                        tokio::time::sleep(gap - since).await;
                    }
                    last_tick = Instant::now();
                    let report = last_report.elapsed() >= ctx.config.report_interval;
                    if report {
                        last_report = Instant::now();
                    }
                    let c = ctx.clone();
                    let started = Instant::now();
                    let _ = tokio::task::spawn_blocking(move || c.tick(!woken, report)).await;
                    // Steps take at most about a fifth of a core: a cheap step may follow at once,
                    // an expensive one (a burst of placements) makes the next wait.
                    gap = (started.elapsed() * STEP_SHARE_INVERSE).clamp(MIN_TICK_GAP, MAX_TICK_GAP);
                }
                // Last changes reach the disk before exit.
                let c = ctx.clone();
                let _ = tokio::task::spawn_blocking(move || c.flush()).await;
            })
        };
        let root = tokio::spawn(root_link::run(ctx.clone(), stop_rx.clone()));

        let mut root = root;
        let outcome = tokio::select! {
            _ = shutdown => Ok(()),
            r = &mut root => match r {
                Ok(Err(refused)) => Err(anyhow::Error::new(refused)),
                _ => Ok(()),
            },
        };
        let _ = stop_tx.send(true);
        let _ = ticker.await;
        let _ = http.await;
        root.abort();
        mqtt.abort();
        ctx.bus.shutdown();
        outcome
    }
}

impl Ctx {
    fn state(&self) -> MutexGuard<'_, ClusterState> {
        // Transitions leave the state consistent before anything that could panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new connection (or none): parts of a full set from an older one are forgotten.
    fn set_root(&self, tx: Option<mpsc::Sender<ClusterMsg>>) {
        if tx.is_some() {
            self.metrics.root_connections.inc();
        }
        self.full_deploy.lock().unwrap_or_else(|e| e.into_inner()).clear();
        *self.root.lock().unwrap_or_else(|e| e.into_inner()) = tx;
    }

    /// Queues `msg` for the root. A full queue (the root does not keep up) drops the connection,
    /// logged: the session ends once the writer drained what is queued, and the next one resyncs
    /// from full state, so nothing is lost for good.
    fn send_root(&self, msg: ClusterMsg) -> bool {
        let mut root = self.root.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = root.as_ref() else { return false };
        match tx.try_send(msg) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    queued = ROOT_QUEUE,
                    "the root does not keep up with this cluster; reconnecting to resync"
                );
                *root = None;
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// The node API's port (where `/metrics` is).
    fn api_port(&self) -> u16 {
        self.api_port
    }

    /// Messages queued for the root, while connected.
    fn root_queue(&self) -> Option<usize> {
        let root = self.root.lock().unwrap_or_else(|e| e.into_inner());
        root.as_ref().map(|tx| tx.max_capacity() - tx.capacity())
    }

    fn root_connected(&self) -> bool {
        self.root.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// A worker's message. Garbled payloads are answered on the node's error topic and dropped.
    fn on_mqtt(&self, topic_name: &str, payload: &[u8]) {
        let Some((node, kind)) = topic::parse(topic_name) else { return };
        let now = Instant::now();
        let effects = match kind {
            "information" => match serde_json::from_slice::<NodeInfo>(payload) {
                Ok(info) => self.state().node_information(node, info, now),
                Err(e) => vec![garbled(node, kind, e)],
            },
            "job" => match serde_json::from_slice::<JobStatusReport>(payload) {
                Ok(r) => {
                    let fx = self.state().job_report(node, r, now);
                    // The root hears of the change at once.
                    self.wake.notify_one();
                    fx
                }
                Err(e) => vec![garbled(node, kind, e)],
            },
            "jobs/resources" => match serde_json::from_slice::<ResourcesReport>(payload) {
                Ok(r) => self.state().resources_report(node, r, now),
                Err(e) => vec![garbled(node, kind, e)],
            },
            "logs" => match serde_json::from_slice::<oak_api::node::LogsAnswer>(payload) {
                Ok(answer) => {
                    self.on_logs_answer(node, answer);
                    Vec::new()
                }
                Err(e) => vec![garbled(node, kind, e)],
            },
            oak_api::net::topic::TABLE_QUERY => match serde_json::from_slice::<TableQuery>(payload) {
                Ok(q) => {
                    let connected = self.root_connected();
                    self.state().table_query(node, q, connected, now)
                }
                Err(e) => vec![garbled(node, kind, e)],
            },
            oak_api::net::topic::PEER_QUERY => match serde_json::from_slice::<oak_api::net::PeerQuery>(payload) {
                Ok(q) => {
                    let connected = self.root_connected();
                    self.state().peer_query(node, &q.public_key, connected, now)
                }
                Err(e) => vec![garbled(node, kind, e)],
            },
            oak_api::net::topic::INTEREST_REMOVE => match serde_json::from_slice::<InterestRemove>(payload) {
                Ok(r) => self.state().routes.remove_interest(node, r.appname.trim()),
                Err(e) => vec![garbled(node, kind, e)],
            },
            _ => Vec::new(),
        };
        self.perform(effects);
    }

    fn on_root_message(&self, msg: RootMsg) {
        let now = Instant::now();
        let msg = match msg {
            RootMsg::Logs { request_id, job_id, instance_number, tail, cursor } => {
                self.on_logs_request(request_id, &job_id, instance_number, tail, cursor, now);
                return;
            }
            RootMsg::Subnet { request_id, subnet, error, .. } => {
                let answer = if error.is_empty() { Ok(subnet) } else { Err(error) };
                self.subnets.lock().unwrap_or_else(|e| e.into_inner()).answer(request_id, answer);
                return;
            }
            RootMsg::Table { request_id, table } => {
                let effects = self.state().routes.answer(request_id, table);
                self.perform(effects);
                return;
            }
            RootMsg::Routes { table } => {
                let effects = self.state().routes.routes(table);
                self.perform(effects);
                return;
            }
            RootMsg::Peer { request_id, answer } => {
                let effects = self.state().peers.answer(request_id, answer, now);
                self.perform(effects);
                return;
            }
            // A keepalive: that it arrived is all it says.
            RootMsg::Ping => return,
            other => other,
        };
        let effects = {
            let mut st = self.state();
            // Placement happens in the next step (woken at once, spaced by the steps' own cost),
            // once for everything that arrived: a burst costs one pass over the nodes, not one each.
            match msg {
                RootMsg::Deploy { full: false, instances, .. } => {
                    for d in &instances {
                        let deploy_id = oak_core::deploy_id(&d.job.id, d.instance_number);
                        tracing::info!(parent: &tracing::info_span!("deploy", %deploy_id), job = %d.job.job_name, "deploy received from the root");
                    }
                    st.deploy(instances, false, now)
                }
                RootMsg::Deploy { full: true, instances, last, .. } => {
                    let mut parts = self.full_deploy.lock().unwrap_or_else(|e| e.into_inner());
                    parts.extend(instances);
                    if !last {
                        return;
                    }
                    st.deploy(std::mem::take(&mut *parts), true, now)
                }
                RootMsg::Undeploy { instances } => st.undeploy(&instances),
                RootMsg::Welcome { .. }
                | RootMsg::Refused { .. }
                | RootMsg::Logs { .. }
                | RootMsg::Subnet { .. }
                | RootMsg::Table { .. }
                | RootMsg::Peer { .. }
                | RootMsg::Routes { .. }
                | RootMsg::Ping => Vec::new(),
            }
        };
        // Placed at once rather than at the next tick.
        self.wake.notify_one();
        self.perform(effects);
    }

    /// Asks the instance's worker for its output; answers the root at once when it cannot.
    fn on_logs_request(
        &self,
        root_request: u64,
        job_id: &str,
        number: u32,
        tail: u64,
        cursor: Option<oak_api::node::LogCursor>,
        now: Instant,
    ) {
        let located = self.state().locate(job_id, number);
        match located {
            Ok((node, job_name)) => {
                let id = self.logs.lock().unwrap_or_else(|e| e.into_inner()).start(root_request, &node, now);
                let query =
                    oak_api::node::LogsQuery { request_id: id, job_name, instance_number: number, tail, cursor };
                match serde_json::to_vec(&query) {
                    Ok(p) => self.bus.publish(topic::logs_query(&node), p),
                    Err(e) => tracing::error!(error = %e, "cannot encode a logs query"),
                }
            }
            Err(error) => {
                let _ = self.send_root(logs::error(root_request, error));
            }
        }
    }

    /// A worker's answer goes to the root under the root's request id. Answers nobody waits
    /// for (timed out, or from another node) are dropped.
    fn on_logs_answer(&self, node: &str, answer: oak_api::node::LogsAnswer) {
        let root_request = self.logs.lock().unwrap_or_else(|e| e.into_inner()).finish(answer.request_id, node);
        if let Some(request_id) = root_request {
            let msg = ClusterMsg::Logs { request_id, data: answer.data, cursor: answer.cursor, error: answer.error };
            let _ = self.send_root(msg);
        }
    }

    /// One control-loop step: placement, changes to the root, store writes; on the periodic
    /// tick also timeouts and due metrics (scans over everything, too costly for every event).
    fn tick(&self, periodic: bool, report: bool) {
        let now = Instant::now();
        if periodic {
            self.pull_heard(now);
        }
        let expired = self.logs.lock().unwrap_or_else(|e| e.into_inner()).expire(now);
        for (request_id, node) in expired {
            let _ = self.send_root(logs::error(request_id, format!("worker {node} did not answer within 10 s")));
        }
        let connected = self.root_connected();
        let (effects, updates, resources, workers, batch) = {
            let mut st = self.state();
            let mut fx = if periodic { st.check_timeouts(now) } else { Vec::new() };
            if periodic {
                st.queue_due_metrics(now);
                fx.extend(st.routes.expire(now));
                fx.extend(st.peers.expire(now));
            }
            fx.extend(st.schedule(now));
            let updates = if connected { st.root_updates(false, now) } else { Vec::new() };
            let resources = (connected && report).then(|| st.resources(now));
            let workers = (connected && report).then(|| st.worker_summaries(now));
            (fx, updates, resources, workers, st.take_batch())
        };
        self.perform(effects);
        if !updates.is_empty() {
            for part in ClusterMsg::instances(false, updates) {
                self.send_root(part);
            }
        }
        if let Some(resources) = resources {
            self.send_root(ClusterMsg::Report { resources });
        }
        if let Some(current) = workers {
            // Only what changed noticeably since the last full list of this connection.
            let (changed, removed) = self.workers_sent.lock().unwrap_or_else(|e| e.into_inner()).changes(current);
            if !changed.is_empty() || !removed.is_empty() {
                for part in ClusterMsg::workers(false, changed, removed) {
                    self.send_root(part);
                }
            }
        }
        if !batch.is_empty() {
            if let Err(e) = self.store.write(batch) {
                tracing::error!(error = %e, "cannot write cluster state");
            }
        }
    }

    /// Whether workers may report quietly ([`oak_api::node::features::QUIET_REPORTS`]): the
    /// embedded broker tells when it last heard from each, and the worker timeout spans three
    /// of their keep-alive pings.
    pub(crate) fn quiet_reports(&self) -> bool {
        self.bus.nodes_heard().is_some() && self.config.timing.node_timeout >= QUIET_MIN_NODE_TIMEOUT
    }

    /// Once a second, what the broker heard from each worker counts as a report of its liveness.
    fn pull_heard(&self, now: Instant) {
        {
            let mut pulled = self.heard_pulled.lock().unwrap_or_else(|e| e.into_inner());
            if pulled.is_some_and(|t| now.saturating_duration_since(t) < HEARD_PULL) {
                return;
            }
            *pulled = Some(now);
        }
        let Some(heard) = self.bus.nodes_heard() else { return };
        let mut st = self.state();
        for (node, at) in heard {
            st.heard(&node, at);
        }
    }

    fn flush(&self) {
        let batch = self.state().take_batch();
        if !batch.is_empty() {
            if let Err(e) = self.store.write(batch) {
                tracing::error!(error = %e, "cannot write cluster state");
            }
        }
    }

    fn perform(&self, effects: Vec<Effect>) {
        let mut forgotten = false;
        let mut deploys = deploy_batches::DeployBatches::new(self.batching_nodes(&effects));
        for e in effects {
            if let Some(node) = e.node().filter(|_| !matches!(e, Effect::Deploy { .. })) {
                // Whatever else goes to a node goes after the deploys sent to it before.
                for (topic_name, payload) in deploys.take(node) {
                    self.publish(topic_name, payload);
                }
            }
            let (topic_name, payload) = match e {
                Effect::Deploy { node, cmd } => {
                    let deploy_id = oak_core::deploy_id(&cmd.job.id, cmd.instance_number);
                    tracing::info!(parent: &tracing::info_span!("deploy", %deploy_id), %node, job = %cmd.job.job_name, "instance sent to its worker");
                    deploys.add(node, *cmd);
                    continue;
                }
                Effect::Delete { node, cmd } => (topic::delete(&node), serde_json::to_vec(&cmd)),
                Effect::NodeError { node, message } => {
                    (topic::error(&node), serde_json::to_vec(&oak_api::node::ControlError { message }))
                }
                Effect::Table { node, table } => (oak_api::net::topic::table_result(&node), serde_json::to_vec(&table)),
                Effect::Peer { node, answer } => (oak_api::net::topic::peer_result(&node), serde_json::to_vec(&answer)),
                Effect::Root(msg) => {
                    self.send_root(*msg);
                    continue;
                }
                Effect::Forgotten { node } => {
                    self.bus.kick(&node);
                    forgotten = true;
                    continue;
                }
            };
            self.publish(topic_name, payload);
        }
        for (topic_name, payload) in deploys.take_all() {
            self.publish(topic_name, payload);
        }
        if forgotten {
            // The root gives the forgotten nodes' subnets back.
            self.send_root(ClusterMsg::Nodes { node_ids: self.node_ids() });
        }
    }

    fn publish(&self, topic_name: String, payload: serde_json::Result<Vec<u8>>) {
        match payload {
            Ok(p) => self.bus.publish(topic_name, p),
            Err(err) => tracing::error!(error = %err, "cannot encode a command"),
        }
    }

    /// The nodes deployed to in `effects` whose workers take several deploy commands in one
    /// message.
    fn batching_nodes(&self, effects: &[Effect]) -> HashSet<String> {
        let mut seen = HashSet::new();
        let repeated: HashSet<&String> = effects
            .iter()
            .filter_map(|e| if let Effect::Deploy { node, .. } = e { Some(node) } else { None })
            .filter(|node| !seen.insert(*node))
            .collect();
        if repeated.is_empty() {
            return HashSet::new();
        }
        let st = self.state();
        repeated
            .into_iter()
            .filter(|n| {
                st.nodes.get(*n).is_some_and(|node| {
                    node.record.info.features.iter().any(|f| f == oak_api::node::features::DEPLOY_BATCH)
                })
            })
            .cloned()
            .collect()
    }

    /// Every node the cluster knows, for the root's subnet bookkeeping: those registering now
    /// (read first: a registration stores its node before it stops waiting) and the stored ones.
    fn node_ids(&self) -> Vec<String> {
        let mut ids: std::collections::BTreeSet<String> =
            self.subnets.lock().unwrap_or_else(|e| e.into_inner()).nodes().cloned().collect();
        ids.extend(self.state().node_ids().cloned());
        ids.into_iter().collect()
    }

    /// Asks the root for a node's overlay subnet. The returned guard keeps the request listed
    /// (see [`Ctx::node_ids`]) until the caller has stored the node.
    async fn request_subnet(&self, node_id: &str) -> (SubnetRequest<'_>, Result<String, String>) {
        let (id, rx) = self.subnets.lock().unwrap_or_else(|e| e.into_inner()).start(node_id);
        let guard = SubnetRequest { ctx: self, id };
        const AWAY: &str = "the overlay needs a subnet from the root, which is not reachable";
        if !self.send_root(ClusterMsg::SubnetRequest { request_id: id, node_id: node_id.to_string() }) {
            return (guard, Err(format!("{AWAY}: try again later")));
        }
        let answer = match tokio::time::timeout(subnets::ANSWER_TIMEOUT, rx).await {
            Ok(Ok(Ok(subnet))) => subnets::check(&subnet).map(|()| subnet),
            Ok(Ok(Err(e))) => Err(format!("the root cannot give this node an overlay subnet: {e}")),
            Ok(Err(_)) | Err(_) => Err(format!("{AWAY} (no answer within {} s)", subnets::ANSWER_TIMEOUT.as_secs())),
        };
        (guard, answer)
    }
}

/// A subnet request in progress; dropping it ends it.
struct SubnetRequest<'a> {
    ctx: &'a Ctx,
    id: u64,
}

impl Drop for SubnetRequest<'_> {
    fn drop(&mut self) {
        self.ctx.subnets.lock().unwrap_or_else(|e| e.into_inner()).finish(self.id);
    }
}

fn garbled(node: &str, kind: &str, e: serde_json::Error) -> Effect {
    tracing::warn!(node, topic = kind, error = %e, "malformed message from worker");
    Effect::NodeError { node: node.into(), message: format!("malformed {kind} message: {e}") }
}

/// A cluster configuration on a data dir of the test's own, with an embedded broker on a free
/// port and a root that is never reached: for unit tests of the cluster's modules.
#[cfg(test)]
fn test_config(dir: &std::path::Path) -> ClusterConfig {
    ClusterConfig {
        name: "c1".into(),
        location: String::new(),
        root_channel: "127.0.0.1:1".into(),
        root_url: String::new(),
        root_token: oak_tls::JoinToken::generate(oak_tls::TokenKind::Cluster, oak_tls::Fingerprint::of(b"test CA"))
            .to_string(),
        api_addr: "127.0.0.1:0".parse().unwrap(),
        mqtt: MqttMode::Embedded { addr: "127.0.0.1:0".parse().unwrap() },
        mqtt_advertise: None,
        data_dir: dir.to_path_buf(),
        report_interval: Duration::from_secs(1),
        timing: Default::default(),
        metrics_token: None,
    }
}

/// The context of a cluster opened on [`test_config`].
#[cfg(test)]
async fn test_ctx(dir: &std::path::Path) -> Arc<Ctx> {
    Cluster::open(test_config(dir)).await.unwrap().ctx
}
