//! What the store says about accounts for authorization: roles per organization, and the
//! memberships [`oak_core::authz::authorize_user_op`] decides on.

use oak_api::model::Organization;
use oak_api::status::role;
use oak_core::authz::UserTarget;
use oak_store::{RootStore, StoreError};

/// The roles `user_id` holds in `org`.
pub fn roles_in(org: &Organization, user_id: &str) -> Vec<String> {
    org.member.iter().find(|m| m.user_id == user_id).map(|m| m.roles.clone()).unwrap_or_default()
}

/// The roles `user_id` holds now in organization `org_id` (none if it is gone).
pub fn current_roles(store: &dyn RootStore, org_id: &str, user_id: &str) -> Result<Vec<String>, StoreError> {
    Ok(store.organization_by_id(org_id)?.map(|org| roles_in(&org, user_id)).unwrap_or_default())
}

/// An account's memberships: the organizations it belongs to and whether it holds Admin in any.
#[derive(Debug, Clone, Default)]
pub struct Memberships {
    pub user_id: String,
    pub org_ids: Vec<String>,
    pub is_admin: bool,
}

impl Memberships {
    /// Of `user_id` among `orgs` (all organizations).
    pub fn of(user_id: &str, orgs: &[Organization]) -> Self {
        let mut out = Memberships { user_id: user_id.to_string(), ..Default::default() };
        for org in orgs {
            if let Some(m) = org.member.iter().find(|m| m.user_id == user_id) {
                out.org_ids.push(org.id.clone());
                out.is_admin |= m.roles.iter().any(|r| r == role::ADMIN);
            }
        }
        out
    }

    /// Read from the store.
    pub fn load(store: &dyn RootStore, user_id: &str) -> Result<Self, StoreError> {
        Ok(Self::of(user_id, &store.list_organizations()?))
    }

    pub fn target(&self) -> UserTarget<'_> {
        UserTarget { user_id: &self.user_id, org_ids: &self.org_ids, is_admin: self.is_admin }
    }
}
