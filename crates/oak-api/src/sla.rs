//! The SLA v2.0 deployment descriptor (spec §3), as typed data.
//!
//! Unknown fields are kept in `extra` maps and stored with the object, as the original does.
//! Validation lives in `oak-core::sla`; these types are only built from validated input.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// A whole descriptor: `{sla_version, customerID, applications}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Sla {
    pub sla_version: String,
    #[serde(rename = "customerID")]
    pub customer_id: String,
    pub applications: Vec<SlaApplication>,
    #[serde(flatten)]
    #[schema(additional_properties)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SlaApplication {
    #[serde(rename = "applicationID", default)]
    pub application_id: String,
    #[serde(default)]
    pub application_name: String,
    #[serde(default)]
    pub application_namespace: String,
    #[serde(default)]
    pub application_desc: String,
    #[serde(default)]
    pub microservices: Vec<Microservice>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Memory (MB) an instance is limited to, and that schedulers count, when its descriptor leaves
/// `memory` out (or 0): an instance without a limit could take its node's memory.
pub const DEFAULT_MEMORY_MB: u64 = 256;

/// One microservice of an application: what the user asks to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Microservice {
    #[serde(rename = "microserviceID", default)]
    pub microservice_id: String,
    pub microservice_name: String,
    pub microservice_namespace: String,
    /// `container` (stored as `docker`), `unikernel`, or a runtime name a worker advertises.
    pub virtualization: String,
    /// Image reference (containers) or comma-separated kernel URLs (unikernels).
    pub code: String,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub environment: Vec<String>,
    /// Memory in MB; 0 (or absent) means [`DEFAULT_MEMORY_MB`] (see [`Microservice::memory_mb`]).
    #[serde(default)]
    pub memory: u64,
    #[serde(default)]
    pub vcpus: u64,
    #[serde(default)]
    pub vgpus: u64,
    #[serde(default)]
    pub vtpus: u64,
    #[serde(default)]
    pub bandwidth_in: u64,
    #[serde(default)]
    pub bandwidth_out: u64,
    /// Storage in MiB.
    #[serde(default)]
    pub storage: u64,
    /// Port mappings `HOST[:CONTAINER][/tcp|udp]` joined by `;`.
    #[serde(default)]
    pub port: String,
    #[serde(default)]
    pub one_shot: bool,
    #[serde(default)]
    pub privileged: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addresses: Option<Addresses>,
    #[serde(default)]
    pub constraints: Vec<Constraint>,
    /// Spread the service's instances over nodes (and clusters, where constraints allow), like
    /// Kubernetes' topology spread; `false` opts out and lets them pack. Absent means `true`.
    #[serde(default = "spread_by_default", skip_serializing_if = "is_true")]
    pub spread: bool,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn spread_by_default() -> bool {
    true
}

fn is_true(value: &bool) -> bool {
    *value
}

impl Microservice {
    /// The memory the instance is limited to and placement counts: `memory`, or
    /// [`DEFAULT_MEMORY_MB`] when the descriptor leaves it out.
    pub fn memory_mb(&self) -> u64 {
        if self.memory == 0 {
            DEFAULT_MEMORY_MB
        } else {
            self.memory
        }
    }
}

/// Requested service addresses in the overlay network.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Addresses {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rr_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rr_ip_v6: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closest_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closest_ip_v6: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A placement constraint: `direct`, `clusters`, `geo`, `latency` or `addons`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Constraint {
    #[serde(rename = "type")]
    pub kind: String,
    /// `direct`: `;`-separated node host names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// `direct`: cluster name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// `clusters`: the cluster names allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed: Option<Vec<String>>,
    /// `addons`: add-ons the target must support.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub needs: Option<Vec<String>>,
    /// `latency`: area name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub area: Option<String>,
    /// `geo`: `lat,long`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rigidness: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub convergence_time: Option<i64>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}
