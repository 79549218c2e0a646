//! Per-test directories, waiting for conditions, and stopping processes a test started.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};

/// Where [`Workdir`]s go unless `OAK_E2E_DIR` says otherwise: `/var/tmp` survives reboots of
/// the test machine's tmpfs and is where one looks for a failed run's logs.
pub const DEFAULT_BASE: &str = "/var/tmp/oak-e2e";

/// A test's log and data directory, `<base>/<test-name>-<UTC timestamp>`.
///
/// Removed on drop when the test succeeded; kept (and its path printed to stderr) when the test
/// is panicking, so a failure's logs stay for inspection. A test that fails by returning `Err`
/// does not panic: call [`Workdir::keep`] first, or unwrap. `OAK_E2E_KEEP=1` keeps every one.
#[derive(Debug)]
pub struct Workdir {
    path: PathBuf,
    keep: bool,
}

impl Workdir {
    pub fn new(test_name: &str) -> Result<Workdir> {
        let base = std::env::var_os("OAK_E2E_DIR").map(PathBuf::from).unwrap_or(DEFAULT_BASE.into());
        Workdir::new_in(&base, test_name)
    }

    /// Like [`Workdir::new`] under `base`.
    pub fn new_in(base: &Path, test_name: &str) -> Result<Workdir> {
        fs::create_dir_all(base).with_context(|| format!("creating {}", base.display()))?;
        let name: String = test_name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
            .collect();
        let stem = format!("{name}-{}", utc_timestamp(SystemTime::now()));
        for n in 0.. {
            let path = if n == 0 { base.join(&stem) } else { base.join(format!("{stem}-{n}")) };
            match fs::create_dir(&path) {
                Ok(()) => {
                    let keep = std::env::var("OAK_E2E_KEEP").is_ok_and(|v| v == "1" || v == "true");
                    return Ok(Workdir { path, keep });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
        }
        unreachable!()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }

    /// Keep the directory even if the test succeeds.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if self.keep || std::thread::panicking() {
            eprintln!("oak-e2e: kept test directory {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// `YYYYMMDD-HHMMSS` in UTC.
fn utc_timestamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    oak_core::utc::UtcTime::from_unix(secs as i64).compact("-")
}

/// An error that ends a [`wait_until`] at once instead of meaning "not yet": what was awaited
/// can no longer happen (the process that should answer has exited).
#[derive(Debug)]
pub struct Hopeless(pub String);

impl std::fmt::Display for Hopeless {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Hopeless {}

/// Polls `f` every `poll` until it yields `Some`, for at most `timeout`.
///
/// `Ok(None)` and `Err` both mean "not yet"; the last error is reported on timeout together with
/// `what` (phrase it as what was awaited: "the worker to register"), so a failed wait says why.
/// A [`Hopeless`] error ends the wait at once.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    poll: Duration,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last_err: Option<anyhow::Error> = None;
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) if e.is::<Hopeless>() => return Err(e.context(format!("waiting for {what}"))),
            Err(e) => last_err = Some(e),
        }
        if Instant::now() >= deadline {
            return Err(match last_err {
                Some(e) => anyhow!("timed out after {timeout:?} waiting for {what}; last error: {e:#}"),
                None => anyhow!("timed out after {timeout:?} waiting for {what}"),
            });
        }
        sleep(poll.min(deadline.saturating_duration_since(Instant::now())).max(Duration::from_millis(1)));
    }
}

/// Stops `child`: SIGTERM to its process group (or itself), SIGKILL after `grace`.
///
/// Children spawned by this crate lead their own process group, so helpers they forked go too.
pub fn terminate(child: &mut Child, grace: Duration) -> Result<ExitStatus> {
    let pid = child.id() as i32;
    if let Some(status) = child.try_wait()? {
        kill_group(pid);
        return Ok(status);
    }
    signal_group(pid, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            kill_group(pid);
            return Ok(status);
        }
        sleep(Duration::from_millis(20));
    }
    signal_group(pid, libc::SIGKILL);
    child.wait().with_context(|| format!("waiting for process {pid}"))
}

