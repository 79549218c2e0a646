//! First-start set-up of a data directory: the token signing key and the `Admin` user in the
//! `root` organization.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use oak_api::model::{Member, Organization};
use oak_api::status::role;
use oak_store::{RootStore, UserRecord};

use crate::auth::passwords;
use crate::ids;

pub const ROOT_ORGANIZATION: &str = "root";
pub const ADMIN_USER: &str = "Admin";
const KEY_FILE: &str = "jwt.key";

/// Reads the signing key from the data directory, creating it (mode 0600) at first start.
pub fn signing_key(data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    let path = data_dir.join(KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let key = hex::decode(text.trim()).with_context(|| format!("{} is not a hex key", path.display()))?;
            anyhow::ensure!(key.len() >= 32, "{} holds a key shorter than 32 bytes", path.display());
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = vec![0u8; 32];
            ids::random_bytes(&mut key);
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&path).with_context(|| format!("cannot create {}", path.display()))?;
            writeln!(file, "{}", hex::encode(&key)).with_context(|| format!("cannot write {}", path.display()))?;
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Creates the `root` organization and the `Admin` user holding every role, if absent.
pub fn ensure_admin(store: &dyn RootStore, admin_password: Option<&str>) -> anyhow::Result<()> {
    let admin = match store.user_by_name(ADMIN_USER)? {
        Some(user) => user,
        None => {
            let password = match admin_password {
                Some(p) => {
                    passwords::check_strength(p).map_err(|m| anyhow::anyhow!("--admin-password: {m}"))?;
                    p.to_string()
                }
                None => {
                    tracing::warn!(
                        "created user Admin with the default password \"Admin\": change it now \
                         (oakestra login, then POST /api/user/Admin) or start with --admin-password"
                    );
                    "Admin".to_string()
                }
            };
            let user = UserRecord {
                id: ids::new_id(),
                name: ADMIN_USER.into(),
                email: String::new(),
                created_at: ids::created_at_now(),
                password_hash: passwords::hash(&password),
            };
            store.insert_user(&user)?;
            user
        }
    };
    if store.organization_by_name(ROOT_ORGANIZATION)?.is_none() {
        store.insert_organization(&Organization {
            id: ids::new_id(),
            name: ROOT_ORGANIZATION.into(),
            member: vec![Member { user_id: admin.id, roles: role::ALL.iter().map(|r| r.to_string()).collect() }],
        })?;
    }
    Ok(())
}
