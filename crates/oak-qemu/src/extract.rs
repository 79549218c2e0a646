//! Safe extraction of a kernel archive (`.tar.gz`): only regular files and directories, every
//! path relative and inside the target (no `..`, no absolute paths), no links or devices, at
//! most [`Limits::max_bytes`] unpacked and [`Limits::max_entries`] entries. The archive must hold
//! `kernel`; `initramfs.cpio`, `cmdline` and `files/` are optional.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_bytes: 1 << 30, max_entries: 10_000 }
    }
}

/// What an extracted archive offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Kernel arguments the archive asks for (its `cmdline` file), before the deployment's.
    pub cmdline: String,
    /// `files/`, shared read-only with the guest over 9p (tag `fs0`).
    pub files: Option<PathBuf>,
}

/// Unpacks `archive` (gzip-compressed tar) into `dest`, which must not exist yet or be empty.
/// On error what was written stays in `dest`; the caller removes the directory.
pub fn unpack(archive: &Path, dest: &Path, limits: Limits) -> Result<Unpacked, String> {
    let file = File::open(archive).map_err(|e| format!("cannot open kernel archive: {e}"))?;
    unpack_from(GzDecoder::new(io::BufReader::new(file)), dest, limits)
}

pub fn unpack_from(reader: impl Read, dest: &Path, limits: Limits) -> Result<Unpacked, String> {
    fs::create_dir_all(dest).map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(|e| format!("kernel archive is not a .tar.gz: {e}"))?;
    let mut total: u64 = 0;
    for (count, entry) in entries.enumerate() {
        if count >= limits.max_entries {
            return Err(format!("kernel archive has more than {} entries", limits.max_entries));
        }
        let mut entry = entry.map_err(|e| format!("kernel archive is not a .tar.gz: {e}"))?;
        let raw = entry.path().map_err(|e| format!("kernel archive entry with a bad path: {e}"))?.into_owned();
        let Some(rel) = safe_relative(&raw) else {
            return Err(format!("kernel archive entry {:?} leaves the archive (absolute or ..)", raw.display()));
        };
        let kind = entry.header().entry_type();
        let target = dest.join(&rel);
        if kind.is_dir() {
            if !rel.as_os_str().is_empty() {
                fs::create_dir_all(&target).map_err(|e| format!("cannot create {}: {e}", target.display()))?;
            }
            continue;
        }
        if !(kind.is_file() || kind == tar::EntryType::Continuous) {
            return Err(format!(
                "kernel archive entry {:?} is not a regular file or directory (links and devices are refused)",
                raw.display()
            ));
        }
        if rel.as_os_str().is_empty() {
            return Err("kernel archive holds a file without a name".into());
        }
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        let budget = limits.max_bytes - total;
        let mut out = File::create(&target).map_err(|e| format!("cannot write {}: {e}", target.display()))?;
        let written = io::copy(&mut (&mut entry).take(budget + 1), &mut out)
            .map_err(|e| format!("kernel archive is damaged: {e}"))?;
        if written > budget {
            return Err(format!("kernel archive unpacks to more than {} bytes", limits.max_bytes));
        }
        out.flush().map_err(|e| format!("cannot write {}: {e}", target.display()))?;
        total += written;
    }
    let kernel = dest.join("kernel");
    if !fs::metadata(&kernel).map(|m| m.is_file()).unwrap_or(false) {
        return Err("kernel archive has no file named \"kernel\" at its top".into());
    }
    let initrd = Some(dest.join("initramfs.cpio")).filter(|p| p.is_file());
    let files = Some(dest.join("files")).filter(|p| p.is_dir());
    if let Some(files) = &files {
        // Served over 9p by a QEMU that no longer runs as root, whatever the worker's umask.
        set_mode(dest, 0o755)?;
        readable_by_all(files)?;
    }
    let cmdline = match fs::read_to_string(dest.join("cmdline")) {
        Ok(s) => s.split_whitespace().collect::<Vec<_>>().join(" "),
        Err(_) => String::new(),
    };
    Ok(Unpacked { kernel, initrd, cmdline, files })
}

fn set_mode(path: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot chmod {}: {e}", path.display()))
}

