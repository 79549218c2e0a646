//! What a descriptor may ask of a node, by who submits it (issue 12, tenancy and node safety).
//!
//! `privileged: true` makes the container root on its worker, and a host port mapping takes the
//! port on the worker's address (ssh on 22, or one of the orchestrator's own ports, would be
//! hijacked). So only `Admin`, and roles the operator trusts with the nodes, may ask for either;
//! everyone else gets a refusal naming the JSON path of the field. Checked on valid descriptors,
//! before anything is stored, for every request that stores a microservice.

use std::collections::BTreeSet;

use oak_api::sla::{Microservice, Sla};
use oak_api::FieldError;

use crate::authz::Principal;
use crate::ports::{parse_port_mappings, TUNNEL_PORT};

/// Ports of the orchestrator's tiers at their defaults: root API, root network manager, cluster
/// channel, cluster node API, MQTT broker, overlay tunnel, worker metrics.
pub const ORCHESTRATOR_PORTS: [u16; 7] = [10000, 10099, 50052, 10100, 10003, TUNNEL_PORT, 10190];

/// Host ports below this are the system's (ssh, dns, http…).
pub const FIRST_UNPRIVILEGED_PORT: u16 = 1024;

/// The operator's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Roles besides `Admin` trusted with the nodes: privileged containers and reserved host ports.
    pub trusted_roles: Vec<String>,
    /// Host ports nobody but the trusted may map (besides those below 1024).
    pub reserved_ports: BTreeSet<u16>,
}

impl Policy {
    /// The default rules plus the root's own configured ports (0, an unbound port, is skipped).
    pub fn new(trusted_roles: Vec<String>, own_ports: &[u16]) -> Self {
        let reserved_ports = ORCHESTRATOR_PORTS.iter().chain(own_ports).copied().filter(|p| *p != 0).collect();
        Policy { trusted_roles, reserved_ports }
    }

    fn trusts(&self, who: &Principal) -> bool {
        who.is_admin() || self.trusted_roles.iter().any(|r| who.has_role(r))
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy::new(Vec::new(), &[])
    }
}

/// Why a descriptor is refused. `Forbidden` fields (privileged) are answered with 403, `Invalid`
/// ones (ports) with 422, each error naming the field's JSON path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Forbidden(Vec<FieldError>),
    Invalid(Vec<FieldError>),
}

/// Checks every microservice of an `applications[i].microservices[j]` descriptor.
pub fn check_sla(policy: &Policy, who: &Principal, sla: &Sla) -> Result<(), Refusal> {
    let services = sla.applications.iter().enumerate().flat_map(|(i, app)| {
        app.microservices.iter().enumerate().map(move |(j, ms)| (format!("applications[{i}].microservices[{j}]"), ms))
    });
    check(policy, who, services)
}

/// Checks one microservice found at `path` (`""` for a bare microservice object).
pub fn check_microservice(policy: &Policy, who: &Principal, path: &str, ms: &Microservice) -> Result<(), Refusal> {
    check(policy, who, std::iter::once((path.to_string(), ms)))
}

