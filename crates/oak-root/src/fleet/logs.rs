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

#[derive(Default)]
pub(super) struct Pending {
    next: u64,
    waiting: HashMap<u64, oneshot::Sender<Answer>>,
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
            pending.waiting.insert(id, tx);
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

    /// A cluster's answer; unknown ids (timed out) are dropped.
    pub(super) fn on_logs(&self, request_id: u64, data: String, cursor: LogCursor, error: String) {
        let waiter = self.logs.lock().unwrap_or_else(|e| e.into_inner()).waiting.remove(&request_id);
        if let Some(tx) = waiter {
            let _ = tx.send(if error.is_empty() { Ok((data, cursor)) } else { Err(error) });
        }
    }
}
