//! The tokens `oakestra login` saves for the other commands, in a file only the user can read.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};

/// Name of the file inside the config directory.
pub const FILE_NAME: &str = "credentials.json";

/// A login to one root: which root, as whom, and the tokens to use and to renew with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Credentials {
    pub url: String,
    pub username: String,
    pub token: String,
    pub refresh_token: String,
    /// The CA certificate (PEM file) `login --ca-cert` trusted for this root's HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
    /// SHA-256 of the root's HTTPS certificate at login; a different one later is warned about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

/// The config directory: `$OAKESTRA_CONFIG_DIR`, else `$XDG_CONFIG_HOME/oakestra`, else
/// `$HOME/.config/oakestra`. Takes the environment as a function so tests need not mutate the
/// process environment. Empty values count as unset, and a relative `XDG_CONFIG_HOME` is ignored
/// as the XDG spec requires.
pub fn config_dir_from(env: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let set = |key: &str| env(key).filter(|v| !v.is_empty()).map(PathBuf::from);
    set("OAKESTRA_CONFIG_DIR")
        .or_else(|| set("XDG_CONFIG_HOME").filter(|p| p.is_absolute()).map(|p| p.join("oakestra")))
        .or_else(|| set("HOME").map(|p| p.join(".config").join("oakestra")))
}

/// Where the credentials of this process' user live.
pub fn default_path() -> Result<PathBuf> {
    config_dir_from(|key| std::env::var_os(key))
        .map(|dir| dir.join(FILE_NAME))
        .ok_or_else(|| anyhow!("cannot locate a config directory: set OAKESTRA_CONFIG_DIR or HOME"))
}

impl Credentials {
    /// The saved credentials, or `None` when nobody has logged in yet.
    pub fn load(path: &Path) -> Result<Option<Self>> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let creds = serde_json::from_str(&text)
            .with_context(|| format!("{} is damaged, run \"oakestra login\" again", path.display()))?;
        Ok(Some(creds))
    }

    /// Writes the file with mode 0600 (the tokens grant the user's rights) by writing a private
    /// temporary file next to it and renaming it over, so a crash never leaves half a file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        create_private_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let tmp = path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let _ = std::fs::remove_file(&tmp);
            let mut file = private_file(&tmp)?;
            file.write_all(serde_json::to_string_pretty(self)?.as_bytes())?;
            file.write_all(b"\n")?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().with_context(|| format!("cannot save credentials to {}", path.display()))
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(unix)]
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)
}

#[cfg(not(unix))]
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().write(true).create_new(true).open(path)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = vars.iter().map(|(k, v)| (k.to_string(), OsString::from(v))).collect();
        move |key| map.get(key).cloned()
    }

    #[test]
    fn explicit_dir_wins() {
        let e = env(&[("OAKESTRA_CONFIG_DIR", "/etc/oak"), ("XDG_CONFIG_HOME", "/x"), ("HOME", "/home/u")]);
        assert_eq!(config_dir_from(e), Some(PathBuf::from("/etc/oak")));
    }

    #[test]
    fn xdg_then_home() {
        let e = env(&[("XDG_CONFIG_HOME", "/x"), ("HOME", "/home/u")]);
        assert_eq!(config_dir_from(e), Some(PathBuf::from("/x/oakestra")));
        let e = env(&[("HOME", "/home/u")]);
        assert_eq!(config_dir_from(e), Some(PathBuf::from("/home/u/.config/oakestra")));
    }

    #[test]
    fn empty_and_relative_values_are_skipped() {
        let e = env(&[("OAKESTRA_CONFIG_DIR", ""), ("XDG_CONFIG_HOME", "rel"), ("HOME", "/home/u")]);
        assert_eq!(config_dir_from(e), Some(PathBuf::from("/home/u/.config/oakestra")));
        assert_eq!(config_dir_from(env(&[])), None);
    }

    fn sample() -> Credentials {
        Credentials {
            url: "http://127.0.0.1:10000".into(),
            username: "Admin".into(),
            token: "access".into(),
            refresh_token: "refresh".into(),
            ca_cert: None,
            fingerprint: None,
        }
    }

    #[test]
    fn save_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join(FILE_NAME);
        assert_eq!(Credentials::load(&path).unwrap(), None);
        sample().save(&path).unwrap();
        assert_eq!(Credentials::load(&path).unwrap(), Some(sample()));
        let updated = Credentials { token: "renewed".into(), ..sample() };
        updated.save(&path).unwrap();
        assert_eq!(Credentials::load(&path).unwrap(), Some(updated));
        assert!(!path.with_extension("json.tmp").exists());
    }

    #[cfg(unix)]
    #[test]
    fn saved_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        sample().save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn damaged_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, "{not json").unwrap();
        let err = Credentials::load(&path).unwrap_err();
        assert!(format!("{err:#}").contains("oakestra login"), "{err:#}");
    }
}
