//! The root scheduler's decision: which cluster gets a new instance (spec §6, defects fixed).
//!
//! Only clusters that are active now are candidates. A cluster fits when it runs the service's
//! virtualization, has the free vCPUs, memory (`memory`, or [`oak_api::sla::DEFAULT_MEMORY_MB`]
//! without one) and GPUs asked for (`Cluster::vcpus`, `memory` and
//! `vgpus` are *free* amounts: what the cluster's workers have left after the instances placed on
//! them), and satisfies the `direct` (cluster), `clusters` and `addons` constraints. When the
//! service lists architectures (`arch`, non-empty), the cluster must also have, in its
//! `aggregation_per_architecture`, one of those architectures with enough free vCPUs, memory and
//! GPUs on its own (a unikernel only runs on a node of an architecture it has a kernel for).
//!
//! Among fitting clusters the one with the most free memory wins, then the most free vCPUs, then
//! the lowest name: deterministic. The original's ranking is deliberately not copied: it meant to
//! score `(100 − cpu_percent) + memory`, but a typo (`scoreA` uses `b.memory`) makes it pick the
//! cluster with the **lowest `cpu_percent`**, with ties broken by an unstable sort (spec §6.2).
//!
//! Before deciding, the root subtracts the capacity it already promised since each cluster's last
//! report ([`crate::reservations::Reservations::apply`]), so a burst of placements does not
//! over-commit a cluster between two reports.
use std::collections::{BTreeSet, HashMap};

use oak_api::model::{Cluster, Service};
use oak_api::status;

/// The node names each cluster's workers registered with, by cluster id (from the clusters'
/// worker summaries): how the root resolves a `direct` constraint that names only nodes.
pub type NodeHosts = HashMap<String, BTreeSet<String>>;

/// Why an instance was not placed: one of the original's status strings and a sentence naming
/// the unmet requirement, for the instance's `status_detail`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unplaced {
    pub status: &'static str,
    pub detail: String,
}

impl Unplaced {
    fn new(status: &'static str, detail: impl Into<String>) -> Self {
        Unplaced { status, detail: detail.into() }
    }
}

/// Picks the cluster for one new instance of `service`, or the negative status explaining why
/// none fits (one of the original's status strings). Neither spreading nor node names: see
/// [`choose`].
pub fn choose_cluster<'a>(service: &Service, clusters: &'a [Cluster]) -> Result<&'a Cluster, &'static str> {
    choose(service, clusters, None, &HashMap::new()).map_err(|u| u.status)
}

