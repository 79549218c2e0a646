//! Placement constraints of a microservice (`direct`, `clusters`, `geo`, `latency`, `addons`) and
//! the service-to-service `connectivity` constraints.

use oak_api::FieldError;
use serde_json::Value;

use super::json::{index, push, show, show_str, Fields, Need};

const KINDS: [&str; 5] = ["direct", "clusters", "geo", "latency", "addons"];

/// Validates the `constraints` array items found at `path`.
pub(super) fn validate_constraints(items: &[Value], path: &str, errors: &mut Vec<FieldError>) {
    for (i, item) in items.iter().enumerate() {
        validate_constraint(item, &index(path, i), errors);
    }
}

fn validate_constraint(v: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let Some(c) = Fields::of(v, path, errors) else {
        return;
    };
    // Every known field is type-checked whatever the kind, because the typed constraint stores
    // them all.
    let kind = c.string("type", Need::Required, errors);
    let cluster = c.string("cluster", Need::Optional, errors);
    let node = c.string("node", Need::Optional, errors);
    let area = c.string("area", Need::Optional, errors);
    c.string("location", Need::Optional, errors);
    c.strings("allowed", Need::Optional, errors);
    c.strings("needs", Need::Optional, errors);
    c.number("threshold", errors);
    if let Some(r) = c.number("rigidness", errors) {
        if !(0.0..=1.0).contains(&r) {
            push(errors, &c.path_of("rigidness"), format!("{} is not within [0, 1]", show(&c.map["rigidness"])));
        }
    }
    if let Some(t) = c.get("convergence_time") {
        if t.as_u64().and_then(|n| i64::try_from(n).ok()).is_none() {
            push(errors, &c.path_of("convergence_time"), format!("{} is not an integer >= 0", show(t)));
        }
    }

    match kind {
        None => {}
        Some("direct") => check_direct(&c, cluster, node, errors),
        Some("clusters") => {
            if let Some(allowed) = non_empty_list(&c, "allowed", "cluster", errors) {
                for (i, name) in allowed.iter().enumerate() {
                    if name.is_empty() {
                        push(errors, &index(&c.path_of("allowed"), i), "must not be empty");
                    }
                }
            }
        }
        Some("addons") => {
            non_empty_list(&c, "needs", "add-on", errors);
        }
        Some("geo") => {
            check_location(&c, Need::Required, errors);
            check_threshold(&c, errors);
        }
        Some("latency") => {
            check_threshold(&c, errors);
            let has_area = area.is_some_and(|a| !a.is_empty());
            if c.get("location").is_some() {
                check_location(&c, Need::Optional, errors);
            } else if !has_area {
                push(errors, path, "latency constraint needs a non-empty area or a location");
            }
        }
        Some(other) => push(
            errors,
            &c.path_of("type"),
            format!("{} is not a constraint type ({})", show_str(other), KINDS.join(", ")),
        ),
    }
}

/// `direct` pins a service to a cluster and/or to nodes (`;`-separated host names).
fn check_direct(c: &Fields, cluster: Option<&str>, node: Option<&str>, errors: &mut Vec<FieldError>) {
    let has_cluster = cluster.is_some_and(|s| !s.is_empty());
    let has_node = node.is_some_and(|s| !s.is_empty());
    if !has_cluster && !has_node {
        // A cluster or node of the wrong type was already reported.
        let mistyped = (c.get("cluster").is_some() && cluster.is_none()) || (c.get("node").is_some() && node.is_none());
        if !mistyped {
            push(errors, c.path, "direct constraint needs a non-empty cluster or node");
        }
        return;
    }
    if let Some(node) = node.filter(|s| !s.is_empty()) {
        if node.split(';').any(|host| host.trim().is_empty()) {
            push(errors, &c.path_of("node"), format!("{} has an empty host name", show_str(node)));
        }
    }
}

/// A list that the constraint kind needs with at least one element.
fn non_empty_list<'a>(c: &Fields<'a>, key: &str, what: &str, errors: &mut Vec<FieldError>) -> Option<Vec<&'a str>> {
    match c.get(key) {
        None => {
            push(errors, &c.path_of(key), "is required");
            None
        }
        // Element type errors were already reported by the generic checks.
        Some(v) => {
            let items = v.as_array()?;
            if items.is_empty() {
                push(errors, &c.path_of(key), format!("must list at least one {what}"));
                return None;
            }
            items.iter().map(Value::as_str).collect()
        }
    }
}

fn check_threshold(c: &Fields, errors: &mut Vec<FieldError>) {
    match c.get("threshold") {
        None => push(errors, &c.path_of("threshold"), "is required"),
        Some(v) => {
            if v.as_f64().is_some_and(|t| t <= 0.0) {
                push(errors, &c.path_of("threshold"), format!("{} is not greater than 0", show(v)));
            }
        }
    }
}

fn check_location(c: &Fields, need: Need, errors: &mut Vec<FieldError>) {
    let path = c.path_of("location");
    match c.get("location") {
        None => {
            if need == Need::Required {
                push(errors, &path, "is required");
            }
        }
        Some(v) => {
            if let Some(s) = v.as_str() {
                if let Err(message) = parse_location(s) {
                    push(errors, &path, message);
                }
            }
        }
    }
}

/// `lat,long` in degrees.
pub(super) fn parse_location(s: &str) -> Result<(f64, f64), String> {
    let malformed = || format!("{} is not a location (lat,long)", show_str(s));
    let (lat, long) = s.split_once(',').ok_or_else(malformed)?;
    let lat: f64 = lat.trim().parse().map_err(|_| malformed())?;
    let long: f64 = long.trim().parse().map_err(|_| malformed())?;
    if !lat.is_finite() || !long.is_finite() {
        return Err(malformed());
    }
    if !(-90.0..=90.0).contains(&lat) {
        return Err(format!("{}: latitude {lat} is not within [-90, 90]", show_str(s)));
    }
    if !(-180.0..=180.0).contains(&long) {
        return Err(format!("{}: longitude {long} is not within [-180, 180]", show_str(s)));
    }
    Ok((lat, long))
}

/// Validates the `connectivity` array items found at `path`.
pub(super) fn validate_connectivity(items: &[Value], path: &str, errors: &mut Vec<FieldError>) {
    for (i, item) in items.iter().enumerate() {
        let item_path = index(path, i);
        let Some(link) = Fields::of(item, &item_path, errors) else {
            continue;
        };
        link.string("target_microservice_id", Need::Required, errors);
        if let Some(cons) = link.array("con_constraints", Need::Required, errors) {
            let cons_path = link.path_of("con_constraints");
            for (j, con) in cons.iter().enumerate() {
                Fields::of(con, &index(&cons_path, j), errors);
            }
        }
    }
}
