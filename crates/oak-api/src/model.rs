//! Stored objects as the API shows them: applications, services (jobs), instances, clusters,
//! users and organizations (spec §4.3). Ids are plain strings.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::channel::ResourceTotals;
use crate::sla::Microservice;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Application {
    #[serde(rename = "_id")]
    pub id: String,
    /// Same as `_id`, kept for clients of the original.
    #[serde(rename = "applicationID")]
    pub application_id: String,
    pub application_name: String,
    pub application_namespace: String,
    #[serde(default)]
    pub application_desc: String,
    /// Ids of the application's services.
    #[serde(default)]
    pub microservices: Vec<String>,
    /// Owner (user name).
    #[serde(rename = "userId")]
    pub user_id: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A service ("job"): the microservice descriptor plus what the system derives and observes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Service {
    #[serde(rename = "_id")]
    pub id: String,
    /// `app.appns.service.servicens`, unique across the system.
    pub job_name: String,
    #[serde(rename = "applicationID")]
    pub application_id: String,
    pub app_name: String,
    pub app_ns: String,
    pub service_name: String,
    pub service_ns: String,
    pub image: String,
    #[serde(rename = "RR_ip", default)]
    pub rr_ip: Option<String>,
    #[serde(rename = "RR_ip_v6", default)]
    pub rr_ip_v6: Option<String>,
    /// The closest-instance service IP, when the descriptor asks for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closest_ip: Option<String>,
    #[serde(default)]
    pub next_instance_progressive_number: u32,
    /// Absent until the first instance is requested, as in the original.
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub status_detail: Option<String>,
    /// Bumped on every update of the descriptor, so lower tiers can tell old instances from new.
    #[serde(default)]
    pub generation: u64,
    #[serde(default)]
    pub instance_list: Vec<Instance>,
    #[serde(flatten)]
    pub spec: Microservice,
}

impl Service {
    /// Keys the service defines itself; a descriptor's unknown fields with these names are dropped.
    pub const RESERVED_KEYS: &'static [&'static str] = &[
        "_id",
        "job_name",
        "applicationID",
        "app_name",
        "app_ns",
        "service_name",
        "service_ns",
        "image",
        "RR_ip",
        "RR_ip_v6",
        "closest_ip",
        "next_instance_progressive_number",
        "status",
        "status_detail",
        "generation",
        "instance_list",
    ];
}

/// One instance of a service (an element of `instance_list`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Instance {
    pub instance_number: u32,
    pub status: String,
    #[serde(default)]
    pub status_detail: String,
    #[serde(default)]
    pub cluster_id: Option<String>,
    #[serde(default)]
    pub cluster_location: Option<String>,
    #[serde(default)]
    pub worker_id: Option<String>,
    /// Names of the cluster and the worker, filled in when read (from the clusters' last reports);
    /// absent when the root does not know them (a cluster not connected since the root started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_name: Option<String>,
    #[serde(default)]
    pub host_ip: Option<String>,
    #[serde(default)]
    pub host_port: Option<String>,
    /// The tunnel key of its worker, copied into route tables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_key: Option<String>,
    /// The instance's service IP (10.30.x.y), allocated when the instance is created and kept
    /// until it is removed, also when it moves.
    #[serde(default)]
    pub instance_ip: Option<String>,
    /// Its current address on its worker's overlay bridge (changes when it moves).
    #[serde(default)]
    pub namespace_ip: Option<String>,
    #[serde(default)]
    pub publicip: Option<String>,
    #[serde(default)]
    pub cpu_percent: Option<f64>,
    #[serde(default)]
    pub memory_percent: Option<f64>,
    /// Memory the instance uses, in bytes (not in the original, which has only the percentage).
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    #[serde(default)]
    pub disk: Option<u64>,
    #[serde(default)]
    pub logs: Option<String>,
    /// Why the root moved the instance off its previous cluster (e.g. `re-placed from cluster
    /// alpha: lost 30 s ago`); kept in `status_detail` next to what its cluster reports.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub placement_note: String,
    /// Seconds since the Unix epoch of the last change.
    #[serde(default)]
    pub last_modified_timestamp: f64,
}

impl Instance {
    pub fn new(instance_number: u32, status: &str, detail: &str, now: f64) -> Self {
        Self {
            instance_number,
            status: status.to_string(),
            status_detail: detail.to_string(),
            cluster_id: None,
            cluster_location: None,
            worker_id: None,
            cluster_name: None,
            worker_name: None,
            host_ip: None,
            host_port: None,
            tunnel_key: None,
            instance_ip: None,
            namespace_ip: None,
            publicip: None,
            cpu_percent: None,
            memory_percent: None,
            memory_bytes: None,
            disk: None,
            logs: None,
            placement_note: String::new(),
            last_modified_timestamp: now,
        }
    }
}

/// A cluster as `GET /api/clusters/` lists it, with the original's compatibility aliases.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Cluster {
    #[serde(rename = "_id")]
    pub id: String,
    pub cluster_name: String,
    pub cluster_location: String,
    /// Same as `cluster_name` (original field).
    pub candidate_name: String,
    /// Same as `cluster_location` (original field).
    pub candidate_location: String,
    pub active: bool,
    /// `active` (connected, reporting), `unreachable` (silent for less than the root's
    /// `--cluster-timeout`) or `lost` (silent longer: its instances were placed elsewhere).
    #[serde(default)]
    pub status: String,
    pub last_modified_timestamp: f64,
    pub active_nodes: u64,
    /// Free vCPUs summed over active workers.
    pub vcpus: f64,
    pub total_cpu_cores: f64,
    pub cpu_percent: f64,
    pub aggregated_cpu_percent: f64,
    /// Free memory in MB summed over active workers.
    pub memory: u64,
    pub memory_in_mb: u64,
    pub memory_percent: f64,
    pub vgpus: u64,
    pub total_gpu_cores: u64,
    pub virtualization: Vec<String>,
    pub supported_addons: Vec<String>,
    /// The same resource totals per CPU architecture of the cluster's active workers (free
    /// amounts included), as the cluster reports them.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub aggregation_per_architecture: BTreeMap<String, ResourceTotals>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A user as the API shows it: never with the password hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct User {
    #[serde(rename = "_id")]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub email: String,
    #[serde(default)]
    pub created_at: String,
    /// Roles in the organization the request was made in.
    #[serde(default)]
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Member {
    pub user_id: String,
    #[serde(default)]
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Organization {
    #[serde(rename = "_id")]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub member: Vec<Member>,
}
