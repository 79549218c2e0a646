//! Worker ↔ cluster wire types: the node registration call (`POST /api/node/register`, spec §5.2)
//! and the MQTT payloads under `nodes/<node_id>/…` (spec §5.4). Keys follow the original so that
//! tools written against it can read the traffic.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::sla::Microservice;

/// What a worker says about itself: sent at registration and, every 2 s (with
/// [`features::QUIET_REPORTS`], when it changed noticeably), on `nodes/<id>/information`. Unlike the original, every report carries the full description (no
/// empty strings overwriting the host name or architecture).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeInfo {
    /// The node id the worker was given before ("" at its first registration).
    pub id: String,
    /// Node name (host name by default); what `direct` constraints match.
    pub host: String,
    pub ip: String,
    pub port: String,
    pub system_info: SystemInfo,
    /// CPU utilisation of the whole node, 0–100.
    pub cpu_percent: f64,
    /// Logical cores.
    pub vcpus: u32,
    /// `amd64`, `arm64`, … (Go's names, as in the original).
    pub architecture: String,
    pub memory_percent: f64,
    /// Available memory in MB.
    pub memory: u64,
    /// Total memory in MB.
    pub memory_total: u64,
    /// Free disk in MB on the data directory's file system.
    pub disk_free: u64,
    pub disk_info: Map<String, Value>,
    pub network_info: Map<String, Value>,
    pub gpu_driver: String,
    pub gpu_usage: f64,
    pub vgpus: u32,
    pub gpu_temp: f64,
    pub vram_percent: f64,
    /// GPU memory in MiB, summed over GPUs.
    pub vram: u64,
    /// Runtimes this worker can run, e.g. `["docker"]`.
    pub virtualization: Vec<String>,
    pub supported_addons: Vec<String>,
    pub csi_drivers: Vec<Value>,
    /// Present when the worker runs the overlay network (not `--no-overlay`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlay: Option<crate::net::OverlayInfo>,
    /// Port of the worker's Prometheus `/metrics` (0: none), for the root's scrape targets.
    #[serde(skip_serializing_if = "is_zero")]
    pub metrics_port: u16,
    /// Protocol features the worker understands beyond the original's ([`features`]), so a
    /// cluster uses them only with workers that do (older workers send none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}

/// Names of the protocol features in [`NodeInfo::features`].
pub mod features {
    /// `control/deploy` may carry a JSON array of deploy commands: the cluster sends the
    /// instances it placed on one worker in one step as one message.
    pub const DEPLOY_BATCH: &str = "deploy_batch";
    /// Offered by a cluster in [`RegisterNodeResponse::features`](super::RegisterNodeResponse):
    /// it hears that a worker is alive from the worker's MQTT connection itself (keep-alive
    /// pings included), so the worker publishes `information` only when it changed noticeably,
    /// and at least every minute, instead of every 2 s; its instances' usage
    /// (`jobs/resources`) likewise when it changed noticeably, and at least every 10 s.
    pub const QUIET_REPORTS: &str = "quiet_reports";
}

fn is_zero(n: &u16) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SystemInfo {
    pub kernel_version: String,
    pub architecture: String,
    pub os_version: String,
    pub uptime: String,
}

/// Body of `POST /api/node/register`: the node description plus proof that the worker may join.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RegisterNodeRequest {
    #[serde(flatten)]
    pub node: NodeInfo,
    /// The secret of the cluster's worker join token (`oakn.v1.<CA>.<secret>`; the whole token
    /// is accepted too). Sent only over HTTPS to a server that proved the token's CA.
    #[serde(default)]
    pub token: String,
    /// The MQTT password the cluster gave this node before: proves a re-registering worker owns
    /// the id it asks to keep.
    #[serde(default)]
    pub node_secret: String,
}

/// Answer to a registration: the node id to keep and how to reach the broker.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RegisterNodeResponse {
    pub id: String,
    /// Broker port, a string as in the original.
    #[serde(rename = "MQTT_BROKER_PORT")]
    pub mqtt_broker_port: String,
    /// Broker host; empty means the cluster address the worker registered with.
    #[serde(default)]
    pub mqtt_host: String,
    pub mqtt_username: String,
    pub mqtt_password: String,
    /// The worker's overlay subnet (`10.18.0.64/26`) from the root, kept for the node's life;
    /// empty when the worker registered without the overlay.
    #[serde(default)]
    pub subnet: String,
    /// How to speak to the broker: `mqtts` (MQTT over TLS; also when empty) or `mqtt`
    /// (plaintext, only for an external broker the cluster was configured with so).
    #[serde(default)]
    pub mqtt_scheme: String,
    /// PEM of the CA the broker's certificate chains to, when the broker is not the cluster's
    /// embedded one (an external `mqtts://` broker): the worker then checks the certificate
    /// against it for the host it dials. Empty: the cluster's own CA, pinned by the node token.
    #[serde(default)]
    pub mqtt_ca: String,
    /// Protocol features the cluster offers beyond the original's ([`features`]); an older
    /// cluster sends none, and the worker then behaves as the original does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}

