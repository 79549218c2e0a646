//! The fleet's live state as metrics, read at each scrape of `/metrics`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use oak_metrics::Scrape;

use super::Fleet;

impl Fleet {
    /// Clusters by state, workers by cluster and state, instances by status, the retry queue,
    /// channel connections and queues, refusals, and placement decision quantiles.
    pub fn observe(&self, s: &mut Scrape) {
        if let Ok(clusters) = self.clusters_now() {
            s.gauge("oakestra_clusters", "Clusters registered with the root", clusters.len() as f64);
            let active = clusters.iter().filter(|c| c.active).count();
            s.gauge("oakestra_clusters_active", "Clusters connected and reporting", active as f64);
            let mut by_state: BTreeMap<&str, f64> = ["active", "unreachable", "lost"].map(|k| (k, 0.0)).into();
            for c in &clusters {
                *by_state.entry(c.status.as_str()).or_default() += 1.0;
            }
            let rows = by_state.into_iter().map(|(k, n)| (vec![("state", oak_metrics::label_value(k))], n)).collect();
            s.gauges("oakestra_clusters_by_state", "Clusters by state (active, unreachable, lost)", rows);
            let names: BTreeMap<&str, &str> =
                clusters.iter().map(|c| (c.id.as_str(), c.cluster_name.as_str())).collect();
            let mut workers = Vec::new();
            for (cluster, active, inactive) in self.known_workers().counts() {
                let name = oak_metrics::label_value(names.get(cluster.as_str()).copied().unwrap_or(&cluster));
                workers.push((vec![("cluster", name.clone()), ("state", "active".to_string())], active as f64));
                workers.push((vec![("cluster", name), ("state", "inactive".to_string())], inactive as f64));
            }
            s.gauges("oakestra_workers", "Workers of each cluster as it last reported them, by state", workers);
        }
        if let Ok(services) = self.store.list_services(None) {
            let mut by_status: BTreeMap<String, f64> = BTreeMap::new();
            for service in &services {
                for instance in &service.instance_list {
                    *by_status.entry(oak_metrics::label_value(&instance.status)).or_default() += 1.0;
                }
            }
            let rows = by_status.into_iter().map(|(k, n)| (vec![("status", k)], n)).collect();
            s.gauges("oakestra_instances", "Instances known to the root, by status", rows);
        }
        let (waiting, connections, queued) = {
            let inner = self.lock();
            let queued: Vec<(String, usize)> =
                inner.links.values().map(|link| (link.view.cluster_name.clone(), link.queued())).collect();
            (inner.backoff.len(), inner.next_conn.saturating_sub(1), queued)
        };
        s.gauge("oakestra_placement_retry_queue", "Instances waiting for another placement attempt", waiting as f64);
        s.counter(
            "oakestra_channel_connections",
            "Cluster channel connections accepted (joins and reconnects)",
            connections,
        );
        let rows = queued
            .into_iter()
            .map(|(name, q)| (vec![("cluster", oak_metrics::label_value(&name))], q as f64))
            .collect();
        s.gauges("oakestra_channel_queue", "Messages queued for each connected cluster's channel", rows);
        let refusals = self
            .trust
            .refusal_counts()
            .into_iter()
            .map(|(reason, n)| (vec![("reason", oak_metrics::label_value(reason))], n))
            .collect();
        s.counters("oakestra_channel_refusals", "Cluster channel connections refused, by reason", refusals);
        s.counter(
            "oakestra_channel_stray_answers",
            "Answers from clusters that were not asked (dropped)",
            self.trust.stray_answers.load(Ordering::Relaxed),
        );
        let (p50, p99, _) = self.placement_stats();
        s.gauge(
            "oakestra_placement_p50_seconds",
            "Median root placement decision time (last 100,000 decisions)",
            p50 / 1e6,
        );
        s.gauge(
            "oakestra_placement_p99_seconds",
            "99th percentile of root placement decision time (last 100,000)",
            p99 / 1e6,
        );
    }
}
