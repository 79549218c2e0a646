//! The cluster channel (cluster ↔ root, default port 50052).
//!
//! One TCP connection, opened by the cluster, carrying length-prefixed JSON frames: a 4-byte
//! big-endian length, then one [`ClusterMsg`] or [`RootMsg`]. The first frame is the cluster's
//! `Hello` with its join token; the root answers `Welcome` (or `Refused` and closes). After that
//! both sides send full state first (the root every instance it wants on the cluster, the cluster
//! every instance it has), then changes. A reconnect repeats the full exchange, so no lost message
//! matters (level-triggered).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::net::RouteTable;
use crate::node::{JobSpec, LogCursor};

/// Largest frame either side accepts.
pub const MAX_FRAME: usize = 16 << 20;

/// Protocol version sent in `Hello`; the root refuses versions it does not speak.
pub const PROTOCOL_VERSION: u32 = 1;

/// Cluster → root.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClusterMsg {
    Hello {
        protocol: u32,
        token: String,
        /// The id the root gave this cluster before, if any.
        #[serde(default)]
        cluster_id: String,
        cluster_name: String,
        cluster_location: String,
    },
    /// Aggregated resources, sent every few seconds.
    Report { resources: ClusterResources },
    /// Instance states. `full` = this is every instance the cluster holds; the root treats
    /// instances it assigned to the cluster but not listed as lost by the cluster.
    Instances {
        #[serde(default)]
        full: bool,
        updates: Vec<InstanceReport>,
    },
    /// The answer to a [`RootMsg::Logs`]; `error` is empty on success.
    Logs {
        request_id: u64,
        #[serde(default)]
        data: String,
        #[serde(default)]
        cursor: LogCursor,
        #[serde(default)]
        error: String,
    },
    /// Asks the root for a worker's overlay subnet (the same one again if the node has one);
    /// answered with [`RootMsg::Subnet`].
    SubnetRequest { request_id: u64, node_id: String },
    /// Every node the cluster knows (sent after `Welcome` and when a node is removed): the root
    /// releases the subnets of this cluster's nodes not listed.
    Nodes { node_ids: Vec<String> },
    /// A route-table query for a job name or a service/instance IP (exactly one is non-empty);
    /// answered with [`RootMsg::Table`]. The root then pushes the job's changes
    /// ([`RootMsg::Routes`]) to this cluster until it sends [`ClusterMsg::Uninterest`].
    TableQuery {
        request_id: u64,
        #[serde(default)]
        job_name: String,
        #[serde(default)]
        ip: String,
    },
    /// No worker of this cluster needs the job's routes any more.
    Uninterest { job_name: String },
}

/// Root → cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RootMsg {
    Welcome {
        cluster_id: String,
    },
    Refused {
        message: String,
    },
    /// Instances the cluster must run. `full` = this is the complete desired set; the cluster
    /// removes whatever else it runs.
    Deploy {
        #[serde(default)]
        full: bool,
        /// Sequence number of this message on the connection (0 for the full set), for diagnostics.
        seq: u64,
        instances: Vec<DeployInstance>,
    },
    /// Instances to remove.
    Undeploy {
        instances: Vec<InstanceRef>,
    },
    /// Output of an instance, read on its worker: the last `tail` bytes, or what came after
    /// `cursor`. Answered with [`ClusterMsg::Logs`] carrying the same `request_id`.
    Logs {
        request_id: u64,
        job_id: String,
        instance_number: u32,
        #[serde(default)]
        tail: u64,
        #[serde(default)]
        cursor: Option<LogCursor>,
    },
    /// Answer to [`ClusterMsg::SubnetRequest`]: `subnet` like `10.18.0.64/26`, or `error`.
    Subnet {
        request_id: u64,
        node_id: String,
        #[serde(default)]
        subnet: String,
        #[serde(default)]
        error: String,
    },
    /// Answer to [`ClusterMsg::TableQuery`] (`table.error` set when unknown).
    Table {
        request_id: u64,
        table: RouteTable,
    },
    /// A job's route table changed (instance placed, running, moved, dead or removed; service
    /// deleted: empty `instance_list`). Sent to every cluster interested in the job.
    Routes {
        table: RouteTable,
    },
}

/// One instance the root asks a cluster to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployInstance {
    pub instance_number: u32,
    pub job: JobSpec,
    /// The instance's service IP, allocated by the root when the instance was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_ip: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct InstanceRef {
    pub job_id: String,
    pub instance_number: u32,
}

/// What a cluster knows about one instance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstanceReport {
    pub job_id: String,
    pub instance_number: u32,
    pub status: String,
    pub status_detail: String,
    pub worker_id: Option<String>,
    pub host_ip: Option<String>,
    pub host_port: Option<String>,
    /// The instance's overlay address on its worker's bridge.
    pub namespace_ip: Option<String>,
    pub publicip: Option<String>,
    pub cpu_percent: Option<f64>,
    pub memory_percent: Option<f64>,
    pub memory_bytes: Option<u64>,
    pub disk: Option<u64>,
    pub logs: Option<String>,
}

/// A cluster's resources (spec §5.3 with its defects fixed): free amounts are what is left after
/// the instances the cluster already placed, so the root can schedule on them directly.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterResources {
    pub active_nodes: u64,
    #[serde(flatten)]
    pub totals: ResourceTotals,
    pub virtualization: Vec<String>,
    pub supported_addons: Vec<String>,
    pub csi_drivers: Vec<String>,
    /// The same totals per CPU architecture of the active nodes.
    pub aggregation_per_architecture: BTreeMap<String, ResourceTotals>,
}

/// Capacity and use summed over a set of nodes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ResourceTotals {
    pub nodes: u64,
    /// Logical cores.
    pub total_cpu_cores: f64,
    /// Cores not requested by placed instances.
    pub free_vcpus: f64,
    /// Mean CPU utilisation of the nodes, 0–100.
    pub cpu_percent: f64,
    pub memory_in_mb: u64,
    /// MB not requested by placed instances (and available on the node).
    pub free_memory_mb: u64,
    pub memory_percent: f64,
    pub total_gpus: u64,
    pub free_gpus: u64,
}

/// Encodes one message as a frame: length prefix and JSON.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let body = serde_json::to_vec(msg).expect("channel messages always serialize");
    let mut frame = Vec::with_capacity(body.len() + 4);
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// Reads a frame's body length from its 4-byte header, refusing oversized frames.
pub fn frame_len(header: [u8; 4]) -> Result<usize, String> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(format!("frame of {len} bytes exceeds the limit of {MAX_FRAME}"));
    }
    Ok(len)
}