/// What a worker needs to run one instance: the job document plus the instance number
/// (`nodes/<id>/control/deploy`: one command as a JSON object, or, to a worker announcing
/// [`features::DEPLOY_BATCH`], several as a JSON array).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployCommand {
    #[serde(flatten)]
    pub job: JobSpec,
    pub instance_number: u32,
    /// The instance's service IP from the root (source address of its overlay traffic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_ip: Option<String>,
    /// Network namespace the container joins. Never sent: the worker's overlay sets it just
    /// before the runtime starts the instance (`None` = the worker's own namespace).
    #[serde(skip)]
    pub netns: Option<String>,
}

/// The runnable part of a service, as the cluster and the worker see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Service (job) id at the root.
    #[serde(rename = "_id")]
    pub id: String,
    pub job_name: String,
    /// Image reference (the descriptor's `code`).
    pub image: String,
    #[serde(flatten)]
    pub spec: Microservice,
}

/// `nodes/<id>/control/delete`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeleteCommand {
    pub job_name: String,
    #[serde(default)]
    pub virtualization: String,
    pub instance_number: u32,
}

/// `nodes/<id>/job`: an instance changed state on the worker.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobStatusReport {
    /// The job name (original key).
    pub sname: String,
    pub status: String,
    pub status_detail: String,
    pub instance: u32,
    pub publicip: String,
    /// The instance's address on the worker's overlay bridge, once it has one.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub nsip: String,
}

/// `nodes/<id>/jobs/resources`: every instance the worker runs, with its usage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ResourcesReport {
    pub services: Vec<ServiceResources>,
}

/// Usage of one running instance. Numbers are strings, as in the original protocol.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceResources {
    pub job_name: String,
    pub instance: u32,
    pub virtualization: String,
    /// Percent of one node's CPU capacity.
    pub cpu_percent: String,
    /// Percent of the node's memory (0–100, not the original's 0..1 ratio).
    pub memory_percent: String,
    /// Bytes of memory in use (without reclaimable page cache).
    pub memory_bytes: String,
    /// Bytes of disk used by the instance.
    pub disk: String,
    /// Last 1024 bytes of the instance's output.
    pub logs: String,
    /// CPU time used since the instance started, in seconds, where the runtime knows it (not
    /// in the original protocol; read by the worker's `/metrics`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<f64>,
    /// The instance's memory limit in bytes, if it has one the runtime knows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
    /// Processes of the instance the kernel's OOM killer killed, where the runtime knows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oom_kills: Option<u64>,
}

/// Where a reader of an instance's output left off: the rotation generation of the log file and
/// the byte offset in it. Opaque to clients; they pass back what they were given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogCursor {
    pub generation: u64,
    pub offset: u64,
}

/// `nodes/<id>/control/logs`: the cluster asks a worker for an instance's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogsQuery {
    pub request_id: u64,
    pub job_name: String,
    pub instance_number: u32,
    /// Without a cursor: the last `tail` bytes.
    #[serde(default)]
    pub tail: u64,
    /// Output after this point (at most `tail` bytes, or a default maximum).
    #[serde(default)]
    pub cursor: Option<LogCursor>,
}

/// `nodes/<id>/logs`: a worker's answer to a [`LogsQuery`]; `error` is empty on success.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogsAnswer {
    pub request_id: u64,
    pub data: String,
    /// Where the next read continues.
    pub cursor: LogCursor,
    pub error: String,
}

/// Published on `nodes/<id>/control/error` when the cluster cannot use what a node sent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ControlError {
    pub message: String,
}

/// Topic names under `nodes/<node_id>/`.
pub mod topic {
    pub fn information(node: &str) -> String {
        format!("nodes/{node}/information")
    }
    pub fn job(node: &str) -> String {
        format!("nodes/{node}/job")
    }
    pub fn resources(node: &str) -> String {
        format!("nodes/{node}/jobs/resources")
    }
    pub fn deploy(node: &str) -> String {
        format!("nodes/{node}/control/deploy")
    }
    pub fn delete(node: &str) -> String {
        format!("nodes/{node}/control/delete")
    }
    pub fn error(node: &str) -> String {
        format!("nodes/{node}/control/error")
    }
    pub fn logs_query(node: &str) -> String {
        format!("nodes/{node}/control/logs")
    }
    pub fn logs(node: &str) -> String {
        format!("nodes/{node}/logs")
    }

    /// Splits `nodes/<id>/<rest>` into `(id, rest)`.
    pub fn parse(topic: &str) -> Option<(&str, &str)> {
        let rest = topic.strip_prefix("nodes/")?;
        let (id, kind) = rest.split_once('/')?;
        (!id.is_empty()).then_some((id, kind))
    }
}
