//! One microservice object of a descriptor.

use oak_api::FieldError;
use serde_json::Value;

use super::addresses::validate_addresses;
use super::constraints::{validate_connectivity, validate_constraints};
use super::json::{index, push, show_str, Fields, Need};
use super::names::{check_name, NameRule};
use crate::ports::parse_port_mappings;

/// Virtualizations with a meaning of their own; any other containerd runtime name a worker
/// advertises (`runc`, `runsc`, ...) is accepted as well.
const KNOWN_VIRTUALIZATIONS: [&str; 4] = ["container", "docker", "unikernel", "crosvm"];
const ARCHES: [&str; 4] = ["amd64", "arm64", "arm", "riscv64"];
const COUNTS: [&str; 7] = ["memory", "vcpus", "vgpus", "vtpus", "bandwidth_in", "bandwidth_out", "storage"];

/// Validates one microservice object found at `path` (e.g. `applications[0].microservices[1]`,
/// or `""` for a bare microservice), pushing one error per problem.
///
/// `microserviceID` is only type-checked: whether it must be empty depends on the operation.
pub fn validate_microservice(ms: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let Some(f) = Fields::of(ms, path, errors) else {
        return;
    };
    f.string("microserviceID", Need::Optional, errors);
    check_name(&f, "microservice_name", NameRule::Required, errors);
    check_name(&f, "microservice_namespace", NameRule::Required, errors);
    let virtualization = check_virtualization(&f, errors);
    let code = f.non_empty_string("code", Need::Required, errors);

    for key in COUNTS {
        f.count(key, errors);
    }
    for key in ["cmd", "args", "added_files"] {
        f.strings(key, Need::Optional, errors);
    }
    for key in ["one_shot", "privileged", "spread"] {
        f.boolean(key, errors);
    }
    for key in ["platform", "state", "sla_violation_strategy", "target_node"] {
        f.string(key, Need::Optional, errors);
    }
    check_environment(&f, errors);
    if let Some(port) = f.string("port", Need::Optional, errors) {
        if let Err(message) = parse_port_mappings(port) {
            push(errors, &f.path_of("port"), message);
        }
    }
    check_arch(&f, virtualization, code, errors);

    if let Some(addresses) = f.get("addresses") {
        validate_addresses(addresses, &f.path_of("addresses"), errors);
    }
    if let Some(items) = f.array("constraints", Need::Optional, errors) {
        validate_constraints(items, &f.path_of("constraints"), errors);
    }
    if let Some(items) = f.array("connectivity", Need::Optional, errors) {
        validate_connectivity(items, &f.path_of("connectivity"), errors);
    }
    if let Some(items) = f.array("volumes", Need::Optional, errors) {
        validate_volumes(items, &f.path_of("volumes"), errors);
    }
}

/// A runtime name: 1–64 letters, digits, `-`, `_` or `.`, which covers the known values too.
fn is_runtime_name(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn check_virtualization<'a>(f: &Fields<'a>, errors: &mut Vec<FieldError>) -> Option<&'a str> {
    let v = f.string("virtualization", Need::Required, errors)?;
    if !is_runtime_name(v) {
        push(
            errors,
            &f.path_of("virtualization"),
            format!(
                "{} is not a virtualization ({}, or a runtime name of up to 64 letters, \
                 digits, '-', '_' or '.')",
                show_str(v),
                KNOWN_VIRTUALIZATIONS.join(", ")
            ),
        );
        return None;
    }
    Some(v)
}

/// `KEY=VALUE` with a shell-style key, as the runtimes put it into the process environment.
fn check_environment(f: &Fields, errors: &mut Vec<FieldError>) {
    let Some(vars) = f.strings("environment", Need::Optional, errors) else {
        return;
    };
    let path = f.path_of("environment");
    for (i, var) in vars.iter().enumerate() {
        let key = var.split_once('=').map(|(key, _)| key);
        let valid = key.is_some_and(|key| {
            key.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        });
        if !valid {
            push(
                errors,
                &index(&path, i),
                format!(
                    "{} is not KEY=VALUE with a KEY of letters, digits and '_' not starting \
                     with a digit",
                    show_str(var)
                ),
            );
        }
    }
}

/// Unikernels ship one kernel per architecture: `code` lists their URLs aligned with `arch`.
fn check_arch(f: &Fields, virtualization: Option<&str>, code: Option<&str>, errors: &mut Vec<FieldError>) {
    let path = f.path_of("arch");
    let is_unikernel = virtualization == Some("unikernel");
    if is_unikernel && f.get("arch").is_none() {
        push(errors, &path, "is required when virtualization is \"unikernel\"");
        return;
    }
    let Some(arches) = f.strings("arch", Need::Optional, errors) else {
        return;
    };
    for (i, arch) in arches.iter().enumerate() {
        if !ARCHES.contains(arch) {
            push(
                errors,
                &index(&path, i),
                format!("{} is not an architecture ({})", show_str(arch), ARCHES.join(", ")),
            );
        }
    }
    if !is_unikernel {
        return;
    }
    if arches.is_empty() {
        push(errors, &path, "must list at least one architecture when virtualization is \"unikernel\"");
        return;
    }
    let Some(code) = code else {
        return;
    };
    let urls: Vec<&str> = code.split(',').map(str::trim).collect();
    if urls.iter().any(|url| url.is_empty()) {
        push(errors, &f.path_of("code"), format!("{} has an empty kernel url", show_str(code)));
    } else if urls.len() != arches.len() {
        push(
            errors,
            &f.path_of("code"),
            format!(
                "{} lists {} kernel urls but arch lists {} architectures",
                show_str(code),
                urls.len(),
                arches.len()
            ),
        );
    }
}

/// CSI volumes: the scheduler matches `csi_driver` against what workers advertise.
fn validate_volumes(items: &[Value], path: &str, errors: &mut Vec<FieldError>) {
    for (i, item) in items.iter().enumerate() {
        let item_path = index(path, i);
        let Some(volume) = Fields::of(item, &item_path, errors) else {
            continue;
        };
        volume.non_empty_string("volume_id", Need::Required, errors);
        volume.non_empty_string("csi_driver", Need::Required, errors);
        volume.string("mount_path", Need::Optional, errors);
        volume.object("config", Need::Optional, errors);
    }
}
