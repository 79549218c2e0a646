//! How many instances of each service every cluster holds, for spreading (`oak_core::placement`).
//! Kept in memory so a burst of placements of one big service costs no query each; loaded from
//! the store on first use and again when older than [`STALE`] (instances that completed or were
//! removed meanwhile are then forgotten), and updated at once by every placement.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use oak_core::placement::{counts_for_spread, spread_counts};
use oak_store::RootStore;

/// A service's counts are read again from the store after this long.
const STALE: Duration = Duration::from_secs(5);

#[derive(Default)]
pub(super) struct Spread {
    services: HashMap<String, Entry>,
}

struct Entry {
    loaded: Instant,
    /// Instance number → cluster id of the instances that count.
    at: HashMap<u32, String>,
    /// Cluster id → how many of them it holds.
    counts: HashMap<String, usize>,
}

impl Spread {
    /// How many of `service_id`'s instances other than `number` each cluster holds.
    pub(super) fn others(
        &mut self,
        store: &dyn RootStore,
        service_id: &str,
        number: u32,
        now: Instant,
    ) -> oak_store::Result<HashMap<String, usize>> {
        let fresh = self.services.get(service_id).is_some_and(|e| now.saturating_duration_since(e.loaded) < STALE);
        if !fresh {
            let rows = store.service_placements(service_id)?;
            let at: HashMap<u32, String> =
                rows.iter().filter(|(_, _, st)| counts_for_spread(st)).map(|(n, c, _)| (*n, c.clone())).collect();
            let counts = spread_counts(rows.iter().map(|(n, c, st)| (*n, c.as_str(), st.as_str())), u32::MAX);
            self.services.insert(service_id.to_string(), Entry { loaded: now, at, counts });
        }
        let entry = &self.services[service_id];
        let mut others = entry.counts.clone();
        if let Some(c) = entry.at.get(&number) {
            if let Some(k) = others.get_mut(c) {
                *k = k.saturating_sub(1);
            }
        }
        Ok(others)
    }

    /// Instance `number` of `service_id` is now on `cluster_id` (or on none).
    pub(super) fn placed(&mut self, service_id: &str, number: u32, cluster_id: Option<&str>) {
        let Some(entry) = self.services.get_mut(service_id) else { return };
        if let Some(old) = entry.at.remove(&number) {
            if let Some(k) = entry.counts.get_mut(&old) {
                *k = k.saturating_sub(1);
            }
        }
        if let Some(c) = cluster_id {
            entry.at.insert(number, c.to_string());
            *entry.counts.entry(c.to_string()).or_insert(0) += 1;
        }
    }

    /// Read again from the store at the next placement.
    pub(super) fn forget(&mut self, service_id: &str) {
        self.services.remove(service_id);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use oak_api::model::Instance;
    use oak_store::SqliteStore;

    use super::*;

    #[test]
    fn counts_follow_placements_and_reload_when_stale() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn RootStore> = Arc::new(SqliteStore::open(&dir.path().join("root.db")).unwrap());
        crate::fleet::test_fixtures::store_shop_with_service_s(&*store);
        let put = |n: u32, cluster: &str, st: &str| {
            let mut i = Instance::new(n, st, "", 0.0);
            i.cluster_id = Some(cluster.into());
            store.put_instance("s", &i).unwrap();
        };
        put(0, "c1", "RUNNING");
        put(1, "c1", "COMPLETED");
        put(2, "c2", "RUNNING");

        let t0 = Instant::now();
        let mut spread = Spread::default();
        let want = |pairs: &[(&str, usize)]| -> HashMap<String, usize> {
            pairs.iter().map(|(c, k)| (c.to_string(), *k)).collect()
        };
        assert_eq!(spread.others(&*store, "s", 9, t0).unwrap(), want(&[("c1", 1), ("c2", 1)]));
        assert_eq!(spread.others(&*store, "s", 0, t0).unwrap(), want(&[("c1", 0), ("c2", 1)]));
        // A burst: each placement counts at once, without the store.
        spread.placed("s", 3, Some("c2"));
        spread.placed("s", 0, Some("c2"));
        assert_eq!(spread.others(&*store, "s", 9, t0).unwrap(), want(&[("c1", 0), ("c2", 3)]));
        // Stale: the store's view again (3 was never stored, 0 still on c1 there).
        let later = t0 + STALE;
        assert_eq!(spread.others(&*store, "s", 9, later).unwrap(), want(&[("c1", 1), ("c2", 1)]));
        spread.forget("s");
        put(2, "c2", "COMPLETED");
        assert_eq!(spread.others(&*store, "s", 9, later).unwrap(), want(&[("c1", 1)]));
    }
}
