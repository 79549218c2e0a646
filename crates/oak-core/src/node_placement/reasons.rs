//! Why no node takes an instance, named precisely enough for a user to act on it: the first
//! requirement of the job that no active worker meets, e.g. `no active worker offers addon
//! "gpu-magic"` or `no worker with 4096 MB free in cluster alpha`.
//!
//! Computed only when [`super::choose_node`] found no node, by filtering the active nodes with
//! the same rules one requirement at a time, in the order a user would check them: the cluster
//! a `direct` constraint names, node names, virtualization, architecture, add-ons, then memory,
//! vCPUs, GPUs and host ports. The first requirement that leaves no node is the reason. When that
//! requirement alone is met by some active worker, just not by one that also meets the earlier
//! ones, the reason says which earlier ones it clashes with.

use std::collections::BTreeSet;
use std::fmt;

use oak_api::sla::Microservice;
use oak_api::status;

use super::{Demand, NodeRules, NodeView};
use crate::ports::HostPort;

/// The unmet requirement behind a negative placement.
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    /// No worker of the cluster is active (reported within the worker timeout).
    NoActiveWorker { cluster: String },
    /// A `direct` constraint names another cluster.
    OtherCluster { named: String, cluster: String },
    /// A requirement on the node itself (name, virtualization, architecture, add-on) that no
    /// active worker meets; `with` lists the earlier requirements that the workers meeting this
    /// one fail (empty when no active worker meets it at all).
    Unmet { need: Need, with: Vec<Need> },
    /// Qualified workers exist, but none has this much free; `most` is the most free on one.
    Short { resource: Resource, cluster: String },
    /// Each resource is free on some qualified worker, but not all of them on one.
    ShortTogether { demand: Demand, cluster: String },
    /// Every qualified worker with the free resources has one of these host ports taken.
    PortsTaken(BTreeSet<HostPort>),
}

/// A requirement on a node's identity or capabilities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// One of these node names (one `direct` constraint).
    Named(Vec<String>),
    Virtualization(String),
    /// One of these architectures.
    Architecture(Vec<String>),
    Addon(String),
}

/// A resource no qualified worker has enough of free.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Resource {
    Memory { want: u64, most: u64 },
    Vcpus { want: f64, most: f64 },
    Gpus { want: u64, most: u64 },
}

impl Reason {
    /// The original's negative status for this reason: a requirement on the node's identity
    /// means no worker qualifies; anything else (including no active worker) is capacity.
    pub fn status(&self) -> &'static str {
        match self {
            Reason::OtherCluster { .. } | Reason::Unmet { .. } => status::NO_QUALIFIED_WORKER_FOUND,
            _ => status::NO_WORKER_CAPACITY,
        }
    }
}

/// `"a"`, `"a" or "b"`, `"a", "b" or "c"`.
fn either(items: &[String], quote: bool) -> String {
    let q = |s: &String| if quote { format!("{s:?}") } else { s.clone() };
    match items {
        [] => String::new(),
        [one] => q(one),
        [init @ .., last] => format!("{} or {}", init.iter().map(q).collect::<Vec<_>>().join(", "), q(last)),
    }
}

impl fmt::Display for Need {
    /// A noun phrase: `virtualization docker`, `addon "gpu"`, …
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Need::Named(names) => write!(f, "node name {}", either(names, true)),
            Need::Virtualization(v) => write!(f, "virtualization {v}"),
            Need::Architecture(a) => write!(f, "architecture {}", either(a, false)),
            Need::Addon(a) => write!(f, "addon {a:?}"),
        }
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NoActiveWorker { cluster } => write!(f, "no active worker in cluster {cluster}"),
            Reason::OtherCluster { named, cluster } => {
                write!(f, "a direct constraint names cluster {named:?}, not this cluster {cluster:?}")
            }
            Reason::Unmet { need, with } if with.is_empty() => match need {
                Need::Named(names) => write!(f, "no active worker is named {}", either(names, true)),
                Need::Virtualization(v) => write!(f, "virtualization {v} offered by no active worker"),
                Need::Architecture(a) => write!(f, "no active worker has architecture {}", either(a, false)),
                Need::Addon(a) => write!(f, "no active worker offers addon {a:?}"),
            },
            Reason::Unmet { need, with } => {
                let with: Vec<String> = with.iter().map(Need::to_string).collect();
                write!(f, "no active worker has {need} together with {}", with.join(" and "))
            }
            Reason::Short { resource, cluster } => {
                let (want, most) = match *resource {
                    Resource::Memory { want, most } => (format!("{want} MB"), format!("{most} MB")),
                    Resource::Vcpus { want, most } => (format!("{want} vCPUs"), format!("{most}")),
                    Resource::Gpus { want, most } => (plural(want, "GPU", "GPUs"), most.to_string()),
                };
                write!(
                    f,
                    "no worker with {want} free in cluster {cluster} (the most free on a qualified worker: {most})"
                )
            }
            Reason::ShortTogether { demand, cluster } => write!(
                f,
                "no worker with {} vCPUs, {} MB and {} free at once in cluster {cluster}",
                demand.vcpus,
                demand.memory_mb,
                plural(demand.gpus, "GPU", "GPUs")
            ),
            Reason::PortsTaken(ports) => {
                let ports: Vec<String> = ports.iter().map(HostPort::to_string).collect();
                match ports.as_slice() {
                    [one] => {
                        write!(
                            f,
                            "host port {one} is taken on every qualified worker with the requested free resources"
                        )
                    }
                    many => write!(
                        f,
                        "host ports {} are taken on the qualified workers with the requested free resources",
                        many.join(", ")
                    ),
                }
            }
        }
    }
}