/// Picks the cluster for one instance of `service`; `others` holds how many of the service's
/// other instances each cluster (by id) has (see [`spread_counts`]).
///
/// A `direct` constraint naming a cluster allows only that cluster. One naming only nodes
/// (`node`, `;`-separated) allows the clusters that hold one of those nodes according to
/// `hosts` (without `hosts` it is left to the clusters). Otherwise every active cluster is a
/// candidate. Among the candidates that fit, a service that spreads (`spread`, the default)
/// prefers the cluster with the fewest of its other instances (topology spread over
/// clusters); then the most free memory wins, then the most free vCPUs, then the lower name.
pub fn choose<'a>(
    service: &Service,
    clusters: &'a [Cluster],
    hosts: Option<&NodeHosts>,
    others: &HashMap<String, usize>,
) -> Result<&'a Cluster, Unplaced> {
    let spec = &service.spec;
    let direct = spec.constraints.iter().find(|c| c.kind == "direct");
    let cluster_name = direct.and_then(|c| c.cluster.as_deref()).map(str::trim).filter(|n| !n.is_empty());
    let nodes: Vec<&str> = direct
        .and_then(|c| c.node.as_deref())
        .map(|n| n.split(';').map(str::trim).filter(|n| !n.is_empty()).collect())
        .unwrap_or_default();
    if let Some(name) = cluster_name {
        let Some(target) = clusters.iter().find(|c| c.cluster_name == name) else {
            return Err(Unplaced::new(status::TARGET_CLUSTER_NOT_FOUND, format!("no cluster is named {name:?}")));
        };
        if !target.active {
            return Err(Unplaced::new(status::TARGET_CLUSTER_NOT_ACTIVE, format!("cluster {name:?} is not active")));
        }
        return if fits(service, target) {
            Ok(target)
        } else {
            let why = unmet_in(service, std::slice::from_ref(target), &format!("cluster {name:?}"));
            Err(Unplaced::new(status::TARGET_CLUSTER_NO_CAPACITY, why.unwrap_or_default()))
        };
    }
    if let (false, Some(hosts)) = (nodes.is_empty(), hosts) {
        let named = quoted_alternatives(&nodes);
        let holding: Vec<Cluster> = clusters
            .iter()
            .filter(|c| hosts.get(&c.id).is_some_and(|h| nodes.iter().any(|n| h.contains(*n))))
            .cloned()
            .collect();
        if holding.is_empty() {
            return Err(Unplaced::new(status::TARGET_CLUSTER_NOT_FOUND, format!("no cluster has node {named}")));
        }
        if !holding.iter().any(|c| c.active) {
            let names: Vec<&str> = holding.iter().map(|c| c.cluster_name.as_str()).collect();
            return Err(Unplaced::new(
                status::TARGET_CLUSTER_NOT_ACTIVE,
                format!("the cluster holding node {named} ({}) is not active", names.join(", ")),
            ));
        }
        let best = best_fit(service, others, clusters.iter().filter(|c| holding.iter().any(|h| h.id == c.id)));
        return best.ok_or_else(|| {
            let why = unmet_in(service, &holding, &format!("active cluster holding node {named}"));
            Unplaced::new(status::TARGET_CLUSTER_NO_CAPACITY, why.unwrap_or_default())
        });
    }
    if !clusters.iter().any(|c| c.active) {
        return Err(Unplaced::new(status::TARGET_CLUSTER_NOT_ACTIVE, explain(status::TARGET_CLUSTER_NOT_ACTIVE)));
    }
    best_fit(service, others, clusters.iter()).ok_or_else(|| {
        let why = unmet(service, clusters).unwrap_or_else(|| explain(status::NO_ACTIVE_CLUSTER_WITH_CAPACITY).into());
        Unplaced::new(status::NO_ACTIVE_CLUSTER_WITH_CAPACITY, why)
    })
}

/// The active cluster of `candidates` that fits and ranks first (see [`choose`]).
fn best_fit<'a>(
    service: &Service,
    others: &HashMap<String, usize>,
    candidates: impl Iterator<Item = &'a Cluster>,
) -> Option<&'a Cluster> {
    let spread = service.spec.spread;
    let count = |c: &Cluster| if spread { others.get(c.id.as_str()).copied().unwrap_or(0) } else { 0 };
    candidates.filter(|c| c.active && fits(service, c)).max_by(|a, b| {
        count(b)
            .cmp(&count(a))
            .then(a.memory.cmp(&b.memory))
            .then(a.vcpus.total_cmp(&b.vcpus))
            .then_with(|| b.cluster_name.cmp(&a.cluster_name))
    })
}

/// How many instances other than `number` each cluster holds (by cluster id), from
/// `(instance number, cluster id, status)` of a service's instances; finished ones do not count.
pub fn spread_counts<'a>(
    placements: impl IntoIterator<Item = (u32, &'a str, &'a str)>,
    number: u32,
) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for (n, cluster, st) in placements {
        if n == number || !counts_for_spread(st) {
            continue;
        }
        *counts.entry(cluster.to_string()).or_insert(0) += 1;
    }
    counts
}

/// Whether an instance in status `st` counts where it is placed (finished ones do not).
pub fn counts_for_spread(st: &str) -> bool {
    st != status::COMPLETED && st != status::UNDEPLOYED
}

/// [`spread_counts`] of a service document's `instance_list`.
pub fn spread_counts_of(service: &Service, number: u32) -> HashMap<String, usize> {
    let placements = service
        .instance_list
        .iter()
        .filter_map(|i| i.cluster_id.as_deref().map(|c| (i.instance_number, c, i.status.as_str())));
    spread_counts(placements, number)
}

/// `"a"`, or `"a" or "b"`.
fn quoted_alternatives(names: &[&str]) -> String {
    names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(" or ")
}

/// A sentence for the instance's `status_detail` explaining a negative scheduling status.
pub fn explain(negative: &str) -> &'static str {
    match negative {
        status::TARGET_CLUSTER_NOT_FOUND => "no cluster has the name the direct constraint asks for",
        status::TARGET_CLUSTER_NOT_ACTIVE => "no active cluster: waiting for a cluster to join or report",
        status::TARGET_CLUSTER_NO_CAPACITY => "the cluster the direct constraint names lacks the requested resources",
        status::NO_ACTIVE_CLUSTER_WITH_CAPACITY => "no active cluster has the requested resources and constraints",
        _ => "not scheduled",
    }
}

