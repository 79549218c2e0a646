//! The per-user quota check of the handlers that make a user hold more (rules in
//! `oak_core::quotas`). Admins are exempt. The check hands back a [`Held`] the handler keeps
//! until its write is committed: requests of one owner are counted one after the other, so a
//! burst of concurrent requests cannot all pass on the same count.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Mutex, MutexGuard};

use oak_core::quotas::Usage;

use crate::auth::extract::Caller;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Locks owners hash onto: owners sharing one only wait for each other's quota checks.
const STRIPES: usize = 64;

/// One lock per stripe of owners, taken around a quota check and the write it allows.
pub struct OwnerLocks([Mutex<()>; STRIPES]);

impl Default for OwnerLocks {
    fn default() -> Self {
        Self(std::array::from_fn(|_| Mutex::new(())))
    }
}

impl OwnerLocks {
    fn lock(&self, owner: &str) -> MutexGuard<'_, ()> {
        let mut h = DefaultHasher::new();
        owner.hash(&mut h);
        // Nothing is guarded but the order of checks: a poisoned lock is as good as a fresh one.
        self.0[h.finish() as usize % STRIPES].lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An owner's quota, held from the check until dropped (after the write that uses it).
#[must_use = "keep it until the objects the quota allowed are written"]
pub struct Held<'a>(#[allow(dead_code)] Option<MutexGuard<'a, ()>>);

/// Refuses with 429 when `adding` would take `owner` (the user the objects belong to) beyond a
/// quota; otherwise holds the owner's quota until the returned value is dropped.
pub fn check<'a>(st: &'a AppState, caller: &Caller, owner: &str, adding: Usage) -> ApiResult<Held<'a>> {
    if caller.is_admin() || adding == Usage::default() {
        return Ok(Held(None));
    }
    let guard = st.quota_locks.lock(owner);
    // Counted in the store: loading every service and instance of the user took a scan per request.
    let u = st.store.owner_usage(owner)?;
    let held = Usage { services: u.services, instances: u.instances, service_ips: u.services + u.closest_ips };
    oak_core::quotas::check(&st.fleet.quotas(), held, adding).map_err(|e| ApiError::QuotaExceeded(e.to_string()))?;
    Ok(Held(Some(guard)))
}
