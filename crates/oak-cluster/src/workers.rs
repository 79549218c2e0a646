//! What the root hears about this cluster's workers (`ClusterMsg::Workers`): the full list when
//! the channel opens, then, at each resource report, only the workers whose summary changed
//! noticeably and the ids of those forgotten. With 1,000 workers of steady use that is a few
//! hundred bytes per report instead of the whole list.

use std::collections::BTreeMap;

use oak_api::channel::WorkerSummary;
use oak_api::node::NodeInfo;

/// A worker's summary from its last information; `active` as the cluster judges it now.
pub fn summary(id: &str, info: &NodeInfo, active: bool) -> WorkerSummary {
    WorkerSummary {
        id: id.to_string(),
        name: info.host.clone(),
        address: info.ip.clone(),
        public_address: info.overlay.as_ref().map(|o| o.public_addr.clone()).unwrap_or_default(),
        tunnel_port: info.overlay.as_ref().map_or(0, |o| o.tunnel_port),
        tunnel_key: info.overlay.as_ref().map(|o| o.public_key.clone()).unwrap_or_default(),
        subnet: info.overlay.as_ref().map(|o| o.subnet.clone()).unwrap_or_default(),
        architecture: info.architecture.clone(),
        virtualization: info.virtualization.clone(),
        cpu_cores: info.vcpus,
        cpu_percent: info.cpu_percent,
        memory_total_mb: info.memory_total,
        memory_used_mb: info.memory_total.saturating_sub(info.memory),
        memory_free_mb: info.memory,
        gpus: info.vgpus,
        active,
        metrics_port: info.metrics_port,
    }
}

/// The summaries the root holds, as last sent on the current connection.
#[derive(Debug, Default)]
pub struct Sent {
    workers: BTreeMap<String, WorkerSummary>,
}

impl Sent {
    /// The full list goes out (a new connection): remember it as sent.
    pub fn full(&mut self, current: &[WorkerSummary]) {
        self.workers = current.iter().map(|w| (w.id.clone(), w.clone())).collect();
    }

    /// What to send now: the workers new or changed noticeably since sent, and the ids of
    /// those no longer there. Both are remembered as sent.
    pub fn changes(&mut self, current: Vec<WorkerSummary>) -> (Vec<WorkerSummary>, Vec<String>) {
        let mut gone: std::collections::BTreeSet<String> = self.workers.keys().cloned().collect();
        let mut changed = Vec::new();
        for w in current {
            gone.remove(&w.id);
            if self.workers.get(&w.id).is_none_or(|sent| w.differs_noticeably(sent)) {
                self.workers.insert(w.id.clone(), w.clone());
                changed.push(w);
            }
        }
        for id in &gone {
            self.workers.remove(id);
        }
        (changed, gone.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(host: &str, cpu: f64, available_mb: u64) -> NodeInfo {
        NodeInfo {
            host: host.into(),
            ip: "10.0.0.5".into(),
            vcpus: 4,
            cpu_percent: cpu,
            architecture: "arm64".into(),
            memory: available_mb,
            memory_total: 8_000,
            virtualization: vec!["docker".into()],
            ..Default::default()
        }
    }

    #[test]
    fn a_summary_carries_name_address_capacity_and_usage() {
        let w = summary("n1", &info("edge-1", 40.0, 6_000), true);
        assert_eq!((w.id.as_str(), w.name.as_str(), w.address.as_str()), ("n1", "edge-1", "10.0.0.5"));
        assert_eq!((w.cpu_cores, w.memory_total_mb, w.memory_used_mb, w.memory_free_mb), (4, 8_000, 2_000, 6_000));
        assert_eq!(
            (w.architecture.as_str(), w.virtualization.clone(), w.active),
            ("arm64", vec!["docker".into()], true)
        );
        assert_eq!(w.public_address, "");
    }

    #[test]
    fn only_new_changed_and_removed_workers_are_sent_after_the_full_list() {
        let mut sent = Sent::default();
        let a = summary("a", &info("a", 10.0, 6_000), true);
        let b = summary("b", &info("b", 10.0, 6_000), true);
        sent.full(&[a.clone(), b.clone()]);
        assert_eq!(sent.changes(vec![a.clone(), b.clone()]), (vec![], vec![]));

        // Small usage drift is not sent; it accumulates against what was sent.
        let a2 = summary("a", &info("a", 13.0, 5_900), true);
        assert_eq!(sent.changes(vec![a2, b.clone()]), (vec![], vec![]));
        let a3 = summary("a", &info("a", 16.0, 5_900), true);
        assert_eq!(sent.changes(vec![a3.clone(), b.clone()]), (vec![a3.clone()], vec![]));

        // A worker turning inactive, a new one, and one forgotten.
        let b_off = summary("b", &info("b", 10.0, 6_000), false);
        let c = summary("c", &info("c", 0.0, 8_000), true);
        assert_eq!(sent.changes(vec![b_off.clone(), c.clone()]), (vec![b_off, c], vec!["a".to_string()]));
        assert_eq!(sent.changes(vec![]), (vec![], vec!["b".to_string(), "c".to_string()]));
        assert_eq!(sent.changes(vec![]), (vec![], vec![]));
    }

    #[test]
    fn a_thousand_workers_of_steady_use_cost_nothing_after_the_full_list() {
        let fleet = |cpu: f64| -> Vec<WorkerSummary> {
            (0..1000).map(|n| summary(&format!("{n:024x}"), &info(&format!("edge-{n}"), cpu, 6_000), true)).collect()
        };
        let mut sent = Sent::default();
        let full = fleet(20.0);
        sent.full(&full);
        let bytes: usize = oak_api::channel::ClusterMsg::workers(true, full, vec![])
            .iter()
            .map(|m| oak_api::channel::encode(m).len())
            .sum();
        assert!(bytes < 400_000, "the full list of 1,000 workers is {bytes} bytes");
        for jitter in [1.0, -2.0, 4.5, -4.5] {
            assert_eq!(sent.changes(fleet(20.0 + jitter)), (vec![], vec![]), "jitter {jitter}");
        }
        assert_eq!(sent.changes(fleet(30.0)).0.len(), 1000);
    }
}
