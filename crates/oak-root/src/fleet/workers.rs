//! The clusters' workers as they last described them (`ClusterMsg::Workers`): memory only,
//! rebuilt from each cluster's full list when it (re)connects. Read by
//! `GET /api/clusters/{id}/workers`, to name the workers of instances, and as the fleet's peer
//! directory: which worker holds a tunnel key (`ClusterMsg::PeerQuery`).

use std::collections::{BTreeMap, HashMap};

use oak_api::channel::WorkerSummary;
use oak_api::model::Service;
use oak_api::net::PeerAnswer;
use oak_api::rest::ClusterWorkers;

use super::Fleet;

/// Per cluster id.
#[derive(Default)]
pub(super) struct Known {
    clusters: HashMap<String, Workers>,
}

#[derive(Default)]
struct Workers {
    /// By worker id.
    current: BTreeMap<String, WorkerSummary>,
    /// Parts of a full list still arriving, and the connection sending them.
    partial: Option<(u64, Vec<WorkerSummary>)>,
}

impl Known {
    /// Every cluster id with its workers as last reported.
    pub(super) fn all(&self) -> Vec<(String, Vec<WorkerSummary>)> {
        (self.clusters.iter()).map(|(id, w)| (id.clone(), w.current.values().cloned().collect())).collect()
    }

    /// Per cluster id: workers active and inactive as last reported.
    pub(super) fn counts(&self) -> Vec<(String, usize, usize)> {
        (self.clusters.iter())
            .map(|(id, w)| {
                let active = w.current.values().filter(|w| w.active).count();
                (id.clone(), active, w.current.len() - active)
            })
            .collect()
    }

    /// Applies one `Workers` message of connection `conn`: a full list replaces the known one
    /// once its last part arrived; changes replace or remove single workers.
    pub(super) fn apply(
        &mut self,
        cluster_id: &str,
        conn: u64,
        full: bool,
        workers: Vec<WorkerSummary>,
        removed: &[String],
        last: bool,
    ) {
        let entry = self.clusters.entry(cluster_id.to_string()).or_default();
        if full {
            let parts = match entry.partial.take() {
                Some((c, mut parts)) if c == conn => {
                    parts.extend(workers);
                    parts
                }
                _ => workers,
            };
            if !last {
                entry.partial = Some((conn, parts));
                return;
            }
            entry.current = parts.into_iter().map(|w| (w.id.clone(), w)).collect();
        } else {
            entry.current.extend(workers.into_iter().map(|w| (w.id.clone(), w)));
        }
        for id in removed {
            entry.current.remove(id);
        }
    }

    /// The cluster's workers by name (then id); all inactive when the cluster is not connected.
    fn list(&self, cluster_id: &str, connected: bool) -> Vec<WorkerSummary> {
        let mut out: Vec<WorkerSummary> =
            self.clusters.get(cluster_id).map(|w| w.current.values().cloned().collect()).unwrap_or_default();
        if !connected {
            for w in &mut out {
                w.active = false;
            }
        }
        out.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        out
    }

    /// The peer directory: the worker whose tunnel key is `key`, with its tunnel endpoint.
    fn peer(&self, key: &str) -> PeerAnswer {
        let found = self.clusters.iter().find_map(|(cluster, ws)| {
            ws.current.values().find(|w| !key.is_empty() && w.tunnel_key == key).map(|w| (cluster, w))
        });
        match found {
            Some((cluster, w)) if w.tunnel_port != 0 => PeerAnswer {
                public_key: key.to_string(),
                worker_id: w.id.clone(),
                cluster_id: cluster.clone(),
                host_ip: if w.public_address.is_empty() { w.address.clone() } else { w.public_address.clone() },
                host_port: w.tunnel_port,
                subnet: w.subnet.clone(),
                error: String::new(),
            },
            _ => PeerAnswer {
                public_key: key.to_string(),
                error: "no worker of the fleet holds that tunnel key".into(),
                ..Default::default()
            },
        }
    }

    /// Every cluster's node names (what `direct` node constraints name).
    pub(super) fn node_hosts(&self) -> oak_core::placement::NodeHosts {
        self.clusters
            .iter()
            .map(|(cluster, ws)| (cluster.clone(), ws.current.values().map(|w| w.name.clone()).collect()))
            .collect()
    }

    fn worker_name(&self, cluster_id: &str, worker_id: &str) -> Option<&str> {
        let w = self.clusters.get(cluster_id)?.current.get(worker_id)?;
        Some(w.name.as_str()).filter(|n| !n.is_empty())
    }
}

impl Fleet {
    pub(super) fn on_workers(
        &self,
        cluster_id: &str,
        conn: u64,
        full: bool,
        workers: Vec<WorkerSummary>,
        removed: Vec<String>,
        last: bool,
    ) {
        // Messages of a connection already replaced are ignored (the lock order is inner, then workers).
        let inner = self.lock();
        if inner.links.get(cluster_id).is_none_or(|l| l.conn != conn) {
            return;
        }
        self.known_workers().apply(cluster_id, conn, full, workers, &removed, last);
    }

    /// Answers a cluster's question about a tunnel key.
    pub(super) fn on_peer_query(&self, cluster_id: &str, conn: u64, request_id: u64, key: &str) {
        let answer = self.known_workers().peer(key.trim());
        self.send_to(cluster_id, Some(conn), oak_api::channel::RootMsg::Peer { request_id, answer });
    }

