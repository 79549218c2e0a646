//! Capacity the root has promised to clusters but not yet seen in their reports.
//!
//! A cluster reports its free resources every few seconds. Between two reports the root may place
//! many instances on it (the original did no accounting at all, spec §6.2, so a burst landed on
//! the same cluster regardless of its size). The root therefore *reserves* each instance's
//! [`Demand`] on the cluster it chose and subtracts the outstanding reservations from the
//! cluster's reported free amounts ([`Reservations::apply`]) before every decision.
//!
//! Each reservation carries a sequence number. The root reserves with `u64::MAX` (never
//! confirmed); when the cluster first reports on the instance (placed on a node, or given up) the
//! root [`Reservations::acknowledge`]s it with the number of resource reports received so far,
//! `n`. The channel is ordered, so report `n + 1` was computed after the cluster placed the
//! instance and accounts for it: on receiving it the root calls [`Reservations::confirm`]`(n)`,
//! which drops every reservation with `seq ≤ n`. Undeploying an instance, or a placement that
//! failed at the root, [`Reservations::release`]s it. Report numbers belong to one connection:
//! when a cluster reconnects the root calls [`Reservations::forget_cluster`] (the full state
//! exchange that follows re-establishes the truth).
//!
//! # Architectures
//!
//! Which node, hence which architecture, an instance lands on is decided by the cluster, so the
//! root cannot know it. A reservation made with [`Reservations::reserve_for`] remembers the
//! job's `arch` list and is subtracted from each of those architectures' entries in
//! `aggregation_per_architecture`; one made with [`Reservations::reserve`] (no list) is subtracted
//! from every entry. Each entry alone is then an upper bound of what is really free in that
//! architecture: conservative, never over-committing, at the price of possibly refusing an
//! arch-constrained placement until the next report.

use std::collections::BTreeMap;

use oak_api::model::Cluster;
use oak_api::sla::Microservice;

use crate::node_placement::Demand;

/// One instance: `(job_id, instance_number)`.
pub type InstanceKey = (String, u32);

#[derive(Debug, Clone, PartialEq)]
struct Reservation {
    seq: u64,
    demand: Demand,
    /// Architectures the instance may land on; empty = any.
    archs: Vec<String>,
}

/// Outstanding reservations per cluster (pure data; the root keeps one in memory).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reservations {
    by_cluster: BTreeMap<String, Held>,
    cluster_of: BTreeMap<InstanceKey, String>,
}

/// One cluster's reservations with their running sums, so that [`Reservations::apply`] costs a
/// few additions per architecture instead of a pass over every reservation (a burst holds
/// thousands, and every placement applies them). Subtracting a sum with clamping at zero gives
/// the same as subtracting each part with clamping, since every part is non-negative.
#[derive(Debug, Clone, Default, PartialEq)]
struct Held {
    items: BTreeMap<InstanceKey, Reservation>,
    total: Demand,
    /// Reservations that may land on any architecture.
    any: Demand,
    /// Per architecture, the reservations that name it.
    per_arch: BTreeMap<String, Demand>,
}

impl Held {
    fn add(&mut self, key: InstanceKey, r: Reservation) {
        self.total = self.total.plus(r.demand);
        if r.archs.is_empty() {
            self.any = self.any.plus(r.demand);
        }
        for arch in &r.archs {
            let sum = self.per_arch.entry(arch.clone()).or_default();
            *sum = sum.plus(r.demand);
        }
        self.items.insert(key, r);
    }

    fn take(&mut self, key: &InstanceKey) -> Option<Reservation> {
        let r = self.items.remove(key)?;
        self.unsum(&r);
        Some(r)
    }

    fn unsum(&mut self, r: &Reservation) {
        self.total = self.total.minus(r.demand);
        if r.archs.is_empty() {
            self.any = self.any.minus(r.demand);
        }
        for arch in &r.archs {
            if let Some(sum) = self.per_arch.get_mut(arch) {
                *sum = sum.minus(r.demand);
            }
        }
        if self.items.is_empty() {
            // Exactly zero again, whatever rounding the sums went through.
            self.total = Demand::default();
            self.any = Demand::default();
            self.per_arch.clear();
        }
    }
}

