//! Reading an instance's output through its cluster: the root sends `Logs` on the cluster's
//! channel and waits for the answer with the same request id (the cluster asks the worker).

use std::collections::HashMap;
use std::time::Duration;

use oak_api::channel::RootMsg;
use oak_api::node::LogCursor;
use tokio::sync::oneshot;

use super::Fleet;

/// Longer than the cluster's own wait for its worker (10 s), so its timeout answer arrives.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// Output and the cursor after it, or the reason given by the cluster or worker.
type Answer = Result<(String, LogCursor), String>;

/// Requests in flight by id, each with the cluster it was sent to: only that cluster may answer.
#[derive(Default)]
pub(super) struct Pending {
    next: u64,
    waiting: HashMap<u64, (String, oneshot::Sender<Answer>)>,
}

/// Why no output could be read.
#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    #[error("cluster {0} is not connected")]
    ClusterGone(String),
    #[error("cluster {0} did not answer within 15 s")]
    Timeout(String),
    /// The cluster or worker said why (instance not on a worker, no such output, …).
    #[error("{0}")]
    Refused(String),
}

impl Fleet {
    /// Output of instance `number` of `job_id` on `cluster_id`: the last `tail` bytes, or what
    /// follows `cursor`.
    pub async fn read_logs(
        &self,
        cluster_id: &str,
        job_id: &str,
        number: u32,
        tail: u64,
        cursor: Option<LogCursor>,
    ) -> Result<(String, LogCursor), LogsError> {
        let (tx, rx) = oneshot::channel();
        let request_id = {
            let mut pending = self.logs.lock().unwrap_or_else(|e| e.into_inner());
            pending.next += 1;
            let id = pending.next;
            pending.waiting.insert(id, (cluster_id.to_string(), tx));
            id
        };
        let msg = RootMsg::Logs { request_id, job_id: job_id.to_string(), instance_number: number, tail, cursor };
        let sent = self.lock().links.get(cluster_id).is_some_and(|link| link.send(msg));
        let forget = || self.logs.lock().unwrap_or_else(|e| e.into_inner()).waiting.remove(&request_id);
        if !sent {
            forget();
            return Err(LogsError::ClusterGone(cluster_id.to_string()));
        }
        match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
            Ok(Ok(Ok(chunk))) => Ok(chunk),
            Ok(Ok(Err(message))) => Err(LogsError::Refused(message)),
            // The connection went away and took the request with it.
            Ok(Err(_)) => Err(LogsError::ClusterGone(cluster_id.to_string())),
            Err(_) => {
                forget();
                Err(LogsError::Timeout(cluster_id.to_string()))
            }
        }
    }

    /// `from`'s answer; unknown ids (timed out) are dropped, and so are answers to requests sent
    /// to another cluster (counted: a cluster must not feed another's logs).
    pub(super) fn on_logs(&self, from: &str, request_id: u64, data: String, cursor: LogCursor, error: String) {
        let waiter = {
            let mut pending = self.logs.lock().unwrap_or_else(|e| e.into_inner());
            match pending.waiting.get(&request_id) {
                Some((asked, _)) if asked != from => {
                    tracing::warn!(cluster = from, asked = %asked, request_id,
                        "dropping a logs answer from a cluster that was not asked");
                    self.trust.count_stray_answer();
                    return;
                }
                _ => pending.waiting.remove(&request_id),
            }
        };
        if let Some((_, tx)) = waiter {
            let _ = tx.send(if error.is_empty() { Ok((data, cursor)) } else { Err(error) });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use oak_api::channel::RootMsg;
    use oak_store::SqliteStore;

    use super::*;
    use crate::fleet::links::Credential;
    use crate::fleet::{ChannelTrust, FleetConfig};

    #[tokio::test]
    async fn an_answer_from_a_cluster_that_was_not_asked_is_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("root.db")).unwrap());
        let trust = ChannelTrust::with(oak_tls::Authority::generate("test CA").unwrap(), &[]).unwrap();
        let ca = trust.ca();
        let fleet = Fleet::open(store.clone(), FleetConfig::default(), trust).unwrap();
        let token = crate::cluster_tokens::create(
            &*store,
            ca,
            crate::cluster_tokens::TokenOptions { reusable: true, ..Default::default() },
        )
        .unwrap()
        .token
        .to_string();
        let csr = oak_tls::ClientKey::generate().unwrap().request("c").unwrap();
        let join = |name: &str| {
            fleet.join(Credential::Token { token: &token, csr: &csr }, "", name, "").map_err(|r| r.message).unwrap()
        };
        let (mut asked, other) = (join("asked"), join("other"));

        let reader = {
            let fleet = fleet.clone();
            let id = asked.cluster_id.clone();
            tokio::spawn(async move { fleet.read_logs(&id, "job", 0, 100, None).await })
        };
        let request_id = match asked.rx.recv().await.unwrap() {
            RootMsg::Logs { request_id, .. } => request_id,
            m => panic!("{m:?}"),
        };
        fleet.on_logs(&other.cluster_id, request_id, "forged".into(), Default::default(), String::new());
        assert_eq!(fleet.trust.stray_answers.load(std::sync::atomic::Ordering::Relaxed), 1);
        let mut registry = oak_metrics::Registry::default();
        let observed = fleet.clone();
        registry.register_collector(oak_metrics::live(move |s| observed.observe(s)));
        assert!(oak_metrics::render(&registry).contains("oakestra_channel_stray_answers_total 1"));
        fleet.on_logs(&asked.cluster_id, request_id, "real".into(), Default::default(), String::new());
        let (data, _) = reader.await.unwrap().unwrap();
        assert_eq!(data, "real");
    }
}
