//! Awaiting a store change that answers through a callback (`RootStore::*_then`): the writer
//! thread calls it after the group commit, and the caller's task waits without holding a thread.

use oak_store::{Done, StoreError};

/// Queues a change with `queue` (handing it the callback) and awaits its answer.
pub async fn committed<T: Send + 'static>(queue: impl FnOnce(Done<T>)) -> oak_store::Result<T> {
    let (done, answered) = tokio::sync::oneshot::channel();
    queue(Box::new(move |out| {
        let _ = done.send(out);
    }));
    answered.await.unwrap_or_else(|_| Err(StoreError::Commit("the store dropped the change".into())))
}
