//! The cluster's working state and its transitions: nodes with their liveness and placed
//! demand, instances with their lifecycle (spec §4.5, defects fixed). Every method takes the
//! current time and returns the effects to perform (MQTT commands, reports to the root), so the
//! rules are tested without sockets or clocks.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oak_api::channel::{ClusterMsg, ClusterResources, DeployInstance, InstanceRef, InstanceReport};
use oak_api::net::{RouteTable, TableQuery};
use oak_api::node::{DeleteCommand, DeployCommand, JobSpec, JobStatusReport, NodeInfo, ResourcesReport};
use oak_api::sla::Microservice;
use oak_api::status;
use oak_core::node_placement::{aggregate, choose_node_spread, rank_by_name, Demand, NodeView};
use oak_core::ports::{host_ports, HostPort};
use oak_core::stats::Samples;

use crate::routes::Routes;
use crate::store::{Batch, InstanceRecord, NodeRecord};

pub type Key = (String, u32);

/// Timing rules of the control loop.
#[derive(Debug, Clone)]
pub struct Timing {
    /// A node that sent no information for this long is lost: inactive, and its instances move
    /// (`--worker-timeout`).
    pub node_timeout: Duration,
    /// An instance sent to a worker that has not started it after this long is re-placed.
    pub deploy_timeout: Duration,
    /// Longest wait between two placement attempts of one instance (they start 1 s apart and
    /// double up to this).
    pub retry_max: Duration,
    /// Metrics-only changes are sent to the root at most this often per instance.
    pub metrics_interval: Duration,
    /// A node silent this long and holding no instances is forgotten: removed with its
    /// credentials, and its overlay subnet given back to the root.
    pub node_forget_after: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            node_timeout: Duration::from_secs(15),
            deploy_timeout: Duration::from_secs(120),
            retry_max: Duration::from_secs(30),
            metrics_interval: Duration::from_secs(10),
            node_forget_after: Duration::from_secs(3600),
        }
    }
}

/// Something to do outside the state: the caller performs these after releasing its lock.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Deploy {
        node: String,
        cmd: Box<DeployCommand>,
    },
    Delete {
        node: String,
        cmd: DeleteCommand,
    },
    NodeError {
        node: String,
        message: String,
    },
    /// A peer directory answer for a worker (`nodes/<node>/net/peerquery/result`).
    Peer {
        node: String,
        answer: Box<oak_api::net::PeerAnswer>,
    },
    /// A route table for a worker (`nodes/<node>/net/tablequery/result`).
    Table {
        node: String,
        table: Box<RouteTable>,
    },
    /// A message for the root (dropped while it is not connected).
    Root(Box<ClusterMsg>),
    /// The node was forgotten: end its broker sessions and tell the root the nodes left.
    Forgotten {
        node: String,
    },
}

impl Effect {
    /// The node a message of this effect goes to, if any.
    pub fn node(&self) -> Option<&str> {
        match self {
            Effect::Deploy { node, .. }
            | Effect::Delete { node, .. }
            | Effect::NodeError { node, .. }
            | Effect::Peer { node, .. }
            | Effect::Table { node, .. }
            | Effect::Forgotten { node } => Some(node),
            Effect::Root(_) => None,
        }
    }
}

pub struct Node {
    pub record: NodeRecord,
    pub last_seen: Option<Instant>,
    /// Its last registration or information (unlike `last_seen`, kept while it is inactive).
    pub last_heard: Instant,
    /// Sum of what the instances placed here requested.
    pub placed: Demand,
    /// Host ports the instances placed here map, each with the number of instances mapping it
    /// (more than one only for instances placed before ports were counted).
    pub ports: BTreeMap<HostPort, u32>,
    /// Whether the scheduler's view of the node (kept between steps in
    /// [`ClusterState::views`]: building one clones the node's names and lists, and a burst
    /// places many times per second) must be built again: `record.info` or what is placed
    /// changed.
    stale: bool,
}

impl Node {
    fn new(record: NodeRecord, now: Instant) -> Self {
        Node {
            record,
            last_seen: None,
            last_heard: now,
            placed: Demand::default(),
            ports: BTreeMap::new(),
            stale: true,
        }
    }

    /// An instance of `job` was placed here: it holds its demand and host ports.
    fn hold(&mut self, job: &Microservice) {
        self.placed = self.placed.plus(Demand::of(job));
        for port in host_ports(&job.port) {
            *self.ports.entry(port).or_default() += 1;
        }
        self.stale = true;
    }

    /// An instance of `job` left: what it held is free again.
    fn release(&mut self, job: &Microservice) {
        self.placed = self.placed.minus(Demand::of(job));
        for port in host_ports(&job.port) {
            if let Some(n) = self.ports.get_mut(&port) {
                *n -= 1;
                if *n == 0 {
                    self.ports.remove(&port);
                }
            }
        }
        self.stale = true;
    }

    /// The scheduler's view of the node: free resources and taken host ports.
    fn fresh_view(&self, active: bool) -> NodeView {
        let mut view = NodeView::from_info(&self.record.info, active, std::iter::once(self.placed));
        view.host_ports.extend(self.ports.keys().copied());
        view
    }
}

/// Where peers reach a node's instances: the overlay's tunnel endpoint (public address, UDP
/// port) on overlay nodes, the node's address otherwise.
fn endpoint(info: &NodeInfo) -> (String, Option<String>) {
    match &info.overlay {
        Some(o) if !o.public_addr.is_empty() => (o.public_addr.clone(), Some(o.tunnel_port.to_string())),
        Some(o) => (info.ip.clone(), Some(o.tunnel_port.to_string())),
        None => (info.ip.clone(), None),
    }
}

