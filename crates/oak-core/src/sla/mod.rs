//! Validation of SLA v2.0 deployment descriptors (spec §3).
//!
//! Descriptors are checked as raw JSON rather than after deserialization so that every problem is
//! reported at once, each under the JSON path of the offending field (e.g.
//! `applications[0].microservices[1].port`). Errors about a whole document use the field `$`.
//! Unknown fields are never rejected: they are kept in the `extra` maps of the typed result.

mod addresses;
mod constraints;
mod json;
mod microservice;
mod names;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use oak_api::sla::{Microservice, Sla};
use oak_api::FieldError;
use serde_json::Value;

use addresses::requested_rr_ips;
use json::{index, join, push, show_str, Fields, Need};
use names::{check_name, NameRule};

pub use crate::ports::{parse_port_mappings, PortMapping, Protocol};
pub use microservice::validate_microservice;
pub use names::{job_name, stored_virtualization};

/// What a descriptor is submitted for; the two forms differ in which application fields matter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `POST /api/application/`: create the applications with their microservices.
    NewApplications,
    /// `POST /api/service/`: add the microservices of `applications[0]` to the existing
    /// application `applicationID`; its name and namespace come from the stored application.
    NewServices,
}

/// Validates a raw JSON descriptor; returns all errors at once, each naming the JSON path of the
/// offending field.
pub fn validate_sla(doc: &Value, purpose: Purpose) -> Result<Sla, Vec<FieldError>> {
    let mut errors = Vec::new();
    if let Some(apps) = validate_envelope(doc, &mut errors) {
        let apps = match purpose {
            Purpose::NewApplications => apps,
            Purpose::NewServices => {
                if apps.len() > 1 {
                    push(
                        &mut errors,
                        "applications",
                        format!("adding services takes exactly one application, got {}", apps.len()),
                    );
                }
                &apps[..apps.len().min(1)]
            }
        };
        for (i, app) in apps.iter().enumerate() {
            validate_application(app, &index("applications", i), purpose, &mut errors);
        }
        check_application_clashes(apps, &mut errors);
        check_rr_ip_clashes(apps, &mut errors);
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    decoded(serde_json::from_value(doc.clone()), "")
}

/// Where the microservice of a service update is: `""` for a bare microservice object, else in
/// the one application of a whole SLA. Errors about its fields are named from here.
pub fn service_update_path(doc: &Value) -> &'static str {
    let is_sla = doc.get("applications").is_some() || doc.get("sla_version").is_some();
    if is_sla {
        "applications[0].microservices[0]"
    } else {
        ""
    }
}

/// Accepts either a bare microservice object or a whole SLA with exactly one application holding
/// exactly one microservice. `microserviceID` may be anything here, since the service exists.
pub fn validate_service_update(doc: &Value) -> Result<Microservice, Vec<FieldError>> {
    let mut errors = Vec::new();
    let ms_path = service_update_path(doc);
    if ms_path.is_empty() {
        validate_microservice(doc, "", &mut errors);
        return if errors.is_empty() { decoded(serde_json::from_value(doc.clone()), "") } else { Err(errors) };
    }

    let mut found = None;
    if let Some(apps) = validate_envelope(doc, &mut errors) {
        if apps.len() != 1 {
            push(
                &mut errors,
                "applications",
                format!("a service update takes exactly one application, got {}", apps.len()),
            );
        } else if let Some(app) = Fields::of(&apps[0], "applications[0]", &mut errors) {
            if let Some(services) = app.array("microservices", Need::Required, &mut errors) {
                if services.len() == 1 {
                    validate_microservice(&services[0], ms_path, &mut errors);
                    found = Some(&services[0]);
                } else {
                    push(
                        &mut errors,
                        &app.path_of("microservices"),
                        format!("a service update takes exactly one microservice, got {}", services.len()),
                    );
                }
            }
        }
    }
    match found {
        Some(ms) if errors.is_empty() => decoded(serde_json::from_value(ms.clone()), ms_path),
        _ => Err(errors),
    }
}

/// Validates `{application_name, application_namespace, application_desc?}` of an application
/// update; other fields are ignored. Returns `(name, namespace, desc)`.
pub fn validate_application_update(doc: &Value) -> Result<(String, String, Option<String>), Vec<FieldError>> {
    let mut errors = Vec::new();
    let Some(f) = Fields::of(doc, "", &mut errors) else {
        return Err(errors);
    };
    let name = check_name(&f, "application_name", NameRule::Required, &mut errors);
    let namespace = check_name(&f, "application_namespace", NameRule::Required, &mut errors);
    let desc = f.string("application_desc", Need::Optional, &mut errors);
    match (name, namespace) {
        (Some(name), Some(namespace)) if errors.is_empty() => {
            Ok((name.to_string(), namespace.to_string(), desc.map(str::to_string)))
        }
        _ => Err(errors),
    }
}

