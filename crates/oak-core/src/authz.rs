//! Who may do what: roles and ownership rules of the public API.
//!
//! Roles are held per organization and carried in the access token. `Admin` may do everything;
//! the other roles grant the capabilities below. Objects owned by another user are reported as
//! not visible (a 404 at the API), so that ids of other users' objects cannot be probed.

use oak_api::status::role;

/// The caller of an API request, as its access token describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub username: String,
    /// Roles in the organization the token was issued for.
    pub roles: Vec<String>,
}

impl Principal {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    pub fn is_admin(&self) -> bool {
        self.has_role(role::ADMIN)
    }
}

/// Something a caller wants to do, with the owner of the object it touches where there is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// Create applications and their services.
    CreateApplication,
    /// Read an application or service owned by `owner`.
    ReadOwned { owner: &'a str },
    /// Change or delete an application or service (and its instances) owned by `owner`.
    ModifyOwned { owner: &'a str },
    /// List every user's applications and services.
    ListAllApplications,
    /// Read the user account `name` (profile, permissions).
    ReadUser { name: &'a str },
    /// Change the password of the account `name` knowing the old one.
    ChangeOwnPassword { name: &'a str },
    /// Register, update, delete and list users of the caller's organization.
    ManageUsers,
    /// Create, change, delete and list organizations.
    ManageOrganizations,
    /// See clusters and their resources.
    ViewClusters,
    /// Issue cluster join tokens, remove clusters.
    ManageClusters,
}

/// Why an action is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// The caller lacks a role; answered with 403 naming the roles that would allow it.
    MissingRole(&'static [&'static str]),
    /// The object belongs to someone else; answered as if it did not exist (404).
    NotVisible,
}

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Denied::MissingRole(roles) => write!(f, "this needs one of the roles {}", roles.join(", ")),
            Denied::NotVisible => write!(f, "not found"),
        }
    }
}

const APP_ROLES: &[&str] = &[role::ADMIN, role::ORGANIZATION_ADMIN, role::APPLICATION_PROVIDER];
const USER_ADMIN_ROLES: &[&str] = &[role::ADMIN, role::ORGANIZATION_ADMIN];
const ADMIN_ONLY: &[&str] = &[role::ADMIN];
const INFRA_ROLES: &[&str] = &[role::ADMIN, role::INFRASTRUCTURE_PROVIDER];

/// Decides whether `who` may perform `action`.
pub fn authorize(who: &Principal, action: Action<'_>) -> Result<(), Denied> {
    let any_of = |roles: &'static [&'static str]| {
        if roles.iter().any(|r| who.has_role(r)) {
            Ok(())
        } else {
            Err(Denied::MissingRole(roles))
        }
    };
    match action {
        Action::CreateApplication => any_of(APP_ROLES),
        Action::ReadOwned { owner } | Action::ModifyOwned { owner } => {
            if who.is_admin() || who.username == owner {
                Ok(())
            } else {
                Err(Denied::NotVisible)
            }
        }
        Action::ListAllApplications => any_of(ADMIN_ONLY),
        Action::ReadUser { name } => {
            if who.username == name {
                Ok(())
            } else {
                any_of(USER_ADMIN_ROLES)
            }
        }
        Action::ChangeOwnPassword { name } => {
            if who.username == name {
                Ok(())
            } else {
                Err(Denied::MissingRole(&[]))
            }
        }
        Action::ManageUsers => any_of(USER_ADMIN_ROLES),
        Action::ManageOrganizations => any_of(ADMIN_ONLY),
        Action::ViewClusters => Ok(()),
        Action::ManageClusters => any_of(INFRA_ROLES),
    }
}

/// True if every name is one of the four known roles.
pub fn unknown_roles(roles: &[String]) -> Vec<String> {
    roles.iter().filter(|r| !role::ALL.contains(&r.as_str())).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, roles: &[&str]) -> Principal {
        Principal { username: name.into(), roles: roles.iter().map(|r| r.to_string()).collect() }
    }

    #[test]
    fn role_and_ownership_table() {
        use Action::*;
        let admin = p("Admin", &[role::ADMIN]);
        let alice = p("alice", &[role::APPLICATION_PROVIDER]);
        let orgadmin = p("olga", &[role::ORGANIZATION_ADMIN]);
        let infra = p("ivan", &[role::INFRASTRUCTURE_PROVIDER]);
        let nobody = p("nemo", &[]);
        let ok = Ok(());
        let hidden = Err(Denied::NotVisible);
        let cases: Vec<(&Principal, Action, Result<(), Denied>)> = vec![
            (&admin, CreateApplication, ok.clone()),
            (&alice, CreateApplication, ok.clone()),
            (&orgadmin, CreateApplication, ok.clone()),
            (&infra, CreateApplication, Err(Denied::MissingRole(APP_ROLES))),
            (&nobody, CreateApplication, Err(Denied::MissingRole(APP_ROLES))),
            (&alice, ReadOwned { owner: "alice" }, ok.clone()),
            (&alice, ReadOwned { owner: "bob" }, hidden.clone()),
            (&alice, ModifyOwned { owner: "alice" }, ok.clone()),
            (&alice, ModifyOwned { owner: "bob" }, hidden.clone()),
            (&admin, ModifyOwned { owner: "bob" }, ok.clone()),
            (&orgadmin, ReadOwned { owner: "bob" }, hidden.clone()),
            (&admin, ListAllApplications, ok.clone()),
            (&alice, ListAllApplications, Err(Denied::MissingRole(ADMIN_ONLY))),
            (&alice, ReadUser { name: "alice" }, ok.clone()),
            (&alice, ReadUser { name: "bob" }, Err(Denied::MissingRole(USER_ADMIN_ROLES))),
            (&orgadmin, ReadUser { name: "bob" }, ok.clone()),
            (&nobody, ChangeOwnPassword { name: "nemo" }, ok.clone()),
            (&admin, ChangeOwnPassword { name: "nemo" }, Err(Denied::MissingRole(&[]))),
            (&orgadmin, ManageUsers, ok.clone()),
            (&alice, ManageUsers, Err(Denied::MissingRole(USER_ADMIN_ROLES))),
            (&orgadmin, ManageOrganizations, Err(Denied::MissingRole(ADMIN_ONLY))),
            (&admin, ManageOrganizations, ok.clone()),
            (&nobody, ViewClusters, ok.clone()),
            (&infra, ManageClusters, ok.clone()),
            (&alice, ManageClusters, Err(Denied::MissingRole(INFRA_ROLES))),
        ];
        for (who, action, want) in cases {
            assert_eq!(authorize(who, action), want, "{} doing {:?}", who.username, action);
        }
    }

    #[test]
    fn unknown_roles_are_named() {
        let roles = vec!["Admin".to_string(), "Root".to_string()];
        assert_eq!(unknown_roles(&roles), vec!["Root".to_string()]);
    }
}
