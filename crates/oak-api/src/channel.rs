//! The cluster channel (cluster ↔ root, default port 50052).
//!
//! One TLS connection, opened by the cluster, carrying length-prefixed JSON frames: a 4-byte
//! big-endian length, then one [`ClusterMsg`] or [`RootMsg`]. The cluster verifies the root's
//! certificate against the CA its join token pins before sending anything. The first frame is
//! the cluster's `Hello`: with its join token and a certificate request on a first join, bare on
//! a reconnect (the connection then carries the cluster's client certificate). The root answers
//! `Welcome` (with the signed certificate on a first join), or `Refused` and closes. After that
//! both sides send full state first (the root every instance it wants on the cluster, the cluster
//! every instance it has), then changes. A reconnect repeats the full exchange, so no lost message
//! matters (level-triggered).
//!
//! Messages whose size grows with the fleet (the full desired set, the full instance list, big
//! bursts of updates) are sent in parts of at most [`PART_BYTES`] each ([`RootMsg::full_deploy`],
//! [`ClusterMsg::instances`]), so no frame ever exceeds [`MAX_FRAME`]; the receiver of a full
//! set applies it only once its `last` part arrived. Before `Welcome` the root reads at most
//! [`MAX_HELLO_FRAME`] bytes, so an unauthenticated peer cannot make it allocate a big frame.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::net::RouteTable;
use crate::node::{JobSpec, LogCursor};

/// Largest frame either side accepts.
pub const MAX_FRAME: usize = 16 << 20;

/// Largest first frame (the `Hello`, before the join token is checked) the root accepts.
pub const MAX_HELLO_FRAME: usize = 4 * 1024;

/// Target size of one part of a message split by fleet size; far below [`MAX_FRAME`], so a part
/// fits even when one item is unusually large (a single item is bounded by the API's 64 KiB
/// descriptor limit).
pub const PART_BYTES: usize = 1 << 20;

/// Protocol version sent in `Hello`; the root refuses versions it does not speak.
pub const PROTOCOL_VERSION: u32 = 1;

/// Cluster → root.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClusterMsg {
    Hello {
        protocol: u32,
        /// The join token, on a first join only (a member authenticates with its certificate).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        token: String,
        /// PEM certificate request for the cluster's own key, on a first join: the root answers
        /// with the signed certificate in `Welcome`.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        csr: String,
        /// The id the root gave this cluster before, if any.
        #[serde(default)]
        cluster_id: String,
        cluster_name: String,
        cluster_location: String,
        /// Port of the cluster's node API, where its `/metrics` are (0: not said), for the
        /// root's scrape targets.
        #[serde(default, skip_serializing_if = "is_zero")]
        metrics_port: u16,
    },
    /// Aggregated resources, sent every few seconds.
    Report { resources: ClusterResources },
    /// Instance states. `full` = this is (a part of) every instance the cluster holds, sent after
    /// `Welcome`; a receiver that acts on an instance's absence must wait for the `last` part.
    Instances {
        #[serde(default)]
        full: bool,
        updates: Vec<InstanceReport>,
        /// `false` on every part of a split list but the last one.
        #[serde(default = "yes")]
        last: bool,
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
    /// Who holds a tunnel key (a handshake from a worker of another cluster); answered with
    /// [`RootMsg::Peer`] from the workers every cluster reported.
    PeerQuery { request_id: u64, public_key: String },
    /// No worker of this cluster needs the job's routes any more.
    Uninterest { job_name: String },
    /// The cluster's workers. `full` = (a part of) every worker, sent after `Welcome` and
    /// applied once the `last` part arrived; otherwise only workers whose summary changed
    /// noticeably since last sent, and the ids of workers the cluster forgot (`removed`).
    Workers {
        #[serde(default)]
        full: bool,
        #[serde(default)]
        workers: Vec<WorkerSummary>,
        #[serde(default)]
        removed: Vec<String>,
        #[serde(default = "yes")]
        last: bool,
    },
    /// Sent when the cluster has written nothing for [`KEEPALIVE`]: the root counts a cluster's
    /// unreachability from the last frame it received, so silence means the link is cut.
    Ping,
}

/// Either side sends a `Ping` after writing nothing for this long, and treats a connection it
/// has read nothing from for [`IDLE_TIMEOUT`] as dead.
pub const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(1);

