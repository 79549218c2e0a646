//! Connected clusters: joining (token, stable id), reports, and the live view the API and the
//! scheduler read.

use std::sync::Arc;
use std::time::Instant;

use oak_api::channel::{ClusterResources, RootMsg};
use oak_api::model::Cluster;
use tokio::sync::{mpsc, Notify};

use super::Fleet;
use crate::ids;

/// Messages queued for one cluster's writer. A cluster that falls this far behind is
/// disconnected and resyncs from the full desired set when it re-dials (the channel is
/// level-triggered), rather than the root buffering without limit.
pub(super) const LINK_QUEUE: usize = 16 * 1024;

/// One cluster with an open channel.
pub(super) struct Link {
    /// Distinguishes this connection from a later one of the same cluster.
    pub conn: u64,
    tx: mpsc::Sender<RootMsg>,
    /// Tells the writer to close the connection (its queue overflowed).
    overflow: Arc<Notify>,
    /// The cluster document with its latest reported resources.
    pub view: Cluster,
    pub reported_at: Option<Instant>,
    /// Reports received on this connection; reservations acknowledged before report `n` are
    /// accounted for by the cluster in report `n + 1`.
    pub reports: u64,
    pub seq: u64,
}

/// Why a cluster may not join.
#[derive(Debug)]
pub struct Refusal(pub String);

pub(super) struct Joined {
    pub cluster_id: String,
    pub conn: u64,
    pub rx: mpsc::Receiver<RootMsg>,
    /// Notified when the queue overflowed: the writer closes the connection.
    pub overflow: Arc<Notify>,
}

