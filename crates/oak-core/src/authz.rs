//! Who may do what: roles and ownership rules of the public API.
//!
//! Roles are held per organization; the caller's are those of the organization its token was
//! issued for, read from the store on every request. `Admin` may do everything; the other roles
//! grant the capabilities below. Objects owned by another user are reported as not visible (a 404
//! at the API), so that ids of other users' objects cannot be probed.

use oak_api::status::role;

/// The caller of an API request: its account and its roles in the token's organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: String,
    pub username: String,
    /// Roles in organization `org_id`.
    pub roles: Vec<String>,
    /// Organization the token was issued for.
    pub org_id: String,
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
/// Operations on user accounts are decided by [`authorize_user_op`].
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
    /// Create, change, delete and list organizations (and so their members' roles).
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
        Action::ManageOrganizations => any_of(ADMIN_ONLY),
        Action::ViewClusters => Ok(()),
        Action::ManageClusters => any_of(INFRA_ROLES),
    }
}

/// A user account an operation touches, as the store describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserTarget<'a> {
    pub user_id: &'a str,
    /// Organizations the account is a member of.
    pub org_ids: &'a [String],
    /// Holds the Admin role in some organization.
    pub is_admin: bool,
}

/// What a user endpoint does to which account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserOp<'a> {
    /// List the members of organization `org_id`, or (`None`) every account the caller may read.
    List {
        org_id: Option<&'a str>,
    },
    /// See the account's profile and roles; also whether it shows in a list of all accounts.
    Read(UserTarget<'a>),
    /// Change e-mail, reset the password or replace roles; `grants_admin`: the new roles hold Admin.
    Update {
        target: UserTarget<'a>,
        grants_admin: bool,
    },
    Delete(UserTarget<'a>),
    /// Change the account's password knowing the old one.
    ChangeOwnPassword(UserTarget<'a>),
    /// Create an account in the caller's organization, holding Admin if `grants_admin`.
    Register {
        grants_admin: bool,
    },
}

/// Decides every operation on user accounts, roles and organization scope together.
///
/// An `Organization_Admin` reads the members of their organization and manages (changes,
/// resets, deletes, creates) only accounts that belong to no other organization and do not hold
/// `Admin` anywhere: a password reset acts on the whole account, so managing a member of another
/// organization, or an Admin, would reach beyond their own. Only `Admin` grants `Admin`.
/// Accounts outside the caller's organization are not visible (404) to an `Organization_Admin`.
pub fn authorize_user_op(who: &Principal, op: UserOp<'_>) -> Result<(), Denied> {
    let admin = who.is_admin();
    let manager = || {
        if admin || who.has_role(role::ORGANIZATION_ADMIN) {
            Ok(())
        } else {
            Err(Denied::MissingRole(USER_ADMIN_ROLES))
        }
    };
    let visible = |t: &UserTarget<'_>| {
        if admin || t.org_ids.contains(&who.org_id) {
            Ok(())
        } else {
            Err(Denied::NotVisible)
        }
    };
    let manage = |t: &UserTarget<'_>, grants_admin: bool| {
        manager()?;
        visible(t)?;
        let only_ours = t.org_ids.iter().all(|o| *o == who.org_id);
        if admin || (only_ours && !t.is_admin && !grants_admin) {
            Ok(())
        } else {
            Err(Denied::MissingRole(ADMIN_ONLY))
        }
    };
    match op {
        UserOp::List { org_id } => {
            manager()?;
            match org_id {
                Some(org) if !admin && org != who.org_id => Err(Denied::NotVisible),
                _ => Ok(()),
            }
        }
        UserOp::Read(t) if t.user_id == who.user_id => Ok(()),
        UserOp::Read(t) => manager().and_then(|()| visible(&t)),
        UserOp::Update { target, grants_admin } => manage(&target, grants_admin),
        UserOp::Delete(t) => manage(&t, false),
        UserOp::ChangeOwnPassword(t) if t.user_id == who.user_id => Ok(()),
        UserOp::ChangeOwnPassword(_) => Err(Denied::MissingRole(&[])),
        UserOp::Register { grants_admin } => {
            manager()?;
            if grants_admin && !admin {
                Err(Denied::MissingRole(ADMIN_ONLY))
            } else {
                Ok(())
            }
        }
    }
}