/// The node's tunnel key, when it runs the encrypted overlay.
fn tunnel_key(info: &NodeInfo) -> Option<String> {
    info.overlay.as_ref().map(|o| o.public_key.clone()).filter(|k| !k.is_empty())
}

pub struct Inst {
    pub job: Arc<JobSpec>,
    pub number: u32,
    pub status: String,
    pub detail: String,
    pub worker_id: Option<String>,
    pub host_ip: Option<String>,
    /// Its service IP from the root.
    pub instance_ip: Option<String>,
    /// Its address on its worker's overlay bridge, while it is there.
    pub namespace_ip: Option<String>,
    pub publicip: Option<String>,
    pub cpu_percent: Option<f64>,
    pub memory_percent: Option<f64>,
    pub memory_bytes: Option<u64>,
    pub disk: Option<u64>,
    pub logs: Option<String>,
    /// Failures where it ran (persisted): a crash loop backs off more each time.
    pub attempts: u32,
    /// Placement attempts in a row that found no node; not persisted, and reset when the set of
    /// active workers changes, so a joining worker takes waiting instances at once.
    pub tries: u32,
    /// Earliest time of the next placement attempt.
    pub next_try: Instant,
    /// When the current status was entered.
    pub since: Instant,
    metrics_sent: Option<Instant>,
}

impl Inst {
    /// An instance on no node, due for placement now.
    fn new(job: Arc<JobSpec>, number: u32, status: String, detail: String, now: Instant) -> Self {
        Inst {
            job,
            number,
            status,
            detail,
            worker_id: None,
            host_ip: None,
            instance_ip: None,
            namespace_ip: None,
            publicip: None,
            cpu_percent: None,
            memory_percent: None,
            memory_bytes: None,
            disk: None,
            logs: None,
            attempts: 0,
            tries: 0,
            next_try: now,
            since: now,
            metrics_sent: None,
        }
    }
}

/// Statuses in which an instance waits for (another) placement.
fn wants_placement(s: &str) -> bool {
    matches!(s, status::REQUESTED | status::NO_WORKER_CAPACITY | status::NO_QUALIFIED_WORKER_FOUND)
        || s == status::FAILED
        || s == status::DEAD
}

/// Statuses in which an instance occupies its node.
fn on_node(s: &str) -> bool {
    matches!(s, status::NODE_SCHEDULED | status::RUNNING)
}

pub struct ClusterState {
    pub name: String,
    pub timing: Timing,
    pub nodes: BTreeMap<String, Node>,
    /// Each node's position in `nodes` (its view's index in a placement step), kept between
    /// steps: building it cloned every node id at every step. Emptied when a node comes or goes.
    node_index: HashMap<String, usize>,
    /// The scheduler's view of each node, in `nodes` order, kept between steps like
    /// `node_index` (moving a thousand views in and out of the nodes at every step was a good
    /// part of a step); a node's entry is built again when the node is `stale`.
    views: Vec<NodeView>,
    pub instances: BTreeMap<Key, Inst>,
    /// job name → job id, to read workers' reports (they name jobs by name).
    by_name: HashMap<String, String>,
    /// Instances whose state the root has not seen yet.
    to_root: BTreeSet<Key>,
    /// Instances just placed on a node, with when their `NODE_SCHEDULED` report is due
    /// ([`PLACED_REPORT_HOLD`] later): a worker that answers before then makes it one report to
    /// the root (`RUNNING`) instead of two, and the root one write instead of two.
    placed_reports: BTreeMap<Key, Instant>,
    /// Instances with metrics the root has not seen yet.
    metrics_to_root: BTreeSet<Key>,
    /// Changes not yet written to the store.
    dirty_nodes: BTreeSet<String>,
    dirty: BTreeSet<Key>,
    removed: BTreeSet<Key>,
    forgotten: BTreeSet<String>,
    /// Route tables relayed to workers, and who wants which.
    pub routes: Routes,
    /// Who holds which tunnel key, for workers' peer queries.
    pub peers: crate::peers::Peers,
    /// Placement decision times in microseconds.
    pub placement: Samples,
    /// The same as a histogram in seconds (`oakestra_placement_seconds`).
    pub placement_seconds: oak_metrics::Histogram,
    /// Whether some instance may be placeable now (skip scheduling passes otherwise).
    pending: bool,
    /// When every instance was last checked for a stuck deploy or a missing worker.
    instances_checked: Option<Instant>,
}

/// How often every instance is checked for a stuck deploy or a worker no longer registered
/// (both measured in tens of seconds). Instances of a worker that goes silent are checked at
/// once; scanning all of them at every periodic step was a tenth of a busy cluster's CPU.
const INSTANCE_CHECK: Duration = Duration::from_secs(1);

/// How long the root's news of a placement may wait for the worker's answer (see
/// `ClusterState::placed_reports`). Placements show at the root this much later; a worker that
/// starts the instance meanwhile saves a report and a root write per instance.
pub const PLACED_REPORT_HOLD: Duration = Duration::from_millis(250);