/// [`terminate`] for children known only by pid (the caller may have dropped the `Child`).
///
/// A pid that `waitpid` does not know as our child (already reaped) is left alone, so a reused
/// pid is never signalled. All get SIGTERM at once, then share one `grace`.
pub(crate) fn terminate_pids(pids: &[i32], grace: Duration) {
    let mut running: Vec<i32> = pids.iter().copied().filter(|&p| !reap(p)).collect();
    for &p in &running {
        signal_group(p, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while !running.is_empty() && Instant::now() < deadline {
        sleep(Duration::from_millis(20));
        running.retain(|&p| !reap(p));
    }
    for &p in &running {
        signal_group(p, libc::SIGKILL);
        // SAFETY: waitpid on our own child with a valid status pointer.
        unsafe { libc::waitpid(p, std::ptr::null_mut(), 0) };
    }
    for &p in pids {
        kill_group(p);
    }
}

/// SIGKILL to what is left of the process group `pid` led, after the leader was reaped. Only
/// the group, never the pid itself: the pid may be reused, but a group id is not while the group
/// has members.
fn kill_group(pid: i32) {
    // SAFETY: plain kill(2).
    unsafe { libc::kill(-pid, libc::SIGKILL) };
}

/// True when `pid` is gone: reaped now, or not (any longer) our child.
fn reap(pid: i32) -> bool {
    let mut status = 0;
    // SAFETY: waitpid with a valid status pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    r != 0
}

fn signal_group(pid: i32, sig: i32) {
    // SAFETY: plain kill(2); a negative pid addresses the process group.
    unsafe {
        if libc::kill(-pid, sig) != 0 {
            libc::kill(pid, sig);
        }
    }
}

/// The `Admin` password of a lab's root (listening beyond loopback, it has no default).
pub const LAB_ADMIN_PASSWORD: &str = "lab-admin-password";

/// The scrape token of a lab's tiers (`--metrics-token`): their `/metrics` listen beyond
/// loopback, so a scrape presents it as `Authorization: Bearer …`.
pub const LAB_METRICS_TOKEN: &str = "lab-metrics-token";

/// The arguments of a lab's `oakestra root`: API on 10000 of every address, cluster channel on
/// 50052, state in `data_dir`, Admin's password [`LAB_ADMIN_PASSWORD`], scrape token
/// [`LAB_METRICS_TOKEN`].
pub fn root_args(data_dir: &std::path::Path) -> Vec<String> {
    let data_dir = data_dir.display().to_string();
    [
        "root",
        "--api-addr",
        "0.0.0.0",
        "--api-port",
        "10000",
        "--cluster-port",
        "50052",
        "--data-dir",
        &data_dir,
        "--admin-password",
        LAB_ADMIN_PASSWORD,
        "--metrics-token",
        LAB_METRICS_TOKEN,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// What differs between the `oakestra cluster`s of a lab (tests and benchmarks start them alike).
pub struct ClusterFlags<'a> {
    pub name: &'a str,
    /// `lat,long`, if the cluster reports a location.
    pub location: Option<&'a str>,
    /// The root's address (API on 10000, channel on 50052).
    pub root: std::net::Ipv4Addr,
    pub data_dir: &'a std::path::Path,
    /// The root's `cluster-token` file.
    pub token_file: &'a std::path::Path,
}

impl ClusterFlags<'_> {
    /// The arguments of `oakestra cluster` (node API on 10100, embedded broker on 10003, scrape
    /// token [`LAB_METRICS_TOKEN`]).
    pub fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = vec!["cluster".into(), "--name".into(), self.name.into()];
        if let Some(location) = self.location {
            args.extend(["--location".into(), location.into()]);
        }
        args.extend([
            "--root-url".into(),
            format!("http://{}:10000", self.root),
            "--root-channel".into(),
            format!("{}:50052", self.root),
            "--api-port".into(),
            "10100".into(),
            "--mqtt-port".into(),
            "10003".into(),
            "--data-dir".into(),
            self.data_dir.display().to_string(),
            "--token-file".into(),
            self.token_file.display().to_string(),
            "--metrics-token".into(),
            LAB_METRICS_TOKEN.into(),
        ]);
        args
    }
}

/// What differs between the `oakestra worker`s of a lab (tests and benchmarks start them alike).
pub struct WorkerFlags<'a> {
    pub cluster: std::net::Ipv4Addr,
    pub data_dir: &'a std::path::Path,
    pub token_file: &'a std::path::Path,
    pub node_name: &'a str,
    pub containerd_socket: &'a std::path::Path,
    pub containerd_namespace: &'a str,
    /// `host:port` of the lab's registry (plain HTTP).
    pub registry: &'a str,
}

impl WorkerFlags<'_> {
    /// The arguments of `oakestra worker` (cluster node API on 10100, `/metrics` on 10190 with the
    /// scrape token [`LAB_METRICS_TOKEN`]).
    pub fn args(&self) -> Vec<String> {
        [
            "worker",
            "-a",
            &self.cluster.to_string(),
            "-p",
            "10100",
            "--data-dir",
            &self.data_dir.display().to_string(),
            "--token-file",
            &self.token_file.display().to_string(),
            "--node-name",
            self.node_name,
            "--containerd-socket",
            &self.containerd_socket.display().to_string(),
            "--containerd-namespace",
            self.containerd_namespace,
            "--insecure-registry",
            self.registry,
            "--metrics-token",
            LAB_METRICS_TOKEN,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_is_utc_civil_date() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "19700101-000000");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096); // 2024-02-29T12:34:56Z
        assert_eq!(utc_timestamp(t), "20240229-123456");
    }

    #[test]
    fn wait_until_returns_value_or_names_what_and_last_error() {
        let mut n = 0;
        let v = wait_until("n to reach 3", Duration::from_secs(5), Duration::from_millis(1), || {
            n += 1;
            Ok((n >= 3).then_some(n))
        })
        .unwrap();
        assert_eq!(v, 3);

        let err = wait_until::<()>("the impossible", Duration::from_millis(30), Duration::from_millis(5), || {
            Err(anyhow!("still broken"))
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("the impossible") && err.contains("still broken"), "{err}");
    }

    #[test]
    fn workdir_removed_on_success_kept_on_panic() {
        let base = tempfile::tempdir().unwrap();
        let wd = Workdir::new_in(base.path(), "mod::a test").unwrap();
        let path = wd.path().to_path_buf();
        assert!(path.file_name().unwrap().to_str().unwrap().starts_with("mod__a_test-"));
        let wd2 = Workdir::new_in(base.path(), "mod::a test").unwrap();
        assert_ne!(wd2.path(), path, "same name in the same second gets a distinct directory");
        fs::write(wd.join("log"), "x").unwrap();
        drop(wd);
        assert!(!path.exists());

        let base2 = base.path().to_path_buf();
        let kept = std::thread::spawn(move || {
            let wd = Workdir::new_in(&base2, "panics").unwrap();
            let p = wd.path().to_path_buf();
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                let _wd = wd;
                panic!("test failure");
            }));
            p
        })
        .join()
        .unwrap();
        assert!(kept.exists(), "a panicking test keeps its directory");
    }
}