/// The requirement of `service` that no active cluster of `clusters` meets, as a sentence for
/// the instance's `status_detail`; `None` when one fits. Requirements are checked in a fixed
/// order (virtualization, allowed clusters, add-ons, architecture, vCPUs, memory, GPUs, then
/// all of them at once on one architecture), each on the clusters that met the earlier ones,
/// so the sentence names the first requirement that leaves no cluster.
pub fn unmet(service: &Service, clusters: &[Cluster]) -> Option<String> {
    unmet_in(service, clusters, "active cluster")
}

/// One free amount of a cluster.
type Amount = fn(&Cluster) -> f64;

fn unmet_in(service: &Service, clusters: &[Cluster], scope: &str) -> Option<String> {
    let spec = &service.spec;
    let mut left: Vec<&Cluster> = clusters.iter().filter(|c| c.active).collect();
    if left.is_empty() {
        return Some(format!("no {scope}: waiting for a cluster to join or report"));
    }
    let virt = &spec.virtualization;
    let offering: Vec<&Cluster> = left.iter().copied().filter(|c| c.virtualization.contains(virt)).collect();
    if offering.is_empty() {
        let mut offered: Vec<&str> = left.iter().flat_map(|c| c.virtualization.iter().map(String::as_str)).collect();
        offered.sort_unstable();
        offered.dedup();
        let offered = if offered.is_empty() { "none".to_string() } else { offered.join(", ") };
        return Some(format!("no {scope} offers virtualization {virt:?} (offered: {offered})"));
    }
    left = offering;
    for allowed in spec.constraints.iter().filter(|k| k.kind == "clusters") {
        let names = allowed.allowed.as_deref().unwrap_or_default();
        left.retain(|c| names.contains(&c.cluster_name));
        if left.is_empty() {
            return Some(format!("no {scope} is one of the allowed clusters ({})", names.join(", ")));
        }
    }
    for addons in spec.constraints.iter().filter(|k| k.kind == "addons") {
        let needs = addons.needs.as_deref().unwrap_or_default();
        left.retain(|c| needs.iter().all(|n| c.supported_addons.contains(n)));
        if left.is_empty() {
            return Some(format!("no {scope} supports the add-ons {}", needs.join(", ")));
        }
    }
    let archs: &[String] = spec.arch.as_deref().unwrap_or_default();
    if !archs.is_empty() {
        left.retain(|c| archs.iter().any(|a| c.aggregation_per_architecture.contains_key(a)));
        if left.is_empty() {
            return Some(format!("no {scope} offering {virt:?} has a worker of architecture {}", archs.join(" or ")));
        }
    }
    let memory = spec.memory_mb();
    let most = |left: &[&Cluster], key: Amount| {
        left.iter()
            .map(|c| (key(c), c.cluster_name.clone()))
            .max_by(|a, b| a.0.total_cmp(&b.0).then_with(|| b.1.cmp(&a.1)))
    };
    let steps: [(&str, f64, Amount); 3] = [
        ("free vCPUs", spec.vcpus as f64, |c| c.vcpus),
        ("MB of free memory", memory as f64, |c| c.memory as f64),
        ("free GPUs", spec.vgpus as f64, |c| c.vgpus as f64),
    ];
    for (what, need, key) in steps {
        let best = most(&left, key);
        left.retain(|c| key(c) >= need);
        if left.is_empty() {
            let (have, on) = best.unwrap_or_default();
            return Some(format!("no {scope} has {need} {what} (most: {have} on {on})"));
        }
    }
    if !left.iter().any(|c| fits(service, c)) {
        return Some(format!(
            "no {scope} has {} vCPUs, {memory} MB and {} GPUs free on workers of architecture {}",
            spec.vcpus,
            spec.vgpus,
            archs.join(" or ")
        ));
    }
    None
}

