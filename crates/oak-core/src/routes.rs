//! Route tables of the overlay network (spec `oakestra-net.md` §3.3, §6.5): what the root answers
//! to a table query and pushes when a job's instances change. Workers' proxies route only to
//! entries with a namespace address and a tunnel endpoint, so an instance that is not running
//! (or not yet known to its worker's bridge) is listed with those left empty.

use oak_api::model::{Instance, Service};
use oak_api::net::{RouteInstance, RouteTable, ServiceIp, IP_TYPE_CLOSEST, IP_TYPE_RR};
use oak_api::status;

/// One instance as a table entry; `None` for an instance without an instance IP (nothing can
/// address it).
pub fn route_instance(inst: &Instance) -> Option<RouteInstance> {
    let instance_ip = inst.instance_ip.clone().filter(|ip| !ip.is_empty())?;
    let mut entry = RouteInstance {
        instance_number: inst.instance_number,
        instance_ip,
        worker_id: inst.worker_id.clone().unwrap_or_default(),
        cluster_id: inst.cluster_id.clone().unwrap_or_default(),
        ..Default::default()
    };
    let endpoint = (inst.namespace_ip.as_deref(), inst.host_ip.as_deref(), inst.host_port.as_deref());
    if let (status::RUNNING, (Some(ns), Some(host), Some(port))) = (inst.status.as_str(), endpoint) {
        let port = port.trim().parse::<u16>().ok().filter(|p| *p != 0);
        if let (false, false, Some(port)) = (ns.is_empty(), host.is_empty(), port) {
            entry.namespace_ip = ns.to_string();
            entry.host_ip = host.to_string();
            entry.host_port = port;
            entry.public_key = inst.tunnel_key.clone().unwrap_or_default();
        }
    }
    Some(entry)
}

/// Whether a table entry can receive traffic.
pub fn routable(entry: &RouteInstance) -> bool {
    !entry.namespace_ip.is_empty() && !entry.host_ip.is_empty() && entry.host_port != 0
}

/// The service's addresses: its round-robin IP, then its closest IP.
pub fn service_ips(service: &Service) -> Vec<ServiceIp> {
    [(IP_TYPE_RR, &service.rr_ip), (IP_TYPE_CLOSEST, &service.closest_ip)]
        .into_iter()
        .filter_map(|(kind, ip)| {
            ip.as_ref()
                .filter(|ip| !ip.is_empty())
                .map(|ip| ServiceIp { ip_type: kind.to_string(), address: ip.clone() })
        })
        .collect()
}

/// The table of `service` (with its instances loaded), answering `query_key`.
pub fn table(service: &Service, query_key: &str) -> RouteTable {
    RouteTable {
        app_name: service.job_name.clone(),
        job_id: service.id.clone(),
        query_key: query_key.to_string(),
        service_ip: service_ips(service),
        instance_list: service.instance_list.iter().filter_map(route_instance).collect(),
        error: String::new(),
    }
}

/// What is left of a deleted service's table: nothing to route to, no addresses.
pub fn removed(service: &Service) -> RouteTable {
    RouteTable {
        app_name: service.job_name.clone(),
        job_id: service.id.clone(),
        query_key: service.job_name.clone(),
        ..Default::default()
    }
}

