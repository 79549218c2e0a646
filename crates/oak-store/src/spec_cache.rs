//! Service descriptors with their applications, kept in memory: every instance request checks
//! the caller against them, and reading them from SQLite (whose read connections drop their
//! page cache after each commit, so during a burst after nearly every read) and parsing both
//! documents was a sixth of the root's CPU per request.
//!
//! Any change to a service or an application empties the cache after its commit. A read that
//! started before such a change could carry the old documents in after it; the generation,
//! taken before the read and checked when the result is kept, stops that.

use std::collections::HashMap;
use std::sync::Mutex;

/// Most services kept; when full the cache starts over (instance requests are bursty and hit
/// few services at a time).
const MAX_ENTRIES: usize = 4096;

/// Documents by service id (the store keeps a service with its application).
pub(crate) struct SpecCache<Spec> {
    inner: Mutex<Inner<Spec>>,
}

struct Inner<Spec> {
    /// Bumped by every change: results read under an older one are not kept.
    generation: u64,
    entries: HashMap<String, Spec>,
}

impl<Spec> Default for SpecCache<Spec> {
    fn default() -> Self {
        Self { inner: Mutex::new(Inner { generation: 0, entries: HashMap::new() }) }
    }
}

impl<Spec: Clone> SpecCache<Spec> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<Spec>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of what is kept for service `id`, or the generation to [`SpecCache::keep`] a
    /// fresh read under.
    pub(crate) fn get(&self, id: &str) -> Result<Spec, u64> {
        let inner = self.lock();
        inner.entries.get(id).cloned().ok_or(inner.generation)
    }

    /// Keeps `spec`, read after [`SpecCache::get`] answered `generation`, unless something
    /// changed since.
    pub(crate) fn keep(&self, id: &str, generation: u64, spec: &Spec) {
        let mut inner = self.lock();
        if inner.generation != generation {
            return;
        }
        if inner.entries.len() >= MAX_ENTRIES {
            inner.entries.clear();
        }
        inner.entries.insert(id.to_owned(), spec.clone());
    }

    /// A service or an application changed (call after the commit).
    pub(crate) fn changed(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> String {
        name.to_owned()
    }

    #[test]
    fn a_read_that_overlapped_a_change_is_not_kept() {
        let cache = SpecCache::<String>::default();
        let Err(generation) = cache.get("s") else { panic!("empty cache answered") };
        cache.keep("s", generation, &spec("old"));
        assert_eq!(cache.get("s").ok().as_deref(), Some("old"));
        // A read starts, a change commits meanwhile, the read ends with what it saw before.
        cache.changed();
        let Err(generation) = cache.get("s") else { panic!("a change kept an entry") };
        cache.changed();
        cache.keep("s", generation, &spec("old"));
        assert!(cache.get("s").is_err(), "a result older than a change was kept");
        cache.keep("s", generation + 1, &spec("new"));
        assert_eq!(cache.get("s").ok().as_deref(), Some("new"));
    }

    #[test]
    fn a_full_cache_starts_over() {
        let cache = SpecCache::<String>::default();
        for i in 0..MAX_ENTRIES + 1 {
            cache.keep(&format!("s{i}"), 0, &spec("x"));
        }
        assert_eq!(cache.lock().entries.len(), 1);
    }
}