fn check<'a>(
    policy: &Policy,
    who: &Principal,
    services: impl IntoIterator<Item = (String, &'a Microservice)>,
) -> Result<(), Refusal> {
    if policy.trusts(who) {
        return Ok(());
    }
    let field = |path: &str, key: &str| if path.is_empty() { key.to_string() } else { format!("{path}.{key}") };
    let mut forbidden = Vec::new();
    let mut invalid = Vec::new();
    for (path, ms) in services {
        if ms.privileged {
            forbidden.push(FieldError::new(
                field(&path, "privileged"),
                "privileged containers are only for Admin and the roles the operator trusts",
            ));
        }
        // A port field that does not parse was refused by validation already.
        for m in parse_port_mappings(&ms.port).unwrap_or_default() {
            let why = if m.host < FIRST_UNPRIVILEGED_PORT {
                "is below 1024"
            } else if policy.reserved_ports.contains(&m.host) {
                "is one of the orchestrator's own ports"
            } else {
                continue;
            };
            invalid.push(FieldError::new(
                field(&path, "port"),
                format!("host port {} {why}: only Admin and the roles the operator trusts may map it", m.host),
            ));
        }
    }
    if !forbidden.is_empty() {
        Err(Refusal::Forbidden(forbidden))
    } else if !invalid.is_empty() {
        Err(Refusal::Invalid(invalid))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use oak_api::status::role;
    use serde_json::json;

    use super::*;

    fn who(roles: &[&str]) -> Principal {
        Principal {
            username: "u".into(),
            user_id: "u-id".into(),
            org_id: "org".into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
        }
    }

    fn ms(privileged: bool, port: &str) -> Microservice {
        serde_json::from_value(json!({
            "microservice_name": "web", "microservice_namespace": "test", "virtualization": "container",
            "code": "img", "privileged": privileged, "port": port
        }))
        .unwrap()
    }

    fn sla(services: Vec<Vec<Microservice>>) -> Sla {
        let apps: Vec<_> = services
            .into_iter()
            .map(|s| json!({"application_name": "a", "application_namespace": "t", "microservices": s}))
            .collect();
        serde_json::from_value(json!({"sla_version": "v2.0", "customerID": "u", "applications": apps})).unwrap()
    }

    fn fields(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn who_may_ask_what() {
        let policy = Policy::new(vec![role::ORGANIZATION_ADMIN.into()], &[8000, 9000, 0]);
        let provider = who(&[role::APPLICATION_PROVIDER]);
        type Case = (&'static str, Principal, Microservice, Result<(), (&'static str, &'static str)>);
        let cases: Vec<Case> = vec![
            ("plain service", provider.clone(), ms(false, "8080:80"), Ok(())),
            ("no ports", provider.clone(), ms(false, ""), Ok(())),
            ("privileged", provider.clone(), ms(true, ""), Err(("403", "privileged"))),
            ("low port", provider.clone(), ms(false, "80"), Err(("422", "port"))),
            ("port 1023", provider.clone(), ms(false, "1023:80/udp"), Err(("422", "port"))),
            ("port 1024 is fine", provider.clone(), ms(false, "1024:80"), Ok(())),
            ("container port is not the host's", provider.clone(), ms(false, "8080:22"), Ok(())),
            ("tunnel port over tcp", provider.clone(), ms(false, "50103"), Err(("422", "port"))),
            ("root api port", provider.clone(), ms(false, "10000"), Err(("422", "port"))),
            ("mqtt port", provider.clone(), ms(false, "10003/udp"), Err(("422", "port"))),
            ("worker metrics port", provider.clone(), ms(false, "10190"), Err(("422", "port"))),
            ("configured api port", provider.clone(), ms(false, "8000"), Err(("422", "port"))),
            ("configured cluster port", provider.clone(), ms(false, "9000"), Err(("422", "port"))),
            ("privileged wins over ports", provider.clone(), ms(true, "80"), Err(("403", "privileged"))),
            ("Admin may", who(&[role::ADMIN]), ms(true, "80;10000"), Ok(())),
            ("a trusted role may", who(&[role::ORGANIZATION_ADMIN]), ms(true, "22"), Ok(())),
            (
                "untrusted infrastructure provider",
                who(&[role::INFRASTRUCTURE_PROVIDER]),
                ms(true, ""),
                Err(("403", "privileged")),
            ),
        ];
        for (name, principal, service, want) in cases {
            let got = check_microservice(&policy, &principal, "", &service).map_err(|r| match r {
                Refusal::Forbidden(e) => ("403", e[0].field.clone()),
                Refusal::Invalid(e) => ("422", e[0].field.clone()),
            });
            let want = want.map_err(|(code, field)| (code, field.to_string()));
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn errors_name_every_offending_path() {
        let policy = Policy::default();
        let provider = who(&[role::APPLICATION_PROVIDER]);
        let doc = sla(vec![vec![ms(false, "8080"), ms(false, "80;443")], vec![ms(true, "")]]);
        match check_sla(&policy, &provider, &doc) {
            Err(Refusal::Forbidden(e)) => assert_eq!(fields(&e), ["applications[1].microservices[0].privileged"]),
            other => panic!("{other:?}"),
        }
        let doc = sla(vec![vec![ms(false, "8080"), ms(false, "80;443")]]);
        match check_sla(&policy, &provider, &doc) {
            Err(Refusal::Invalid(e)) => {
                assert_eq!(
                    fields(&e),
                    ["applications[0].microservices[1].port", "applications[0].microservices[1].port"]
                );
                assert!(e[1].message.contains("host port 443 is below 1024"), "{}", e[1].message);
            }
            other => panic!("{other:?}"),
        }
        let nested = check_microservice(&policy, &provider, "applications[0].microservices[0]", &ms(true, ""));
        assert_eq!(
            nested,
            Err(Refusal::Forbidden(vec![FieldError::new(
                "applications[0].microservices[0].privileged",
                "privileged containers are only for Admin and the roles the operator trusts"
            )]))
        );
        assert!(Policy::default().reserved_ports.contains(&10100));
    }
}
