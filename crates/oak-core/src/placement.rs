//! The root scheduler's decision: which cluster gets a new instance (spec §6, defects fixed).
//!
//! Only clusters that are active now are candidates. A cluster fits when it runs the service's
//! virtualization, has the free vCPUs, memory and GPUs asked for, and satisfies the `direct`,
//! `clusters` and `addons` constraints. Among fitting clusters the one with the most free memory
//! wins, then the most free vCPUs, then the lowest name (deterministic, unlike the original's
//! unstable sort on a mis-computed score).

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

fn fits(service: &Service, c: &Cluster) -> bool {
    let spec = &service.spec;
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
    allowed
        && addons
        && c.virtualization.contains(&spec.virtualization)
        && c.vcpus >= spec.vcpus as f64
        && c.memory >= spec.memory
        && c.vgpus >= spec.vgpus
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
