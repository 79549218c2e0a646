//! The worker's static tunnel key: made on first start, kept in `<data>/tunnel.key` (0600, 64
//! hex digits) next to the node identity. A worker whose data dir was wiped makes a new key;
//! its node information then carries the new public key and the route tables follow.

use std::io;
use std::path::{Path, PathBuf};

use oak_net::secure::{StaticKey, KEY_LEN};

pub(crate) fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("tunnel.key")
}

/// The stored key, or a new one written first. A file that is not a key is an error, not
/// silently replaced: peers would lose the worker until its tables catch up.
pub(crate) fn load_or_create(data_dir: &Path) -> io::Result<StaticKey> {
    let path = path(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => StaticKey::parse(&text).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e} (delete the file to make a new key)", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut bytes = [0u8; KEY_LEN];
            getrandom::getrandom(&mut bytes).map_err(|e| io::Error::other(format!("no randomness for a key: {e}")))?;
            let key = StaticKey::from_bytes(bytes);
            std::fs::create_dir_all(data_dir)?;
            crate::files::write_private_blocking(&path, format!("{}\n", key.to_hex()).as_bytes())?;
            tracing::info!(public_key = %key.public(), "made a new overlay tunnel key");
            Ok(key)
        }
        Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn made_once_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(path(dir.path())).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create(dir.path()).unwrap().public(), first.public());
        // A wiped data dir: a new key.
        std::fs::remove_file(path(dir.path())).unwrap();
        assert_ne!(load_or_create(dir.path()).unwrap().public(), first.public());
        std::fs::write(path(dir.path()), "not a key").unwrap();
        let e = load_or_create(dir.path()).unwrap_err();
        assert!(e.to_string().contains("delete the file"), "{e}");
    }
}
