//! The cluster scheduler's decision: which worker node runs one instance (spec §6, defects fixed),
//! plus the resource arithmetic the cluster reports to the root (spec §5.3).
//!
//! # Which nodes qualify
//!
//! A node is a candidate only when it is **active** (the caller decides freshness). It then
//! *qualifies* when every one of these holds:
//!
//! - every `direct` constraint: its `node` field is a `;`-separated list of node names
//!   (whitespace around names trimmed, empty entries ignored; a list with no names left does not
//!   restrict nodes) and the node's name must be in it; if the constraint also names a `cluster`
//!   other than this cluster, no node qualifies;
//! - every `addons` constraint: each add-on it `needs` is in the node's `supported_addons`;
//! - the job's virtualization (already normalised, e.g. `docker`) is in the node's list;
//! - if the job's `arch` is a non-empty list, the node's architecture is in it (unikernel kernels
//!   are built per architecture).
//!
//! Other constraint kinds (`clusters`, which the root already applied, and `latency`/`geo`, which
//! the original's current scheduler ignores too) do not restrict nodes.
//!
//! A qualified node *fits* when its free vCPUs, free memory and free GPUs each cover the job's
//! `vcpus`, `memory` (or [`oak_api::sla::DEFAULT_MEMORY_MB`] without one) and `vgpus`, and none
//! of the host ports its `port` field maps is taken on the node ([`NodeView::host_ports`]: by an
//! instance placed there, or the node's tunnel). "Free" means capacity minus what instances
//! already placed on the node requested ([`free_resources`]), so a burst of placements never
//! over-commits a node, unlike the original, which compared against raw core counts and momentary
//! free memory.
//!
//! # Which fitting node wins
//!
//! With the job's `spread` (the default), the one holding the fewest instances of the job's
//! service ([`choose_node_spread`](crate::node_placement::choose_node_spread)); among those (or among all, with `spread: false`), the one
//! with the most free memory, then the most free vCPUs, then the lowest name, then the lowest
//! id: deterministic for equal inputs and computed in one pass (no sorting), so choosing among
//! 1,000 nodes is a few microseconds. Common runtimes and the name order can be compared as
//! integers ([`NodeView::runtime_bits`], [`rank_by_name`]), which spares the scan a walk through
//! every node's strings.
//!
//! # Negative outcomes
//!
//! The status is one of the original's, the detail names the unmet requirement ([`reasons`](crate::node_placement::reasons)):
//!
//! - no active node at all: [`status::NO_WORKER_CAPACITY`], `no active worker in cluster …`;
//! - active nodes, but none qualifies: [`status::NO_QUALIFIED_WORKER_FOUND`] (retrying will not
//!   help until the constraints or the nodes change), e.g. `no active worker offers addon "x"`;
//! - some qualify, but none has the free resources and free host ports:
//!   [`status::NO_WORKER_CAPACITY`], e.g. `no worker with 4096 MB free in cluster …` or the
//!   taken host ports.

use std::collections::{BTreeMap, BTreeSet};

use oak_api::channel::{ClusterResources, ResourceTotals};
use oak_api::node::NodeInfo;
use oak_api::sla::Microservice;
use oak_api::status;
use serde_json::Value;

use crate::ports::{host_ports, HostPort, Protocol};

pub mod reasons;
pub use reasons::{Need, Reason, Resource};

/// What one instance asks of a node.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Demand {
    pub vcpus: f64,
    pub memory_mb: u64,
    pub gpus: u64,
}

impl Demand {
    /// The resources one instance of `job` requests; memory is what the worker limits it to
    /// ([`Microservice::memory_mb`]), so a descriptor without `memory` still counts.
    pub fn of(job: &Microservice) -> Self {
        Demand { vcpus: job.vcpus as f64, memory_mb: job.memory_mb(), gpus: job.vgpus }
    }

    /// Both demands together (memory and GPUs saturate instead of overflowing).
    pub fn plus(self, other: Demand) -> Demand {
        Demand {
            vcpus: self.vcpus + other.vcpus,
            memory_mb: self.memory_mb.saturating_add(other.memory_mb),
            gpus: self.gpus.saturating_add(other.gpus),
        }
    }

    /// What is left of this demand without `other` (never below 0 in any dimension).
    pub fn minus(self, other: Demand) -> Demand {
        Demand {
            vcpus: (self.vcpus - other.vcpus).max(0.0),
            memory_mb: self.memory_mb.saturating_sub(other.memory_mb),
            gpus: self.gpus.saturating_sub(other.gpus),
        }
    }
}

/// Resources of a node not yet requested by the instances placed on it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Free {
    pub vcpus: f64,
    pub memory_mb: u64,
    pub gpus: u64,
}

