//! Instance output: containerd's shim appends stdout and stderr to one file per instance
//! (`<dir>/<task id>.log`); the worker caps its size by copy-and-truncate rotation into
//! `<task id>.log.1`, so a chatty instance never fills the disk and the file the shim holds
//! open stays valid (it writes with `O_APPEND`).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use oak_api::node::LogCursor;
use oak_runtime::{LogChunk, RuntimeError};

fn runtime_error(id: &str, e: io::Error) -> RuntimeError {
    match e.kind() {
        io::ErrorKind::NotFound => RuntimeError::NotFound(id.to_string()),
        _ => RuntimeError::Io(e),
    }
}

#[derive(Debug)]
pub struct LogFiles {
    dir: PathBuf,
    /// Size at which the current file is rotated.
    cap: u64,
    /// Rotations per instance since this process started: the generation part of a cursor, so
    /// a follower knows whether its offset is in the current or the rotated file.
    generations: Mutex<HashMap<String, u64>>,
}

impl LogFiles {
    pub fn new(dir: PathBuf, cap: u64) -> Self {
        Self { dir, cap: cap.max(4096), generations: Mutex::new(HashMap::new()) }
    }

    fn generation(&self, id: &str) -> u64 {
        self.generations.lock().unwrap_or_else(|p| p.into_inner()).get(id).copied().unwrap_or(0)
    }

    /// Output after `from` (at most `max` bytes), or the last `max` bytes without a cursor, and
    /// the cursor to continue from. A cursor more than one rotation old reads the tail again.
    pub fn read(&self, id: &str, from: Option<LogCursor>, max: usize) -> io::Result<(String, LogCursor)> {
        let current = self.current(id);
        let generation = self.generation(id);
        let len = fs::metadata(&current)?.len();
        let (bytes, cursor) = match from {
            Some(c) if c.generation == generation => {
                // An offset past the end means the file was truncated behind our back.
                let start = if c.offset > len { 0 } else { c.offset };
                let bytes = read_range(&current, start, max)?;
                let next = start + bytes.len() as u64;
                (bytes, LogCursor { generation, offset: next })
            }
            Some(c) if c.generation + 1 == generation => {
                let mut bytes = match read_range(&self.rotated(id), c.offset, max) {
                    Ok(b) => b,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
                    Err(e) => return Err(e),
                };
                let rotated_len = fs::metadata(self.rotated(id)).map(|m| m.len()).unwrap_or(0);
                if c.offset + (bytes.len() as u64) < rotated_len {
                    let next = c.offset + bytes.len() as u64;
                    (bytes, LogCursor { generation: c.generation, offset: next })
                } else {
                    let rest = read_range(&current, 0, max - bytes.len())?;
                    let next = rest.len() as u64;
                    bytes.extend_from_slice(&rest);
                    (bytes, LogCursor { generation, offset: next })
                }
            }
            _ => (read_tail(&current, max)?, LogCursor { generation, offset: len }),
        };
        Ok((String::from_utf8_lossy(&bytes).into_owned(), cursor))
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

    /// [`LogFiles::tail`] as a runtime answers it: a missing log is the instance not being there.
    pub fn runtime_tail(&self, id: &str, bytes: usize) -> Result<String, RuntimeError> {
        self.tail(id, bytes).map_err(|e| runtime_error(id, e))
    }

    /// [`LogFiles::read`] as a runtime answers it.
    pub fn runtime_read(&self, id: &str, from: Option<LogCursor>, max: usize) -> Result<LogChunk, RuntimeError> {
        let (data, cursor) = self.read(id, from, max).map_err(|e| runtime_error(id, e))?;
        Ok(LogChunk { data, cursor })
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
        *self.generations.lock().unwrap_or_else(|p| p.into_inner()).entry(id.to_string()).or_insert(0) += 1;
        Ok(true)
    }

    /// Removes both files of an instance.
    pub fn remove(&self, id: &str) {
        self.generations.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        for path in [self.current(id), self.rotated(id)] {
            if let Err(e) = fs::remove_file(&path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove log file");
                }
            }
        }
    }
}

fn read_range(path: &Path, start: u64, max: usize) -> io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(start))?;
    let mut out = Vec::new();
    file.take(max as u64).read_to_end(&mut out)?;
    Ok(out)
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

    #[test]
    fn followers_continue_across_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogFiles::new(dir.path().to_path_buf(), 4096);
        let id = "f.instance.1";
        let path = logs.prepare(id).unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"one\ntwo\n").unwrap();
        let (data, c1) = logs.read(id, None, 4).unwrap();
        assert_eq!((data.as_str(), c1), ("two\n", LogCursor { generation: 0, offset: 8 }));
        let (data, c2) = logs.read(id, Some(c1), 100).unwrap();
        assert_eq!((data.as_str(), c2), ("", c1), "nothing new");
        f.write_all(b"three\n").unwrap();
        let (data, c3) = logs.read(id, Some(c2), 3).unwrap();
        assert_eq!((data.as_str(), c3.offset), ("thr", 11), "bounded by max");
        f.write_all(&vec![b'x'; 5000]).unwrap();
        assert!(logs.rotate_if_needed(id).unwrap());
        f.write_all(b"after\n").unwrap();
        // The rest of the rotated file, then the new one.
        let (data, c4) = logs.read(id, Some(c3), 10_000).unwrap();
        assert!(data.starts_with("ee\nxxx") && data.ends_with("xxafter\n"), "{data:?}");
        assert_eq!(c4, LogCursor { generation: 1, offset: 6 });
        // A cursor from before two rotations reads the tail.
        f.write_all(&vec![b'y'; 5000]).unwrap();
        assert!(logs.rotate_if_needed(id).unwrap());
        f.write_all(b"latest\n").unwrap();
        let (data, c5) = logs.read(id, Some(c3), 100).unwrap();
        assert_eq!((data.as_str(), c5), ("latest\n", LogCursor { generation: 2, offset: 7 }));
        // A truncated file is read from its start.
        let (data, _) = logs.read(id, Some(LogCursor { generation: 2, offset: 999 }), 100).unwrap();
        assert_eq!(data, "latest\n");
        logs.remove(id);
        assert!(logs.read(id, None, 10).is_err());
    }
}
