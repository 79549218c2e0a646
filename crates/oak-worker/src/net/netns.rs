//! Named network namespaces made in-process the way `ip netns add` makes them: a file under
//! `/run/netns` (a shared mount, so the bind mounts propagate to other mount namespaces)
//! bind-mounted from the namespace a thread made with `unshare(CLONE_NEWNET)`. `ip netns`,
//! containerd and `nsenter --net=<path>` then see an ordinary named namespace, and a deploy
//! pays no `ip` process. No fork: this process is multi-threaded.
//!
//! Entering a namespace changes the calling thread for good, so [`create_and_enter`] runs only
//! on a thread of its own ([`on_own_thread`]) that ends with the work, never on a runtime's.

use std::ffi::CString;
use std::fs::{DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::names::NETNS_DIR;
use super::netlink::describe;

/// The file of the named namespace.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Runs `f` on a new thread started from the calling one, so it begins in the caller's network
/// namespace (in tests, one of the test's own) and takes wherever it goes with it when it ends.
/// If the caller stops waiting, `f` still runs to its end.
pub async fn on_own_thread<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("oak-netns".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| format!("cannot start a thread for {what}: {}", describe(&e)))?;
    rx.await.map_err(|_| format!("the thread for {what} ended without an answer"))
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| io::ErrorKind::InvalidInput.into())
}

fn check(result: libc::c_int) -> io::Result<()> {
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn mount(source: &Path, target: &Path, flags: libc::c_ulong) -> io::Result<()> {
    let (source, target) = (c_path(source)?, c_path(target)?);
    // SAFETY: every pointer is a NUL-terminated string alive for the call; no data argument.
    check(unsafe { libc::mount(source.as_ptr(), target.as_ptr(), c"none".as_ptr(), flags, std::ptr::null()) })
}

/// Makes `/run/netns` a shared mount point, binding it onto itself first if it is none.
fn share_dir(dir: &Path) -> Result<(), String> {
    let mut bound = false;
    loop {
        match mount(Path::new("none"), dir, libc::MS_SHARED | libc::MS_REC) {
            Ok(()) => return Ok(()),
            // EINVAL: not a mount point yet.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && !bound => {
                mount(dir, dir, libc::MS_BIND | libc::MS_REC)
                    .map_err(|e| format!("cannot bind {} onto itself: {}", dir.display(), describe(&e)))?;
                bound = true;
            }
            Err(e) => return Err(format!("cannot make {} a shared mount: {}", dir.display(), describe(&e))),
        }
    }
}

/// Creates the named namespace and leaves the calling thread in it. Call only on a thread of its
/// own (see the module). On failure nothing is left under `/run/netns`.
pub fn create_and_enter(name: &str) -> Result<(), String> {
    let dir = Path::new(NETNS_DIR);
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {}", dir.display(), describe(&e)))?;
    share_dir(dir)?;
    let file = path(name);
    // Mode 0 as `ip` makes it: the mount over it is what counts.
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(&file)
        .map_err(|e| format!("cannot create namespace file {}: {}", file.display(), describe(&e)))?;
    // SAFETY: unshare has no memory preconditions; it moves only this thread.
    if let Err(e) = check(unsafe { libc::unshare(libc::CLONE_NEWNET) }) {
        let _ = std::fs::remove_file(&file);
        return Err(format!("cannot create network namespace {name}: {}", describe(&e)));
    }
    // This thread's namespace, not the process's (`/proc/self` is the main thread's).
    if let Err(e) = mount(Path::new("/proc/thread-self/ns/net"), &file, libc::MS_BIND) {
        let _ = std::fs::remove_file(&file);
        return Err(format!("cannot bind network namespace {name} to {}: {}", file.display(), describe(&e)));
    }
    Ok(())
}

/// Removes the named namespace (as `ip netns del`: lazy unmount, then the file); the namespace
/// itself goes when no process or mount holds it any more. Absent is fine.
pub fn remove(name: &str) -> Result<(), String> {
    let file = path(name);
    let target = c_path(&file).map_err(|e| format!("namespace file {}: {}", file.display(), describe(&e)))?;
    // SAFETY: `target` is a NUL-terminated string alive for the call. Not mounted (EINVAL) or
    // missing (ENOENT) are what a second removal finds.
    let _ = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    match std::fs::remove_file(&file) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(format!("cannot remove namespace file {}: {}", file.display(), describe(&e)))
        }
        _ => Ok(()),
    }
}

/// The processes whose network namespace is the named one (what `ip netns pids` lists).
pub fn pids(name: &str) -> io::Result<Vec<u32>> {
    let ns = std::fs::metadata(path(name))?;
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        // A process that ended meanwhile is simply not there.
        if let Ok(meta) = std::fs::metadata(entry.path().join("ns/net")) {
            if meta.dev() == ns.dev() && meta.ino() == ns.ino() {
                pids.push(pid);
            }
        }
    }
    Ok(pids)
}
