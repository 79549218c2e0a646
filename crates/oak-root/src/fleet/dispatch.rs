//! Placing instances on clusters, sending them there, and taking the clusters' instance reports.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use oak_api::channel::{DeployInstance, InstanceRef, InstanceReport, RootMsg};
use oak_api::model::{Cluster, Instance, Service};
use oak_api::node::JobSpec;
use oak_api::status;
use oak_core::cluster_loss::{with_note, Reach};
use oak_core::node_placement::Demand;
use oak_core::placement::choose;
use oak_core::routes::route_instance;

use super::Fleet;
use crate::committed::committed;
use crate::ids;

impl Fleet {
    /// Decides where instance `number` of `service` goes and reserves the capacity there. The
    /// answer is the instance document to store: `CLUSTER_SCHEDULED` with its cluster, or a
    /// negative scheduling status that the retry loop will revisit.
    pub fn place(&self, service: &Service, number: u32, previous: Option<&Instance>) -> Instance {
        let now = ids::now();
        // Registered but unconnected clusters matter to `direct` constraints (not active vs
        // not found); only then is the store consulted.
        let direct = service.spec.constraints.iter().find(|c| c.kind == "direct");
        let offline = if direct.is_some() { self.store.list_clusters().unwrap_or_default() } else { Vec::new() };
        // A `direct` constraint naming only nodes goes to the cluster holding them.
        let by_node = direct.is_some_and(|d| {
            d.cluster.as_deref().is_none_or(|c| c.trim().is_empty())
                && d.node.as_deref().is_some_and(|n| !n.trim().is_empty())
        });
        let hosts = by_node.then(|| self.known_workers().node_hosts());
        let started = Instant::now();
        // Spreading counts the service's instances per cluster (never while `inner` is held).
        let others = if service.spec.spread {
            self.spread().others(&*self.store, &service.id, number, started).unwrap_or_else(|e| {
                tracing::error!(service = %service.id, error = %e, "cannot count instances per cluster; not spreading");
                Default::default()
            })
        } else {
            Default::default()
        };
        let mut guard = self.lock();
        let reachable: Vec<bool> =
            guard.links.keys().map(|id| self.reach_of(&guard, id, started) == Reach::Active).collect();
        let inner = &mut *guard;
        let copied = inner.links.values().map(|l| (l.conn, l.reports));
        if !copied.clone().eq(inner.placement_copied.iter().copied()) {
            inner.placement_copied = copied.collect();
            inner.placement_views = inner.links.values().map(|l| l.view.clone()).collect();
        }
        for ((view, link), active) in inner.placement_views.iter_mut().zip(inner.links.values()).zip(reachable) {
            view.active = active;
            inner.reservations.apply_over(&link.view, view);
        }
        let with_offline: Vec<Cluster>;
        let candidates = if offline.is_empty() {
            &inner.placement_views
        } else {
            let offline = offline.into_iter().filter(|c| !inner.links.contains_key(&c.id));
            with_offline = (inner.placement_views.iter().cloned())
                .chain(offline.map(|c| Cluster { active: false, ..c }))
                .collect();
            &with_offline
        };
        let decision =
            choose(service, candidates, hosts.as_ref(), &others).map(|c| (c.id.clone(), c.cluster_location.clone()));
        let mut instance = previous.cloned().unwrap_or_else(|| Instance::new(number, status::REQUESTED, "", now));
        instance.last_modified_timestamp = now;
        match decision {
            Ok((cluster_id, location)) => {
                inner.reservations.reserve(
                    &cluster_id,
                    u64::MAX,
                    (service.id.clone(), number),
                    Demand::of(&service.spec),
                );
                instance.status = status::CLUSTER_SCHEDULED.into();
                instance.status_detail =
                    with_note(&instance.placement_note, "waiting for the cluster to choose a worker");
                instance.cluster_id = Some(cluster_id);
                instance.cluster_location = Some(location);
                instance.worker_id = None;
            }
            Err(unplaced) => {
                instance.status = unplaced.status.into();
                instance.status_detail = with_note(&instance.placement_note, &unplaced.detail);
                instance.cluster_id = None;
                instance.cluster_location = None;
            }
        }
        drop(guard);
        self.spread().placed(&service.id, number, instance.cluster_id.as_deref());
        let took = started.elapsed();
        self.placement.lock().unwrap_or_else(|e| e.into_inner()).record(took.as_micros() as u64);
        self.placement_seconds.observe(took.as_secs_f64());
        instance
    }

    /// Sends a `CLUSTER_SCHEDULED` instance to its cluster (after it was stored). A cluster
    /// that is not connected gets it in the full desired set when it re-dials.
    pub fn dispatch(&self, service: &Service, instance: &Instance) {
        self.dispatch_all(service, std::slice::from_ref(instance));
    }

    /// Sends the `CLUSTER_SCHEDULED` ones of `instances` of one service to their clusters: one
    /// `Deploy` frame per cluster for all of its instances.
    pub fn dispatch_all(&self, service: &Service, instances: &[Instance]) {
        let mut per_cluster: BTreeMap<&str, Vec<DeployInstance>> = BTreeMap::new();
        let mut job = None;
        for instance in instances.iter().filter(|i| i.status == status::CLUSTER_SCHEDULED) {
            let Some(cluster_id) = instance.cluster_id.as_deref() else { continue };
            let deploy_id = oak_core::deploy_id(&service.id, instance.instance_number);
            let _span = tracing::info_span!("deploy", %deploy_id).entered();
            tracing::info!(cluster = cluster_id, job = %service.job_name, "instance sent to its cluster");
            let job = job.get_or_insert_with(|| job_spec(service));
            per_cluster.entry(cluster_id).or_default().push(DeployInstance {
                instance_number: instance.instance_number,
                job: job.clone(),
                instance_ip: instance.instance_ip.clone(),
            });
        }
        if per_cluster.is_empty() {
            return;
        }
        let mut inner = self.lock();
        for (cluster_id, instances) in per_cluster {
            if let Some(link) = inner.links.get_mut(cluster_id) {
                link.seq += 1;
                let _ = link.send(RootMsg::Deploy { full: false, seq: link.seq, instances, last: true });
            }
        }
    }