impl ClusterState {
    pub fn new(
        name: String,
        timing: Timing,
        nodes: Vec<NodeRecord>,
        instances: Vec<InstanceRecord>,
        now: Instant,
    ) -> Self {
        let mut st = ClusterState {
            name,
            timing,
            nodes: BTreeMap::new(),
            node_index: HashMap::new(),
            views: Vec::new(),
            instances: BTreeMap::new(),
            by_name: HashMap::new(),
            to_root: BTreeSet::new(),
            placed_reports: BTreeMap::new(),
            metrics_to_root: BTreeSet::new(),
            dirty_nodes: BTreeSet::new(),
            dirty: BTreeSet::new(),
            removed: BTreeSet::new(),
            forgotten: BTreeSet::new(),
            routes: Routes::default(),
            peers: Default::default(),
            placement: Samples::new(100_000),
            placement_seconds: oak_metrics::latency_histogram(),
            pending: true,
            instances_checked: None,
        };
        for record in nodes {
            // A restarted cluster cannot tell how long a node was silent: it gets the whole
            // forget period from now.
            st.nodes.insert(record.id.clone(), Node::new(record, now));
        }
        for r in instances {
            let job = st.shared_job(r.job);
            st.by_name.insert(job.job_name.clone(), job.id.clone());
            let key = (job.id.clone(), r.instance_number);
            let mut inst = Inst::new(job, r.instance_number, r.status, r.status_detail, now);
            inst.worker_id = r.worker_id;
            inst.attempts = r.attempts;
            inst.instance_ip = r.instance_ip;
            inst.namespace_ip = r.namespace_ip;
            if on_node(&inst.status) {
                if let Some(node) = inst.worker_id.as_ref().and_then(|w| st.nodes.get_mut(w)) {
                    node.hold(&inst.job.spec);
                }
            }
            st.instances.insert(key, inst);
        }
        st
    }

    // ---------------------------------------------------------------- nodes

    /// A node registered (or re-registered): keep its record, it becomes active when it reports.
    pub fn register_node(&mut self, record: NodeRecord, now: Instant) {
        let id = record.id.clone();
        match self.nodes.get_mut(&id) {
            Some(node) => {
                let moved = endpoint(&node.record.info) != endpoint(&record.info)
                    || tunnel_key(&node.record.info) != tunnel_key(&record.info);
                node.record = record;
                node.stale = true;
                node.last_heard = now;
                if moved {
                    self.endpoint_changed(&id);
                }
            }
            None => {
                self.nodes.insert(id.clone(), Node::new(record, now));
                self.node_index.clear();
            }
        }
        // Registering just as it was being forgotten: it stays.
        self.forgotten.remove(&id);
        self.dirty_nodes.insert(id);
    }

    pub fn node_secret_hash(&self, id: &str) -> Option<&str> {
        self.nodes.get(id).map(|n| n.record.secret_hash.as_str())
    }

    /// The overlay subnet a node was given, if any.
    pub fn node_subnet(&self, id: &str) -> Option<&str> {
        self.nodes.get(id).map(|n| n.record.subnet.as_str()).filter(|s| !s.is_empty())
    }

    /// The root hears again of every instance on `node_id`: where they are reached changed.
    fn endpoint_changed(&mut self, node_id: &str) {
        for (key, inst) in &self.instances {
            if inst.worker_id.as_deref() == Some(node_id) {
                self.to_root.insert(key.clone());
            }
        }
    }

    /// `nodes/<id>/information`.
    pub fn node_information(&mut self, node_id: &str, mut info: NodeInfo, now: Instant) -> Vec<Effect> {
        let Some(node) = self.nodes.get_mut(node_id) else {
            return vec![Effect::NodeError {
                node: node_id.into(),
                message: "Node not registered to the cluster".into(),
            }];
        };
        let was_active = node.last_seen.is_some_and(|t| now.duration_since(t) <= self.timing.node_timeout);
        info.id = node_id.to_string();
        if info.host.is_empty() {
            info.host = node.record.info.host.clone();
        }
        // A new tunnel key (a worker that lost its data) reaches the route tables like a move.
        let moved =
            endpoint(&node.record.info) != endpoint(&info) || tunnel_key(&node.record.info) != tunnel_key(&info);
        let overlay_changed = match (&node.record.info.overlay, &info.overlay) {
            (Some(a), Some(b)) => !a.same_identity(b),
            (a, b) => a.is_some() != b.is_some(),
        };
        let offers_changed = offers_differ(&node.record.info, &info);
        node.record.info = info;
        node.stale = true;
        node.last_seen = Some(now);
        node.last_heard = now;
        if !was_active {
            tracing::info!(node = node_id, name = %node.record.info.host, "worker active");
        }
        if !was_active || overlay_changed {
            self.dirty_nodes.insert(node_id.to_string());
        }
        if moved {
            tracing::info!(node = node_id, endpoint = ?endpoint(&node.record.info), "worker endpoint changed");
            self.endpoint_changed(node_id);
        }
        if !was_active || offers_changed {
            self.workers_changed(now);
        }
        Vec::new()
    }

    /// The broker heard from an active worker at `at` (any packet on its connection): as alive
    /// as an `information` report would make it. A worker that is not active stays so until it
    /// reports what it offers.
    pub fn heard(&mut self, node_id: &str, at: Instant) {
        if let Some(node) = self.nodes.get_mut(node_id) {
            if let Some(seen) = node.last_seen.as_mut() {
                *seen = (*seen).max(at);
                node.last_heard = node.last_heard.max(at);
            }
        }
    }

