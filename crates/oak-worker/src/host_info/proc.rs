//! Parsers for the `/proc` and `/etc` files the node description comes from. Pure functions over
//! text, so they are tested on samples.

/// Cumulative CPU time of the whole machine, in clock ticks (first line of `/proc/stat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CpuTimes {
    pub idle: u64,
    pub total: u64,
}

pub(crate) fn parse_cpu_times(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line.split_whitespace().skip(1).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    if fields.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal [guest guest_nice]; guest time is already
    // counted in user and nice, so only the first eight make up the total.
    let total = fields.iter().take(8).sum();
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    Some(CpuTimes { idle, total })
}

/// Busy share of the CPU between two samples, 0–100.
pub(crate) fn cpu_percent(before: CpuTimes, after: CpuTimes) -> f64 {
    let total = after.total.saturating_sub(before.total);
    let idle = after.idle.saturating_sub(before.idle);
    if total == 0 {
        return 0.0;
    }
    (total.saturating_sub(idle) as f64 * 100.0 / total as f64).clamp(0.0, 100.0)
}

/// Number of `cpuN` lines in `/proc/stat`.
pub(crate) fn count_cpus(stat: &str) -> usize {
    stat.lines()
        .filter(|l| l.strip_prefix("cpu").is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit())))
        .count()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemInfo {
    pub total_kib: u64,
    pub available_kib: u64,
}

impl MemInfo {
    pub fn used_percent(&self) -> f64 {
        if self.total_kib == 0 {
            return 0.0;
        }
        let used = self.total_kib.saturating_sub(self.available_kib);
        used as f64 * 100.0 / self.total_kib as f64
    }
}

/// `MemTotal` and `MemAvailable` from `/proc/meminfo` (kernels before 3.14 lack the latter:
/// free + buffers + cached then).
pub(crate) fn parse_meminfo(text: &str) -> Option<MemInfo> {
    let field = |name: &str| -> Option<u64> {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse().ok()
        })
    };
    let total_kib = field("MemTotal")?;
    let available_kib = field("MemAvailable")
        .or_else(|| Some(field("MemFree")? + field("Buffers").unwrap_or(0) + field("Cached").unwrap_or(0)))?;
    Some(MemInfo { total_kib, available_kib: available_kib.min(total_kib) })
}

/// `PRETTY_NAME` of `/etc/os-release`, unquoted.
pub(crate) fn parse_os_release(text: &str) -> Option<String> {
    let value = text.lines().find_map(|l| l.trim().strip_prefix("PRETTY_NAME="))?.trim();
    let unquoted = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
        .unwrap_or(value);
    Some(unquoted.replace("\\\"", "\"")).filter(|s| !s.is_empty())
}

/// Seconds since boot, first field of `/proc/uptime`.
pub(crate) fn parse_uptime(text: &str) -> Option<u64> {
    let seconds: f64 = text.split_whitespace().next()?.parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then_some(seconds as u64)
}

/// Go's `GOARCH` for Rust's architecture names, as the original reported them.
pub(crate) fn go_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "x86" => "386",
        "powerpc64" => "ppc64",
        "loongarch64" => "loong64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  4705 356 584 3699 23 0 25 5 10 2\n\
                        cpu0 1393 280 283 1804 10 0 12 3 0 0\n\
                        cpu1 3312 76 301 1895 13 0 13 2 0 0\n\
                        intr 1462898 0 0\nctxt 2165839\nbtime 1700000000\n";

    #[test]
    fn cpu_times_and_percent() {
        let t = parse_cpu_times(STAT).unwrap();
        assert_eq!(t, CpuTimes { idle: 3699 + 23, total: 4705 + 356 + 584 + 3699 + 23 + 25 + 5 });
        let later = CpuTimes { idle: t.idle + 50, total: t.total + 200 };
        assert!((cpu_percent(t, later) - 75.0).abs() < 1e-9);
        assert_eq!(cpu_percent(t, t), 0.0);
        assert_eq!(cpu_percent(later, t), 0.0);
        assert_eq!(count_cpus(STAT), 2);
        assert_eq!(parse_cpu_times("cpu0 1 2 3 4\n"), None);
        assert_eq!(parse_cpu_times("cpu  1 x 3 4\n"), None);
    }

    #[test]
    fn meminfo() {
        let text =
            "MemTotal:       16314256 kB\nMemFree:         1234567 kB\nMemAvailable:   12235692 kB\nBuffers: 1 kB\n";
        let m = parse_meminfo(text).unwrap();
        assert_eq!(m, MemInfo { total_kib: 16314256, available_kib: 12235692 });
        assert!((m.used_percent() - 25.0).abs() < 0.01);
        let old = "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 250 kB\n";
        assert_eq!(parse_meminfo(old).unwrap().available_kib, 400);
        assert_eq!(parse_meminfo("MemFree: 1 kB\n"), None);
        assert_eq!(MemInfo { total_kib: 0, available_kib: 0 }.used_percent(), 0.0);
    }

    #[test]
    fn os_release() {
        let text = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n";
        assert_eq!(parse_os_release(text).as_deref(), Some("Debian GNU/Linux 12 (bookworm)"));
        assert_eq!(parse_os_release("PRETTY_NAME=Alpine\n").as_deref(), Some("Alpine"));
        assert_eq!(parse_os_release("PRETTY_NAME='Arch Linux'\n").as_deref(), Some("Arch Linux"));
        assert_eq!(parse_os_release("ID=x\n"), None);
        assert_eq!(parse_os_release("PRETTY_NAME=\"\"\n"), None);
    }

    #[test]
    fn uptime() {
        assert_eq!(parse_uptime("350735.47 234388.90\n"), Some(350735));
        assert_eq!(parse_uptime(""), None);
        assert_eq!(parse_uptime("-1 0"), None);
    }

    #[test]
    fn architectures() {
        assert_eq!(go_arch("x86_64"), "amd64");
        assert_eq!(go_arch("aarch64"), "arm64");
        assert_eq!(go_arch("arm"), "arm");
        assert_eq!(go_arch("riscv64"), "riscv64");
    }
}
