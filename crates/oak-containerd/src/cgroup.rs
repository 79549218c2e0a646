//! Usage of an instance read from its cgroup (v1 or v2), as the original does: CPU time and
//! memory in use without reclaimable page cache.

use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// CPU time used since the cgroup was created, in nanoseconds.
    pub cpu_ns: u64,
    pub memory_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct Cgroups {
    root: PathBuf,
    v2: bool,
}

impl Default for Cgroups {
    fn default() -> Self {
        Self::at(Path::new("/sys/fs/cgroup"))
    }
}

impl Cgroups {
    /// Cgroups mounted at `root`; v2 if `root` is a unified hierarchy.
    pub fn at(root: &Path) -> Self {
        Self { root: root.to_path_buf(), v2: root.join("cgroup.controllers").exists() }
    }

    /// Usage of the cgroup at `path` (as given in the spec's `cgroupsPath`), if it exists.
    pub fn usage(&self, path: &str) -> Option<Usage> {
        let rel = path.trim_start_matches('/');
        if self.v2 {
            let dir = self.root.join(rel);
            let cpu_us = stat_value(&read(&dir.join("cpu.stat"))?, "usage_usec")?;
            let current: u64 = read(&dir.join("memory.current"))?.trim().parse().ok()?;
            let inactive =
                stat_value(&read(&dir.join("memory.stat")).unwrap_or_default(), "inactive_file").unwrap_or(0);
            Some(Usage { cpu_ns: cpu_us.saturating_mul(1000), memory_bytes: current.saturating_sub(inactive) })
        } else {
            let cpu_ns: u64 = read(&self.root.join("cpuacct").join(rel).join("cpuacct.usage"))?.trim().parse().ok()?;
            let mem = self.root.join("memory").join(rel);
            let current: u64 = read(&mem.join("memory.usage_in_bytes"))?.trim().parse().ok()?;
            let inactive =
                stat_value(&read(&mem.join("memory.stat")).unwrap_or_default(), "total_inactive_file").unwrap_or(0);
            Some(Usage { cpu_ns, memory_bytes: current.saturating_sub(inactive) })
        }
    }

    /// Whether the kernel's OOM killer killed a process of the cgroup.
    pub fn oom_killed(&self, path: &str) -> bool {
        self.oom_kills(path).is_some_and(|n| n > 0)
    }

    /// How many processes of the cgroup the kernel's OOM killer killed.
    pub fn oom_kills(&self, path: &str) -> Option<u64> {
        let rel = path.trim_start_matches('/');
        let (file, key) = if self.v2 {
            (self.root.join(rel).join("memory.events"), "oom_kill")
        } else {
            (self.root.join("memory").join(rel).join("memory.oom_control"), "oom_kill")
        };
        read(&file).and_then(|s| stat_value(&s, key))
    }

    /// The cgroup's memory limit in bytes; `None` without one (`max`, or v1's huge default).
    pub fn memory_limit(&self, path: &str) -> Option<u64> {
        let rel = path.trim_start_matches('/');
        let text = if self.v2 {
            read(&self.root.join(rel).join("memory.max"))?
        } else {
            read(&self.root.join("memory").join(rel).join("memory.limit_in_bytes"))?
        };
        // v1 reports "no limit" as the largest page-aligned i64.
        text.trim().parse::<u64>().ok().filter(|&n| n < 1 << 62)
    }
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The value of `key` in a `key value` per line file (`cpu.stat`, `memory.stat`).
fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// CPU use between two samples as a percentage of the whole node (all cores = 100).
pub fn cpu_percent(before_ns: u64, after_ns: u64, elapsed: Duration, cpus: u32) -> f64 {
    let wall = elapsed.as_nanos() as f64 * f64::from(cpus.max(1));
    if wall <= 0.0 {
        return 0.0;
    }
    (after_ns.saturating_sub(before_ns) as f64 / wall * 100.0).clamp(0.0, 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn computes_cpu_percent_of_the_node() {
        assert_eq!(cpu_percent(0, 1_000_000_000, Duration::from_secs(1), 1), 100.0);
        assert_eq!(cpu_percent(0, 1_000_000_000, Duration::from_secs(2), 2), 25.0);
        assert_eq!(cpu_percent(5, 1, Duration::from_secs(1), 2), 0.0, "a counter that went back counts as idle");
        assert_eq!(cpu_percent(0, 10, Duration::ZERO, 2), 0.0);
    }

    #[test]
    fn reads_v1_and_v2_layouts() {
        let v1 = tempfile::tempdir().unwrap();
        let cg = "/oak/x.instance.0";
        std::fs::create_dir_all(v1.path().join("cpuacct/oak/x.instance.0")).unwrap();
        std::fs::create_dir_all(v1.path().join("memory/oak/x.instance.0")).unwrap();
        std::fs::write(v1.path().join("cpuacct/oak/x.instance.0/cpuacct.usage"), "1234\n").unwrap();
        std::fs::write(v1.path().join("memory/oak/x.instance.0/memory.usage_in_bytes"), "10000\n").unwrap();
        std::fs::write(v1.path().join("memory/oak/x.instance.0/memory.stat"), "cache 5\ntotal_inactive_file 3000\n")
            .unwrap();
        std::fs::write(
            v1.path().join("memory/oak/x.instance.0/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
        )
        .unwrap();
        let cgroups = Cgroups::at(v1.path());
        assert_eq!(cgroups.usage(cg), Some(Usage { cpu_ns: 1234, memory_bytes: 7000 }));
        assert!(cgroups.oom_killed(cg));
        assert_eq!(cgroups.oom_kills(cg), Some(1));
        assert_eq!(cgroups.memory_limit(cg), None, "no limit file");
        std::fs::write(
            v1.path().join("memory/oak/x.instance.0/memory.limit_in_bytes"),
            "9223372036854771712
",
        )
        .unwrap();
        assert_eq!(cgroups.memory_limit(cg), None, "v1's default means no limit");
        std::fs::write(
            v1.path().join("memory/oak/x.instance.0/memory.limit_in_bytes"),
            "268435456
",
        )
        .unwrap();
        assert_eq!(cgroups.memory_limit(cg), Some(268_435_456));
        assert_eq!(cgroups.usage("/oak/other"), None);

        let v2 = tempfile::tempdir().unwrap();
        std::fs::write(v2.path().join("cgroup.controllers"), "cpu memory\n").unwrap();
        let dir = v2.path().join("oak/x.instance.0");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cpu.stat"), "usage_usec 7\nuser_usec 5\n").unwrap();
        std::fs::write(dir.join("memory.current"), "8192\n").unwrap();
        std::fs::write(dir.join("memory.stat"), "anon 4096\ninactive_file 4096\n").unwrap();
        std::fs::write(dir.join("memory.events"), "low 0\noom 0\noom_kill 0\n").unwrap();
        std::fs::write(dir.join("memory.max"), "max\n").unwrap();
        let cgroups = Cgroups::at(v2.path());
        assert_eq!(cgroups.usage(cg), Some(Usage { cpu_ns: 7000, memory_bytes: 4096 }));
        assert!(!cgroups.oom_killed(cg));
        assert_eq!(cgroups.oom_kills(cg), Some(0));
        assert_eq!(cgroups.memory_limit(cg), None, "max means no limit");
        std::fs::write(dir.join("memory.max"), "67108864\n").unwrap();
        assert_eq!(cgroups.memory_limit(cg), Some(64 << 20));
    }
}