/// The answer to a query for an unknown job name or address.
pub fn unknown(query_key: &str, error: String) -> RouteTable {
    RouteTable { query_key: query_key.to_string(), error, ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oak_api::sla::Microservice;

    fn running(n: u32, ip: &str) -> Instance {
        let mut i = Instance::new(n, status::RUNNING, "", 0.0);
        i.instance_ip = Some(ip.into());
        i.namespace_ip = Some("10.18.0.66".into());
        i.host_ip = Some("192.0.2.7".into());
        i.host_port = Some("50103".into());
        i.worker_id = Some("w1".into());
        i.cluster_id = Some("c1".into());
        i.tunnel_key = Some("ab".repeat(32));
        i
    }

    fn service(instances: Vec<Instance>) -> Service {
        let spec: Microservice = serde_json::from_value(serde_json::json!({
            "microservice_name": "web", "microservice_namespace": "test",
            "virtualization": "docker", "code": "img"
        }))
        .unwrap();
        Service {
            id: "s1".into(),
            job_name: "app.test.web.test".into(),
            application_id: "a1".into(),
            app_name: "app".into(),
            app_ns: "test".into(),
            service_name: "web".into(),
            service_ns: "test".into(),
            image: "img".into(),
            rr_ip: Some("10.30.0.1".into()),
            rr_ip_v6: None,
            closest_ip: None,
            next_instance_progressive_number: 0,
            status: None,
            status_detail: None,
            generation: 1,
            instance_list: instances,
            spec,
        }
    }

    #[test]
    fn only_running_instances_with_an_endpoint_are_routable() {
        let ok = route_instance(&running(0, "10.30.0.2")).unwrap();
        assert!(routable(&ok));
        assert_eq!(
            (ok.namespace_ip.as_str(), ok.host_ip.as_str(), ok.host_port, ok.worker_id.as_str()),
            ("10.18.0.66", "192.0.2.7", 50103, "w1")
        );
        assert_eq!(ok.public_key, "ab".repeat(32), "packets are sealed for its worker's key");
        let mut scheduled = running(1, "10.30.0.3");
        scheduled.status = status::NODE_SCHEDULED.into();
        let mut no_ns = running(2, "10.30.0.4");
        no_ns.namespace_ip = None;
        let mut bad_port = running(3, "10.30.0.5");
        bad_port.host_port = Some("tunnel".into());
        let mut empty_host = running(4, "10.30.0.6");
        empty_host.host_ip = Some(String::new());
        for inst in [scheduled, no_ns, bad_port, empty_host] {
            let entry = route_instance(&inst).unwrap();
            assert!(!routable(&entry), "{inst:?}");
            assert_eq!((entry.namespace_ip.as_str(), entry.host_ip.as_str(), entry.host_port), ("", "", 0));
            assert!(entry.public_key.is_empty());
            assert_eq!(entry.instance_ip, inst.instance_ip.clone().unwrap(), "still listed with its address");
        }
        let mut no_ip = running(5, "");
        assert!(route_instance(&no_ip).is_none());
        no_ip.instance_ip = None;
        assert!(route_instance(&no_ip).is_none(), "nothing can address it");
    }

    #[test]
    fn tables_list_service_ips_and_every_addressed_instance() {
        let mut s = service(vec![running(0, "10.30.0.2"), Instance::new(1, status::REQUESTED, "", 0.0)]);
        let t = table(&s, "10.30.0.1");
        assert_eq!(
            (t.app_name.as_str(), t.job_id.as_str(), t.query_key.as_str()),
            ("app.test.web.test", "s1", "10.30.0.1")
        );
        assert_eq!(t.service_ip, vec![ServiceIp { ip_type: "RR".into(), address: "10.30.0.1".into() }]);
        assert_eq!(t.instance_list.len(), 1, "the instance without an IP is left out");
        assert!(t.error.is_empty());

        s.closest_ip = Some("10.30.0.9".into());
        let kinds: Vec<(String, String)> =
            table(&s, "x").service_ip.into_iter().map(|i| (i.ip_type, i.address)).collect();
        assert_eq!(kinds, [("RR".into(), "10.30.0.1".into()), ("Closest".into(), "10.30.0.9".into())]);
        s.rr_ip = None;
        assert_eq!(table(&s, "x").service_ip.len(), 1);

        let gone = removed(&s);
        assert!(gone.service_ip.is_empty() && gone.instance_list.is_empty() && gone.error.is_empty());
        assert_eq!((gone.app_name.as_str(), gone.query_key.as_str()), ("app.test.web.test", "app.test.web.test"));
    }

    #[test]
    fn unknown_queries_answer_an_error_with_their_key() {
        let t = unknown("10.30.9.9", "no service with address 10.30.9.9".into());
        assert_eq!(t.query_key, "10.30.9.9");
        assert_eq!(t.error, "no service with address 10.30.9.9");
        assert!(t.app_name.is_empty() && t.instance_list.is_empty() && t.service_ip.is_empty());
        let wire = serde_json::to_value(&t).unwrap();
        assert_eq!(wire["error"], "no service with address 10.30.9.9");
        assert!(serde_json::to_value(table(&service(vec![]), "k")).unwrap().get("error").is_none());
    }
}
