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
