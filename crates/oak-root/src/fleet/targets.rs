//! Prometheus scrape targets of the whole system, for Prometheus' file-based service discovery
//! (`deploy/monitoring/prometheus.yml`): the root itself, every cluster at the address its
//! channel connection came from and the node API port it named in its hello, and every worker
//! its cluster lists at the address it registered from and its `--metrics-port`. The root
//! rewrites the file (atomically, only when it changed) every few seconds, so new workers are
//! scraped without edits and gone ones stop being scraped.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::Fleet;

/// How often the file is brought up to date.
const REWRITE_EVERY: Duration = Duration::from_secs(5);

/// One `file_sd_configs` entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetGroup {
    pub targets: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

/// Where Prometheus reaches the root's own `/metrics`.
#[derive(Debug, Clone)]
pub struct RootTarget {
    pub addr: SocketAddr,
    pub https: bool,
}

/// Where the clusters' node APIs are, by cluster id (kept across disconnects: a cluster that
/// went silent stays a target, so its `up` turns 0).
#[derive(Default)]
pub(super) struct ClusterAddresses(HashMap<String, SocketAddr>);

fn host_port(ip: IpAddr, port: u16) -> String {
    // A dialled unspecified address means "this machine".
    let ip = match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
        other => other,
    };
    SocketAddr::new(ip, port).to_string()
}

fn group(target: String, labels: &[(&str, &str)]) -> TargetGroup {
    TargetGroup { targets: vec![target], labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }
}

impl Fleet {
    /// Records where cluster `cluster_id`'s `/metrics` is: the channel's peer address, the
    /// port it named (none: not scraped).
    pub(super) fn cluster_metrics_at(&self, cluster_id: &str, peer: IpAddr, port: u16) {
        let mut addresses = self.cluster_addresses.lock().unwrap_or_else(|e| e.into_inner());
        match port {
            0 => addresses.0.remove(cluster_id),
            port => addresses.0.insert(cluster_id.to_string(), SocketAddr::new(peer, port)),
        };
    }

    /// Every target: the root, the clusters, their workers; in a stable order.
    pub fn scrape_targets(&self, root: &RootTarget) -> Vec<TargetGroup> {
        let scheme = if root.https { "https" } else { "http" };
        let mut out =
            vec![group(host_port(root.addr.ip(), root.addr.port()), &[("tier", "root"), ("__scheme__", scheme)])];
        let names: HashMap<String, String> = match self.store.list_clusters() {
            Ok(clusters) => clusters.into_iter().map(|c| (c.id, c.cluster_name)).collect(),
            Err(_) => HashMap::new(),
        };
        let name_of = |id: &str| names.get(id).cloned().unwrap_or_else(|| id.to_string());
        let mut clusters: Vec<(String, SocketAddr)> = {
            let addresses = self.cluster_addresses.lock().unwrap_or_else(|e| e.into_inner());
            addresses.0.iter().map(|(id, addr)| (name_of(id), *addr)).collect()
        };
        clusters.sort();
        for (name, addr) in clusters {
            let labels = [("tier", "cluster"), ("cluster", name.as_str()), ("__scheme__", "https")];
            out.push(group(host_port(addr.ip(), addr.port()), &labels));
        }
        let mut workers = Vec::new();
        for (cluster_id, list) in self.known_workers().all() {
            for w in list {
                let Ok(ip) = w.address.parse::<IpAddr>() else { continue };
                if w.metrics_port == 0 {
                    continue;
                }
                workers.push((name_of(&cluster_id), w.name.clone(), w.id.clone(), host_port(ip, w.metrics_port)));
            }
        }
        workers.sort();
        for (cluster, node, id, target) in workers {
            let labels =
                [("tier", "worker"), ("cluster", &cluster), ("node", &node), ("node_id", &id), ("__scheme__", "http")];
            out.push(group(target, &labels));
        }
        out
    }
}

/// Keeps `path` equal to [`Fleet::scrape_targets`] until `stop` completes.
pub async fn write_scrape_targets(
    fleet: std::sync::Arc<Fleet>,
    path: PathBuf,
    root: RootTarget,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut written = String::new();
    let mut warned = false;
    loop {
        let text = serde_json::to_string_pretty(&fleet.scrape_targets(&root)).unwrap_or_else(|_| "[]".into()) + "\n";
        if text != written {
            match write_atomically(&path, &text).await {
                Ok(()) => {
                    written = text;
                    warned = false;
                }
                Err(e) if !warned => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot write the Prometheus scrape targets");
                    warned = true;
                }
                Err(_) => {}
            }
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(REWRITE_EVERY) => {}
        }
    }
}

/// Prometheus reads the file whenever it changes: it must never see half of it.
async fn write_atomically(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(dir).await?;
    }
    let tmp = path.with_extension("json.tmp");
    tokio::fs::write(&tmp, text).await?;
    tokio::fs::rename(&tmp, path).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_addresses_become_loopback_and_v6_is_bracketed() {
        assert_eq!(host_port("0.0.0.0".parse().unwrap(), 10000), "127.0.0.1:10000");
        assert_eq!(host_port("::".parse().unwrap(), 10000), "[::1]:10000");
        assert_eq!(host_port("10.1.2.3".parse().unwrap(), 10190), "10.1.2.3:10190");
        assert_eq!(host_port("fd00::7".parse().unwrap(), 10100), "[fd00::7]:10100");
    }

    #[tokio::test]
    async fn the_file_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sd/targets.json");
        write_atomically(&path, "[1]\n").await.unwrap();
        write_atomically(&path, "[2]\n").await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "[2]\n");
        assert!(!path.with_extension("json.tmp").exists());
    }
}