/// A node's free resources, from its capacity and the demands of the instances already placed on
/// it (every instance the cluster assigned to the node and has not removed, running or not):
///
/// - vCPUs: `cores − Σ vcpus`, never below 0;
/// - memory: `min(total − Σ memory, available)`, saturating at 0. The node's reported available
///   memory already drops once the instances run, so this counts running instances twice: that is
///   conservative on purpose (it also covers memory used by things other than instances).
///   A `memory_total_mb` of 0 means "unknown" and is read as `memory_available_mb`;
/// - GPUs: `gpus − Σ gpus`, saturating at 0.
pub fn free_resources(
    cores: f64,
    memory_total_mb: u64,
    memory_available_mb: u64,
    gpus: u64,
    placed: impl IntoIterator<Item = Demand>,
) -> Free {
    let used = placed.into_iter().fold(Demand::default(), Demand::plus);
    let total_memory = if memory_total_mb == 0 { memory_available_mb } else { memory_total_mb };
    Free {
        vcpus: (cores - used.vcpus).max(0.0),
        memory_mb: total_memory.saturating_sub(used.memory_mb).min(memory_available_mb),
        gpus: gpus.saturating_sub(used.gpus),
    }
}

/// What the cluster scheduler and the cluster report need to know about one worker node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeView {
    pub id: String,
    /// Node (host) name: what `direct` constraints name.
    pub name: String,
    /// Reported recently enough to be schedulable (the caller's freshness rule).
    pub active: bool,
    /// `amd64`, `arm64`, … ("" when unknown: then no per-architecture entry and no `arch` match).
    pub architecture: String,
    pub virtualization: Vec<String>,
    pub supported_addons: Vec<String>,
    /// CSI driver names (only aggregated, not used for placement).
    pub csi_drivers: Vec<String>,
    /// Logical cores.
    pub total_vcpus: f64,
    pub free_vcpus: f64,
    pub memory_total_mb: u64,
    pub free_memory_mb: u64,
    pub total_gpus: u64,
    pub free_gpus: u64,
    /// CPU utilisation of the whole node, 0–100.
    pub cpu_percent: f64,
    /// Memory utilisation of the whole node, 0–100.
    pub memory_percent: f64,
    /// Host ports taken on the node: by the instances placed there, and its tunnel's UDP port.
    pub host_ports: BTreeSet<HostPort>,
    /// The well-known runtimes of `virtualization` as bits ([`runtime_bit`]), so that a scan
    /// over a thousand nodes compares integers instead of following each node's strings
    /// ([`NodeView::from_info`] fills it; `None` compares the names).
    pub runtime_bits: Option<u64>,
    /// The node's place in (name, id) order among the nodes it is compared with (the caller
    /// numbers them all or none); `None` compares the names.
    pub rank: Option<u32>,
}

/// Runtimes common enough to get a bit in [`NodeView::runtime_bits`]; others are compared by name.
const COMMON_RUNTIMES: [&str; 4] = ["docker", "unikernel", "crosvm", "wasm"];

/// The bit of a common runtime in [`NodeView::runtime_bits`].
fn runtime_bit(name: &str) -> Option<u64> {
    COMMON_RUNTIMES.iter().position(|r| *r == name).map(|i| 1 << i)
}

/// Numbers `views` in (name, id) order ([`NodeView::rank`]), so ties between otherwise equal
/// nodes are broken without comparing strings in every placement.
pub fn rank_by_name(views: &mut [NodeView]) {
    let mut order: Vec<usize> = (0..views.len()).collect();
    order.sort_by(|&a, &b| (&views[a].name, &views[a].id).cmp(&(&views[b].name, &views[b].id)));
    for (rank, i) in order.into_iter().enumerate() {
        views[i].rank = Some(rank as u32);
    }
}

impl NodeView {
    /// The view of a node from its latest report and the demands of the instances placed on it
    /// (free amounts by [`free_resources`]).
    pub fn from_info(info: &NodeInfo, active: bool, placed: impl IntoIterator<Item = Demand>) -> Self {
        let free = free_resources(f64::from(info.vcpus), info.memory_total, info.memory, u64::from(info.vgpus), placed);
        NodeView {
            id: info.id.clone(),
            name: info.host.clone(),
            active,
            architecture: info.architecture.clone(),
            virtualization: info.virtualization.clone(),
            supported_addons: info.supported_addons.clone(),
            csi_drivers: info.csi_drivers.iter().filter_map(csi_driver_name).collect(),
            total_vcpus: f64::from(info.vcpus),
            free_vcpus: free.vcpus,
            memory_total_mb: if info.memory_total == 0 { info.memory } else { info.memory_total },
            free_memory_mb: free.memory_mb,
            total_gpus: u64::from(info.vgpus),
            free_gpus: free.gpus,
            cpu_percent: info.cpu_percent,
            memory_percent: info.memory_percent,
            host_ports: info
                .overlay
                .iter()
                .map(|o| HostPort { port: o.tunnel_port, protocol: Protocol::Udp })
                .collect(),
            runtime_bits: Some(info.virtualization.iter().filter_map(|v| runtime_bit(v)).fold(0, |a, b| a | b)),
            rank: None,
        }
    }

