//! Service ("job") documents: how a validated microservice becomes a stored service, and how a
//! service's status follows its instances.

use oak_api::model::{Application, Instance, Service};
use oak_api::sla::Microservice;
use oak_api::status;

use crate::sla::{job_name, stored_virtualization};

/// Builds the stored service for microservice `ms` of application `app`, under id `id`.
pub fn new_service(id: String, app: &Application, mut ms: Microservice) -> Service {
    ms.microservice_id = id.clone();
    ms.virtualization = stored_virtualization(&ms.virtualization);
    for key in Service::RESERVED_KEYS {
        ms.extra.remove(*key);
    }
    let addresses = ms.addresses.clone().unwrap_or_default();
    Service {
        id,
        job_name: job_name(
            &app.application_name,
            &app.application_namespace,
            &ms.microservice_name,
            &ms.microservice_namespace,
        ),
        application_id: app.id.clone(),
        app_name: app.application_name.clone(),
        app_ns: app.application_namespace.clone(),
        service_name: ms.microservice_name.clone(),
        service_ns: ms.microservice_namespace.clone(),
        image: ms.code.clone(),
        rr_ip: addresses.rr_ip,
        rr_ip_v6: addresses.rr_ip_v6,
        closest_ip: addresses.closest_ip,
        next_instance_progressive_number: 0,
        status: None,
        status_detail: None,
        generation: 1,
        instance_list: Vec::new(),
        spec: ms,
    }
}

/// Replaces the descriptor of `service` with `ms` (an update), keeping identity and instances.
pub fn apply_update(service: &mut Service, app: &Application, ms: Microservice) {
    let mut updated = new_service(service.id.clone(), app, ms);
    updated.next_instance_progressive_number = service.next_instance_progressive_number;
    updated.status = service.status.take();
    updated.status_detail = service.status_detail.take();
    updated.generation = service.generation + 1;
    updated.instance_list = std::mem::take(&mut service.instance_list);
    *service = updated;
}

/// The service's status and detail derived from its instances: `RUNNING` only when every
/// instance runs; otherwise the status of the first instance that does not, so that a problem
/// is never hidden behind a healthy sibling. `None` when there are no instances.
pub fn job_status(instances: &[Instance]) -> Option<(String, String)> {
    let first = instances.first()?;
    match instances.iter().find(|i| i.status != status::RUNNING) {
        None => Some((status::RUNNING.to_string(), format!("{} instance(s) running", instances.len()))),
        Some(i) if instances.len() == 1 => Some((i.status.clone(), i.status_detail.clone())),
        Some(i) => Some((
            i.status.clone(),
            format!(
                "instance {}: {}",
                i.instance_number,
                if i.status_detail.is_empty() { &first.status } else { &i.status_detail }
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(n: u32, s: &str) -> Instance {
        Instance::new(n, s, "why", 0.0)
    }

    #[test]
    fn status_follows_instances() {
        assert_eq!(job_status(&[]), None);
        assert_eq!(job_status(&[inst(0, "RUNNING"), inst(1, "RUNNING")]).unwrap().0, "RUNNING");
        let (s, d) = job_status(&[inst(0, "RUNNING"), inst(1, "FAILED")]).unwrap();
        assert_eq!((s.as_str(), d.as_str()), ("FAILED", "instance 1: why"));
        assert_eq!(
            job_status(&[inst(0, "TargetClusterNotActive")]).unwrap(),
            ("TargetClusterNotActive".into(), "why".into())
        );
    }
}