fn fits(service: &Service, c: &Cluster) -> bool {
    let spec = &service.spec;
    // What the worker limits the instance to, also when the descriptor has no `memory`.
    let memory = spec.memory_mb();
    let allowed = spec
        .constraints
        .iter()
        .filter(|k| k.kind == "clusters")
        .all(|k| k.allowed.as_ref().is_some_and(|names| names.contains(&c.cluster_name)));
    let addons = spec
        .constraints
        .iter()
        .filter(|k| k.kind == "addons")
        .all(|k| k.needs.as_ref().is_none_or(|needs| needs.iter().all(|n| c.supported_addons.contains(n))));
    let arch = match spec.arch.as_deref() {
        None | Some([]) => true,
        Some(archs) => archs.iter().any(|a| {
            c.aggregation_per_architecture.get(a).is_some_and(|t| {
                t.free_vcpus >= spec.vcpus as f64 && t.free_memory_mb >= memory && t.free_gpus >= spec.vgpus
            })
        }),
    };
    allowed
        && addons
        && arch
        && c.virtualization.contains(&spec.virtualization)
        && c.vcpus >= spec.vcpus as f64
        && c.memory >= memory
        && c.vgpus >= spec.vgpus
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node_placement::Demand;
    use crate::reservations::Reservations;
    use oak_api::channel::ResourceTotals;
    use oak_api::model::Application;
    use oak_api::sla::{Constraint, Microservice};

    fn cluster(name: &str, active: bool, vcpus: f64, memory: u64) -> Cluster {
        Cluster {
            id: format!("id-{name}"),
            cluster_name: name.into(),
            active,
            vcpus,
            memory,
            virtualization: vec!["docker".into()],
            supported_addons: vec!["gpu-monitor".into()],
            ..Default::default()
        }
    }

    fn service(vcpus: u64, memory: u64, constraints: Vec<Constraint>) -> Service {
        let mut ms: Microservice = serde_json::from_value(serde_json::json!({
            "microservice_name": "web", "microservice_namespace": "test",
            "virtualization": "container", "code": "img"
        }))
        .unwrap();
        ms.vcpus = vcpus;
        ms.memory = memory;
        ms.constraints = constraints;
        let app: Application = serde_json::from_value(serde_json::json!({
            "_id": "a", "applicationID": "a", "application_name": "shop", "application_namespace": "test", "userId": "u"
        }))
        .unwrap();
        crate::jobs::new_service("s".into(), &app, ms)
    }

    fn direct(name: &str) -> Constraint {
        Constraint { kind: "direct".into(), cluster: Some(name.into()), ..Default::default() }
    }

    fn allowed(names: &[&str]) -> Constraint {
        Constraint {
            kind: "clusters".into(),
            allowed: Some(names.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        }
    }

    fn addons(needs: &[&str]) -> Constraint {
        Constraint {
            kind: "addons".into(),
            needs: Some(needs.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        }
    }

    #[test]
    fn placement_table() {
        let a = cluster("a", true, 4.0, 1000);
        let b = cluster("b", true, 8.0, 4000);
        let off = cluster("off", false, 64.0, 64000);
        let all = vec![a.clone(), b.clone(), off.clone()];
        type Case = (&'static str, Service, Vec<Cluster>, Result<&'static str, &'static str>);
        let cases: Vec<Case> = vec![
            ("no clusters", service(1, 100, vec![]), vec![], Err(status::TARGET_CLUSTER_NOT_ACTIVE)),
            ("only inactive", service(1, 100, vec![]), vec![off.clone()], Err(status::TARGET_CLUSTER_NOT_ACTIVE)),
            ("most free memory wins", service(1, 100, vec![]), all.clone(), Ok("b")),
            (
                "memory too large for all",
                service(1, 5000, vec![]),
                all.clone(),
                Err(status::NO_ACTIVE_CLUSTER_WITH_CAPACITY),
            ),
            ("vcpus select", service(6, 100, vec![]), vec![a.clone(), b.clone()], Ok("b")),
            ("direct found", service(1, 100, vec![direct("a")]), all.clone(), Ok("a")),
            ("direct unknown", service(1, 100, vec![direct("zz")]), all.clone(), Err(status::TARGET_CLUSTER_NOT_FOUND)),
            (
                "direct inactive",
                service(1, 100, vec![direct("off")]),
                all.clone(),
                Err(status::TARGET_CLUSTER_NOT_ACTIVE),
            ),
            (
                "direct no capacity",
                service(1, 2000, vec![direct("a")]),
                all.clone(),
                Err(status::TARGET_CLUSTER_NO_CAPACITY),
            ),
            ("clusters allowed", service(1, 100, vec![allowed(&["a"])]), all.clone(), Ok("a")),
            (
                "clusters allowed none fit",
                service(1, 100, vec![allowed(&["off"])]),
                all.clone(),
                Err(status::NO_ACTIVE_CLUSTER_WITH_CAPACITY),
            ),
            ("addons present", service(1, 100, vec![addons(&["gpu-monitor"])]), all.clone(), Ok("b")),
            (
                "addons missing",
                service(1, 100, vec![addons(&["flops"])]),
                all.clone(),
                Err(status::NO_ACTIVE_CLUSTER_WITH_CAPACITY),
            ),
        ];
        for (name, svc, clusters, want) in cases {
            let got = choose_cluster(&svc, &clusters).map(|c| c.cluster_name.as_str());
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn virtualization_must_match() {
        let mut c = cluster("a", true, 4.0, 1000);
        c.virtualization = vec!["unikernel".into()];
        let cs = [c];
        assert_eq!(choose_cluster(&service(1, 1, vec![]), &cs).err(), Some(status::NO_ACTIVE_CLUSTER_WITH_CAPACITY));
    }

    #[test]
    fn a_missing_virtualization_or_architecture_is_named() {
        let mut svc = service(1, 100, vec![]);
        svc.spec.virtualization = "unikernel".into();
        let c = cluster("a", true, 4.0, 1000);
        assert_eq!(
            unmet(&svc, std::slice::from_ref(&c)).unwrap(),
            "no active cluster offers virtualization \"unikernel\" (offered: docker)"
        );
        let mut u = with_arch(c.clone(), "amd64", 4.0, 1000, 0);
        u.virtualization.push("unikernel".into());
        assert_eq!(unmet(&svc, std::slice::from_ref(&u)), None);
        svc.spec.arch = Some(vec!["arm64".into()]);
        assert_eq!(
            unmet(&svc, std::slice::from_ref(&u)).unwrap(),
            "no active cluster offering \"unikernel\" has a worker of architecture arm64"
        );
        assert_eq!(unmet(&svc, &[]).unwrap(), "no active cluster: waiting for a cluster to join or report");
    }

    fn with_arch(mut c: Cluster, arch: &str, vcpus: f64, memory: u64, gpus: u64) -> Cluster {
        let t = ResourceTotals {
            nodes: 1,
            free_vcpus: vcpus,
            free_memory_mb: memory,
            free_gpus: gpus,
            ..Default::default()
        };
        c.aggregation_per_architecture.insert(arch.into(), t);
        c
    }

    fn arch_service(vcpus: u64, memory: u64, archs: &[&str], constraints: Vec<Constraint>) -> Service {
        let mut s = service(vcpus, memory, constraints);
        s.spec.arch = Some(archs.iter().map(|a| a.to_string()).collect());
        s
    }

    #[test]
    fn architecture_table() {
        // a: small, arm64 and amd64 workers; b: big, amd64 only; old: reports no per-arch data.
        let a = with_arch(with_arch(cluster("a", true, 4.0, 3000), "arm64", 2.0, 1000, 0), "amd64", 2.0, 2000, 0);
        let b = with_arch(cluster("b", true, 8.0, 8000), "amd64", 8.0, 8000, 0);
        let old = cluster("old", true, 64.0, 64000);
        let all = vec![a.clone(), b.clone(), old.clone()];
        type Case = (&'static str, Service, Vec<Cluster>, Result<&'static str, &'static str>);
        let cases: Vec<Case> = vec![
            ("no arch: most free memory", arch_service(1, 100, &[], vec![]), all.clone(), Ok("old")),
            ("arm64 only on a", arch_service(1, 500, &["arm64"], vec![]), all.clone(), Ok("a")),
            (
                "arm64 entry too small even though the cluster total fits",
                arch_service(1, 1500, &["arm64"], vec![]),
                all.clone(),
                Err(status::NO_ACTIVE_CLUSTER_WITH_CAPACITY),
            ),
            (
                "arm64 vcpus too few",
                arch_service(3, 100, &["arm64"], vec![]),
                all.clone(),
                Err(status::NO_ACTIVE_CLUSTER_WITH_CAPACITY),
            ),
            (
                "arch nobody has",
                arch_service(1, 100, &["riscv64"], vec![]),
                all.clone(),
                Err(status::NO_ACTIVE_CLUSTER_WITH_CAPACITY),
            ),
            (
                "either arch: best cluster with one",
                arch_service(1, 100, &["arm64", "amd64"], vec![]),
                all.clone(),
                Ok("b"),
            ),
            (
                "one of the archs big enough",
                arch_service(1, 1500, &["arm64", "amd64"], vec![]),
                vec![a.clone()],
                Ok("a"),
            ),
            (
                "direct cluster without the arch",
                arch_service(1, 100, &["arm64"], vec![direct("b")]),
                all.clone(),
                Err(status::TARGET_CLUSTER_NO_CAPACITY),
            ),
            (
                "gpus checked per arch",
                arch_service(1, 100, &["amd64"], vec![]),
                vec![with_arch(cluster("g", true, 4.0, 4000), "amd64", 4.0, 4000, 0)],
                Ok("g"),
            ),
        ];
        for (name, svc, clusters, want) in cases {
            let got = choose_cluster(&svc, &clusters).map(|c| c.cluster_name.as_str());
            assert_eq!(got, want, "{name}");
        }
        let mut gpu = arch_service(1, 100, &["amd64"], vec![]);
        gpu.spec.vgpus = 1;
        let mut g = with_arch(cluster("g", true, 4.0, 4000), "amd64", 4.0, 4000, 0);
        g.vgpus = 1;
        assert_eq!(choose_cluster(&gpu, std::slice::from_ref(&g)).err(), Some(status::NO_ACTIVE_CLUSTER_WITH_CAPACITY));
    }

    /// A descriptor without `memory` needs the default free, on the cluster and per architecture;
    /// its reservation holds the default too.
    #[test]
    fn memory_less_service_counts_the_default() {
        let memory_less = service(1, 0, vec![]);
        let tight = [cluster("a", true, 4.0, 255)];
        assert_eq!(choose_cluster(&memory_less, &tight).err(), Some(status::NO_ACTIVE_CLUSTER_WITH_CAPACITY));
        let enough = [cluster("a", true, 4.0, 300)];
        assert_eq!(choose_cluster(&memory_less, &enough).unwrap().cluster_name, "a");
        let arch = arch_service(1, 0, &["arm64"], vec![]);
        let arm = [with_arch(cluster("a", true, 4.0, 4000), "arm64", 4.0, 200, 0)];
        assert_eq!(choose_cluster(&arch, &arm).err(), Some(status::NO_ACTIVE_CLUSTER_WITH_CAPACITY));

        // 300 MB free takes one memory-less instance, not two.
        let mut r = Reservations::new();
        let view = r.applied(&enough);
        let c = choose_cluster(&memory_less, &view).unwrap();
        r.reserve_for(&c.id, 1, (memory_less.id.clone(), 0), &memory_less.spec);
        assert_eq!(r.outstanding("id-a").memory_mb, oak_api::sla::DEFAULT_MEMORY_MB);
        assert_eq!(
            choose_cluster(&memory_less, &r.applied(&enough)).err(),
            Some(status::NO_ACTIVE_CLUSTER_WITH_CAPACITY)
        );
    }

    /// A burst of placements between two reports, each decision on the reported free amounts minus
    /// the reservations so far: never more than the clusters reported free.
    #[test]
    fn burst_with_reservations_never_over_commits() {
        let clusters = vec![cluster("a", true, 4.0, 4000), cluster("b", true, 8.0, 8000)];
        let svc = service(1, 1000, vec![]);
        let mut r = Reservations::new();
        let mut placed = Vec::new();
        for k in 0..20u32 {
            let view = r.applied(&clusters);
            match choose_cluster(&svc, &view) {
                Ok(c) => {
                    r.reserve(&c.id, u64::from(k) + 1, (svc.id.clone(), k), Demand::of(&svc.spec));
                    placed.push(c.cluster_name.clone());
                }
                Err(e) => assert_eq!(e, status::NO_ACTIVE_CLUSTER_WITH_CAPACITY, "instance {k}"),
            }
        }
        assert_eq!(placed.len(), 12, "4 fit on a, 8 on b: {placed:?}");
        assert_eq!(placed.iter().filter(|n| *n == "a").count(), 4);
        for c in &clusters {
            let used = r.outstanding(&c.id);
            assert!(used.vcpus <= c.vcpus && used.memory_mb <= c.memory, "{} over-committed", c.cluster_name);
        }
        // Without reservations the same burst would have put everything on b.
        assert_eq!(choose_cluster(&svc, &clusters).unwrap().cluster_name, "b");

        // b reports again after applying every deploy: its free amounts now include the eight
        // instances, so confirming drops exactly those reservations.
        let mut reported = clusters.clone();
        reported[1].vcpus = 0.0;
        reported[1].memory = 0;
        r.confirm("id-b", 20);
        assert_eq!(r.outstanding("id-b"), Demand::default());
        assert_eq!(r.outstanding("id-a").memory_mb, 4000);
        assert_eq!(choose_cluster(&svc, &r.applied(&reported)).err(), Some(status::NO_ACTIVE_CLUSTER_WITH_CAPACITY));

        // Undeploying one instance on a frees its reservation: one more fits there.
        let on_a = (0..20u32).map(|k| (svc.id.clone(), k)).find(|k| r.clone().release(k).as_deref() == Some("id-a"));
        assert_eq!(r.release(&on_a.unwrap()).as_deref(), Some("id-a"));
        assert_eq!(choose_cluster(&svc, &r.applied(&reported)).unwrap().cluster_name, "a");
    }

    fn placed(number: u32, on: &str) -> oak_api::model::Instance {
        let mut i = oak_api::model::Instance::new(number, status::RUNNING, "", 0.0);
        i.cluster_id = Some(format!("id-{on}"));
        i
    }

    fn hosts(entries: &[(&str, &[&str])]) -> NodeHosts {
        entries.iter().map(|(c, nodes)| (format!("id-{c}"), nodes.iter().map(|n| n.to_string()).collect())).collect()
    }

    fn node(names: &str) -> Constraint {
        Constraint { kind: "direct".into(), node: Some(names.into()), ..Default::default() }
    }

    #[test]
    fn instances_spread_over_clusters_unless_the_service_opts_out() {
        // b has more free memory, so without spreading everything goes there.
        let clusters = vec![cluster("a", true, 4.0, 3000), cluster("b", true, 8.0, 4000)];
        let mut svc = service(1, 100, vec![]);
        let mut order = Vec::new();
        for n in 0..4u32 {
            let c = choose(&svc, &clusters, None, &spread_counts_of(&svc, n)).unwrap();
            order.push(c.cluster_name.clone());
            svc.instance_list.push(placed(n, &c.cluster_name));
        }
        assert_eq!(order, ["b", "a", "b", "a"]);
        // Re-placing instance 0 (on b) counts only the others: b holds 1, a holds 2.
        assert_eq!(choose(&svc, &clusters, None, &spread_counts_of(&svc, 0)).unwrap().cluster_name, "b");
        // Completed instances no longer count.
        for i in svc.instance_list.iter_mut().filter(|i| i.cluster_id.as_deref() == Some("id-a")) {
            i.status = status::COMPLETED.into();
        }
        assert_eq!(choose(&svc, &clusters, None, &spread_counts_of(&svc, 9)).unwrap().cluster_name, "a");

        // Counted from the store's rows: finished and this instance's own place do not count.
        let rows = [(0, "a", status::RUNNING), (1, "a", status::COMPLETED), (2, "b", status::RUNNING), (3, "a", "")];
        let want: HashMap<String, usize> = [("a".to_string(), 2)].into();
        assert_eq!(spread_counts(rows, 2), want);

        // spread = false packs by free capacity.
        let mut packed = service(1, 100, vec![]);
        packed.spec.spread = false;
        for n in 0..3u32 {
            let c = choose(&packed, &clusters, None, &spread_counts_of(&packed, n)).unwrap();
            assert_eq!(c.cluster_name, "b");
            packed.instance_list.push(placed(n, "b"));
        }
        // Spreading never picks a cluster that does not fit.
        let mut big = service(1, 3500, vec![]);
        big.instance_list.push(placed(0, "b"));
        assert_eq!(choose(&big, &clusters, None, &spread_counts_of(&big, 1)).unwrap().cluster_name, "b");
    }

    #[test]
    fn a_direct_node_goes_to_the_cluster_holding_it() {
        let clusters =
            vec![cluster("a", true, 4.0, 3000), cluster("b", true, 8.0, 4000), cluster("off", false, 8.0, 4000)];
        let h = hosts(&[("a", &["edge-1", "edge-2"]), ("b", &["big-1"]), ("off", &["gone-1"])]);
        let pick = |c: Constraint| {
            choose(&service(1, 100, vec![c]), &clusters, Some(&h), &HashMap::new()).map(|c| c.cluster_name.clone())
        };
        assert_eq!(pick(node("edge-2")).unwrap(), "a", "a has less memory free but holds the node");
        assert_eq!(pick(node(" zz ; big-1")).unwrap(), "b");
        assert_eq!(
            pick(node("x")).unwrap_err(),
            Unplaced::new(status::TARGET_CLUSTER_NOT_FOUND, "no cluster has node \"x\"")
        );
        assert_eq!(pick(node("x;y")).unwrap_err().detail, "no cluster has node \"x\" or \"y\"");
        let e = pick(node("gone-1")).unwrap_err();
        assert_eq!(e.status, status::TARGET_CLUSTER_NOT_ACTIVE);
        assert_eq!(e.detail, "the cluster holding node \"gone-1\" (off) is not active");
        // A named cluster decides, whatever the node.
        let both = Constraint { cluster: Some("b".into()), ..node("edge-1") };
        assert_eq!(pick(both).unwrap(), "b");
        // Too big for the cluster holding the node: not placed elsewhere.
        let e = choose(&service(6, 100, vec![node("edge-1")]), &clusters, Some(&h), &HashMap::new()).unwrap_err();
        assert_eq!(e.status, status::TARGET_CLUSTER_NO_CAPACITY);
        assert_eq!(e.detail, "no active cluster holding node \"edge-1\" has 6 free vCPUs (most: 4 on a)");
        // Without the node view the clusters decide (the old behaviour).
        assert_eq!(
            choose(&service(1, 100, vec![node("edge-1")]), &clusters, None, &HashMap::new()).unwrap().cluster_name,
            "b"
        );
    }

    #[test]
    fn unmet_names_the_first_requirement_no_cluster_meets() {
        let mut a = cluster("a", true, 4.0, 3000);
        a.vgpus = 1;
        let b = cluster("b", true, 8.0, 2000);
        let all = vec![a, b, cluster("off", false, 64.0, 64000)];
        let mut gpus = service(1, 100, vec![]);
        gpus.spec.vgpus = 2;
        let cases: Vec<(&str, Service, Option<&str>)> = vec![
            ("fits", service(1, 100, vec![]), None),
            ("vcpus", service(16, 100, vec![]), Some("no active cluster has 16 free vCPUs (most: 8 on b)")),
            (
                "memory",
                service(1, 5000, vec![]),
                Some("no active cluster has 5000 MB of free memory (most: 3000 on a)"),
            ),
            ("gpus", gpus, Some("no active cluster has 2 free GPUs (most: 1 on a)")),
            (
                "vcpus, then memory among those with the vCPUs",
                service(6, 2500, vec![]),
                Some("no active cluster has 2500 MB of free memory (most: 2000 on b)"),
            ),
            (
                "allowed",
                service(1, 100, vec![allowed(&["off", "zz"])]),
                Some("no active cluster is one of the allowed clusters (off, zz)"),
            ),
            ("addons", service(1, 100, vec![addons(&["flops"])]), Some("no active cluster supports the add-ons flops")),
        ];
        for (name, svc, want) in cases {
            assert_eq!(unmet(&svc, &all).as_deref(), want, "{name}");
            let placed = choose(&svc, &all, None, &HashMap::new());
            match want {
                None => assert!(placed.is_ok(), "{name}"),
                Some(detail) => {
                    assert_eq!(
                        placed.unwrap_err(),
                        Unplaced::new(status::NO_ACTIVE_CLUSTER_WITH_CAPACITY, detail),
                        "{name}"
                    )
                }
            }
        }
        let e = choose(&service(16, 100, vec![direct("a")]), &all, None, &HashMap::new()).unwrap_err();
        assert_eq!(e.detail, "no cluster \"a\" has 16 free vCPUs (most: 4 on a)");
        let e = choose(&service(1, 100, vec![direct("zz")]), &all, None, &HashMap::new()).unwrap_err();
        assert_eq!(e, Unplaced::new(status::TARGET_CLUSTER_NOT_FOUND, "no cluster is named \"zz\""));
        // Architecture capacity: the cluster total fits, no single architecture does.
        let arm = with_arch(with_arch(cluster("m", true, 4.0, 3000), "arm64", 2.0, 1000, 0), "amd64", 2.0, 2000, 0);
        let svc = arch_service(1, 1500, &["arm64"], vec![]);
        assert_eq!(
            unmet(&svc, std::slice::from_ref(&arm)).unwrap(),
            "no active cluster has 1 vCPUs, 1500 MB and 0 GPUs free on workers of architecture arm64"
        );
    }
}
