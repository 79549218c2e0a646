//! Overlay network wire types (spec `oakestra-net.md` §3): route tables as the workers' proxies
//! use them, and the MQTT payloads of `nodes/<id>/net/…`. Keys follow the original's table-query
//! result (`app_name`, `instance_list`, `service_ip` with `IpType`/`Address`).

use serde::{Deserialize, Serialize};

/// `IpType` of a round-robin service IP.
pub const IP_TYPE_RR: &str = "RR";
/// `IpType` of a closest service IP.
pub const IP_TYPE_CLOSEST: &str = "Closest";
/// `IpType` of an instance IP (the original cluster's string).
pub const IP_TYPE_INSTANCE: &str = "instance_ip";

/// One service address and the balancing it stands for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceIp {
    #[serde(rename = "IpType")]
    pub ip_type: String,
    #[serde(rename = "Address")]
    pub address: String,
}

/// One reachable instance of a service: where its traffic goes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RouteInstance {
    pub instance_number: u32,
    /// The instance's own service IP (10.30.x.y), kept across re-placement.
    pub instance_ip: String,
    /// Its address on its worker's bridge (from the worker's /26).
    pub namespace_ip: String,
    /// The worker's tunnel endpoint.
    pub host_ip: String,
    pub host_port: u16,
    pub worker_id: String,
    pub cluster_id: String,
    /// The worker's tunnel key (X25519 public key, 64 hex digits): packets to this instance are
    /// sealed for it, and only that key may send from its instance IP.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub public_key: String,
}

/// A service's route table: its service-level addresses and its live instances (only those
/// running with a namespace address; an empty list means nothing can receive traffic).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RouteTable {
    /// The job name (`app.appns.service.servicens`), the original's key.
    pub app_name: String,
    /// The service id at the root.
    pub job_id: String,
    /// What was asked for (a job name or an IP), echoed so waiters can match the answer.
    pub query_key: String,
    /// Round-robin and closest addresses of the service.
    pub service_ip: Vec<ServiceIp>,
    /// Every instance with an instance IP, placed or not; only the entries of [`RouteInstance`]
    /// with a namespace address and tunnel endpoint are routable.
    pub instance_list: Vec<RouteInstance>,
    /// Set when the query could not be answered (unknown job or address, root unreachable).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// `nodes/<id>/net/tablequery/request`: a worker asks for the table of a job, by name or by any
/// of its service or instance IPs. Answered on `nodes/<id>/net/tablequery/result` with a
/// [`RouteTable`] whose `query_key` is `sname` or `sip`; the cluster later pushes every change of
/// that table on the same topic until the worker removes its interest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TableQuery {
    pub sname: String,
    pub sip: String,
}

/// `nodes/<id>/net/interest/remove`: the worker no longer needs updates of this job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InterestRemove {
    pub appname: String,
}

/// What a worker with the overlay on tells its cluster (in [`crate::node::NodeInfo`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OverlayInfo {
    /// The address peers send tunnel traffic to.
    pub public_addr: String,
    /// UDP port of the tunnel (50103 by default).
    pub tunnel_port: u16,
    /// The worker's /26 (e.g. `10.18.0.64/26`), once it has one.
    pub subnet: String,
    /// The worker's tunnel key (X25519 public key, 64 hex digits); empty when the worker runs
    /// the insecure plaintext tunnel.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub public_key: String,
    /// Tunnel datagrams refused since the worker started, per reason (`unknown_peer`,
    /// `unauthenticated`, `replayed`, …).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub refused: std::collections::BTreeMap<String, u64>,
}

impl OverlayInfo {
    /// Whether the parts peers depend on (endpoint, subnet, key) are the same; the counters
    /// may differ.
    pub fn same_identity(&self, other: &OverlayInfo) -> bool {
        (&self.public_addr, self.tunnel_port, &self.subnet, &self.public_key)
            == (&other.public_addr, other.tunnel_port, &other.subnet, &other.public_key)
    }
}

/// `nodes/<id>/net/peerquery/request`: a worker received a handshake from a tunnel key no route
/// table named and asks who it is. Answered on `nodes/<id>/net/peerquery/result`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PeerQuery {
    pub public_key: String,
}

/// The peer directory's answer: the worker holding `public_key`, or `error` when no worker of
/// the fleet does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PeerAnswer {
    pub public_key: String,
    pub worker_id: String,
    pub cluster_id: String,
    /// Its tunnel endpoint.
    pub host_ip: String,
    pub host_port: u16,
    /// Its /26.
    pub subnet: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// Topic names of the overlay under `nodes/<node_id>/net/`.
pub mod topic {
    pub fn table_query(node: &str) -> String {
        format!("nodes/{node}/net/tablequery/request")
    }
    pub fn table_result(node: &str) -> String {
        format!("nodes/{node}/net/tablequery/result")
    }
    pub fn interest_remove(node: &str) -> String {
        format!("nodes/{node}/net/interest/remove")
    }
    pub fn peer_query(node: &str) -> String {
        format!("nodes/{node}/net/peerquery/request")
    }
    pub fn peer_result(node: &str) -> String {
        format!("nodes/{node}/net/peerquery/result")
    }
    /// Suffixes after `nodes/<id>/`, as [`crate::node::topic::parse`] returns them.
    pub const TABLE_QUERY: &str = "net/tablequery/request";
    pub const TABLE_RESULT: &str = "net/tablequery/result";
    pub const INTEREST_REMOVE: &str = "net/interest/remove";
    pub const PEER_QUERY: &str = "net/peerquery/request";
    pub const PEER_RESULT: &str = "net/peerquery/result";
}
