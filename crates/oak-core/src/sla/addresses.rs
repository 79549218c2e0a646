//! The `addresses` object: service IPs a microservice asks for in the overlay network.
//!
//! The network plugin only hands out service IPs from its own pools (spec §3.5), so requests
//! outside them are refused here instead of failing later at deploy time.

use std::net::{Ipv4Addr, Ipv6Addr};

use oak_api::FieldError;
use serde_json::Value;

use super::json::{push, show_str, Fields, Need};

/// 10.30.x.y with x, y in 0..=253: the addresses the root's pool hands out (`.254`/`.255` never).
fn in_v4_pool(ip: Ipv4Addr) -> bool {
    use crate::addresses::{ServiceIps, Space};
    ServiceIps::index(ip).is_some()
}

/// fdff:2000::/21
fn in_v6_pool(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    s[0] == 0xfdff && s[1] & 0xf800 == 0x2000
}

fn v4(s: &str) -> Option<Ipv4Addr> {
    s.parse::<Ipv4Addr>().ok().filter(|ip| in_v4_pool(*ip))
}

fn v6(s: &str) -> Option<Ipv6Addr> {
    s.parse::<Ipv6Addr>().ok().filter(|ip| in_v6_pool(*ip))
}

fn check_v4(fields: &Fields, key: &str, errors: &mut Vec<FieldError>) -> Option<Ipv4Addr> {
    let s = fields.string(key, Need::Optional, errors)?;
    let message = match s.parse::<Ipv4Addr>() {
        Ok(ip) if in_v4_pool(ip) => return Some(ip),
        Ok(ip) if ip.octets()[..2] == [10, 30] => {
            format!("{} is not a service IP: 10.30.x.y with x and y at most 253", show_str(s))
        }
        Ok(_) => format!("{} is not in 10.30.0.0/16", show_str(s)),
        Err(_) => format!("{} is not an ipv4 address", show_str(s)),
    };
    push(errors, &fields.path_of(key), message);
    None
}

fn check_v6(fields: &Fields, key: &str, errors: &mut Vec<FieldError>) -> Option<Ipv6Addr> {
    let s = fields.string(key, Need::Optional, errors)?;
    let message = match s.parse::<Ipv6Addr>() {
        Ok(ip) if in_v6_pool(ip) => return Some(ip),
        Ok(_) => format!("{} is not in fdff:2000::/21", show_str(s)),
        Err(_) => format!("{} is not an ipv6 address", show_str(s)),
    };
    push(errors, &fields.path_of(key), message);
    None
}

/// Validates the `addresses` object found at `path`.
pub(super) fn validate_addresses(v: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let Some(fields) = Fields::of(v, path, errors) else {
        return;
    };
    // Round-robin and closest routing are told apart by the destination IP alone.
    let rr = check_v4(&fields, "rr_ip", errors);
    let closest = check_v4(&fields, "closest_ip", errors);
    if let (Some(rr), Some(closest)) = (rr, closest) {
        if rr == closest {
            push(
                errors,
                &fields.path_of("closest_ip"),
                format!("{} is the same address as rr_ip", show_str(&closest.to_string())),
            );
        }
    }
    let rr6 = check_v6(&fields, "rr_ip_v6", errors);
    let closest6 = check_v6(&fields, "closest_ip_v6", errors);
    if let (Some(rr6), Some(closest6)) = (rr6, closest6) {
        if rr6 == closest6 {
            push(
                errors,
                &fields.path_of("closest_ip_v6"),
                format!("{} is the same address as rr_ip_v6", show_str(&closest6.to_string())),
            );
        }
    }
    fields.array("instances", Need::Optional, errors);
}

/// The valid round-robin IPs a microservice object asks for, to find clashes between services.
pub(super) fn requested_rr_ips(ms: &Value) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
    let addresses = ms.get("addresses");
    let get = |key: &str| addresses.and_then(|a| a.get(key)).and_then(Value::as_str);
    (get("rr_ip").and_then(v4), get("rr_ip_v6").and_then(v6))
}
