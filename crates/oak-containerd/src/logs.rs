//! Instance output: containerd's shim appends stdout and stderr to one file per instance
//! (`<dir>/<task id>.log`); the worker caps its size by copy-and-truncate rotation into
//! `<task id>.log.1`, so a chatty instance never fills the disk and the file the shim holds
//! open stays valid (it writes with `O_APPEND`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct LogFiles {
    dir: PathBuf,
    /// Size at which the current file is rotated.
    cap: u64,
}

impl LogFiles {
    pub fn new(dir: PathBuf, cap: u64) -> Self {
        Self { dir, cap: cap.max(4096) }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn current(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.log"))
    }

    pub fn rotated(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.log.1"))
    }

    /// Creates the directory and an empty log file (so reading before the first line works).
    pub fn prepare(&self, id: &str) -> io::Result<PathBuf> {
        fs::create_dir_all(&self.dir)?;
        let path = self.current(id);
        OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(path)
    }

    /// The last `bytes` bytes of output, across the rotation boundary.
    pub fn tail(&self, id: &str, bytes: usize) -> io::Result<String> {
        let current = read_tail(&self.current(id), bytes)?;
        let mut out = if current.len() < bytes {
            match read_tail(&self.rotated(id), bytes - current.len()) {
                Ok(older) => older,
                Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(e),
            }
        } else {
            Vec::new()
        };
        out.extend_from_slice(&current);
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Rotates the file when it passed the cap; returns whether it did.
    pub fn rotate_if_needed(&self, id: &str) -> io::Result<bool> {
        let path = self.current(id);
        let size = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        if size < self.cap {
            return Ok(false);
        }
        fs::copy(&path, self.rotated(id))?;
        OpenOptions::new().write(true).open(&path)?.set_len(0)?;
        Ok(true)
    }

    /// Removes both files of an instance.
    pub fn remove(&self, id: &str) {
        for path in [self.current(id), self.rotated(id)] {
            if let Err(e) = fs::remove_file(&path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove log file");
                }
            }
        }
    }
}

fn read_tail(path: &Path, bytes: usize) -> io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(bytes as u64);
    file.seek(SeekFrom::Start(start))?;
    let mut out = Vec::with_capacity((len - start) as usize);
    file.take(bytes as u64).read_to_end(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn tails_across_rotation_and_removes_everything() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogFiles::new(dir.path().join("logs"), 4096);
        let path = logs.prepare("a.instance.0").unwrap();
        assert_eq!(logs.tail("a.instance.0", 100).unwrap(), "");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&vec![b'x'; 5000]).unwrap();
        f.write_all(b"last line\n").unwrap();
        assert!(logs.tail("a.instance.0", 10).unwrap() == "last line\n");
        assert!(logs.rotate_if_needed("a.instance.0").unwrap());
        assert_eq!(fs::metadata(&path).unwrap().len(), 0);
        assert!(!logs.rotate_if_needed("a.instance.0").unwrap());
        // The shim's O_APPEND descriptor keeps writing at the new end.
        f.write_all(b"after\n").unwrap();
        assert_eq!(logs.tail("a.instance.0", 16).unwrap(), "last line\nafter\n");
        assert_eq!(logs.tail("a.instance.0", 100_000).unwrap().len(), 5016);
        logs.remove("a.instance.0");
        assert!(!path.exists() && !logs.rotated("a.instance.0").exists());
        assert!(logs.tail("a.instance.0", 1).is_err());
    }
}
