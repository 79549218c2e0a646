//! Relaying reads of instance output between the root and workers: the root's request gets a
//! cluster-local id (workers never see the root's ids), the worker's answer is matched by that id
//! and by the node it was asked of, and requests a worker leaves unanswered expire.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use oak_api::channel::ClusterMsg;

/// How long a worker may take to answer a logs query.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct Relay {
    next: u64,
    /// Cluster request id → (root request id, node asked, deadline).
    pending: HashMap<u64, (u64, String, Instant)>,
}

impl Relay {
    /// Records a query to `node` on behalf of the root's `root_request`; returns its id.
    pub fn start(&mut self, root_request: u64, node: &str, now: Instant) -> u64 {
        self.next += 1;
        self.pending.insert(self.next, (root_request, node.to_string(), now + ANSWER_TIMEOUT));
        self.next
    }

    /// The root's request id for an answer from `node`, if the query is still pending.
    pub fn finish(&mut self, id: u64, node: &str) -> Option<u64> {
        match self.pending.get(&id) {
            Some((_, asked, _)) if asked == node => self.pending.remove(&id).map(|(root, _, _)| root),
            _ => None,
        }
    }

    /// Removes the queries past their deadline: (root request id, node).
    pub fn expire(&mut self, now: Instant) -> Vec<(u64, String)> {
        let expired: Vec<u64> = self.pending.iter().filter(|(_, (_, _, d))| *d <= now).map(|(id, _)| *id).collect();
        expired.into_iter().filter_map(|id| self.pending.remove(&id)).map(|(root, node, _)| (root, node)).collect()
    }
}

/// An answer to the root that carries only an error.
pub fn error(request_id: u64, error: String) -> ClusterMsg {
    ClusterMsg::Logs { request_id, data: String::new(), cursor: Default::default(), error }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_answers_by_id_and_node_and_expires_the_rest() {
        let now = Instant::now();
        let mut relay = Relay::default();
        let a = relay.start(100, "n1", now);
        let b = relay.start(200, "n2", now);
        assert_ne!(a, b);
        assert_eq!(relay.finish(a, "n2"), None, "another node cannot answer for n1");
        assert_eq!(relay.finish(a, "n1"), Some(100));
        assert_eq!(relay.finish(a, "n1"), None, "answered once");
        assert!(relay.expire(now + Duration::from_secs(1)).is_empty());
        assert_eq!(relay.expire(now + ANSWER_TIMEOUT), vec![(200, "n2".to_string())]);
        assert_eq!(relay.finish(b, "n2"), None, "a late answer is dropped");
    }
}