    /// A worker became active, or what it offers changed: instances that found no node try again now, their back-off
    /// starting over (a crash-looping instance keeps its own).
    fn workers_changed(&mut self, now: Instant) {
        for inst in self.instances.values_mut() {
            if matches!(inst.status.as_str(), status::NO_WORKER_CAPACITY | status::NO_QUALIFIED_WORKER_FOUND) {
                inst.tries = 0;
                inst.next_try = inst.next_try.min(now);
            }
        }
        self.pending = true;
    }

    fn is_active(&self, node: &Node, now: Instant) -> bool {
        node.last_seen.is_some_and(|t| now.duration_since(t) <= self.timing.node_timeout)
    }

    /// How long ago each worker last registered or reported, by node id: what an operator
    /// compares with `--worker-timeout` on a lossy link, and how a test sees that the cluster
    /// heard from a worker again.
    pub fn report_ages(&self, now: Instant) -> impl Iterator<Item = (&str, Duration)> {
        self.nodes.iter().map(move |(id, n)| (id.as_str(), now.saturating_duration_since(n.last_heard)))
    }

    pub fn active_nodes(&self, now: Instant) -> usize {
        self.nodes.values().filter(|n| self.is_active(n, now)).count()
    }

    fn views(&self, now: Instant) -> Vec<NodeView> {
        self.nodes.values().map(|n| n.fresh_view(self.is_active(n, now))).collect()
    }

    /// Every worker's summary for the root, active or not.
    pub fn worker_summaries(&self, now: Instant) -> Vec<oak_api::channel::WorkerSummary> {
        self.nodes.iter().map(|(id, n)| crate::workers::summary(id, &n.record.info, self.is_active(n, now))).collect()
    }

    /// Resources for the root: free amounts after what is placed.
    pub fn resources(&self, now: Instant) -> ClusterResources {
        aggregate(&self.views(now))
    }

    // ---------------------------------------------------------------- root commands

    /// The root wants these instances here. With `full`, it wants nothing else.
    pub fn deploy(&mut self, list: Vec<DeployInstance>, full: bool, now: Instant) -> Vec<Effect> {
        let mut effects = Vec::new();
        let mut wanted = BTreeSet::new();
        for d in list {
            let key = (d.job.id.clone(), d.instance_number);
            wanted.insert(key.clone());
            self.by_name.insert(d.job.job_name.clone(), d.job.id.clone());
            match self.instances.get_mut(&key) {
                Some(inst) => {
                    if *inst.job != d.job || inst.instance_ip != d.instance_ip {
                        // Its node holds what the new descriptor asks, not the old one.
                        let node = inst.worker_id.as_ref().and_then(|w| self.nodes.get_mut(w));
                        if let Some(node) = node.filter(|_| on_node(&inst.status)) {
                            node.release(&inst.job.spec);
                            node.hold(&d.job.spec);
                        }
                        inst.job = Arc::new(d.job);
                        inst.instance_ip = d.instance_ip;
                        self.dirty.insert(key.clone());
                    }
                    // Tell the root where it stands (it may have missed our last report).
                    self.to_root.insert(key);
                }
                None => {
                    let job = self.shared_job(d.job);
                    let mut inst =
                        Inst::new(job, d.instance_number, status::REQUESTED.into(), "waiting for a worker".into(), now);
                    inst.instance_ip = d.instance_ip;
                    self.instances.insert(key.clone(), inst);
                    self.dirty.insert(key.clone());
                    self.removed.remove(&key);
                    self.pending = true;
                }
            }
        }
        if full {
            let extra: Vec<Key> = self.instances.keys().filter(|k| !wanted.contains(*k)).cloned().collect();
            for key in extra {
                effects.extend(self.remove(&key));
            }
        }
        effects
    }

    /// `job` as an [`Arc`] shared with the instances of the same job that have the same
    /// descriptor: the root sends it with every instance, and a thousand instances of a few
    /// services would otherwise hold a thousand copies.
    fn shared_job(&self, job: JobSpec) -> Arc<JobSpec> {
        let first = (job.id.clone(), 0);
        match self.instances.range(first..).next() {
            Some(((id, _), sibling)) if *id == job.id && *sibling.job == job => sibling.job.clone(),
            _ => Arc::new(job),
        }
    }

    /// The root no longer wants these instances here.
    pub fn undeploy(&mut self, refs: &[InstanceRef]) -> Vec<Effect> {
        refs.iter().flat_map(|r| self.remove(&(r.job_id.clone(), r.instance_number))).collect()
    }

    fn remove(&mut self, key: &Key) -> Vec<Effect> {
        let Some(mut inst) = self.instances.remove(key) else { return Vec::new() };
        let effect = self.leave_node(&mut inst);
        self.removed.insert(key.clone());
        self.dirty.remove(key);
        self.to_root.remove(key);
        self.placed_reports.remove(key);
        self.metrics_to_root.remove(key);
        self.pending = true;
        effect.into_iter().collect()
    }

    /// Takes an instance off its node: frees the capacity and, if the worker may still run it,
    /// asks it to stop.
    fn leave_node(&mut self, inst: &mut Inst) -> Option<Effect> {
        let node_id = inst.worker_id.take()?;
        // Its bridge address goes with the node.
        inst.namespace_ip = None;
        let was_on_node = on_node(&inst.status);
        if let Some(node) = self.nodes.get_mut(&node_id) {
            if was_on_node {
                node.release(&inst.job.spec);
            }
        }
        Some(Effect::Delete {
            node: node_id,
            cmd: DeleteCommand {
                job_name: inst.job.job_name.clone(),
                virtualization: inst.job.spec.virtualization.clone(),
                instance_number: inst.number,
            },
        })
    }