/// The top level `{sla_version, customerID, applications, args?}`; returns the applications when
/// they are a non-empty array.
fn validate_envelope<'a>(doc: &'a Value, errors: &mut Vec<FieldError>) -> Option<&'a [Value]> {
    let f = Fields::of(doc, "", errors)?;
    match f.string("sla_version", Need::Required, errors) {
        None | Some("v2.0") => {}
        Some("v1.0") => push(errors, "sla_version", "\"v1.0\" is deprecated, only \"v2.0\" is accepted"),
        Some(other) => {
            push(errors, "sla_version", format!("{} is not a supported version, expected \"v2.0\"", show_str(other)))
        }
    }
    f.string("customerID", Need::Required, errors);
    f.strings("args", Need::Optional, errors);
    let apps = f.array("applications", Need::Required, errors)?;
    if apps.is_empty() {
        push(errors, "applications", "must contain at least one application");
        return None;
    }
    Some(apps)
}

fn validate_application(app: &Value, path: &str, purpose: Purpose, errors: &mut Vec<FieldError>) {
    let Some(f) = Fields::of(app, path, errors) else {
        return;
    };
    let names = match purpose {
        Purpose::NewApplications => {
            f.string("applicationID", Need::Optional, errors);
            NameRule::Required
        }
        Purpose::NewServices => {
            f.non_empty_string("applicationID", Need::Required, errors);
            NameRule::EmptyAllowed
        }
    };
    check_name(&f, "application_name", names, errors);
    check_name(&f, "application_namespace", names, errors);
    f.string("application_desc", Need::Optional, errors);

    let Some(services) = f.array("microservices", Need::Required, errors) else {
        return;
    };
    let services_path = f.path_of("microservices");
    if services.is_empty() && purpose == Purpose::NewServices {
        push(errors, &services_path, "must contain at least one microservice");
    }
    // Name and namespace make the job name, which must be unique.
    let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
    for (i, ms) in services.iter().enumerate() {
        let ms_path = index(&services_path, i);
        validate_microservice(ms, &ms_path, errors);
        // The service id is assigned on creation.
        if let Some(id) = ms.get("microserviceID").and_then(Value::as_str) {
            if !id.is_empty() {
                push(
                    errors,
                    &join(&ms_path, "microserviceID"),
                    format!("{} must be empty when creating a service", show_str(id)),
                );
            }
        }
        if let Some(key) = valid_name_pair(ms, "microservice_name", "microservice_namespace") {
            if let Some(first) = seen.get(&key) {
                push(
                    errors,
                    &join(&ms_path, "microservice_name"),
                    format!(
                        "{} in namespace {} is already defined by {}",
                        show_str(key.0),
                        show_str(key.1),
                        index(&services_path, *first)
                    ),
                );
            } else {
                seen.insert(key, i);
            }
        }
    }
}

fn valid_name_pair<'a>(v: &'a Value, name: &str, namespace: &str) -> Option<(&'a str, &'a str)> {
    let name = v.get(name)?.as_str().filter(|s| names::is_name(s))?;
    let namespace = v.get(namespace)?.as_str().filter(|s| names::is_name(s))?;
    Some((name, namespace))
}

/// Applications are unique per user by name and namespace; two in one descriptor would clash.
fn check_application_clashes(apps: &[Value], errors: &mut Vec<FieldError>) {
    let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
    for (i, app) in apps.iter().enumerate() {
        let Some(key) = valid_name_pair(app, "application_name", "application_namespace") else {
            continue;
        };
        if let Some(first) = seen.get(&key) {
            push(
                errors,
                &join(&index("applications", i), "application_name"),
                format!(
                    "{} in namespace {} is already defined by {}",
                    show_str(key.0),
                    show_str(key.1),
                    index("applications", *first)
                ),
            );
        } else {
            seen.insert(key, i);
        }
    }
}

/// A round-robin IP identifies one service in the overlay network, so two services of one
/// descriptor cannot ask for the same one.
fn check_rr_ip_clashes(apps: &[Value], errors: &mut Vec<FieldError>) {
    let mut v4 = HashMap::new();
    let mut v6 = HashMap::new();
    for (i, app) in apps.iter().enumerate() {
        let Some(services) = app.get("microservices").and_then(Value::as_array) else {
            continue;
        };
        for (j, ms) in services.iter().enumerate() {
            let ms_path = index(&join(&index("applications", i), "microservices"), j);
            let (rr, rr6) = requested_rr_ips(ms);
            if let Some(ip) = rr {
                clash(&mut v4, ip, &ms_path, "rr_ip", errors);
            }
            if let Some(ip) = rr6 {
                clash(&mut v6, ip, &ms_path, "rr_ip_v6", errors);
            }
        }
    }
}

fn clash<K: std::hash::Hash + Eq + std::fmt::Display>(
    seen: &mut HashMap<K, String>,
    ip: K,
    ms_path: &str,
    key: &str,
    errors: &mut Vec<FieldError>,
) {
    let field = join(&join(ms_path, "addresses"), key);
    match seen.get(&ip) {
        Some(first) => push(errors, &field, format!("{} is already requested by {first}", show_str(&ip.to_string()))),
        None => {
            seen.insert(ip, ms_path.to_string());
        }
    }
}

/// Turns the deserialization of JSON that passed validation into the typed value. Validation
/// mirrors the types, so a failure here is a bug, but it is still reported rather than a panic.
fn decoded<T>(result: Result<T, serde_json::Error>, path: &str) -> Result<T, Vec<FieldError>> {
    result.map_err(|e| {
        let mut errors = Vec::new();
        push(&mut errors, path, format!("cannot be decoded: {e}"));
        errors
    })
}
