//! Route tables for the clusters (spec `oakestra-net.md` §3.3–3.4, §6.3–6.5): table queries by
//! job name or address, and the clusters interested in each job, to which every change of the
//! job's table is pushed at once (`RootMsg::Routes`), in the same handling as the change.
//!
//! Interest lives in memory only: a cluster's is dropped when its connection ends, and the
//! cluster queries its jobs again when it reconnects.

use std::collections::{BTreeSet, HashMap};

use oak_api::channel::RootMsg;
use oak_api::model::Service;
use oak_api::net::RouteTable;
use oak_core::routes;

use super::Fleet;

/// Job name → ids of the clusters to push its changes to.
#[derive(Default)]
pub(super) struct Interest {
    jobs: HashMap<String, BTreeSet<String>>,
}

impl Interest {
    fn add(&mut self, job: &str, cluster: &str) -> bool {
        self.jobs.entry(job.to_string()).or_default().insert(cluster.to_string())
    }

    fn remove(&mut self, job: &str, cluster: &str) {
        if let Some(set) = self.jobs.get_mut(job) {
            set.remove(cluster);
            if set.is_empty() {
                self.jobs.remove(job);
            }
        }
    }

    fn forget_cluster(&mut self, cluster: &str) {
        self.jobs.retain(|_, set| {
            set.remove(cluster);
            !set.is_empty()
        });
    }
}

impl Fleet {
    fn interest(&self) -> std::sync::MutexGuard<'_, Interest> {
        self.interest.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answers a cluster's table query and registers its interest in the job found. The
    /// interest is registered before the table is read, so no change falls in between.
    pub(super) fn on_table_query(&self, cluster_id: &str, conn: u64, request_id: u64, job_name: &str, ip: &str) {
        let table = self.table_query(cluster_id, job_name.trim(), ip.trim());
        self.send_to(cluster_id, Some(conn), RootMsg::Table { request_id, table });
    }

    fn table_query(&self, cluster_id: &str, job_name: &str, ip: &str) -> RouteTable {
        let (key, id) = match (job_name, ip) {
            ("", "") => return routes::unknown("", "a table query needs a job name or an address".into()),
            ("", ip) => match self.owner_of(ip) {
                Some(id) => (ip, Some(id)),
                None => return routes::unknown(ip, format!("no service with address {ip}")),
            },
            (name, _) => (name, None),
        };
        let name = match &id {
            Some(id) => match self.store.service_spec(id) {
                Ok(Some(s)) => s.job_name,
                Ok(None) => return routes::unknown(key, format!("no service with address {key}")),
                Err(e) => return routes::unknown(key, format!("the root cannot read its database: {e}")),
            },
            None => key.to_string(),
        };
        let added = self.interest().add(&name, cluster_id);
        let found = match &id {
            Some(id) => self.store.service(id),
            None => self.store.service_by_job_name(&name),
        };
        let table = match found {
            Ok(Some(s)) => return routes::table(&s, key),
            Ok(None) if id.is_some() => routes::unknown(key, format!("no service with address {key}")),
            Ok(None) => routes::unknown(key, format!("no service with job name {key}")),
            Err(e) => routes::unknown(key, format!("the root cannot read its database: {e}")),
        };
        if added {
            self.interest().remove(&name, cluster_id);
        }
        table
    }

    /// No worker of the cluster needs the job's routes any more.
    pub(super) fn on_uninterest(&self, cluster_id: &str, job_name: &str) {
        self.interest().remove(job_name, cluster_id);
    }

    /// A cluster's connection ended (or was replaced): it queries again when it is back.
    pub(super) fn forget_interest(&self, cluster_id: &str) {
        self.interest().forget_cluster(cluster_id);
    }

    /// The tables of these services (by id) may have changed: push each to the clusters
    /// interested in it. Reads a service only when some cluster is interested in its name.
    pub fn routes_changed<'a>(&self, service_ids: impl IntoIterator<Item = &'a str>) {
        if self.interest().jobs.is_empty() {
            return;
        }
        for id in service_ids {
            let service = match self.store.service(id) {
                Ok(Some(s)) => s,
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!(service = id, error = %e, "cannot read a service to push its routes");
                    continue;
                }
            };
            let table = routes::table(&service, &service.job_name);
            self.push(table);
        }
    }

    /// A service was deleted: interested clusters learn that nothing is left to route to.
    pub fn routes_removed(&self, service: &Service) {
        self.push(routes::removed(service));
    }

    fn push(&self, table: RouteTable) {
        let clusters: Vec<String> = match self.interest().jobs.get(&table.app_name) {
            Some(set) => set.iter().cloned().collect(),
            None => return,
        };
        let inner = self.lock();
        for c in clusters {
            if let Some(link) = inner.links.get(&c) {
                let _ = link.send(RootMsg::Routes { table: table.clone() });
            }
        }
    }

    /// Queues a message for a connected cluster (on connection `conn`, when given).
    pub(super) fn send_to(&self, cluster_id: &str, conn: Option<u64>, msg: RootMsg) {
        let inner = self.lock();
        if let Some(link) = inner.links.get(cluster_id).filter(|l| conn.is_none_or(|c| l.conn == c)) {
            let _ = link.send(msg);
        }
    }
}