    // ---------------------------------------------------------------- scheduling

    /// Places every instance that waits for a node and whose back-off has passed.
    pub fn schedule(&mut self, now: Instant) -> Vec<Effect> {
        if !self.pending {
            return Vec::new();
        }
        // Instances still waiting keep the loop looking.
        let mut waiting = false;
        let due: Vec<Key> = self
            .instances
            .iter()
            .filter(|(_, i)| {
                let wants = wants_placement(&i.status);
                waiting |= wants;
                wants && i.next_try <= now
            })
            .map(|(k, _)| k.clone())
            .collect();
        self.pending = waiting;
        if due.is_empty() {
            return Vec::new();
        }
        let timeout = self.timing.node_timeout;
        // The ranks follow the names: numbered again when the views are rebuilt or a name changed.
        let mut rerank = false;
        if self.node_index.len() != self.nodes.len() || self.views.len() != self.nodes.len() {
            self.node_index = self.nodes.keys().enumerate().map(|(i, id)| (id.clone(), i)).collect();
            self.views = self.nodes.values().map(|n| n.fresh_view(false)).collect();
            self.nodes.values_mut().for_each(|n| n.stale = false);
            rerank = true;
        }
        for (node, view) in self.nodes.values_mut().zip(self.views.iter_mut()) {
            if node.stale {
                let rank = view.rank;
                let old_name = std::mem::take(&mut view.name);
                *view = node.fresh_view(false);
                rerank |= view.name != old_name;
                view.rank = rank;
                node.stale = false;
            }
            view.active = node.last_seen.is_some_and(|t| now.duration_since(t) <= timeout);
        }
        if rerank {
            rank_by_name(&mut self.views);
        }
        let mut views = std::mem::take(&mut self.views);
        let index = std::mem::take(&mut self.node_index);
        // Per service: how many of its instances each node holds, counted once per step.
        let mut siblings: HashMap<String, Vec<u32>> = HashMap::new();
        let mut effects = Vec::new();
        for key in due {
            let started = Instant::now();
            let job = self.instances[&key].job.clone();
            let counts = siblings
                .entry(key.0.clone())
                .or_insert_with(|| sibling_counts(&self.instances, &key.0, &index, views.len()));
            let decision = choose_node_spread(&job.spec, &self.name, &views, counts);
            let took = started.elapsed();
            self.placement.record(took.as_micros() as u64);
            self.placement_seconds.observe(took.as_secs_f64());
            let inst = self.instances.get_mut(&key).expect("due instances exist");
            let placed = match decision {
                Ok(i) => {
                    counts[i] += 1;
                    inst.tries = 0;
                    let demand = Demand::of(&job.spec);
                    let view = &mut views[i];
                    view.free_vcpus = (view.free_vcpus - demand.vcpus).max(0.0);
                    view.free_memory_mb = view.free_memory_mb.saturating_sub(demand.memory_mb);
                    view.free_gpus = view.free_gpus.saturating_sub(demand.gpus);
                    view.host_ports.extend(host_ports(&job.spec.port));
                    let node = self.nodes.get_mut(&view.id).expect("views come from nodes");
                    // Built again next step from what is placed, not from this step's subtraction.
                    node.hold(&job.spec);
                    inst.status = status::NODE_SCHEDULED.into();
                    inst.detail = format!("sent to worker {}", node.record.info.host);
                    inst.worker_id = Some(view.id.clone());
                    inst.host_ip = Some(node.record.info.ip.clone());
                    inst.since = now;
                    inst.namespace_ip = None;
                    effects.push(Effect::Deploy {
                        node: view.id.clone(),
                        cmd: Box::new(DeployCommand {
                            job: (*job).clone(),
                            instance_number: inst.number,
                            instance_ip: inst.instance_ip.clone(),
                            netns: None,
                        }),
                    });
                    true
                }
                Err(unplaced) => {
                    inst.next_try = now + backoff(inst.tries, self.timing.retry_max);
                    inst.tries = inst.tries.saturating_add(1);
                    let detail = unplaced.detail();
                    if inst.status != unplaced.status || inst.detail != detail {
                        inst.status = unplaced.status.into();
                        inst.detail = detail;
                        inst.since = now;
                    } else {
                        continue;
                    }
                    false
                }
            };
            self.dirty.insert(key.clone());
            if placed {
                self.placed_reports.insert(key, now + PLACED_REPORT_HOLD);
            } else {
                self.to_root.insert(key);
            }
        }
        self.views = views;
        self.node_index = index;
        effects
    }

    // ---------------------------------------------------------------- worker reports

