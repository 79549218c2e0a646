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

/// File in the data directory holding the generated `Admin` password (mode 0600).
pub const ADMIN_PASSWORD_FILE: &str = "admin-password";

/// The default `Admin` password, kept for compatibility with the original only while the API
/// listens on loopback.
const DEFAULT_ADMIN_PASSWORD: &str = "Admin";

/// Creates the `root` organization and the `Admin` user holding every role, if absent.
///
/// Admin's password is `admin_password` if given; otherwise the original's `Admin` while the
/// API listens on loopback only (`loopback`), and else a random one written to
/// `<data_dir>/admin-password` (0600) before the user is stored. Later starts change nothing.
pub fn ensure_admin(
    store: &dyn RootStore,
    admin_password: Option<&str>,
    data_dir: &Path,
    loopback: bool,
) -> anyhow::Result<()> {
    let admin = match store.user_by_name(ADMIN_USER)? {
        Some(user) => {
            if admin_password.is_none() && !loopback && passwords::verify(DEFAULT_ADMIN_PASSWORD, &user.password_hash) {
                tracing::warn!(
                    "user Admin still has the default password \"Admin\" and the API listens beyond loopback: \
                     change it now (POST /api/user/Admin)"
                );
            }
            user
        }
        None => {
            let password = match admin_password {
                Some(p) => {
                    passwords::check_strength(p).map_err(|m| anyhow::anyhow!("--admin-password: {m}"))?;
                    p.to_string()
                }
                None if loopback => {
                    tracing::warn!(
                        "created user Admin with the default password \"Admin\" (the API listens on loopback only): \
                         change it (oakestra login, then POST /api/user/Admin) or start with --admin-password"
                    );
                    DEFAULT_ADMIN_PASSWORD.to_string()
                }
                None => {
                    let password = generated_password();
                    let path = data_dir.join(ADMIN_PASSWORD_FILE);
                    write_private(&path, &format!("{password}\n"))?;
                    tracing::warn!(file = %path.display(),
                        "created user Admin with a generated password, written to {}", path.display());
                    password
                }
            };
            let user = UserRecord {
                id: ids::new_id(),
                name: ADMIN_USER.into(),
                email: String::new(),
                created_at: ids::created_at_now(),
                password_hash: passwords::hash(&password),
                token_generation: 0,
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

/// Removes the generated password file (Admin has chosen a password of their own).
pub fn forget_generated_password(file: &Path) {
    match std::fs::remove_file(file) {
        Ok(()) => tracing::info!(file = %file.display(), "Admin changed the generated password: file removed"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(file = %file.display(), "cannot remove the stale Admin password file: {e}"),
    }
}

/// 24 random characters from an alphabet without look-alikes (about 136 bits).
fn generated_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 24];
    ids::random_bytes(&mut bytes);
    bytes.iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect()
}

/// Writes `text` to `path`, readable by the owner only (also when the file existed).
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).with_context(|| format!("cannot create {}", path.display()))?;
    set_mode(path, 0o600)?;
    file.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The database file of a data directory.
pub const DATABASE_FILE: &str = "root.db";

/// Creates the data directory (0700) and the database file (0600) if absent, and tightens both,
/// and SQLite's `-wal`/`-shm` files, if they exist with looser modes: the database holds
/// password hashes and the directory the signing key.
pub fn secure_data_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create data directory {}", dir.display()))?;
    set_mode(dir, 0o700)?;
    let db = dir.join(DATABASE_FILE);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(&db).with_context(|| format!("cannot create {}", db.display()))?;
    for suffix in ["", "-wal", "-shm"] {
        let path = dir.join(format!("{DATABASE_FILE}{suffix}"));
        if path.exists() {
            set_mode(&path, 0o600)?;
        }
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the mode of {} to {mode:o}", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}