impl Link {
    /// Queues `msg` for the cluster; `false` if it cannot be sent. A full queue closes the
    /// connection (logged), so the cluster re-dials and gets the full desired set again.
    pub fn send(&self, msg: RootMsg) -> bool {
        match self.tx.try_send(msg) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(cluster = %self.view.id, queued = LINK_QUEUE,
                    "the cluster does not keep up with its channel; disconnecting it to resync");
                self.overflow.notify_one();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

impl Fleet {
    /// Admits a cluster presenting `token`: finds or creates its stable id, records it, and
    /// replaces any older connection of the same cluster.
    pub(super) fn join(&self, token: &str, claimed_id: &str, name: &str, location: &str) -> Result<Joined, Refusal> {
        if name.trim().is_empty() {
            return Err(Refusal("cluster_name is empty: set CLUSTER_NAME or --name".into()));
        }
        let known = crate::cluster_tokens::verify(&*self.store, token).map_err(|e| Refusal(format!("{e}")))?;
        if !known {
            return Err(Refusal("the join token is not valid: create one with `oakestra cluster-token create`".into()));
        }
        let by_name = self.store.cluster_by_name(name).map_err(|e| Refusal(e.to_string()))?;
        let by_id = match claimed_id {
            "" => None,
            id => self.store.cluster(id).map_err(|e| Refusal(e.to_string()))?,
        };
        let mut doc = match (by_id, by_name) {
            (Some(mine), Some(other)) if other.id != mine.id => {
                return Err(Refusal(format!("the cluster name {name:?} is taken by another cluster")));
            }
            (Some(mine), _) => mine,
            (None, Some(existing)) => existing,
            (None, None) => Cluster { id: ids::new_id(), ..Default::default() },
        };
        doc.cluster_name = name.to_string();
        doc.candidate_name = name.to_string();
        doc.cluster_location = location.to_string();
        doc.candidate_location = location.to_string();
        doc.active = false;
        self.store.put_cluster(&doc).map_err(|e| Refusal(e.to_string()))?;

        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        let overflow = Arc::new(Notify::new());
        let mut inner = self.lock();
        let conn = inner.next_conn;
        inner.next_conn += 1;
        let cluster_id = doc.id.clone();
        // A newer connection wins: dropping the old sender ends the old writer, whose socket
        // then closes; its reader notices and leaves without touching the new link.
        inner.links.insert(
            cluster_id.clone(),
            Link { conn, tx, overflow: overflow.clone(), view: doc, reported_at: None, reports: 0, seq: 0 },
        );
        // Report numbers restart with the connection; the resync re-establishes what is free.
        inner.reservations.forget_cluster(&cluster_id);
        // Instances waiting for any cluster get an immediate attempt.
        inner.backoff.clear();
        drop(inner);
        // An older connection's interests end with it: the cluster queries again.
        self.forget_interest(&cluster_id);
        Ok(Joined { cluster_id, conn, rx, overflow })
    }

    /// Forgets a connection that closed (unless a newer one replaced it).
    pub(super) fn leave(&self, cluster_id: &str, conn: u64) {
        let mut inner = self.lock();
        if inner.links.get(cluster_id).is_some_and(|l| l.conn == conn) {
            inner.links.remove(cluster_id);
            drop(inner);
            self.forget_interest(cluster_id);
            tracing::warn!(cluster = cluster_id, "cluster disconnected");
        }
    }

    /// Takes a resource report: the new free capacity replaces the old, and reservations the
    /// cluster has now accounted for are dropped.
    pub(super) fn on_report(&self, cluster_id: &str, conn: u64, r: ClusterResources) {
        let now = ids::now();
        let doc = {
            let mut inner = self.lock();
            let Some(link) = inner.links.get_mut(cluster_id).filter(|l| l.conn == conn) else { return };
            apply_resources(&mut link.view, &r, now);
            link.reported_at = Some(Instant::now());
            let accounted = link.reports;
            link.reports += 1;
            let doc = link.view.clone();
            inner.reservations.confirm(cluster_id, accounted);
            doc
        };
        if let Err(e) = self.store.put_cluster(&doc) {
            tracing::error!(cluster = cluster_id, error = %e, "cannot store cluster report");
        }
        self.wake.notify_one();
    }

    /// Every known cluster, `active` when connected and recently reported.
    pub fn clusters_now(&self) -> oak_store::Result<Vec<Cluster>> {
        let mut clusters = self.store.list_clusters()?;
        let inner = self.lock();
        for c in &mut clusters {
            match inner.links.get(&c.id) {
                Some(link) => {
                    *c = link.view.clone();
                    c.active = self.is_fresh(link);
                }
                None => c.active = false,
            }
        }
        Ok(clusters)
    }

    pub(super) fn is_fresh(&self, link: &Link) -> bool {
        link.reported_at.is_some_and(|t| t.elapsed() <= self.config.report_freshness)
    }
}

/// Copies a report into the cluster document (original field names kept for clients).
fn apply_resources(c: &mut Cluster, r: &ClusterResources, now: f64) {
    let t = &r.totals;
    c.active_nodes = r.active_nodes;
    c.total_cpu_cores = t.total_cpu_cores;
    c.vcpus = t.free_vcpus;
    c.cpu_percent = t.cpu_percent;
    c.aggregated_cpu_percent = t.cpu_percent;
    c.memory_in_mb = t.memory_in_mb;
    c.memory = t.free_memory_mb;
    c.memory_percent = t.memory_percent;
    c.total_gpu_cores = t.total_gpus;
    c.vgpus = t.free_gpus;
    c.virtualization = r.virtualization.clone();
    c.supported_addons = r.supported_addons.clone();
    c.aggregation_per_architecture = r.aggregation_per_architecture.clone();
    c.last_modified_timestamp = now;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_closes_the_connection_instead_of_growing() {
        let (tx, mut rx) = mpsc::channel(2);
        let overflow = Arc::new(Notify::new());
        let link = Link {
            conn: 1,
            tx,
            overflow: overflow.clone(),
            view: Cluster::default(),
            reported_at: None,
            reports: 0,
            seq: 0,
        };
        let msg = || RootMsg::Undeploy { instances: vec![] };
        assert!(link.send(msg()) && link.send(msg()));
        assert!(!link.send(msg()), "a third message fit a queue of two");
        // The writer is told to close (the permit is kept until it looks).
        tokio::time::timeout(std::time::Duration::from_secs(1), overflow.notified()).await.unwrap();
        assert!(rx.try_recv().is_ok() && rx.try_recv().is_ok() && rx.try_recv().is_err());
    }
}