    /// `nodes/<id>/job`: an instance changed state on a worker.
    pub fn job_report(&mut self, node_id: &str, r: JobStatusReport, now: Instant) -> Vec<Effect> {
        let Some(job_id) = self.by_name.get(&r.sname).cloned() else {
            return stale_delete(node_id, &r.sname, r.instance, &r.status);
        };
        let key = (job_id, r.instance);
        let Some(inst) = self.instances.get_mut(&key) else {
            return stale_delete(node_id, &r.sname, r.instance, &r.status);
        };
        if inst.worker_id.as_deref() != Some(node_id) {
            // A late report from a worker the instance has left: never let it overwrite.
            return stale_delete(node_id, &r.sname, r.instance, &r.status);
        }
        if !on_node(&inst.status) {
            return Vec::new();
        }
        if !r.publicip.is_empty() {
            inst.publicip = Some(r.publicip.clone());
        }
        if !r.nsip.is_empty() && inst.namespace_ip.as_deref() != Some(r.nsip.as_str()) {
            inst.namespace_ip = Some(r.nsip.clone());
            self.dirty.insert(key.clone());
            self.to_root.insert(key.clone());
        }
        match r.status.as_str() {
            status::CREATING => {
                inst.detail = if r.status_detail.is_empty() {
                    "being created on the worker".into()
                } else {
                    r.status_detail.clone()
                };
                self.to_root.insert(key);
                Vec::new()
            }
            // A runtime's deploy returns once the instance started, so CREATED means running;
            // waiting for the next periodic usage report would add up to 2 s to every deploy.
            status::CREATED | status::RUNNING => {
                self.set_running(&key, now);
                Vec::new()
            }
            status::COMPLETED => {
                let mut inst = self.instances.remove(&key).expect("present");
                let _ = self.leave_node(&mut inst);
                inst.status = status::COMPLETED.into();
                inst.detail = if r.status_detail.is_empty() { "finished".into() } else { r.status_detail };
                inst.since = now;
                self.instances.insert(key.clone(), inst);
                self.mark(key);
                Vec::new()
            }
            status::FAILED | status::DEAD | status::UNDEPLOYED => {
                let detail = if r.status_detail.is_empty() {
                    format!("{} on worker {node_id}", r.status)
                } else {
                    r.status_detail.clone()
                };
                let s = if r.status == status::UNDEPLOYED { status::DEAD } else { r.status.as_str() };
                self.fail(&key, s, detail, now, false)
            }
            other => {
                tracing::debug!(node = node_id, status = other, "ignoring unknown instance status");
                Vec::new()
            }
        }
    }

    /// The node running an instance and the instance's job name, or why there is none.
    pub fn locate(&self, job_id: &str, number: u32) -> Result<(String, String), String> {
        let Some(inst) = self.instances.get(&(job_id.to_string(), number)) else {
            return Err(format!("instance {number} of service {job_id} is not on this cluster"));
        };
        match (&inst.worker_id, on_node(&inst.status)) {
            (Some(node), true) => Ok((node.clone(), inst.job.job_name.clone())),
            _ => Err(format!("instance {number} of service {job_id} is not on a worker (status {})", inst.status)),
        }
    }

    /// `nodes/<id>/jobs/resources`: the instances a worker runs, with usage.
    pub fn resources_report(&mut self, node_id: &str, r: ResourcesReport, now: Instant) -> Vec<Effect> {
        let mut effects = Vec::new();
        for s in r.services {
            let Some(job_id) = self.by_name.get(&s.job_name).cloned() else {
                effects.extend(stale_delete(node_id, &s.job_name, s.instance, status::RUNNING));
                continue;
            };
            let key = (job_id, s.instance);
            let Some(inst) = self.instances.get_mut(&key) else {
                effects.extend(stale_delete(node_id, &s.job_name, s.instance, status::RUNNING));
                continue;
            };
            if inst.worker_id.as_deref() != Some(node_id) || !on_node(&inst.status) {
                effects.extend(stale_delete(node_id, &s.job_name, s.instance, status::RUNNING));
                continue;
            }
            inst.cpu_percent = s.cpu_percent.parse().ok();
            inst.memory_percent = s.memory_percent.parse().ok();
            inst.memory_bytes = s.memory_bytes.parse().ok();
            inst.disk = s.disk.parse::<f64>().ok().map(|d| d as u64);
            if !s.logs.is_empty() {
                inst.logs = Some(s.logs);
            }
            self.metrics_to_root.insert(key.clone());
            self.set_running(&key, now);
        }
        effects
    }

    fn set_running(&mut self, key: &Key, now: Instant) {
        let Some(inst) = self.instances.get_mut(key) else { return };
        if inst.status != status::RUNNING {
            inst.status = status::RUNNING.into();
            inst.detail = "running".into();
            inst.since = now;
            self.mark(key.clone());
        }
    }

    fn mark(&mut self, key: Key) {
        self.dirty.insert(key.clone());
        self.to_root.insert(key);
    }

    /// The instance failed where it was: free the node, retry elsewhere after a back-off.
    fn fail(&mut self, key: &Key, s: &str, detail: String, now: Instant, stop_it: bool) -> Vec<Effect> {
        let Some(mut inst) = self.instances.remove(key) else { return Vec::new() };
        let delete = self.leave_node(&mut inst);
        // A crash loop backs off more each time; an instance that ran for a while before it
        // failed starts over at the shortest delay.
        if inst.status == status::RUNNING && now.duration_since(inst.since) >= STABLE_RUN {
            inst.attempts = 0;
        }
        inst.status = s.into();
        inst.detail = detail;
        inst.since = now;
        inst.attempts = inst.attempts.saturating_add(1);
        inst.next_try = now + backoff(inst.attempts.saturating_sub(1), self.timing.retry_max);
        self.instances.insert(key.clone(), inst);
        self.mark(key.clone());
        self.pending = true;
        if stop_it {
            delete.into_iter().collect()
        } else {
            Vec::new()
        }
    }

    // ---------------------------------------------------------------- time