    /// Whether the node runs `runtime`, whose bit (if it is a common one) is `bit`.
    fn runs(&self, runtime: &str, bit: Option<u64>) -> bool {
        match (self.runtime_bits, bit) {
            (Some(bits), Some(bit)) => bits & bit != 0,
            _ => self.virtualization.iter().any(|v| v == runtime),
        }
    }

    /// The first of `wanted` already taken on this node.
    fn taken(&self, wanted: &[HostPort]) -> Option<HostPort> {
        wanted.iter().copied().find(|p| self.host_ports.contains(p))
    }

    fn fits(&self, d: Demand) -> bool {
        self.free_vcpus >= d.vcpus && self.free_memory_mb >= d.memory_mb && self.free_gpus >= d.gpus
    }

    /// Ranking of fitting nodes: more free memory, then more free vCPUs, then lower name, then
    /// lower id.
    fn better_than(&self, other: &NodeView) -> bool {
        self.free_memory_mb
            .cmp(&other.free_memory_mb)
            .then(self.free_vcpus.total_cmp(&other.free_vcpus))
            .then_with(|| match (self.rank, other.rank) {
                (Some(a), Some(b)) => b.cmp(&a),
                _ => other.name.cmp(&self.name).then_with(|| other.id.cmp(&self.id)),
            })
            .is_gt()
    }
}

/// A CSI driver entry as workers send it: a name, or an object with `csi_driver_name`.
fn csi_driver_name(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Object(m) => m.get("csi_driver_name").and_then(Value::as_str).filter(|s| !s.is_empty()).map(Into::into),
        _ => None,
    }
}

/// The `direct` and `addons` constraints of a job, parsed once per decision.
struct NodeRules<'a> {
    /// No node can qualify (a `direct` constraint names another cluster).
    excluded: bool,
    /// One set of allowed names per `direct` constraint that lists nodes.
    names: Vec<BTreeSet<&'a str>>,
    addons: Vec<&'a str>,
    arch: &'a [String],
    /// The job's runtime's bit, if it is a common one.
    runtime_bit: Option<u64>,
}

impl<'a> NodeRules<'a> {
    fn new(job: &'a Microservice, cluster_name: &str) -> Self {
        let mut rules = NodeRules {
            excluded: false,
            names: Vec::new(),
            addons: Vec::new(),
            arch: &[],
            runtime_bit: runtime_bit(&job.virtualization),
        };
        for c in &job.constraints {
            match c.kind.as_str() {
                "direct" => {
                    if c.cluster.as_deref().map(str::trim).is_some_and(|n| !n.is_empty() && n != cluster_name) {
                        rules.excluded = true;
                    }
                    let names: BTreeSet<&str> =
                        c.node.as_deref().unwrap_or("").split(';').map(str::trim).filter(|n| !n.is_empty()).collect();
                    if !names.is_empty() {
                        rules.names.push(names);
                    }
                }
                "addons" => rules.addons.extend(c.needs.iter().flatten().map(String::as_str)),
                _ => {}
            }
        }
        rules.arch = job.arch.as_deref().unwrap_or(&[]);
        rules
    }

    fn qualifies(&self, job: &Microservice, node: &NodeView) -> bool {
        !self.excluded
            && self.names.iter().all(|set| set.contains(node.name.as_str()))
            && self.addons.iter().all(|a| node.supported_addons.iter().any(|s| s == a))
            && node.runs(&job.virtualization, self.runtime_bit)
            && (self.arch.is_empty() || self.arch.contains(&node.architecture))
    }
}

/// Why no node takes an instance: one of the original's negative statuses, and the unmet
/// requirement behind it ([`reasons`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Unplaced {
    pub status: &'static str,
    pub reason: Reason,
}

impl Unplaced {
    /// A sentence for the instance's `status_detail`, naming the unmet requirement.
    pub fn detail(&self) -> String {
        self.reason.to_string()
    }
}

/// Picks the node (its index in `nodes`) for one instance of `job` on the cluster named
/// `cluster_name`, or the negative status saying why none can take it, as if no node held an
/// instance of the job's service yet. See the module documentation for the rules.
pub fn choose_node(job: &Microservice, cluster_name: &str, nodes: &[NodeView]) -> Result<usize, Unplaced> {
    choose_node_spread(job, cluster_name, nodes, &[])
}

