//! Documents kept in memory for the reads every request makes: a caller's user record and
//! organization (every authenticated request), a service with its application (every instance
//! request's ownership check). SQLite's read connections drop their page cache after each commit,
//! so during a burst of writes nearly every such read went to the file again and parsed the JSON
//! once more: a sixth of the root's CPU per instance request for the service alone.
//!
//! Any change to what a cache holds empties it after its commit. A read that started before such
//! a change could carry the old document in after it; the generation, taken before the read and
//! checked when the result is kept, stops that.

use std::collections::HashMap;
use std::sync::Mutex;

/// Most documents kept; when full the cache starts over (requests are bursty and come from few
/// users for few services at a time).
const MAX_ENTRIES: usize = 4096;

/// Documents by id.
pub(crate) struct DocCache<Doc> {
    inner: Mutex<Inner<Doc>>,
}

struct Inner<Doc> {
    /// Bumped by every change: results read under an older one are not kept.
    generation: u64,
    entries: HashMap<String, Doc>,
}

impl<Doc> Default for DocCache<Doc> {
    fn default() -> Self {
        Self { inner: Mutex::new(Inner { generation: 0, entries: HashMap::new() }) }
    }
}

impl<Doc: Clone> DocCache<Doc> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<Doc>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of what is kept for `id`, or the generation to [`DocCache::keep`] a
    /// fresh read under.
    pub(crate) fn get(&self, id: &str) -> Result<Doc, u64> {
        let inner = self.lock();
        inner.entries.get(id).cloned().ok_or(inner.generation)
    }

    /// Keeps `doc`, read after [`DocCache::get`] answered `generation`, unless something
    /// changed since.
    pub(crate) fn keep(&self, id: &str, generation: u64, doc: &Doc) {
        let mut inner = self.lock();
        if inner.generation != generation {
            return;
        }
        if inner.entries.len() >= MAX_ENTRIES {
            inner.entries.clear();
        }
        inner.entries.insert(id.to_owned(), doc.clone());
    }

    /// What is kept for `id`, else what `read` finds (kept unless something changed meanwhile).
    pub(crate) fn get_or_read<E>(
        &self,
        id: &str,
        read: impl FnOnce() -> Result<Option<Doc>, E>,
    ) -> Result<Option<Doc>, E> {
        let generation = match self.get(id) {
            Ok(kept) => return Ok(Some(kept)),
            Err(generation) => generation,
        };
        let found = read()?;
        if let Some(doc) = &found {
            self.keep(id, generation, doc);
        }
        Ok(found)
    }

    /// Something the cache may hold changed (call after the commit).
    pub(crate) fn changed(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(name: &str) -> String {
        name.to_owned()
    }

    #[test]
    fn a_read_that_overlapped_a_change_is_not_kept() {
        let cache = DocCache::<String>::default();
        let Err(generation) = cache.get("s") else { panic!("empty cache answered") };
        cache.keep("s", generation, &doc("old"));
        assert_eq!(cache.get("s").ok().as_deref(), Some("old"));
        // A read starts, a change commits meanwhile, the read ends with what it saw before.
        cache.changed();
        let Err(generation) = cache.get("s") else { panic!("a change kept an entry") };
        cache.changed();
        cache.keep("s", generation, &doc("old"));
        assert!(cache.get("s").is_err(), "a result older than a change was kept");
        cache.keep("s", generation + 1, &doc("new"));
        assert_eq!(cache.get("s").ok().as_deref(), Some("new"));
    }

    #[test]
    fn a_full_cache_starts_over() {
        let cache = DocCache::<String>::default();
        for i in 0..MAX_ENTRIES + 1 {
            cache.keep(&format!("s{i}"), 0, &doc("x"));
        }
        assert_eq!(cache.lock().entries.len(), 1);
    }
}