    /// Liveness and timeouts: instances of silent workers and stuck deployments move on.
    pub fn check_timeouts(&mut self, now: Instant) -> Vec<Effect> {
        let mut effects = Vec::new();
        let silent: BTreeSet<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.last_seen.is_some_and(|t| now.duration_since(t) > self.timing.node_timeout))
            .map(|(id, _)| id.clone())
            .collect();
        let recently = self.instances_checked.is_some_and(|t| now.saturating_duration_since(t) < INSTANCE_CHECK);
        if silent.is_empty() && recently {
            effects.extend(self.forget_silent_nodes(now));
            return effects;
        }
        self.instances_checked = Some(now);
        let mut moves = Vec::new();
        for (key, inst) in &self.instances {
            if !on_node(&inst.status) {
                continue;
            }
            let worker = inst.worker_id.as_deref().unwrap_or("");
            if silent.contains(worker) {
                moves.push((key.clone(), format!("worker {worker} stopped reporting"), false));
            } else if !self.nodes.contains_key(worker) {
                moves.push((key.clone(), format!("worker {worker} is not registered"), false));
            } else if inst.status == status::NODE_SCHEDULED
                && now.duration_since(inst.since) > self.timing.deploy_timeout
            {
                moves.push((
                    key.clone(),
                    format!("worker {worker} did not start it within {}s", self.timing.deploy_timeout.as_secs()),
                    true,
                ));
            }
        }
        for (key, detail, stuck) in moves {
            tracing::warn!(job = %key.0, instance = key.1, reason = %detail, "re-placing instance");
            // A silent worker gets the delete too: if it comes back it must not keep a copy.
            effects.extend(self.fail(&key, status::FAILED, detail, now, true));
            if !stuck {
                if let Some(inst) = self.instances.get_mut(&key) {
                    // Moving off a dead worker is not the instance's fault: no back-off.
                    inst.next_try = now;
                    inst.attempts = inst.attempts.saturating_sub(1);
                }
            }
        }
        for id in silent {
            if let Some(node) = self.nodes.get_mut(&id) {
                if node.last_seen.is_some() {
                    tracing::warn!(node = %id, "worker inactive");
                }
                node.last_seen = None;
            }
            // Its proxy is gone: it asks again when it is back.
            effects.extend(self.routes.forget_node(&id));
            self.peers.forget_node(&id);
        }
        effects.extend(self.forget_silent_nodes(now));
        effects
    }

    /// Nodes silent for `node_forget_after` that hold no instance are removed with their
    /// credentials; a worker coming back later registers as a new node.
    fn forget_silent_nodes(&mut self, now: Instant) -> Vec<Effect> {
        let after = self.timing.node_forget_after;
        let mut gone: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| now.duration_since(n.last_heard) > after)
            .map(|(id, _)| id.clone())
            .collect();
        if gone.is_empty() {
            return Vec::new();
        }
        let holding: BTreeSet<&str> = self.instances.values().filter_map(|i| i.worker_id.as_deref()).collect();
        gone.retain(|id| !holding.contains(id.as_str()));
        let mut effects = Vec::new();
        for id in gone {
            tracing::warn!(node = %id, silent_s = after.as_secs(), "forgetting a silent worker");
            self.nodes.remove(&id);
            self.node_index.clear();
            self.dirty_nodes.remove(&id);
            effects.extend(self.routes.forget_node(&id));
            self.peers.forget_node(&id);
            effects.push(Effect::Forgotten { node: id.clone() });
            self.forgotten.insert(id);
        }
        effects
    }

    /// Every node id (for `ClusterMsg::Nodes`).
    pub fn node_ids(&self) -> impl Iterator<Item = &String> {
        self.nodes.keys()
    }

    // ---------------------------------------------------------------- routes

    /// `nodes/<id>/net/peerquery/request` from a registered node: who holds tunnel key `key`.
    pub fn peer_query(&mut self, node_id: &str, key: &str, root_connected: bool, now: Instant) -> Vec<Effect> {
        if !self.nodes.contains_key(node_id) {
            return vec![Effect::NodeError {
                node: node_id.into(),
                message: "Node not registered to the cluster".into(),
            }];
        }
        let key = key.trim();
        let own = self.nodes.iter().find_map(|(id, node)| {
            let info = &node.record.info;
            let overlay = info.overlay.as_ref().filter(|o| !key.is_empty() && o.public_key == key)?;
            let (host_ip, port) = endpoint(info);
            Some(oak_api::net::PeerAnswer {
                public_key: key.to_string(),
                worker_id: id.clone(),
                host_ip,
                host_port: port.and_then(|p| p.parse().ok()).unwrap_or(0),
                subnet: overlay.subnet.clone(),
                ..Default::default()
            })
        });
        self.peers.query(node_id, key, own, root_connected, now)
    }

    /// `nodes/<id>/net/tablequery/request` from a registered node.
    pub fn table_query(&mut self, node_id: &str, q: TableQuery, root_connected: bool, now: Instant) -> Vec<Effect> {
        if !self.nodes.contains_key(node_id) {
            return vec![Effect::NodeError {
                node: node_id.into(),
                message: "Node not registered to the cluster".into(),
            }];
        }
        self.routes.query(node_id, q, root_connected, now)
    }

    // ---------------------------------------------------------------- outputs

    /// Reports for the root: state changes now, metrics-only changes at most every
    /// `metrics_interval` per instance. With `full`, every instance.
    /// Queues for the next [`ClusterState::root_updates`] the instances whose new metrics have
    /// waited `metrics_interval`. A scan over the instances: the control loop runs it on its
    /// periodic tick, not on every step an event triggers.
    pub fn queue_due_metrics(&mut self, now: Instant) {
        let interval = self.timing.metrics_interval;
        let instances = &self.instances;
        let to_root = &mut self.to_root;
        self.metrics_to_root.retain(|k| {
            let due =
                instances.get(k).is_some_and(|i| i.metrics_sent.is_none_or(|t| now.duration_since(t) >= interval));
            if due {
                to_root.insert(k.clone());
            }
            !due && instances.contains_key(k)
        });
    }

    /// Instance states for the root: with `full` every instance, else the changed ones (and
    /// those [`ClusterState::queue_due_metrics`] queued).
    pub fn root_updates(&mut self, full: bool, now: Instant) -> Vec<InstanceReport> {
        let keys: Vec<Key> = if full {
            self.to_root.clear();
            self.placed_reports.clear();
            self.metrics_to_root.clear();
            self.instances.keys().cloned().collect()
        } else {
            let mut keys = std::mem::take(&mut self.to_root);
            // A held placement goes once due, or now with the newer state that replaces it.
            self.placed_reports.retain(|key, due| {
                let send = keys.contains(key) || *due <= now;
                if send {
                    keys.insert(key.clone());
                }
                !send
            });
            keys.into_iter().collect()
        };
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(inst) = self.instances.get_mut(&key) else { continue };
            inst.metrics_sent = Some(now);
            let (host_ip, host_port, tunnel_key) = match inst.worker_id.as_ref().and_then(|w| self.nodes.get(w)) {
                Some(node) => {
                    let (ip, port) = endpoint(&node.record.info);
                    (Some(ip), port, tunnel_key(&node.record.info))
                }
                None => (inst.host_ip.clone(), None, None),
            };
            out.push(InstanceReport {
                job_id: key.0.clone(),
                instance_number: key.1,
                status: inst.status.clone(),
                status_detail: inst.detail.clone(),
                worker_id: inst.worker_id.clone(),
                host_ip,
                host_port,
                tunnel_key,
                namespace_ip: inst.namespace_ip.clone(),
                publicip: inst.publicip.clone(),
                cpu_percent: inst.cpu_percent,
                memory_percent: inst.memory_percent,
                memory_bytes: inst.memory_bytes,
                disk: inst.disk,
                logs: inst.logs.clone(),
            });
        }
        out
    }

    /// Changes to write to the store since the last call.
    pub fn take_batch(&mut self) -> Batch {
        let nodes = std::mem::take(&mut self.dirty_nodes)
            .into_iter()
            .filter_map(|id| self.nodes.get(&id).map(|n| n.record.clone()))
            .collect();
        let instances = std::mem::take(&mut self.dirty)
            .into_iter()
            .filter_map(|k| {
                self.instances.get(&k).map(|i| InstanceRecord {
                    job: (*i.job).clone(),
                    instance_number: i.number,
                    status: i.status.clone(),
                    status_detail: i.detail.clone(),
                    worker_id: i.worker_id.clone(),
                    attempts: i.attempts,
                    instance_ip: i.instance_ip.clone(),
                    namespace_ip: i.namespace_ip.clone(),
                })
            })
            .collect();
        let removed = std::mem::take(&mut self.removed).into_iter().collect();
        let forgotten = std::mem::take(&mut self.forgotten).into_iter().collect();
        Batch { nodes, instances, removed, forgotten }
    }
}