impl Reservations {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reserves `demand` on `cluster_id` for instance `key`, sent in the `Deploy` message `seq`;
    /// the instance may land on any architecture. Reserving a key again replaces its previous
    /// reservation (on whatever cluster).
    pub fn reserve(&mut self, cluster_id: &str, seq: u64, key: InstanceKey, demand: Demand) {
        self.insert(cluster_id, key, Reservation { seq, demand, archs: Vec::new() });
    }

    /// Like [`Reservations::reserve`], with the demand and the architectures taken from `job`.
    pub fn reserve_for(&mut self, cluster_id: &str, seq: u64, key: InstanceKey, job: &Microservice) {
        let archs = job.arch.clone().unwrap_or_default();
        self.insert(cluster_id, key, Reservation { seq, demand: Demand::of(job), archs });
    }

    fn insert(&mut self, cluster_id: &str, key: InstanceKey, mut r: Reservation) {
        // An architecture named twice is still one entry the instance may land on.
        r.archs.sort();
        r.archs.dedup();
        self.release(&key);
        self.cluster_of.insert(key.clone(), cluster_id.to_string());
        self.by_cluster.entry(cluster_id.to_string()).or_default().add(key, r);
    }

    /// Drops the reservation of instance `key` (undeployed, or its placement failed); returns
    /// the cluster it was on.
    pub fn release(&mut self, key: &InstanceKey) -> Option<String> {
        let cluster = self.cluster_of.remove(key)?;
        if let Some(held) = self.by_cluster.get_mut(&cluster) {
            held.take(key);
            if held.items.is_empty() {
                self.by_cluster.remove(&cluster);
            }
        }
        Some(cluster)
    }

    /// A report of `cluster_id` accounting for every `Deploy` up to `report_seq` arrived: drops
    /// that cluster's reservations with `seq ≤ report_seq`.
    pub fn confirm(&mut self, cluster_id: &str, report_seq: u64) {
        let Some(held) = self.by_cluster.get_mut(cluster_id) else { return };
        let done: Vec<InstanceKey> =
            held.items.iter().filter(|(_, r)| r.seq <= report_seq).map(|(k, _)| k.clone()).collect();
        for key in done {
            held.take(&key);
            self.cluster_of.remove(&key);
        }
        if held.items.is_empty() {
            self.by_cluster.remove(cluster_id);
        }
    }

    /// Learns that reports numbered `seq` or later account for instance `key` (e.g. the cluster
    /// said it placed or gave up the instance, and `seq` is its next report): the reservation's
    /// sequence number becomes the lower of its own and `seq`, so [`Reservations::confirm`] with
    /// `report_seq ≥ seq` drops it. Useful when a reservation was made before its `Deploy`
    /// sequence number was known (reserved with `u64::MAX`). Unknown keys are ignored.
    pub fn acknowledge(&mut self, key: &InstanceKey, seq: u64) {
        let Some(cluster) = self.cluster_of.get(key) else { return };
        if let Some(r) = self.by_cluster.get_mut(cluster).and_then(|held| held.items.get_mut(key)) {
            r.seq = r.seq.min(seq);
        }
    }

    /// Drops every reservation of `cluster_id` (it reconnected or was removed).
    pub fn forget_cluster(&mut self, cluster_id: &str) {
        if let Some(held) = self.by_cluster.remove(cluster_id) {
            for key in held.items.keys() {
                self.cluster_of.remove(key);
            }
        }
    }

    /// Sum of the outstanding reservations of `cluster_id`.
    pub fn outstanding(&self, cluster_id: &str) -> Demand {
        self.by_cluster.get(cluster_id).map_or_else(Demand::default, |held| held.total)
    }

    /// Number of outstanding reservations over all clusters.
    pub fn len(&self) -> usize {
        self.cluster_of.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cluster_of.is_empty()
    }

    /// Subtracts the outstanding reservations of `cluster.id` from its free `vcpus` (not below
    /// 0), `memory` and `vgpus` (saturating), and from the free amounts of the architecture
    /// entries each reservation may land on (see the module documentation).
    pub fn apply(&self, cluster: &mut Cluster) {
        let Some(held) = self.by_cluster.get(&cluster.id) else { return };
        for (arch, t) in cluster.aggregation_per_architecture.iter_mut() {
            let d = held.per_arch.get(arch).map_or(held.any, |named| named.plus(held.any));
            t.free_vcpus = (t.free_vcpus - d.vcpus).max(0.0);
            t.free_memory_mb = t.free_memory_mb.saturating_sub(d.memory_mb);
            t.free_gpus = t.free_gpus.saturating_sub(d.gpus);
        }
        let total = held.total;
        cluster.vcpus = (cluster.vcpus - total.vcpus).max(0.0);
        cluster.memory = cluster.memory.saturating_sub(total.memory_mb);
        cluster.vgpus = cluster.vgpus.saturating_sub(total.gpus);
    }

