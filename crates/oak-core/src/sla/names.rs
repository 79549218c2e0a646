//! Names of applications and services, and the identifiers derived from them.

use oak_api::FieldError;

use super::json::{push, show_str, Fields, Need};

/// `^[a-zA-Z0-9]{1,30}$`: names end up in job names, DNS-like service names and network-plugin
/// keys, which the original accepts only in this form.
pub(super) fn is_name(s: &str) -> bool {
    (1..=30).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// How strictly a name field is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NameRule {
    /// Present and matching the pattern.
    Required,
    /// Absent or empty is fine (the value is taken from elsewhere); otherwise the pattern applies.
    EmptyAllowed,
}

/// Checks the name field `key` and returns it when it is a valid, non-empty name.
pub(super) fn check_name<'a>(
    fields: &Fields<'a>,
    key: &str,
    rule: NameRule,
    errors: &mut Vec<FieldError>,
) -> Option<&'a str> {
    let need = match rule {
        NameRule::Required => Need::Required,
        NameRule::EmptyAllowed => Need::Optional,
    };
    let name = fields.string(key, need, errors)?;
    if name.is_empty() && rule == NameRule::EmptyAllowed {
        return None;
    }
    if !is_name(name) {
        push(errors, &fields.path_of(key), format!("{} must be 1 to 30 ascii letters or digits", show_str(name)));
        return None;
    }
    Some(name)
}

/// `app.appns.service.servicens`: the globally unique key of a service (job).
pub fn job_name(app: &str, app_ns: &str, service: &str, service_ns: &str) -> String {
    format!("{app}.{app_ns}.{service}.{service_ns}")
}

/// The virtualization value stored with a service: `container` is an alias of `docker`, the
/// runtime name workers advertise for plain containers.
pub fn stored_virtualization(v: &str) -> String {
    if v == "container" {
        "docker".to_string()
    } else {
        v.to_string()
    }
}
