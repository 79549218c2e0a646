//! Clusters silent for `--cluster-timeout` are lost: their instances are placed on other
//! clusters (same rules and constraints, same instance IPs), with the reason in their
//! `status_detail`. Level-triggered: every pass looks at every cluster and moves whatever a
//! lost cluster still holds, so a pass cut short (or a root restart) loses nothing. A lost
//! cluster that comes back resyncs: its full desired set no longer holds the moved instances,
//! and its reports of them are answered with an undeploy (`dispatch.rs`).

use std::time::{Duration, Instant};

use oak_api::model::Cluster;
use oak_api::status;
use oak_core::cluster_loss::{moved_note, must_move, Reach};

use super::Fleet;

impl Fleet {
    /// One pass: marks clusters lost and moves their instances.
    pub(super) fn check_lost(&self) {
        let clusters = match self.store.list_clusters() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot list clusters to check for lost ones");
                return;
            }
        };
        let now = Instant::now();
        for cluster in clusters {
            let silent = {
                let mut inner = self.lock();
                if self.reach_of(&inner, &cluster.id, now) != Reach::Lost {
                    continue;
                }
                let silent = self.silent_for(&inner, &cluster.id, now);
                if inner.lost.insert(cluster.id.clone()) {
                    // A connection still open is closed, so a return always goes through a
                    // full resync; what the root promised there is void.
                    let link = inner.links.remove(&cluster.id);
                    inner.reservations.forget_cluster(&cluster.id);
                    drop(inner);
                    if link.is_some() {
                        self.forget_interest(&cluster.id);
                    }
                    tracing::warn!(cluster = %cluster.id, name = %cluster.cluster_name, silent_s = silent.as_secs(),
                        "cluster lost: placing its instances on other clusters");
                }
                silent
            };
            self.move_off(&cluster, silent);
        }
    }

    /// Places every instance `cluster` still holds elsewhere.
    fn move_off(&self, cluster: &Cluster, silent: Duration) {
        let held = match self.store.cluster_instances(&cluster.id) {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(cluster = %cluster.id, error = %e, "cannot list a lost cluster's instances");
                return;
            }
        };
        for held in held {
            // The whole service: spreading counts its instances on every cluster.
            let service = match self.store.service(&held.id) {
                Ok(Some(s)) => s,
                _ => continue,
            };
            for number in held.instance_list.iter().filter(|i| must_move(i)).map(|i| i.instance_number) {
                let Some(current) = service.instance_list.iter().find(|i| i.instance_number == number) else {
                    continue;
                };
                if current.cluster_id.as_deref() != Some(cluster.id.as_str()) {
                    continue;
                }
                let mut moved = current.clone();
                moved.placement_note = moved_note(&cluster.cluster_name, silent);
                moved.worker_id = None;
                moved.host_ip = None;
                moved.host_port = None;
                moved.tunnel_key = None;
                moved.namespace_ip = None;
                moved.publicip = None;
                moved.cpu_percent = None;
                moved.memory_percent = None;
                moved.memory_bytes = None;
                let placed = self.place(&service, number, Some(&moved));
                let key = (service.id.clone(), number);
                let stored = self.store.update_instances(std::slice::from_ref(&key), &mut |_, inst| {
                    // Only if it is still the lost cluster's (not moved or removed meanwhile).
                    if inst.cluster_id.as_deref() != Some(cluster.id.as_str()) {
                        return false;
                    }
                    *inst = placed.clone();
                    true
                });
                match stored {
                    Ok(found) if found == [true] => {
                        tracing::info!(service = %service.id, instance = number, from = %cluster.cluster_name,
                            to = placed.cluster_id.as_deref().unwrap_or("-"), status = %placed.status,
                            "instance moved off a lost cluster");
                        self.dispatch(&service, &placed);
                        self.routes_changed([service.id.as_str()]);
                    }
                    Ok(_) => {
                        if placed.status == status::CLUSTER_SCHEDULED {
                            // Reserved for nothing: give it back.
                            self.lock().reservations.release(&key);
                        }
                    }
                    Err(e) => tracing::error!(service = %service.id, error = %e, "cannot store a moved instance"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use oak_api::channel::{ClusterResources, ResourceTotals};
    use oak_api::model::Instance;
    use oak_store::{RootStore, SqliteStore};

    use super::*;
    use crate::cluster_tokens::{self, TokenOptions};
    use crate::fleet::links::Credential;
    use crate::fleet::{ChannelTrust, FleetConfig};

    fn resources() -> ClusterResources {
        ClusterResources {
            active_nodes: 1,
            totals: ResourceTotals {
                nodes: 1,
                total_cpu_cores: 8.0,
                free_vcpus: 8.0,
                memory_in_mb: 8192,
                free_memory_mb: 8192,
                ..Default::default()
            },
            virtualization: vec!["docker".into()],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_lost_clusters_instances_move_once_keeping_their_ips() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn RootStore> = Arc::new(SqliteStore::open(&dir.path().join("root.db")).unwrap());
        let trust = ChannelTrust::with(oak_tls::Authority::generate("test CA").unwrap(), &[]).unwrap();
        let options = TokenOptions { reusable: true, ..Default::default() };
        let token = cluster_tokens::create(&*store, trust.ca(), options).unwrap().token.to_string();
        let config = FleetConfig { cluster_timeout: Duration::from_secs(30), ..Default::default() };
        let fleet = Fleet::open(store.clone(), config, trust).unwrap();
        let mut joined = Vec::new();
        for name in ["alpha", "beta"] {
            let csr = oak_tls::ClientKey::generate().unwrap().request(name).unwrap();
            let j = fleet.join(Credential::Token { token: &token, csr: &csr }, "", name, "").unwrap();
            fleet.heard(&j.cluster_id);
            fleet.on_report(&j.cluster_id, j.conn, resources());
            joined.push(j);
        }
        let (alpha, beta) = (joined[0].cluster_id.clone(), joined[1].cluster_id.clone());

        crate::fleet::test_fixtures::store_shop_with_service_s(&*store);
        let put = |n: u32, st: &str| {
            let mut i = Instance::new(n, st, "running", 0.0);
            i.cluster_id = Some(alpha.clone());
            i.worker_id = Some("w1".into());
            i.instance_ip = Some(format!("10.30.0.{}", n + 10));
            store.put_instance("s", &i).unwrap();
        };
        put(0, status::RUNNING);
        put(1, status::COMPLETED);

        // Not yet: alpha was heard just now.
        fleet.check_lost();
        assert_eq!(store.service("s").unwrap().unwrap().instance_list[0].cluster_id.as_deref(), Some(alpha.as_str()));
        assert_eq!(fleet.clusters_now().unwrap().iter().filter(|c| c.status == "active").count(), 2);

        // alpha's last frame was 31 s ago (its connection may still look open); beta is fine.
        let long_ago = Instant::now().checked_sub(Duration::from_secs(31)).expect("the machine is up for 31 s");
        fleet.lock().heard.insert(alpha.clone(), long_ago);
        fleet.check_lost();
        let s = store.service("s").unwrap().unwrap();
        let moved = &s.instance_list[0];
        assert_eq!(moved.cluster_id.as_deref(), Some(beta.as_str()));
        assert_eq!(moved.status, status::CLUSTER_SCHEDULED);
        assert_eq!(moved.instance_ip.as_deref(), Some("10.30.0.10"), "the instance IP stays");
        assert_eq!(moved.worker_id, None);
        assert_eq!(moved.placement_note, "re-placed from cluster alpha: lost 31 s ago");
        assert!(moved.status_detail.contains("re-placed from cluster alpha: lost 31 s ago"), "{}", moved.status_detail);
        // Finished instances stay where they finished.
        assert_eq!(s.instance_list[1].cluster_id.as_deref(), Some(alpha.as_str()));
        assert_eq!(s.instance_list[1].status, status::COMPLETED);
        // alpha shows lost, is disconnected, and no longer a candidate.
        let clusters = fleet.clusters_now().unwrap();
        let a = clusters.iter().find(|c| c.id == alpha).unwrap();
        assert_eq!((a.status.as_str(), a.active), ("lost", false));
        assert!(!fleet.lock().links.contains_key(&alpha));

        // Level-triggered and idempotent: another pass changes nothing.
        fleet.check_lost();
        assert_eq!(store.service("s").unwrap().unwrap().instance_list[0], *moved);

        // A frame from alpha: it is back (not lost) and reconnects to resync.
        fleet.heard(&alpha);
        let a = fleet.clusters_now().unwrap().into_iter().find(|c| c.id == alpha).unwrap();
        assert_eq!(a.status, "unreachable", "heard, but not connected with a fresh report yet");
    }
}