    /// Removes instances from the cluster running them and frees what they reserved.
    pub fn undeploy(&self, service_id: &str, instances: &[Instance]) {
        self.spread().forget(service_id);
        let mut inner = self.lock();
        for inst in instances {
            inner.reservations.release(&(service_id.to_string(), inst.instance_number));
            inner.backoff.remove(&(service_id.to_string(), inst.instance_number));
            let Some(link) = inst.cluster_id.as_deref().and_then(|c| inner.links.get(c)) else { continue };
            let _ = link.send(RootMsg::Undeploy {
                instances: vec![InstanceRef { job_id: service_id.to_string(), instance_number: inst.instance_number }],
            });
        }
    }

    /// Applies a cluster's instance reports. Reports about instances the root does not know, or
    /// that now belong to another cluster (they moved), change nothing and are undeployed there.
    /// Jobs whose route tables changed are pushed to the clusters interested in them.
    ///
    /// The reports go into the store's next group commit, awaited without holding a thread.
    pub(super) async fn on_instances(&self, cluster_id: &str, conn: u64, updates: Vec<InstanceReport>) {
        let now = ids::now();
        let keys: Vec<(String, u32)> = updates.iter().map(|u| (u.job_id.clone(), u.instance_number)).collect();
        /// What the edit on the writer thread saw: instances of another cluster, jobs rerouted.
        #[derive(Default)]
        struct Seen {
            foreign: Vec<bool>,
            rerouted: BTreeSet<String>,
        }
        let seen = Arc::new(Mutex::new(Seen { foreign: vec![false; updates.len()], ..Seen::default() }));
        let updates = Arc::new(updates);
        let change = {
            let (seen, updates, cluster) = (seen.clone(), updates.clone(), cluster_id.to_string());
            Box::new(move |i: usize, inst: &mut Instance| {
                let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                if inst.cluster_id.as_deref() != Some(cluster.as_str()) {
                    seen.foreign[i] = true;
                    return false;
                }
                let before = route_instance(inst);
                merge_report(inst, &updates[i], now);
                if route_instance(inst) != before {
                    seen.rerouted.insert(updates[i].job_id.clone());
                }
                true
            })
        };
        let found = committed(|done| self.store.update_instances_then(keys.clone(), change, done)).await;
        let found = match found {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(cluster = cluster_id, error = %e, "cannot store instance reports");
                return;
            }
        };
        let Seen { foreign, rerouted } = std::mem::take(&mut *seen.lock().unwrap_or_else(|e| e.into_inner()));
        self.routes_changed(rerouted.iter().map(String::as_str));
        let mut inner = self.lock();
        let Some(link) = inner.links.get(cluster_id).filter(|l| l.conn == conn) else { return };
        let epoch = link.reports;
        let mut stray = Vec::new();
        for (i, key) in keys.into_iter().enumerate() {
            if !found[i] || foreign[i] {
                stray.push(InstanceRef { job_id: key.0, instance_number: key.1 });
            } else if updates[i].status != status::CLUSTER_SCHEDULED {
                // The cluster has placed (or failed) it: its next report accounts for it.
                inner.reservations.acknowledge(&key, epoch);
            }
        }
        if !stray.is_empty() {
            tracing::info!(
                cluster = cluster_id,
                count = stray.len(),
                "undeploying instances the root does not assign there"
            );
            if let Some(link) = inner.links.get(cluster_id) {
                let _ = link.send(RootMsg::Undeploy { instances: stray });
            }
        }
    }

    /// The full desired set of a cluster, sent when it connects.
    pub(super) fn desired_for(&self, cluster_id: &str) -> oak_store::Result<Vec<DeployInstance>> {
        let services = self.store.cluster_instances(cluster_id)?;
        let mut out = Vec::new();
        for s in &services {
            let job = job_spec(s);
            for inst in &s.instance_list {
                out.push(DeployInstance {
                    instance_number: inst.instance_number,
                    job: job.clone(),
                    instance_ip: inst.instance_ip.clone(),
                });
            }
        }
        Ok(out)
    }
}

/// What a cluster needs to run instances of a service.
pub fn job_spec(service: &Service) -> JobSpec {
    JobSpec {
        id: service.id.clone(),
        job_name: service.job_name.clone(),
        image: if service.image.is_empty() { service.spec.code.clone() } else { service.image.clone() },
        spec: service.spec.clone(),
    }
}

fn merge_report(inst: &mut Instance, r: &InstanceReport, now: f64) {
    inst.status = r.status.clone();
    inst.status_detail = with_note(&inst.placement_note, &r.status_detail);
    inst.worker_id = r.worker_id.clone();
    inst.host_ip = r.host_ip.clone();
    inst.host_port = r.host_port.clone();
    inst.tunnel_key = r.tunnel_key.clone();
    inst.namespace_ip = r.namespace_ip.clone();
    inst.publicip = r.publicip.clone();
    inst.cpu_percent = r.cpu_percent;
    inst.memory_percent = r.memory_percent;
    inst.memory_bytes = r.memory_bytes;
    inst.disk = r.disk;
    if r.logs.is_some() {
        inst.logs = r.logs.clone();
    }
    inst.last_modified_timestamp = now;
}
