//! What every request handler shares.

use std::sync::Arc;

use oak_store::RootStore;

use crate::auth::limiter::LoginLimiter;
use crate::auth::passwords::PasswordWork;
use crate::auth::tokens::TokenKeys;
use crate::fleet::Fleet;

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn RootStore>,
    pub tokens: Arc<TokenKeys>,
    pub limiter: Arc<LoginLimiter>,
    /// The bounded pool every argon2 hash and verification of a request runs in.
    pub passwords: Arc<PasswordWork>,
    pub fleet: Arc<Fleet>,
    /// Who may ask for privileged containers and reserved host ports.
    pub policy: Arc<oak_core::descriptor_policy::Policy>,
    /// Where a generated `Admin` password lies (if it does): removed once Admin's password
    /// changes, so no stale secret stays on disk.
    pub admin_password_file: Arc<std::path::PathBuf>,
    /// The registry behind `/metrics` and who may read it.
    pub metrics: Arc<crate::metrics::RootMetrics>,
    /// What granted quota checks reserved until their writes are done.
    pub quota_reservations: Arc<crate::quotas::Reservations>,
}

impl AppState {
    /// Call after `user`'s password changed.
    pub fn password_changed(&self, user: &str) {
        if user == crate::bootstrap::ADMIN_USER {
            crate::bootstrap::forget_generated_password(&self.admin_password_file);
        }
    }
}
