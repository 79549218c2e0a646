//! The per-user quota check of the handlers that make a user hold more (rules in
//! `oak_core::quotas`). Admins are exempt. A granted check reserves what it allows until the
//! handler drops the returned [`Held`] (after its write committed or failed): a later check of
//! the same owner counts what is stored plus what is reserved, so a burst of concurrent requests
//! cannot all pass on the same count, and yet none of them waits for another's write (their
//! writes share a group commit).

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use oak_core::quotas::{Quotas, Usage};

use crate::auth::extract::Caller;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Stripes owners hash onto: only checks of owners sharing one wait for each other, and only
/// for the count, never for a write.
const STRIPES: usize = 64;

/// What granted checks reserved and whose writes are not done yet, per owner.
pub struct Reservations([Mutex<HashMap<String, Usage>>; STRIPES]);

impl Default for Reservations {
    fn default() -> Self {
        Self(std::array::from_fn(|_| Mutex::new(HashMap::new())))
    }
}

impl Reservations {
    fn stripe(&self, owner: &str) -> std::sync::MutexGuard<'_, HashMap<String, Usage>> {
        let mut h = DefaultHasher::new();
        owner.hash(&mut h);
        // The map stays consistent at every step: a poisoned lock is as good as a fresh one.
        self.0[h.finish() as usize % STRIPES].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Grants `adding` if what `stored` counts plus what is reserved leaves room for it under
    /// `quotas`, and reserves it until the answer is dropped. `stored` runs under the owner's
    /// stripe, so a write committed meanwhile is counted at worst twice (stored and still
    /// reserved), never not at all.
    pub fn reserve<'a>(
        &'a self,
        owner: &str,
        quotas: &Quotas,
        adding: Usage,
        stored: impl FnOnce() -> ApiResult<Usage>,
    ) -> ApiResult<Held<'a>> {
        let mut reserved = self.stripe(owner);
        let pending = reserved.get(owner).copied().unwrap_or_default();
        let held = stored()?.plus(pending);
        oak_core::quotas::check(quotas, held, adding).map_err(|e| ApiError::QuotaExceeded(e.to_string()))?;
        reserved.insert(owner.to_string(), pending.plus(adding));
        Ok(Held(Some(Reservation { from: self, owner: owner.to_string(), usage: adding })))
    }

    /// What is reserved for `owner` now.
    pub fn reserved(&self, owner: &str) -> Usage {
        self.stripe(owner).get(owner).copied().unwrap_or_default()
    }
}

struct Reservation<'a> {
    from: &'a Reservations,
    owner: String,
    usage: Usage,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut reserved = self.from.stripe(&self.owner);
        let left = reserved.get(&self.owner).copied().unwrap_or_default().beyond(self.usage);
        if left == Usage::default() {
            reserved.remove(&self.owner);
        } else {
            reserved.insert(self.owner.clone(), left);
        }
    }
}

/// A granted quota check: what it allowed stays reserved until this is dropped.
#[must_use = "keep it until the objects the quota allowed are written"]
pub struct Held<'a>(#[allow(dead_code)] Option<Reservation<'a>>);

/// Refuses with 429 when `adding` would take `owner` (the user the objects belong to) beyond a
/// quota; otherwise reserves it until the returned value is dropped.
pub fn check<'a>(st: &'a AppState, caller: &Caller, owner: &str, adding: Usage) -> ApiResult<Held<'a>> {
    if caller.is_admin() || adding == Usage::default() {
        return Ok(Held(None));
    }
    st.quota_reservations.reserve(owner, &st.fleet.quotas(), adding, || {
        // Counted in the store: loading every service and instance of the user took a scan.
        let u = st.store.owner_usage(owner)?;
        Ok(Usage { services: u.services, instances: u.instances, service_ips: u.services + u.closest_ips })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUOTAS: Quotas = Quotas { services: 10, instances: 10, service_ips: 10 };

    fn instances(n: usize) -> Usage {
        Usage { instances: n, ..Usage::default() }
    }

    fn stored(n: usize) -> impl FnOnce() -> ApiResult<Usage> {
        move || Ok(instances(n))
    }

    #[test]
    fn reservations_count_until_dropped_and_per_owner() {
        let r = Reservations::default();
        let first = r.reserve("alice", &QUOTAS, instances(6), stored(0)).unwrap();
        let refused = r.reserve("alice", &QUOTAS, instances(6), stored(0));
        assert!(matches!(refused, Err(ApiError::QuotaExceeded(_))), "6 stored-or-reserved and 6 more pass 10");
        assert_eq!(r.reserved("alice"), instances(6), "a refused check reserves nothing");
        let second = r.reserve("alice", &QUOTAS, instances(4), stored(0)).unwrap();
        assert!(r.reserve("bob", &QUOTAS, instances(10), stored(0)).is_ok(), "another owner has his own count");
        assert_eq!(r.reserved("bob"), Usage::default(), "dropped at once");

        drop(first);
        assert_eq!(r.reserved("alice"), instances(4));
        // The first write committed: its instances are stored now, no longer reserved.
        assert!(r.reserve("alice", &QUOTAS, instances(1), stored(6)).is_err(), "6 stored, 4 reserved");
        drop(second);
        assert_eq!(r.reserved("alice"), Usage::default());
        assert!(r.reserve("alice", &QUOTAS, instances(4), stored(6)).is_ok());
    }

    /// A check does not wait for the write of an earlier granted one (it used to hold the
    /// owner's lock until that write committed, so one user's requests committed one by one).
    #[test]
    fn a_check_does_not_wait_for_an_earlier_grant_of_the_owner() {
        let r = std::sync::Arc::new(Reservations::default());
        let _writing = r.reserve("alice", &QUOTAS, instances(2), stored(0)).unwrap();
        let (done, answered) = std::sync::mpsc::channel();
        let other = r.clone();
        std::thread::spawn(move || {
            let held = other.reserve("alice", &QUOTAS, instances(2), stored(0));
            let _ = done.send((held.is_ok(), other.reserved("alice")));
        });
        let (granted, reserved) =
            answered.recv_timeout(std::time::Duration::from_secs(10)).expect("the second check answers meanwhile");
        assert!(granted);
        assert_eq!(reserved, instances(4), "both reserved while the second is held");
    }

    #[test]
    fn a_failing_count_refuses_and_reserves_nothing() {
        let r = Reservations::default();
        let failed = r.reserve("alice", &QUOTAS, instances(1), || Err(ApiError::Internal("store down".into())));
        assert!(matches!(failed, Err(ApiError::Internal(_))));
        assert_eq!(r.reserved("alice"), Usage::default());
    }
}