/// Whether a worker's new report changes what placement reads beyond its usage: its name,
/// architecture, virtualizations, add-ons or capacity (a worker restarted with a new add-on
/// within the worker timeout never looked inactive, yet may now take waiting instances).
fn offers_differ(old: &NodeInfo, new: &NodeInfo) -> bool {
    old.host != new.host
        || old.architecture != new.architecture
        || old.virtualization != new.virtualization
        || old.supported_addons != new.supported_addons
        || old.vcpus != new.vcpus
        || old.memory_total != new.memory_total
        || old.vgpus != new.vgpus
}

/// How many instances of service `job_id` each node holds (indexed like `index`'s values).
fn sibling_counts(
    instances: &BTreeMap<Key, Inst>,
    job_id: &str,
    index: &HashMap<String, usize>,
    nodes: usize,
) -> Vec<u32> {
    let mut counts = vec![0; nodes];
    let range = (job_id.to_string(), 0)..=(job_id.to_string(), u32::MAX);
    for inst in instances.range(range).map(|(_, i)| i).filter(|i| on_node(&i.status)) {
        if let Some(&i) = inst.worker_id.as_deref().and_then(|w| index.get(w)) {
            counts[i] += 1;
        }
    }
    counts
}

/// An instance a worker should not run (unknown, removed, or moved elsewhere): tell it to stop,
/// unless the report already says it stopped.
fn stale_delete(node: &str, job_name: &str, instance: u32, reported: &str) -> Vec<Effect> {
    if matches!(reported, status::UNDEPLOYED | status::DEAD | status::COMPLETED | status::FAILED) {
        return Vec::new();
    }
    vec![Effect::Delete {
        node: node.into(),
        cmd: DeleteCommand { job_name: job_name.into(), virtualization: String::new(), instance_number: instance },
    }]
}

/// 1 s, 2 s, 4 s … up to `max`.
/// How long an instance must have run for its next failure to count as a first one again.
const STABLE_RUN: Duration = Duration::from_secs(60);

fn backoff(attempts: u32, max: Duration) -> Duration {
    Duration::from_secs(1u64 << attempts.min(16)).min(max)
}

#[cfg(test)]
mod tests;
