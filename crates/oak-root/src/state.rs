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
}
