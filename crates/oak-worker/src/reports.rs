//! What the worker publishes, before it is given a topic: the session adds the node id and IP
//! it is connected with.

use oak_api::net::{InterestRemove, PeerQuery, TableQuery};
use oak_api::node::{JobStatusReport, LogsAnswer, NodeInfo, ResourcesReport};
use oak_api::status;

/// A message for the cluster, queued until a session can publish it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outgoing {
    /// `nodes/<id>/job`: an instance changed state (QoS 1, kept across reconnects).
    Job(JobStatusReport),
    /// `nodes/<id>/jobs/resources` (periodic; dropped while disconnected).
    Resources(ResourcesReport),
    /// `nodes/<id>/information` (periodic; dropped while disconnected).
    Info(Box<NodeInfo>),
    /// `nodes/<id>/logs`: an answer to a logs query (dropped while disconnected: the cluster
    /// answers the root with a timeout and the reader asks again).
    Logs(LogsAnswer),
    /// `nodes/<id>/net/tablequery/request` (dropped while disconnected: the proxy gives the
    /// query up after a few seconds and asks again at the next packet).
    TableQuery(TableQuery),
    /// `nodes/<id>/net/interest/remove`.
    InterestRemove(InterestRemove),
    /// `nodes/<id>/net/peerquery/request` (dropped while disconnected: the tunnel gives the
    /// held handshake up and the initiator retries).
    PeerQuery(PeerQuery),
}

pub(crate) fn job(job_name: &str, instance: u32, status: &str, detail: impl Into<String>) -> Outgoing {
    Outgoing::Job(JobStatusReport {
        sname: job_name.to_string(),
        status: status.to_string(),
        status_detail: detail.into(),
        instance,
        publicip: String::new(),
        nsip: String::new(),
    })
}

/// The status of an instance that stopped by itself: a one-shot job that exited 0 is done,
/// anything else died (the cluster then re-deploys it).
pub(crate) fn exit_status(one_shot: bool, code: i32) -> &'static str {
    if one_shot && code == 0 {
        status::COMPLETED
    } else {
        status::DEAD
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_table() {
        assert_eq!(exit_status(true, 0), "COMPLETED");
        assert_eq!(exit_status(true, 1), "DEAD");
        assert_eq!(exit_status(false, 0), "DEAD");
        assert_eq!(exit_status(false, 137), "DEAD");
    }
}
