//! What a result file says about where and on what it was measured.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub memory_total_mb: u64,
    pub memory_available_mb: u64,
    pub kernel: String,
    pub hostname: String,
    /// 1-, 5- and 15-minute load averages when the benchmark started (other builds running?).
    pub loadavg: String,
    pub open_files_limit: u64,
}

impl Machine {
    pub fn read(open_files_limit: u64) -> Machine {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let meminfo = read("/proc/meminfo");
        let mem = |key: &str| {
            meminfo
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(0, |kb| kb / 1024)
        };
        let cpu_model = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_default();
        Machine {
            nproc: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            cpu_model,
            memory_total_mb: mem("MemTotal:"),
            memory_available_mb: mem("MemAvailable:"),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            hostname: read("/proc/sys/kernel/hostname").trim().to_string(),
            loadavg: read("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" "),
            open_files_limit,
        }
    }
}

/// The commit measured, and whether the working tree had changes on top of it.
#[derive(Debug, Clone, Serialize)]
pub struct Commit {
    pub commit: String,
    pub dirty: bool,
}

impl Commit {
    pub fn read() -> Commit {
        let git = |args: &[&str]| {
            std::process::Command::new("git")
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        Commit {
            commit: git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into()),
            dirty: git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty()),
        }
    }
}