/// The names among `roles` that are not one of the four known roles.
pub fn unknown_roles(roles: &[String]) -> Vec<String> {
    roles.iter().filter(|r| !role::ALL.contains(&r.as_str())).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, org: &str, roles: &[&str]) -> Principal {
        Principal {
            user_id: format!("id-{name}"),
            username: name.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            org_id: org.into(),
        }
    }

    #[test]
    fn role_and_ownership_table() {
        use Action::*;
        let admin = p("Admin", "root", &[role::ADMIN]);
        let alice = p("alice", "root", &[role::APPLICATION_PROVIDER]);
        let orgadmin = p("olga", "root", &[role::ORGANIZATION_ADMIN]);
        let infra = p("ivan", "root", &[role::INFRASTRUCTURE_PROVIDER]);
        let nobody = p("nemo", "root", &[]);
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

    /// `o` allowed, `n` not visible (404), `u` needs a user-admin role, `a` needs Admin,
    /// `s` only for one's own account (403 both).
    fn expected(code: u8) -> Result<(), Denied> {
        match code {
            b'o' => Ok(()),
            b'n' => Err(Denied::NotVisible),
            b'u' => Err(Denied::MissingRole(USER_ADMIN_ROLES)),
            b'a' => Err(Denied::MissingRole(ADMIN_ONLY)),
            b's' => Err(Denied::MissingRole(&[])),
            other => panic!("unknown code {}", other as char),
        }
    }

    #[test]
    fn user_operations_for_every_role_and_target() {
        let orgs = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (acme, beta, both, none) = (orgs(&["acme"]), orgs(&["beta"]), orgs(&["acme", "beta"]), orgs(&[]));
        let target = |user_id, org_ids, is_admin| UserTarget { user_id, org_ids, is_admin };
        let admin = p("Admin", "acme", &[role::ADMIN]);
        let olga = p("olga", "acme", &[role::ORGANIZATION_ADMIN]);
        let otto = p("otto", "beta", &[role::ORGANIZATION_ADMIN]);
        let alice = p("alice", "acme", &[role::APPLICATION_PROVIDER]);
        let ivan = p("ivan", "acme", &[role::INFRASTRUCTURE_PROVIDER]);
        let nemo = p("nemo", "acme", &[]);
        fn own<'a>(who: &'a Principal, org_ids: &'a [String]) -> UserTarget<'a> {
            UserTarget { user_id: &who.user_id, org_ids, is_admin: who.is_admin() }
        }
        let targets = [
            ("plain acme member", target("id-bob", &acme, false)),
            ("plain beta member", target("id-bea", &beta, false)),
            ("Admin holder in acme", target("id-root2", &acme, true)),
            ("user in no organization", target("id-lost", &none, false)),
            ("member of acme and beta", target("id-dual", &both, false)),
        ];
        // Per caller: self, then the targets above; each five codes for
        // Read, Update, Update granting Admin, Delete, ChangeOwnPassword.
        let table: [(&Principal, [&str; 6]); 6] = [
            (&admin, ["ooooo", "oooos", "oooos", "oooos", "oooos", "oooos"]),
            (&olga, ["ooaoo", "ooaos", "nnnns", "oaaas", "nnnns", "oaaas"]),
            (&otto, ["ooaoo", "nnnns", "ooaos", "nnnns", "nnnns", "oaaas"]),
            (&alice, ["ouuuo", "uuuus", "uuuus", "uuuus", "uuuus", "uuuus"]),
            (&ivan, ["ouuuo", "uuuus", "uuuus", "uuuus", "uuuus", "uuuus"]),
            (&nemo, ["ouuuo", "uuuus", "uuuus", "uuuus", "uuuus", "uuuus"]),
        ];
        for (who, rows) in table {
            let own_orgs = if who.org_id == "beta" { &beta } else { &acme };
            let all = std::iter::once(("self", own(who, own_orgs))).chain(targets.iter().copied());
            for ((label, t), codes) in all.zip(rows) {
                let ops = [
                    UserOp::Read(t),
                    UserOp::Update { target: t, grants_admin: false },
                    UserOp::Update { target: t, grants_admin: true },
                    UserOp::Delete(t),
                    UserOp::ChangeOwnPassword(t),
                ];
                for (op, code) in ops.into_iter().zip(codes.bytes()) {
                    assert_eq!(authorize_user_op(who, op), expected(code), "{} on {label}: {op:?}", who.username);
                }
            }
        }
        // Listing and registering: per caller, List all / List acme / List beta / Register /
        // Register granting Admin.
        let table: [(&Principal, &str); 6] = [
            (&admin, "ooooo"),
            (&olga, "oonoa"),
            (&otto, "onooa"),
            (&alice, "uuuuu"),
            (&ivan, "uuuuu"),
            (&nemo, "uuuuu"),
        ];
        for (who, codes) in table {
            let ops = [
                UserOp::List { org_id: None },
                UserOp::List { org_id: Some("acme") },
                UserOp::List { org_id: Some("beta") },
                UserOp::Register { grants_admin: false },
                UserOp::Register { grants_admin: true },
            ];
            for (op, code) in ops.into_iter().zip(codes.bytes()) {
                assert_eq!(authorize_user_op(who, op), expected(code), "{} doing {op:?}", who.username);
            }
        }
    }

    #[test]
    fn unknown_roles_are_named() {
        let roles = vec!["Admin".to_string(), "Root".to_string()];
        assert_eq!(unknown_roles(&roles), vec!["Root".to_string()]);
    }
}
