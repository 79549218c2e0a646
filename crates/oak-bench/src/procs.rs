//! Child processes of a benchmark: started with their output in a log file, in their own process
//! group (a terminal's Ctrl-C reaches only the benchmark, which then stops them in order) and
//! with a parent-death signal (a benchmark killed with SIGKILL leaves nothing behind).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// What a child is; children are stopped kind by kind, in [`Kind::STOP_ORDER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Root,
    Cluster,
    Workers,
}

impl Kind {
    /// Workers first (so clusters do not spend their last seconds on departing workers), the
    /// root last.
    const STOP_ORDER: [Kind; 3] = [Kind::Workers, Kind::Cluster, Kind::Root];
}

pub struct Child {
    pub name: String,
    pub kind: Kind,
    pub log: PathBuf,
    process: std::process::Child,
    exited: Option<std::process::ExitStatus>,
}

impl Child {
    pub fn pid(&self) -> u32 {
        self.process.id()
    }
}

#[derive(Default)]
pub struct Children {
    list: Vec<Child>,
}

impl Children {
    /// Starts `program args…` with stdout and stderr appended to `log`.
    pub fn spawn(
        &mut self,
        name: &str,
        kind: Kind,
        program: &Path,
        args: &[String],
        log: &Path,
    ) -> anyhow::Result<u32> {
        let out = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone()?;
        let parent = std::process::id();
        let mut command = Command::new(program);
        // Plain log files: tracing-subscriber colours its output unless NO_COLOR is set.
        command.args(args).env("NO_COLOR", "1").stdin(Stdio::null()).stdout(out).stderr(err);
        // SAFETY: only async-signal-safe calls (setpgid, prctl, getppid, _exit) run between fork
        // and exec.
        unsafe {
            command.pre_exec(move || {
                libc::setpgid(0, 0);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                // The parent may have died before prctl took effect.
                if libc::getppid() as u32 != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let process = command.spawn().with_context(|| format!("cannot start {} ({})", name, program.display()))?;
        let pid = process.id();
        self.list.push(Child { name: name.to_string(), kind, log: log.to_path_buf(), process, exited: None });
        Ok(pid)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Child> {
        self.list.iter()
    }

    /// Kills the running child named `name` with SIGKILL (no shutdown code runs) and forgets it,
    /// so one of the same name can be started again.
    pub fn kill(&mut self, name: &str) -> anyhow::Result<()> {
        let Some(at) = self.list.iter().position(|c| c.name == name && c.exited.is_none()) else {
            bail!("no running child named {name}");
        };
        let mut child = self.list.remove(at);
        child.process.kill().with_context(|| format!("cannot kill {name}"))?;
        let _ = child.process.wait();
        Ok(())
    }

    /// Fails, naming the child and quoting the end of its log, if any child has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for child in &mut self.list {
            if child.exited.is_some() {
                continue;
            }
            if let Some(status) = child.process.try_wait()? {
                child.exited = Some(status);
                bail!(
                    "{} (pid {}) exited with {status}; end of {}:\n{}",
                    child.name,
                    child.process.id(),
                    child.log.display(),
                    log_tail(&child.log, 3000)
                );
            }
        }
        Ok(())
    }

    /// Stops every child: SIGTERM, up to `grace` to exit, then SIGKILL; kind by kind.
    pub fn shutdown(&mut self, grace: Duration) {
        for kind in Kind::STOP_ORDER {
            let mut pending: Vec<&mut Child> =
                self.list.iter_mut().filter(|c| c.kind == kind && c.exited.is_none()).collect();
            for child in &pending {
                // SAFETY: plain kill(2) of a child we started and have not reaped.
                unsafe { libc::kill(child.process.id() as libc::pid_t, libc::SIGTERM) };
            }
            let deadline = Instant::now() + grace;
            while !pending.is_empty() {
                pending.retain_mut(|c| match c.process.try_wait() {
                    Ok(Some(status)) => {
                        c.exited = Some(status);
                        false
                    }
                    Ok(None) => true,
                    Err(_) => false,
                });
                if Instant::now() >= deadline {
                    for child in &mut pending {
                        eprintln!("{} did not stop within {grace:?}; killing it", child.name);
                        let _ = child.process.kill();
                        child.exited = child.process.wait().ok();
                    }
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.shutdown(Duration::from_secs(5));
    }
}

/// The last `max` bytes of a log file (lossy UTF-8).
/// The `oakestra` binary a benchmark starts: `given`, else the one next to this executable
/// (both are built into the same target directory).
pub fn oakestra_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let oakestra = match given {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()?.with_file_name("oakestra"),
    };
    anyhow::ensure!(
        oakestra.is_file(),
        "no oakestra binary at {} (build it with `cargo build --release -p oakestra` and pass --oakestra)",
        oakestra.display()
    );
    Ok(oakestra)
}

pub fn log_tail(path: &Path, max: u64) -> String {
    let Ok(mut file) = File::open(path) else { return format!("(cannot open {})", path.display()) };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Memory and CPU time of a process, from `/proc/<pid>/status` and `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ProcUsage {
    pub rss_kb: u64,
    /// Peak RSS (VmHWM).
    pub hwm_kb: u64,
    /// User + system CPU time since the process started.
    pub cpu_seconds: f64,
}

pub fn usage(pid: u32) -> Option<ProcUsage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); `after` starts at field 3.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(ProcUsage { rss_kb: field("VmRSS:"), hwm_kb: field("VmHWM:"), cpu_seconds: ticks as f64 / hz })
}

/// Raises the soft limit of open files to the hard limit (children inherit it): thousands of
/// workers mean thousands of sockets per process. Returns the limit now in force.
pub fn raise_nofile() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a valid, writable rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_of_this_process() {
        let u = usage(std::process::id()).unwrap();
        assert!(u.rss_kb > 0 && u.hwm_kb >= u.rss_kb);
        assert!(u.cpu_seconds >= 0.0);
        assert!(usage(u32::MAX).is_none());
    }

    #[test]
    fn children_are_stopped_and_exits_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut children = Children::default();
        let sleep = Path::new("/bin/sleep");
        children.spawn("sleeper", Kind::Cluster, sleep, &["30".into()], &dir.path().join("s.log")).unwrap();
        children.check_alive().unwrap();
        let sh = Path::new("/bin/sh");
        let args = vec!["-c".to_string(), "echo boom; exit 3".to_string()];
        children.spawn("failing", Kind::Workers, sh, &args, &dir.path().join("f.log")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let err = loop {
            match children.check_alive() {
                Err(e) => break e.to_string(),
                Ok(()) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                Ok(()) => panic!("the failing child was not noticed"),
            }
        };
        assert!(err.contains("failing") && err.contains("boom"), "{err}");
        let started = Instant::now();
        children.shutdown(Duration::from_secs(5));
        assert!(started.elapsed() < Duration::from_secs(4));
        assert!(children.iter().all(|c| c.exited.is_some()));
    }
}
