//! One `oakestra` process of a lab topology (the root, a cluster or a worker) on its lab host:
//! restartable with the same flags, its output in a log file, stopped cleanly or killed, and
//! the diagnostics every lab test prints when it fails. Shared by `e2e_lab` and `e2e_faults`.

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::Host;

/// How long a process gets for a clean stop on SIGTERM (undeploys take up to 10 s of grace).
pub const STOP_GRACE: Duration = Duration::from_secs(20);

pub struct LabProc {
    /// `root`, `cluster-east`, `worker-e1`, …: also its log's file name.
    pub name: String,
    pub host: Host,
    pub log: PathBuf,
    bin: PathBuf,
    args: Vec<String>,
    /// `RUST_LOG` unless `OAK_E2E_LOG` says otherwise.
    log_filter: String,
    child: Option<Child>,
}

impl LabProc {
    /// `bin` run with `args` on `host`, logging to `<dir>/<name>.log`; not started yet.
    pub fn new(bin: &Path, name: &str, host: &Host, dir: &Path, args: Vec<String>) -> LabProc {
        LabProc {
            name: name.into(),
            host: host.clone(),
            log: dir.join(format!("{name}.log")),
            bin: bin.to_path_buf(),
            args,
            log_filter: "info".into(),
            child: None,
        }
    }

    /// Logs at `filter` (a `RUST_LOG` value) instead of `info`.
    pub fn log_filter(mut self, filter: &str) -> LabProc {
        self.log_filter = filter.into();
        self
    }

    pub fn start(&mut self) -> Result<()> {
        ensure!(self.child.is_none(), "{} is already running", self.name);
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let filter = std::env::var("OAK_E2E_LOG").unwrap_or_else(|_| self.log_filter.clone());
        let bin = self.bin.to_str().context("binary path is not UTF-8")?;
        let child = self.host.spawn(bin, &args, &[("RUST_LOG", filter.as_str()), ("NO_COLOR", "1")], &self.log)?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGTERM, and the exit status (SIGKILL after [`STOP_GRACE`]); `None` if not running.
    pub fn stop(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.take() {
            Some(mut c) => Ok(Some(crate::procs::terminate(&mut c, STOP_GRACE)?)),
            None => Ok(None),
        }
    }

    /// `kill -9`: the process ends without cleaning up anything.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// Fails if the process exited on its own. Read from /proc, so a shared reference does: an
    /// exited child stays a zombie until it is reaped.
    pub fn ensure_alive(&self) -> Result<()> {
        if let Some(c) = &self.child {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", c.id())).unwrap_or_default();
            let state = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()).unwrap_or("?");
            if state == "Z" || state == "?" {
                bail!("{} exited unexpectedly (log {})", self.name, self.log.display());
            }
        }
        Ok(())
    }

    /// The log's length now (to read what comes after with [`LabProc::log_since`]).
    pub fn log_len(&self) -> u64 {
        std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }

    /// The log written after `offset`.
    pub fn log_since(&self, offset: u64) -> String {
        let text = std::fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(text.get(offset as usize..).unwrap_or_default()).into_owned()
    }

    pub fn log_text(&self) -> String {
        self.log_since(0)
    }
}

/// The node id a worker was given, once it wrote `<data>/node.json`; `alive` is asked at every
/// poll so a crashed process fails the wait at once.
pub fn wait_node_id(name: &str, data: &Path, mut alive: impl FnMut() -> Result<()>) -> Result<String> {
    let file = data.join("node.json");
    crate::wait_until(
        &format!("worker {name} to register (node.json)"),
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            alive()?;
            let v: Value = serde_json::from_slice(&std::fs::read(&file)?)?;
            Ok(v["id"].as_str().filter(|s| !s.is_empty()).map(str::to_string))
        },
    )
}

/// `(task id, pid, status)` of each task in the output of `ctr tasks ls`.
pub fn parse_tasks(ctr_output: &str) -> Result<Vec<(String, u32, String)>> {
    let mut tasks = Vec::new();
    for line in ctr_output.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if let [id, pid, status, ..] = f[..] {
            tasks.push((id.to_string(), pid.parse().with_context(|| format!("pid in {line:?}"))?, status.to_string()));
        }
    }
    Ok(tasks)
}

/// Removes runc's empty parent cgroups `/oakestra/<namespace>` and the shims' state directories
/// of the workers' containerd `namespaces`, which nothing else removes.
pub fn remove_leftover_dirs<'a>(namespaces: impl IntoIterator<Item = &'a str>) {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else { return };
    let hierarchies: Vec<PathBuf> = hierarchies.flatten().map(|e| e.path()).collect();
    for ns in namespaces {
        for h in &hierarchies {
            let _ = std::fs::remove_dir(h.join("oakestra").join(ns));
        }
        let _ = std::fs::remove_dir(Path::new("/run/containerd/runc").join(ns));
    }
}

/// The last `lines` lines of `path` to stderr, framed with its name.
pub fn print_tail(path: &Path, lines: usize) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("(cannot read: {e})"));
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    eprintln!("----- {} (last {} of {} lines) -----", path.display(), all.len() - from, all.len());
    for l in &all[from..] {
        eprintln!("{l}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_are_read_from_ctr_output() {
        let out =
            "TASK                   PID      STATUS\na.b.c.d.instance.0    4242     RUNNING\nx.instance.1 17 STOPPED\n";
        assert_eq!(
            parse_tasks(out).unwrap(),
            vec![("a.b.c.d.instance.0".into(), 4242, "RUNNING".into()), ("x.instance.1".into(), 17, "STOPPED".into())]
        );
        assert!(parse_tasks("TASK PID STATUS\nx notapid RUNNING\n").is_err());
    }
}
