//! What every request handler shares.

use std::sync::Arc;

use oak_store::RootStore;

use crate::auth::limiter::LoginLimiter;
use crate::auth::tokens::TokenKeys;
use crate::fleet::Fleet;

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn RootStore>,
    pub tokens: Arc<TokenKeys>,
    pub limiter: Arc<LoginLimiter>,
    pub fleet: Arc<Fleet>,
    /// Who may ask for privileged containers and reserved host ports.
    pub policy: Arc<oak_core::descriptor_policy::Policy>,
}
