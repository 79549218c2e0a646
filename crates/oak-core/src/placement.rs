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
use oak_api::model::{Cluster, Service};
use oak_api::status;

/// Picks the cluster for one new instance of `service`, or the negative status explaining why
/// none fits (one of the original's status strings).
pub fn choose_cluster<'a>(service: &Service, clusters: &'a [Cluster]) -> Result<&'a Cluster, &'static str> {
    let spec = &service.spec;
    let direct = spec.constraints.iter().find(|c| c.kind == "direct").and_then(|c| c.cluster.as_deref());
    if let Some(name) = direct.filter(|n| !n.is_empty()) {
        let target = clusters.iter().find(|c| c.cluster_name == name).ok_or(status::TARGET_CLUSTER_NOT_FOUND)?;
        if !target.active {
            return Err(status::TARGET_CLUSTER_NOT_ACTIVE);
        }
        return if fits(service, target) { Ok(target) } else { Err(status::TARGET_CLUSTER_NO_CAPACITY) };
    }
    let mut active = clusters.iter().filter(|c| c.active).peekable();
    if active.peek().is_none() {
        return Err(status::TARGET_CLUSTER_NOT_ACTIVE);
    }
    active
        .filter(|c| fits(service, c))
        .max_by(|a, b| {
            a.memory.cmp(&b.memory).then(a.vcpus.total_cmp(&b.vcpus)).then_with(|| b.cluster_name.cmp(&a.cluster_name))
        })
        .ok_or(status::NO_ACTIVE_CLUSTER_WITH_CAPACITY)
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

/// A sharper `status_detail` when the cause is that no active cluster offers the service's
/// virtualization or any of its architectures at all (not a matter of free capacity).
pub fn missing_offer(service: &Service, clusters: &[Cluster]) -> Option<String> {
    let spec = &service.spec;
    let active: Vec<&Cluster> = clusters.iter().filter(|c| c.active).collect();
    if active.is_empty() {
        return None;
    }
    let offering: Vec<&&Cluster> = active.iter().filter(|c| c.virtualization.contains(&spec.virtualization)).collect();
    if offering.is_empty() {
        let mut offered: Vec<&str> = active.iter().flat_map(|c| c.virtualization.iter().map(String::as_str)).collect();
        offered.sort_unstable();
        offered.dedup();
        return Some(format!(
            "no active cluster offers virtualization {:?} (offered: {})",
            spec.virtualization,
            if offered.is_empty() { "none".to_string() } else { offered.join(", ") }
        ));
    }
    match spec.arch.as_deref() {
        Some(archs) if !archs.is_empty() => {
            let any = offering.iter().any(|c| archs.iter().any(|a| c.aggregation_per_architecture.contains_key(a)));
            (!any).then(|| {
                format!(
                    "no active cluster offering {:?} has a worker of architecture {}",
                    spec.virtualization,
                    archs.join(" or ")
                )
            })
        }
        _ => None,
    }
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
            missing_offer(&svc, std::slice::from_ref(&c)).unwrap(),
            "no active cluster offers virtualization \"unikernel\" (offered: docker)"
        );
        let mut u = with_arch(c.clone(), "amd64", 4.0, 1000, 0);
        u.virtualization.push("unikernel".into());
        assert_eq!(missing_offer(&svc, std::slice::from_ref(&u)), None);
        svc.spec.arch = Some(vec!["arm64".into()]);
        assert_eq!(
            missing_offer(&svc, std::slice::from_ref(&u)).unwrap(),
            "no active cluster offering \"unikernel\" has a worker of architecture arm64"
        );
        assert_eq!(missing_offer(&svc, &[]), None, "no cluster at all has its own status");
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
}
