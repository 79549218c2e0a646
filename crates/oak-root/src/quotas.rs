//! The per-user quota check of the handlers that make a user hold more (rules in
//! `oak_core::quotas`). Admins are exempt. Two concurrent requests of one user may both pass
//! and overshoot by one request's worth; the quota bounds growth, not an exact count.

use oak_core::quotas::Usage;

use crate::auth::extract::Caller;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Refuses with 429 when `adding` would take `owner` (the user the objects belong to) beyond a
/// quota.
pub fn check(st: &AppState, caller: &Caller, owner: &str, adding: Usage) -> ApiResult<()> {
    if caller.is_admin() || adding == Usage::default() {
        return Ok(());
    }
    // Counted in the store: loading every service and instance of the user took a scan per request.
    let u = st.store.owner_usage(owner)?;
    let held = Usage { services: u.services, instances: u.instances, service_ips: u.services + u.closest_ips };
    oak_core::quotas::check(&st.fleet.quotas(), held, adding).map_err(|e| ApiError::QuotaExceeded(e.to_string()))
}