/// [`choose_node`] for a job whose service already has `siblings[i]` instances on `nodes[i]`
/// (missing entries count 0). With the job's `spread` (the default), the fitting node with the
/// fewest siblings wins and the usual ranking only breaks ties, so replicas land on different
/// nodes while there are enough, like Kubernetes' topology spread; without it, siblings are
/// ignored and instances pack by the usual ranking.
pub fn choose_node_spread(
    job: &Microservice,
    cluster_name: &str,
    nodes: &[NodeView],
    siblings: &[u32],
) -> Result<usize, Unplaced> {
    let rules = NodeRules::new(job, cluster_name);
    let demand = Demand::of(job);
    let wanted = host_ports(&job.port);
    let count = |i: usize| if job.spread { siblings.get(i).copied().unwrap_or(0) } else { 0 };
    let mut best: Option<usize> = None;
    for (i, node) in nodes.iter().enumerate() {
        if !node.active || !rules.qualifies(job, node) || !node.fits(demand) || node.taken(&wanted).is_some() {
            continue;
        }
        let wins = |b: usize| match count(i).cmp(&count(b)) {
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Greater => false,
            std::cmp::Ordering::Equal => node.better_than(&nodes[b]),
        };
        if best.is_none_or(wins) {
            best = Some(i);
        }
    }
    best.ok_or_else(|| {
        let reason = reasons::why(&rules, job, cluster_name, demand, &wanted, nodes);
        Unplaced { status: reason.status(), reason }
    })
}

/// A sentence for the instance's `status_detail` explaining a negative status of [`choose_node`]
/// (see [`Unplaced::detail`] for one that names taken host ports).
pub fn explain(negative: &str) -> &'static str {
    match negative {
        status::NO_QUALIFIED_WORKER_FOUND => {
            "no active worker meets the constraints, virtualization, architecture and add-ons asked for"
        }
        status::NO_WORKER_CAPACITY => "no active worker has the requested free resources",
        _ => "not scheduled",
    }
}

/// Running sums for one set of nodes.
#[derive(Default)]
struct Sums {
    totals: ResourceTotals,
    cpu_percent: f64,
    memory_percent: f64,
}

impl Sums {
    fn add(&mut self, n: &NodeView) {
        let t = &mut self.totals;
        t.nodes += 1;
        t.total_cpu_cores += n.total_vcpus;
        t.free_vcpus += n.free_vcpus;
        t.memory_in_mb = t.memory_in_mb.saturating_add(n.memory_total_mb);
        t.free_memory_mb = t.free_memory_mb.saturating_add(n.free_memory_mb);
        t.total_gpus = t.total_gpus.saturating_add(n.total_gpus);
        t.free_gpus = t.free_gpus.saturating_add(n.free_gpus);
        self.cpu_percent += n.cpu_percent;
        self.memory_percent += n.memory_percent;
    }

    fn finish(mut self) -> ResourceTotals {
        if self.totals.nodes > 0 {
            self.totals.cpu_percent = self.cpu_percent / self.totals.nodes as f64;
            self.totals.memory_percent = self.memory_percent / self.totals.nodes as f64;
        }
        self.totals
    }
}

/// The cluster's report to the root, over its **active** nodes only:
///
/// - totals (`total_cpu_cores`, `free_vcpus`, `memory_in_mb`, `free_memory_mb`, `total_gpus`,
///   `free_gpus`, `nodes`) are sums; `cpu_percent` and `memory_percent` are means over all active
///   nodes (the original averaged only non-zero values, which overstates load);
/// - `virtualization`, `supported_addons` and `csi_drivers` are de-duplicated and sorted;
/// - `aggregation_per_architecture` holds the same totals per node architecture (nodes that did
///   not say their architecture are only in the overall totals);
/// - `active_nodes` counts the active nodes.
pub fn aggregate(nodes: &[NodeView]) -> ClusterResources {
    let mut all = Sums::default();
    let mut per_arch: BTreeMap<&str, Sums> = BTreeMap::new();
    let mut virtualization = BTreeSet::new();
    let mut addons = BTreeSet::new();
    let mut csi = BTreeSet::new();
    for n in nodes.iter().filter(|n| n.active) {
        all.add(n);
        if !n.architecture.is_empty() {
            per_arch.entry(n.architecture.as_str()).or_default().add(n);
        }
        virtualization.extend(n.virtualization.iter().cloned());
        addons.extend(n.supported_addons.iter().cloned());
        csi.extend(n.csi_drivers.iter().cloned());
    }
    let totals = all.finish();
    ClusterResources {
        active_nodes: totals.nodes,
        totals,
        virtualization: virtualization.into_iter().collect(),
        supported_addons: addons.into_iter().collect(),
        csi_drivers: csi.into_iter().collect(),
        aggregation_per_architecture: per_arch.into_iter().map(|(a, s)| (a.to_string(), s.finish())).collect(),
    }
}

#[cfg(test)]
mod tests;