/// Directories 0755 and files 0644 below `dir` (only those: links were refused when unpacking).
fn readable_by_all(dir: &Path) -> Result<(), String> {
    set_mode(dir, 0o755)?;
    for entry in fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))? {
        let entry = entry.map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        let path = entry.path();
        if entry.file_type().map_err(|e| format!("cannot stat {}: {e}", path.display()))?.is_dir() {
            readable_by_all(&path)?;
        } else {
            set_mode(&path, 0o644)?;
        }
    }
    Ok(())
}

/// The path with `.` parts dropped, or `None` if it is absolute or goes up.
fn safe_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            // Raw name bytes: `append_data` would refuse the bad paths these tests need.
            let name = &mut h.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            if *kind == tar::EntryType::Symlink {
                h.set_link_name("/etc/passwd").unwrap();
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn unpack_bytes(tar: &[u8], limits: Limits) -> (tempfile::TempDir, Result<Unpacked, String>) {
        let dir = tempfile::tempdir().unwrap();
        let r = unpack_from(tar, &dir.path().join("x"), limits);
        (dir, r)
    }

    use tar::EntryType as T;

    #[test]
    fn a_kernel_with_initramfs_cmdline_and_files_is_unpacked() {
        let tar = archive(&[
            ("./kernel", T::Regular, b"K"),
            ("initramfs.cpio", T::Regular, b"I"),
            ("cmdline", T::Regular, b"console=ttyS0\n  quiet\n"),
            ("files/", T::Directory, b""),
            ("files/a/b.txt", T::Regular, b"hello"),
        ]);
        let (dir, r) = unpack_bytes(&tar, Limits::default());
        let u = r.unwrap();
        assert_eq!(fs::read(&u.kernel).unwrap(), b"K");
        assert!(u.initrd.is_some());
        assert_eq!(u.cmdline, "console=ttyS0 quiet");
        assert_eq!(fs::read(dir.path().join("x/files/a/b.txt")).unwrap(), b"hello");
        // Readable by the unprivileged user QEMU runs as, whatever the modes the archive had.
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &str| fs::metadata(dir.path().join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode("x"), mode("x/files"), mode("x/files/a")), (0o755, 0o755, 0o755));
        assert_eq!(mode("x/files/a/b.txt"), 0o644);
    }

    #[test]
    fn bad_archives_are_refused_with_the_reason() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (archive(&[("boot/vmlinuz", T::Regular, b"K")]), "no file named \"kernel\""),
            (archive(&[("kernel", T::Regular, b"K"), ("../evil", T::Regular, b"x")]), "leaves the archive"),
            (archive(&[("/etc/evil", T::Regular, b"x")]), "leaves the archive"),
            (archive(&[("kernel", T::Symlink, b"")]), "not a regular file"),
            (archive(&[("kernel", T::Link, b"")]), "not a regular file"),
            (archive(&[("dev", T::Char, b"")]), "not a regular file"),
            (b"this is not a tar archive at all, just some text that is long enough".repeat(10), "kernel archive"),
        ];
        for (tar, want) in cases {
            let (_d, r) = unpack_bytes(&tar, Limits::default());
            let err = r.unwrap_err();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
    }

    #[test]
    fn size_and_entry_caps_hold() {
        let big = vec![0u8; 5000];
        let tar = archive(&[("kernel", T::Regular, &big)]);
        let (_d, r) = unpack_bytes(&tar, Limits { max_bytes: 4096, max_entries: 10 });
        assert!(r.unwrap_err().contains("more than 4096 bytes"));
        let tar = archive(&[("kernel", T::Regular, b"K"), ("a", T::Regular, b""), ("b", T::Regular, b"")]);
        let (_d, r) = unpack_bytes(&tar, Limits { max_bytes: 4096, max_entries: 2 });
        assert!(r.unwrap_err().contains("more than 2 entries"));
        let (_d, r) = unpack_bytes(&tar, Limits { max_bytes: 4096, max_entries: 3 });
        assert!(r.is_ok());
    }

    #[test]
    fn gzip_archives_are_read() {
        use flate2::write::GzEncoder;
        let tar = archive(&[("kernel", T::Regular, b"K")]);
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.tar.gz");
        fs::write(&path, gz.finish().unwrap()).unwrap();
        let u = unpack(&path, &dir.path().join("out"), Limits::default()).unwrap();
        assert_eq!(fs::read(u.kernel).unwrap(), b"K");
    }
}
