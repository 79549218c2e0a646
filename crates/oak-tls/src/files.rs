//! Writing key material: private from the first byte (mode 0600), replaced atomically.

use std::io::Write;
use std::path::Path;

use crate::TlsError;

/// Writes `contents` to `path` with mode 0600 through a temporary file and a rename, so a crash
/// never leaves a half-written key and the key is never readable by others, not even briefly.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), TlsError> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp).map_err(|e| TlsError::io(&tmp, e))?;
    file.write_all(contents).and_then(|_| file.sync_all()).map_err(|e| TlsError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| TlsError::io(path, e))
}

/// Creates `dir` (and parents) with mode 0700, tightening it if it existed.
pub(crate) fn private_dir(dir: &Path) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(|e| TlsError::io(dir, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| TlsError::io(dir, e))?;
    }
    Ok(())
}

pub(crate) fn read(path: &Path) -> Result<Option<String>, TlsError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TlsError::io(path, e)),
    }
}