/// Ten keepalive periods without a frame: the peer is unreachable (packets dropped, no FIN).
/// Generous, so a peer starved of CPU for a few seconds is not made to resync; how soon a
/// silent cluster counts as lost does not depend on it (`--cluster-timeout`, from the last frame).
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Root → cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RootMsg {
    Welcome {
        cluster_id: String,
        /// On a first join: the cluster's client certificate (PEM), signed by the root's CA, to
        /// present on every later connection instead of a join token.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        certificate: String,
    },
    Refused {
        message: String,
    },
    /// Instances the cluster must run. `full` = this is (a part of) the complete desired set;
    /// once the `last` part arrived the cluster removes whatever else it runs.
    Deploy {
        #[serde(default)]
        full: bool,
        /// Sequence number of this message on the connection (0 for the full set), for diagnostics.
        seq: u64,
        instances: Vec<DeployInstance>,
        /// `false` on every part of a split full set but the last one.
        #[serde(default = "yes")]
        last: bool,
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
    /// Answer to [`ClusterMsg::PeerQuery`] (`answer.error` set when no worker has the key).
    Peer {
        request_id: u64,
        answer: crate::net::PeerAnswer,
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
    /// Sent when the root has written nothing for [`KEEPALIVE`], so a cluster notices a cut
    /// link within [`IDLE_TIMEOUT`] and re-dials.
    Ping,
}

fn yes() -> bool {
    true
}

fn is_zero(n: &u16) -> bool {
    *n == 0
}

impl RootMsg {
    /// The full desired set as parts of at most [`PART_BYTES`] (one empty part for an empty set).
    pub fn full_deploy(instances: Vec<DeployInstance>) -> Vec<RootMsg> {
        with_last(parts(instances), |instances, last| RootMsg::Deploy { full: true, seq: 0, instances, last })
    }
}

impl ClusterMsg {
    /// Instance reports as parts of at most [`PART_BYTES`] (one empty part for an empty list).
    pub fn instances(full: bool, updates: Vec<InstanceReport>) -> Vec<ClusterMsg> {
        with_last(parts(updates), |updates, last| ClusterMsg::Instances { full, updates, last })
    }

    /// Worker summaries as parts of at most [`PART_BYTES`]; `removed` goes with the last part
    /// (one empty part when there is nothing).
    pub fn workers(full: bool, workers: Vec<WorkerSummary>, removed: Vec<String>) -> Vec<ClusterMsg> {
        let mut msgs =
            with_last(parts(workers), |workers, last| ClusterMsg::Workers { full, workers, removed: vec![], last });
        if let Some(ClusterMsg::Workers { removed: r, .. }) = msgs.last_mut() {
            *r = removed;
        }
        msgs
    }
}

fn with_last<T, M>(parts: Vec<Vec<T>>, make: impl Fn(Vec<T>, bool) -> M) -> Vec<M> {
    let n = parts.len();
    parts.into_iter().enumerate().map(|(i, p)| make(p, i + 1 == n)).collect()
}

/// Splits `items` into runs whose JSON is at most [`PART_BYTES`] (an item bigger than that gets
/// a run of its own); always at least one run.
pub fn parts<T: Serialize>(items: Vec<T>) -> Vec<Vec<T>> {
    let mut out = vec![Vec::new()];
    let mut size = 0;
    for item in items {
        let len = serde_json::to_vec(&item).map_or(0, |v| v.len()) + 1;
        let current = out.last_mut().expect("never empty");
        if !current.is_empty() && size + len > PART_BYTES {
            out.push(Vec::new());
            size = 0;
        }
        size += len;
        out.last_mut().expect("never empty").push(item);
    }
    out
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
    /// The tunnel key of its worker (see [`crate::net::RouteInstance::public_key`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel_key: Option<String>,
    /// The instance's overlay address on its worker's bridge.
    pub namespace_ip: Option<String>,
    pub publicip: Option<String>,
    pub cpu_percent: Option<f64>,
    pub memory_percent: Option<f64>,
    pub memory_bytes: Option<u64>,
    pub disk: Option<u64>,
    pub logs: Option<String>,
}

/// One worker as its cluster describes it to the root (and the root to API clients).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct WorkerSummary {
    /// The node id the cluster gave the worker.
    pub id: String,
    /// The node name the worker registered with (host name by default).
    pub name: String,
    /// The address the worker registered from.
    pub address: String,
    /// The overlay's public address of the worker, when it runs the overlay and found one.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub public_address: String,
    /// The overlay's tunnel port, key and /26, when the worker runs the overlay (the root's
    /// peer directory answers from them).
    #[serde(skip_serializing_if = "is_zero")]
    pub tunnel_port: u16,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tunnel_key: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subnet: String,
    /// `amd64`, `arm64`, …
    pub architecture: String,
    pub virtualization: Vec<String>,
    /// Logical cores.
    pub cpu_cores: u32,
    /// CPU utilisation of the whole node, 0–100.
    pub cpu_percent: f64,
    pub memory_total_mb: u64,
    /// Memory in use (total minus available).
    pub memory_used_mb: u64,
    /// Memory available.
    pub memory_free_mb: u64,
    pub gpus: u32,
    /// The worker reported within the cluster's `--worker-timeout`.
    pub active: bool,
    /// Port of the worker's `/metrics` (0: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub metrics_port: u16,
}

impl WorkerSummary {
    /// Whether `self` differs from `sent` enough to be sent again: anything but usage, or CPU
    /// use by at least 5 points, or memory use by at least 5 % of the total (and 16 MB).
    pub fn differs_noticeably(&self, sent: &WorkerSummary) -> bool {
        let same_usage =
            |a: &WorkerSummary| WorkerSummary { cpu_percent: 0.0, memory_used_mb: 0, memory_free_mb: 0, ..a.clone() };
        if same_usage(self) != same_usage(sent) {
            return true;
        }
        let memory_step = (self.memory_total_mb / 20).max(16);
        (self.cpu_percent - sent.cpu_percent).abs() >= 5.0
            || self.memory_used_mb.abs_diff(sent.memory_used_mb) >= memory_step
            || self.memory_free_mb.abs_diff(sent.memory_free_mb) >= memory_step
    }
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

/// Like [`encode`], but refuses a message the peer would refuse (over [`MAX_FRAME`]), so a
/// writer can drop it instead of breaking the connection.
pub fn encode_checked<T: Serialize>(msg: &T) -> Result<Vec<u8>, String> {
    let frame = encode(msg);
    match frame.len() - 4 {
        len if len > MAX_FRAME => Err(format!("a message of {len} bytes exceeds the frame limit of {MAX_FRAME}")),
        _ => Ok(frame),
    }
}

/// Reads a frame's body length from its 4-byte header, refusing oversized frames.
pub fn frame_len(header: [u8; 4]) -> Result<usize, String> {
    frame_len_within(header, MAX_FRAME)
}

/// Reads a frame's body length from its 4-byte header, refusing frames over `limit`.
pub fn frame_len_within(header: [u8; 4], limit: usize) -> Result<usize, String> {
    let len = u32::from_be_bytes(header) as usize;
    if len > limit {
        return Err(format!("frame of {len} bytes exceeds the limit of {limit}"));
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::JobSpec;

    fn instance(n: u32) -> DeployInstance {
        let spec = serde_json::from_value(serde_json::json!({
            "microservice_name": "svc", "microservice_namespace": "test", "virtualization": "container",
            "code": "docker.io/library/nginx:latest",
        }))
        .unwrap();
        let job = JobSpec { id: format!("job-{n}"), job_name: "x".repeat(1000), image: "nginx".into(), spec };
        DeployInstance { instance_number: n, job, instance_ip: Some("10.30.0.1".into()) }
    }

    #[test]
    fn a_full_set_bigger_than_a_frame_is_sent_in_parts_that_fit() {
        let set: Vec<DeployInstance> = (0..20_000).map(instance).collect();
        assert!(encode(&RootMsg::Deploy { full: true, seq: 0, instances: set.clone(), last: true }).len() > MAX_FRAME);
        let msgs = RootMsg::full_deploy(set.clone());
        assert!(msgs.len() > 16, "{} parts", msgs.len());
        let mut joined = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            let frame = encode_checked(m).expect("every part fits a frame");
            assert!(frame.len() <= PART_BYTES + 64, "part of {} bytes", frame.len());
            let RootMsg::Deploy { full: true, instances, last, .. } = m.clone() else { panic!("{m:?}") };
            assert_eq!(last, i + 1 == msgs.len());
            joined.extend(instances);
        }
        assert_eq!(joined, set);
    }

    #[test]
    fn an_empty_set_is_one_last_part() {
        assert_eq!(
            RootMsg::full_deploy(vec![]),
            vec![RootMsg::Deploy { full: true, seq: 0, instances: vec![], last: true }]
        );
        let msgs = ClusterMsg::instances(true, vec![]);
        assert_eq!(msgs, vec![ClusterMsg::Instances { full: true, updates: vec![], last: true }]);
    }

    fn worker(n: usize) -> WorkerSummary {
        WorkerSummary {
            id: format!("{n:032x}"),
            name: format!("worker-{n}"),
            address: "192.168.10.20".into(),
            architecture: "amd64".into(),
            virtualization: vec!["docker".into(), "unikernel".into()],
            cpu_cores: 8,
            cpu_percent: 12.5,
            memory_total_mb: 16_000,
            memory_used_mb: 4_000,
            memory_free_mb: 12_000,
            active: true,
            ..Default::default()
        }
    }

    #[test]
    fn a_big_worker_list_goes_in_parts_with_the_removed_ids_last() {
        let list: Vec<WorkerSummary> = (0..10_000).map(worker).collect();
        let msgs = ClusterMsg::workers(true, list.clone(), vec!["gone".into()]);
        assert!(msgs.len() > 1, "{} parts", msgs.len());
        let mut joined = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            let frame = encode_checked(m).expect("every part fits a frame");
            assert!(frame.len() <= PART_BYTES + 128, "part of {} bytes", frame.len());
            let ClusterMsg::Workers { full: true, workers, removed, last } = m.clone() else { panic!("{m:?}") };
            assert_eq!(last, i + 1 == msgs.len());
            assert_eq!(removed.is_empty(), !last);
            joined.extend(workers);
        }
        assert_eq!(joined, list);
        assert_eq!(
            ClusterMsg::workers(false, vec![], vec![]),
            vec![ClusterMsg::Workers { full: false, workers: vec![], removed: vec![], last: true }]
        );
    }

    #[test]
    fn only_noticeable_changes_of_a_worker_count() {
        let sent = worker(1);
        let with = |f: &dyn Fn(&mut WorkerSummary)| {
            let mut w = sent.clone();
            f(&mut w);
            w
        };
        assert!(!with(&|w| w.cpu_percent = 16.0).differs_noticeably(&sent));
        assert!(with(&|w| w.cpu_percent = 17.5).differs_noticeably(&sent));
        assert!(!with(&|w| w.memory_used_mb = 4_700).differs_noticeably(&sent));
        assert!(with(&|w| w.memory_free_mb = 11_200).differs_noticeably(&sent));
        assert!(with(&|w| w.active = false).differs_noticeably(&sent));
        assert!(with(&|w| w.name = "renamed".into()).differs_noticeably(&sent));
        assert!(with(&|w| w.public_address = "203.0.113.7".into()).differs_noticeably(&sent));
        assert!(!sent.differs_noticeably(&sent));
    }

    #[test]
    fn a_workers_message_of_an_older_shape_still_reads() {
        let m: ClusterMsg = serde_json::from_str(r#"{"type":"workers","workers":[{"id":"n1","name":"w"}]}"#).unwrap();
        let ClusterMsg::Workers { full: false, workers, removed, last: true } = m else { panic!("{m:?}") };
        assert_eq!((workers[0].name.as_str(), workers[0].cpu_cores, removed.len()), ("w", 0, 0));
    }

    #[test]
    fn a_message_without_last_is_whole() {
        let m: RootMsg = serde_json::from_str(r#"{"type":"deploy","full":true,"seq":0,"instances":[]}"#).unwrap();
        assert_eq!(m, RootMsg::Deploy { full: true, seq: 0, instances: vec![], last: true });
    }

    #[test]
    fn frames_over_the_limit_are_refused_before_reading() {
        assert!(frame_len_within(4097u32.to_be_bytes(), MAX_HELLO_FRAME).is_err());
        assert_eq!(frame_len_within(4096u32.to_be_bytes(), MAX_HELLO_FRAME), Ok(4096));
        assert!(frame_len(u32::MAX.to_be_bytes()).is_err());
        let big = RootMsg::Refused { message: "x".repeat(MAX_FRAME) };
        assert!(encode_checked(&big).is_err());
    }
}