    pub(super) fn known_workers(&self) -> std::sync::MutexGuard<'_, Known> {
        self.workers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The workers of a cluster (`cluster_name` from its document).
    pub fn cluster_workers(&self, cluster_id: &str, cluster_name: &str) -> ClusterWorkers {
        let connected = self.lock().links.contains_key(cluster_id);
        ClusterWorkers {
            cluster_id: cluster_id.to_string(),
            cluster_name: cluster_name.to_string(),
            connected,
            workers: self.known_workers().list(cluster_id, connected),
        }
    }

    /// Fills in the names of the clusters and workers the services' instances are on, where known.
    pub fn name_places(&self, services: &mut [Service]) -> oak_store::Result<()> {
        if services.iter().all(|s| s.instance_list.iter().all(|i| i.cluster_id.is_none())) {
            return Ok(());
        }
        let clusters: HashMap<String, String> =
            self.store.list_clusters()?.into_iter().map(|c| (c.id, c.cluster_name)).collect();
        let known = self.known_workers();
        for inst in services.iter_mut().flat_map(|s| s.instance_list.iter_mut()) {
            let Some(cluster) = inst.cluster_id.as_deref() else { continue };
            inst.cluster_name = clusters.get(cluster).cloned();
            inst.worker_name =
                inst.worker_id.as_deref().and_then(|w| known.worker_name(cluster, w)).map(str::to_string);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(id: &str, name: &str) -> WorkerSummary {
        WorkerSummary { id: id.into(), name: name.into(), active: true, ..Default::default() }
    }

    fn names(k: &Known, connected: bool) -> Vec<(String, bool)> {
        k.list("c1", connected).into_iter().map(|w| (w.name, w.active)).collect()
    }

    #[test]
    fn a_full_list_in_parts_replaces_the_known_one_when_complete() {
        let mut k = Known::default();
        k.apply("c1", 1, true, vec![w("a", "zeta"), w("b", "alpha")], &[], true);
        assert_eq!(names(&k, true), [("alpha".to_string(), true), ("zeta".to_string(), true)]);

        // A reconnect's full list: its first part changes nothing yet.
        k.apply("c1", 2, true, vec![w("c", "gamma")], &[], false);
        assert_eq!(names(&k, true).len(), 2);
        k.apply("c1", 2, true, vec![w("d", "delta")], &[], true);
        assert_eq!(names(&k, true), [("delta".to_string(), true), ("gamma".to_string(), true)]);

        // Parts of an older connection are not joined to a newer one's.
        k.apply("c1", 3, true, vec![w("e", "epsilon")], &[], false);
        k.apply("c1", 4, true, vec![w("f", "phi")], &[], true);
        assert_eq!(names(&k, true), [("phi".to_string(), true)]);
    }

    #[test]
    fn changes_update_and_remove_single_workers_and_a_gone_cluster_shows_them_inactive() {
        let mut k = Known::default();
        k.apply("c1", 1, true, vec![w("a", "one"), w("b", "two")], &[], true);
        let mut off = w("a", "one");
        off.active = false;
        k.apply("c1", 1, false, vec![off, w("c", "three")], &["b".into()], true);
        assert_eq!(names(&k, true), [("one".to_string(), false), ("three".to_string(), true)]);
        assert_eq!(names(&k, false), [("one".to_string(), false), ("three".to_string(), false)]);
        assert_eq!(k.worker_name("c1", "c"), Some("three"));
        assert_eq!(k.worker_name("c1", "b"), None);
        assert_eq!(k.worker_name("c2", "c"), None);
        assert!(k.list("c2", true).is_empty());
    }

    #[test]
    fn the_peer_directory_finds_workers_by_tunnel_key() {
        let mut k = Known::default();
        let mut a = w("a", "one");
        (a.address, a.tunnel_port, a.tunnel_key, a.subnet) =
            ("192.0.2.1".into(), 50103, "aa".repeat(32), "10.18.0.64/26".into());
        let mut b = a.clone();
        (b.id, b.public_address, b.tunnel_key) = ("b".into(), "203.0.113.9".into(), "bb".repeat(32));
        k.apply("c1", 1, true, vec![a], &[], true);
        k.apply("c2", 1, true, vec![b.clone()], &[], true);
        let found = k.peer(&"aa".repeat(32));
        assert_eq!((found.cluster_id.as_str(), found.worker_id.as_str()), ("c1", "a"));
        assert_eq!(
            (found.host_ip.as_str(), found.host_port, found.subnet.as_str()),
            ("192.0.2.1", 50103, "10.18.0.64/26")
        );
        assert!(found.error.is_empty());
        assert_eq!(k.peer(&"bb".repeat(32)).host_ip, "203.0.113.9", "the public address wins");
        assert!(!k.peer(&"cc".repeat(32)).error.is_empty());
        assert!(!k.peer("").error.is_empty());
        // A worker that made a new key is found only under it.
        b.tunnel_key = "dd".repeat(32);
        k.apply("c2", 1, false, vec![b], &[], true);
        assert!(!k.peer(&"bb".repeat(32)).error.is_empty());
        assert_eq!(k.peer(&"dd".repeat(32)).worker_id, "b");
    }
}
