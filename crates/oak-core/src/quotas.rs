//! Per-user quotas: how much of the shared system one user's services may hold (services,
//! instances, and service IPs from the overlay's common pool), so one tenant cannot exhaust
//! what everybody draws from. Admins are exempt (the handlers do not ask for them): they run
//! the system and may need to go beyond a tenant's share.

use oak_api::model::Service;

/// Limits per user. The defaults suit a small shared deployment; the root's `--quota-*` flags
/// change them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    pub services: usize,
    pub instances: usize,
    /// Round-robin and closest IPs together.
    pub service_ips: usize,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas { services: 100, instances: 500, service_ips: 200 }
    }
}

/// What a user holds, or what a request would add.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub services: usize,
    pub instances: usize,
    pub service_ips: usize,
}

impl Usage {
    /// One service with its instances; it holds a round-robin IP (given at creation when the
    /// descriptor names none) and the closest IP its descriptor names, if any.
    pub fn of_service(s: &Service) -> Usage {
        Usage { services: 1, instances: s.instance_list.len(), service_ips: 1 + usize::from(s.closest_ip.is_some()) }
    }

    pub fn of_services<'a>(services: impl IntoIterator<Item = &'a Service>) -> Usage {
        services.into_iter().fold(Usage::default(), |sum, s| sum.plus(Usage::of_service(s)))
    }

    /// What `self` holds beyond `before` (an update's growth), never negative.
    pub fn beyond(self, before: Usage) -> Usage {
        Usage {
            services: self.services.saturating_sub(before.services),
            instances: self.instances.saturating_sub(before.instances),
            service_ips: self.service_ips.saturating_sub(before.service_ips),
        }
    }

    pub fn plus(self, o: Usage) -> Usage {
        Usage {
            services: self.services + o.services,
            instances: self.instances + o.instances,
            service_ips: self.service_ips + o.service_ips,
        }
    }
}

/// A quota a request would exceed; the message names the quota and the flag that raises it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    pub what: &'static str,
    pub flag: &'static str,
    pub limit: usize,
    pub held: usize,
    pub asked: usize,
}

impl std::fmt::Display for Exceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "quota exceeded: at most {} {} per user (you hold {}, this request adds {}); delete some first \
             or ask the operator to raise the root's {}",
            self.limit, self.what, self.held, self.asked, self.flag
        )
    }
}

/// Whether a user holding `held` may add `adding`. Only what the request adds is checked, so a
/// user over a lowered quota can still delete and change what does not grow.
pub fn check(q: &Quotas, held: Usage, adding: Usage) -> Result<(), Exceeded> {
    let rows = [
        ("services", "--quota-services", q.services, held.services, adding.services),
        ("instances", "--quota-instances", q.instances, held.instances, adding.instances),
        ("service IPs", "--quota-service-ips", q.service_ips, held.service_ips, adding.service_ips),
    ];
    for (what, flag, limit, held, asked) in rows {
        if asked > 0 && held + asked > limit {
            return Err(Exceeded { what, flag, limit, held, asked });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(services: usize, instances: usize, service_ips: usize) -> Usage {
        Usage { services, instances, service_ips }
    }

    #[test]
    fn requests_within_or_beyond_the_quotas() {
        let q = Quotas { services: 2, instances: 3, service_ips: 3 };
        let cases = [
            (usage(0, 0, 0), usage(2, 0, 2), None),
            (usage(1, 0, 1), usage(2, 0, 2), Some("services")),
            (usage(2, 3, 2), usage(0, 0, 0), None),
            (usage(2, 2, 2), usage(0, 1, 0), None),
            (usage(2, 3, 2), usage(0, 1, 0), Some("instances")),
            (usage(1, 0, 2), usage(1, 0, 2), Some("service IPs")),
            // Over a lowered quota already: what does not grow still passes.
            (usage(5, 9, 9), usage(0, 0, 0), None),
        ];
        for (held, adding, want) in cases {
            let got = check(&q, held, adding).err().map(|e| e.what);
            assert_eq!(got, want, "held {held:?} adding {adding:?}");
        }
    }

    #[test]
    fn the_message_names_the_quota_and_its_flag() {
        let e = check(&Quotas::default(), usage(0, 500, 0), usage(0, 1, 0)).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("at most 500 instances per user") && text.contains("--quota-instances"), "{text}");
    }

    #[test]
    fn a_service_holds_its_round_robin_and_closest_ips() {
        let app: oak_api::model::Application = serde_json::from_value(serde_json::json!({
            "_id": "app", "applicationID": "app", "application_name": "a", "application_namespace": "b",
            "userId": "u"
        }))
        .unwrap();
        let ms = serde_json::from_value(serde_json::json!({
            "microservice_name": "c", "microservice_namespace": "d", "virtualization": "container", "code": "nginx"
        }))
        .unwrap();
        let mut s = crate::jobs::new_service("s".into(), &app, ms);
        assert_eq!(Usage::of_service(&s), usage(1, 0, 1));
        s.closest_ip = Some("10.30.0.9".into());
        assert_eq!(Usage::of_services([&s, &s]), usage(2, 0, 4));
        assert_eq!(usage(1, 0, 2).beyond(usage(1, 3, 1)), usage(0, 0, 1));
    }
}