/// The requirements on a node's identity, in the order they are explained.
fn needs(rules: &NodeRules<'_>, job: &Microservice) -> Vec<Need> {
    let mut out: Vec<Need> =
        rules.names.iter().map(|set| Need::Named(set.iter().map(|s| s.to_string()).collect())).collect();
    out.push(Need::Virtualization(job.virtualization.clone()));
    if !rules.arch.is_empty() {
        out.push(Need::Architecture(rules.arch.to_vec()));
    }
    let mut seen = BTreeSet::new();
    out.extend(rules.addons.iter().filter(|a| seen.insert(**a)).map(|a| Need::Addon(a.to_string())));
    out
}

fn meets(need: &Need, node: &NodeView) -> bool {
    match need {
        Need::Named(names) => names.contains(&node.name),
        Need::Virtualization(v) => node.virtualization.contains(v),
        Need::Architecture(a) => a.contains(&node.architecture),
        Need::Addon(a) => node.supported_addons.iter().any(|s| s == a),
    }
}

/// Why [`super::choose_node`] found no node for `job` among `nodes` (see the module
/// documentation). Only meaningful when no node fits: otherwise it is an empty
/// [`Reason::PortsTaken`].
pub(super) fn why(
    rules: &NodeRules<'_>,
    job: &Microservice,
    cluster: &str,
    demand: Demand,
    wanted: &[HostPort],
    nodes: &[NodeView],
) -> Reason {
    let active: Vec<&NodeView> = nodes.iter().filter(|n| n.active).collect();
    if active.is_empty() {
        return Reason::NoActiveWorker { cluster: cluster.into() };
    }
    if rules.excluded {
        let named = job
            .constraints
            .iter()
            .filter(|c| c.kind == "direct")
            .filter_map(|c| c.cluster.as_deref().map(str::trim))
            .find(|n| !n.is_empty() && *n != cluster)
            .unwrap_or_default();
        return Reason::OtherCluster { named: named.into(), cluster: cluster.into() };
    }
    let mut left = active.clone();
    let mut narrowing: Vec<Need> = Vec::new();
    for need in needs(rules, job) {
        let before = left.len();
        left.retain(|n| meets(&need, n));
        if left.is_empty() {
            let alone = active.iter().any(|n| meets(&need, n));
            let with = if alone { narrowing } else { Vec::new() };
            return Reason::Unmet { need, with };
        }
        if left.len() < before {
            narrowing.push(need);
        }
    }
    // `left` holds the qualified nodes: now the free resources, one at a time.
    let qualified = left.clone();
    let short = |resource: Resource| Reason::Short { resource, cluster: cluster.into() };
    left.retain(|n| n.free_memory_mb >= demand.memory_mb);
    if left.is_empty() {
        let most = qualified.iter().map(|n| n.free_memory_mb).max().unwrap_or(0);
        return short(Resource::Memory { want: demand.memory_mb, most });
    }
    left.retain(|n| n.free_vcpus >= demand.vcpus);
    if left.is_empty() {
        let most = qualified.iter().map(|n| n.free_vcpus).fold(0.0, f64::max);
        if most < demand.vcpus {
            return short(Resource::Vcpus { want: demand.vcpus, most });
        }
        return Reason::ShortTogether { demand, cluster: cluster.into() };
    }
    left.retain(|n| n.free_gpus >= demand.gpus);
    if left.is_empty() {
        let most = qualified.iter().map(|n| n.free_gpus).max().unwrap_or(0);
        if most < demand.gpus {
            return short(Resource::Gpus { want: demand.gpus, most });
        }
        return Reason::ShortTogether { demand, cluster: cluster.into() };
    }
    Reason::PortsTaken(left.iter().filter_map(|n| n.taken(wanted)).collect())
}