    /// [`Reservations::apply`] on `cluster`, a copy of `base` made earlier and maybe applied to
    /// then: the free amounts start again from `base`'s. A scheduler can keep such a copy for
    /// every placement instead of cloning the whole document each time. `cluster` must have the
    /// architecture entries of `base` (it was copied from it and `base` did not change since).
    pub fn apply_over(&self, base: &Cluster, cluster: &mut Cluster) {
        cluster.vcpus = base.vcpus;
        cluster.memory = base.memory;
        cluster.vgpus = base.vgpus;
        let entries = cluster.aggregation_per_architecture.values_mut();
        for (t, b) in entries.zip(base.aggregation_per_architecture.values()) {
            t.free_vcpus = b.free_vcpus;
            t.free_memory_mb = b.free_memory_mb;
            t.free_gpus = b.free_gpus;
        }
        self.apply(cluster);
    }

    /// Copies of `clusters` with [`Reservations::apply`] done: what the root scheduler decides on.
    pub fn applied(&self, clusters: &[Cluster]) -> Vec<Cluster> {
        clusters
            .iter()
            .map(|c| {
                let mut c = c.clone();
                self.apply(&mut c);
                c
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oak_api::channel::ResourceTotals;

    fn cluster(id: &str, vcpus: f64, memory: u64, vgpus: u64) -> Cluster {
        Cluster { id: id.into(), cluster_name: id.into(), active: true, vcpus, memory, vgpus, ..Default::default() }
    }

    fn d(vcpus: f64, memory_mb: u64, gpus: u64) -> Demand {
        Demand { vcpus, memory_mb, gpus }
    }

    fn key(job: &str, n: u32) -> InstanceKey {
        (job.to_string(), n)
    }

    fn free(c: &Cluster) -> (f64, u64, u64) {
        (c.vcpus, c.memory, c.vgpus)
    }

    fn applied(r: &Reservations, c: &Cluster) -> (f64, u64, u64) {
        let mut c = c.clone();
        r.apply(&mut c);
        free(&c)
    }

    #[test]
    fn reserve_confirm_release_table() {
        let c = cluster("c1", 8.0, 8000, 2);
        type Step = fn(&mut Reservations);
        type Case = (&'static str, Step, (f64, u64, u64), usize);
        let cases: Vec<Case> = vec![
            ("nothing reserved", |_| {}, (8.0, 8000, 2), 0),
            ("one reservation", |r| r.reserve("c1", 1, key("j", 0), d(2.0, 1000, 1)), (6.0, 7000, 1), 1),
            (
                "two reservations add up",
                |r| {
                    r.reserve("c1", 1, key("j", 0), d(2.0, 1000, 1));
                    r.reserve("c1", 2, key("j", 1), d(1.0, 500, 0));
                },
                (5.0, 6500, 1),
                2,
            ),
            (
                "same key replaces",
                |r| {
                    r.reserve("c1", 1, key("j", 0), d(2.0, 1000, 1));
                    r.reserve("c1", 2, key("j", 0), d(1.0, 500, 0));
                },
                (7.0, 7500, 2),
                1,
            ),
            (
                "same key moved to another cluster",
                |r| {
                    r.reserve("c1", 1, key("j", 0), d(2.0, 1000, 1));
                    r.reserve("c2", 1, key("j", 0), d(2.0, 1000, 1));
                },
                (8.0, 8000, 2),
                1,
            ),
            (
                "other cluster's reservation ignored",
                |r| r.reserve("c2", 1, key("j", 0), d(2.0, 1000, 1)),
                (8.0, 8000, 2),
                1,
            ),
            (
                "release frees",
                |r| {
                    r.reserve("c1", 1, key("j", 0), d(2.0, 1000, 1));
                    r.reserve("c1", 1, key("j", 1), d(1.0, 100, 0));
                    assert_eq!(r.release(&key("j", 0)).as_deref(), Some("c1"));
                    assert_eq!(r.release(&key("j", 0)), None);
                },
                (7.0, 7900, 2),
                1,
            ),
            (
                "confirm drops seq <= report",
                |r| {
                    r.reserve("c1", 3, key("j", 0), d(2.0, 1000, 0));
                    r.reserve("c1", 4, key("j", 1), d(1.0, 1000, 0));
                    r.reserve("c1", 5, key("j", 2), d(1.0, 1000, 0));
                    r.confirm("c1", 4);
                },
                (7.0, 7000, 2),
                1,
            ),
            (
                "confirm of another cluster keeps ours",
                |r| {
                    r.reserve("c1", 3, key("j", 0), d(2.0, 1000, 0));
                    r.confirm("c2", 10);
                },
                (6.0, 7000, 2),
                1,
            ),
            (
                "forget cluster",
                |r| {
                    r.reserve("c1", 3, key("j", 0), d(2.0, 1000, 0));
                    r.reserve("c2", 3, key("j", 1), d(2.0, 1000, 0));
                    r.forget_cluster("c1");
                },
                (8.0, 8000, 2),
                1,
            ),
            ("over-reservation saturates", |r| r.reserve("c1", 1, key("j", 0), d(9.5, 9000, 3)), (0.0, 0, 0), 1),
        ];
        for (name, step, want, len) in cases {
            let mut r = Reservations::new();
            step(&mut r);
            assert_eq!(applied(&r, &c), want, "{name}");
            assert_eq!(r.len(), len, "{name}");
        }
    }

    #[test]
    fn acknowledge_lowers_seq() {
        let c = cluster("c1", 8.0, 8000, 2);
        let mut r = Reservations::new();
        r.reserve("c1", u64::MAX, key("j", 0), d(1.0, 1000, 0));
        r.reserve("c1", u64::MAX, key("j", 1), d(1.0, 1000, 0));
        r.reserve("c1", 2, key("j", 2), d(1.0, 1000, 0));
        r.confirm("c1", 3);
        assert_eq!(applied(&r, &c), (6.0, 6000, 2), "unsent reservations survive reports");
        r.acknowledge(&key("j", 0), 4);
        r.acknowledge(&key("j", 1), 9);
        r.acknowledge(&key("unknown", 0), 0);
        r.confirm("c1", 4);
        assert_eq!(applied(&r, &c), (7.0, 7000, 2), "acknowledged at 4, confirmed by report 4");
        r.acknowledge(&key("j", 1), 20);
        r.confirm("c1", 9);
        assert!(r.is_empty(), "a later acknowledgement does not postpone an earlier one");
    }

    #[test]
    fn outstanding_sums() {
        let mut r = Reservations::new();
        assert!(r.is_empty());
        r.reserve("c1", 1, key("a", 0), d(1.5, 100, 0));
        r.reserve("c1", 2, key("b", 0), d(1.0, 200, 1));
        assert_eq!(r.outstanding("c1"), d(2.5, 300, 1));
        assert_eq!(r.outstanding("c2"), Demand::default());
        r.confirm("c1", 2);
        assert!(r.is_empty());
        assert_eq!(r.outstanding("c1"), Demand::default());
    }

    #[test]
    fn a_kept_copy_applied_again_equals_a_fresh_one() {
        let mut base = cluster("c1", 8.0, 8000, 2);
        base.aggregation_per_architecture.insert("amd64".into(), totals(4.0, 4000, 1));
        base.aggregation_per_architecture.insert("arm64".into(), totals(4.0, 4000, 1));
        let mut r = Reservations::new();
        r.reserve("c1", 1, key("a", 0), d(1.0, 1000, 1));
        let mut kept = base.clone();
        r.apply(&mut kept);
        for next in [d(2.0, 500, 0), d(0.5, 100, 1)] {
            r.reserve("c1", 1, key("a", r.len() as u32), next);
            r.apply_over(&base, &mut kept);
            let mut fresh = base.clone();
            r.apply(&mut fresh);
            assert_eq!(kept, fresh);
        }
        r.confirm("c1", 1);
        r.apply_over(&base, &mut kept);
        assert_eq!(kept, base, "nothing outstanding: the base again");
    }

    fn totals(free_vcpus: f64, free_memory_mb: u64, free_gpus: u64) -> ResourceTotals {
        ResourceTotals { nodes: 1, free_vcpus, free_memory_mb, free_gpus, ..Default::default() }
    }

    #[test]
    fn architecture_entries() {
        let mut c = cluster("c1", 8.0, 8000, 2);
        c.aggregation_per_architecture.insert("amd64".into(), totals(4.0, 4000, 1));
        c.aggregation_per_architecture.insert("arm64".into(), totals(4.0, 4000, 1));
        let mut job: Microservice = serde_json::from_value(serde_json::json!({
            "microservice_name": "k", "microservice_namespace": "t", "virtualization": "unikernel", "code": "u",
            "vcpus": 1, "memory": 1000, "arch": ["arm64"]
        }))
        .unwrap();
        let mut r = Reservations::new();
        r.reserve_for("c1", 1, key("k", 0), &job);
        job.arch = None;
        job.vgpus = 1;
        r.reserve_for("c1", 1, key("k", 1), &job);
        r.reserve("c1", 1, key("k", 2), d(5.0, 5000, 0));
        let mut got = c.clone();
        r.apply(&mut got);
        assert_eq!(free(&got), (1.0, 1000, 1));
        let amd = &got.aggregation_per_architecture["amd64"];
        assert_eq!((amd.free_vcpus, amd.free_memory_mb, amd.free_gpus), (0.0, 0, 0), "k/1 and k/2 may land here");
        let arm = &got.aggregation_per_architecture["arm64"];
        assert_eq!((arm.free_vcpus, arm.free_memory_mb, arm.free_gpus), (0.0, 0, 0), "all three may land here");

        let mut r = Reservations::new();
        job.arch = Some(vec!["arm64".into()]);
        r.reserve_for("c1", 1, key("k", 0), &job);
        let got = &r.applied(std::slice::from_ref(&c))[0];
        assert_eq!(got.aggregation_per_architecture["amd64"], c.aggregation_per_architecture["amd64"]);
        let arm = &got.aggregation_per_architecture["arm64"];
        assert_eq!((arm.free_vcpus, arm.free_memory_mb, arm.free_gpus), (3.0, 3000, 0));
    }

    /// The running sums give what subtracting every reservation one by one gives, through
    /// reserves, re-reserves, releases, confirms and duplicate architecture names.
    #[test]
    fn sums_match_one_by_one_subtraction() {
        let mut c = cluster("c1", 64.0, 64_000, 8);
        for arch in ["amd64", "arm64", "riscv64"] {
            c.aggregation_per_architecture.insert(arch.into(), totals(24.0, 24_000, 3));
        }
        let mut r = Reservations::new();
        // Deterministic pseudo-random operations.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let arch_sets: [&[&str]; 5] = [&[], &["amd64"], &["arm64", "amd64"], &["arm64", "arm64"], &["mips"]];
        for step in 0..2000u64 {
            let k = key("j", (next() % 300) as u32);
            match next() % 10 {
                0 => {
                    r.release(&k);
                }
                1 => r.confirm("c1", step / 2),
                2 => r.acknowledge(&k, step),
                _ => {
                    let archs = arch_sets[(next() % 5) as usize];
                    let reservation = Reservation {
                        seq: step,
                        demand: d((next() % 3) as f64, next() % 700, next() % 2),
                        archs: archs.iter().map(|a| a.to_string()).collect(),
                    };
                    r.insert("c1", k, reservation);
                }
            }
            if step % 97 == 0 {
                let mut fast = c.clone();
                r.apply(&mut fast);
                let mut slow = c.clone();
                let held = r.by_cluster.get("c1");
                let mut total = Demand::default();
                for res in held.map(|h| h.items.values().collect::<Vec<_>>()).unwrap_or_default() {
                    total = total.plus(res.demand);
                    for (arch, t) in slow.aggregation_per_architecture.iter_mut() {
                        if res.archs.is_empty() || res.archs.contains(arch) {
                            t.free_vcpus = (t.free_vcpus - res.demand.vcpus).max(0.0);
                            t.free_memory_mb = t.free_memory_mb.saturating_sub(res.demand.memory_mb);
                            t.free_gpus = t.free_gpus.saturating_sub(res.demand.gpus);
                        }
                    }
                }
                slow.vcpus = (slow.vcpus - total.vcpus).max(0.0);
                slow.memory = slow.memory.saturating_sub(total.memory_mb);
                slow.vgpus = slow.vgpus.saturating_sub(total.gpus);
                assert_eq!(fast, slow, "after step {step}");
            }
        }
    }
}
