//! Small state files in the data directory. Writes go to a temporary file that is renamed over
//! the old one, so a crash leaves either the old or the new content, never half of it; the files
//! hold a secret, so they are private to the worker's user.

use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Replaces `path` with `bytes` atomically, mode 0600. Runs on the blocking pool.
pub(crate) async fn write_private(path: &Path, bytes: Vec<u8>) -> io::Result<()> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || write_private_blocking(&path, &bytes))
        .await
        .map_err(|e| io::Error::other(format!("writer task failed: {e}")))?
}

/// On failure (a full disk) the old file is left as it was and the partial temporary one is
/// removed, so it holds no space.
pub(crate) fn write_private_blocking(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = temp_path(path);
    let written = (|| {
        let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// The file's content, or `None` if it does not exist.
pub(crate) async fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match tokio::fs::read(path).await {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[tokio::test]
    async fn writes_atomically_and_privately() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.json");
        assert_eq!(read_optional(&path).await.unwrap(), None);
        write_private(&path, b"one".to_vec()).await.unwrap();
        write_private(&path, b"two".to_vec()).await.unwrap();
        assert_eq!(read_optional(&path).await.unwrap().as_deref(), Some(&b"two"[..]));
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!temp_path(&path).exists());
    }
}
