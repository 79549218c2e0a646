//! NVIDIA GPUs, through `nvidia-smi` when it is installed (spec §7.6). A node without it, or
//! whose `nvidia-smi` fails, simply reports no GPU.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const QUERY: &str = "--query-gpu=driver_version,memory.used,memory.total,utilization.gpu,temperature.gpu";
const TIMEOUT: Duration = Duration::from_secs(5);

/// What the node reports about its GPUs.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct GpuSummary {
    pub driver: String,
    pub count: u32,
    /// Mean utilization, percent.
    pub usage: f64,
    /// Mean temperature, °C.
    pub temperature: f64,
    /// Total memory, MiB.
    pub vram_mib: u64,
    pub vram_percent: f64,
}

/// `nvidia-smi` on the `PATH`, if any.
pub(crate) fn find_nvidia_smi() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("nvidia-smi")).find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// Queries the GPUs; blocking (run it on the blocking pool). Gives up after a few seconds.
pub(crate) fn query(nvidia_smi: &Path) -> GpuSummary {
    match run_with_timeout(nvidia_smi) {
        Ok(out) => parse_query(&out),
        Err(e) => {
            tracing::debug!(error = %e, "nvidia-smi failed; reporting no GPU");
            GpuSummary::default()
        }
    }
}

fn run_with_timeout(nvidia_smi: &Path) -> std::io::Result<String> {
    let mut child = Command::new(nvidia_smi)
        .args([QUERY, "--format=csv,noheader,nounits"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            let mut out = String::new();
            if let Some(mut stdout) = child.stdout.take() {
                std::io::Read::read_to_string(&mut stdout, &mut out)?;
            }
            return if status.success() {
                Ok(out)
            } else {
                Err(std::io::Error::other(format!("exited with {status}")))
            };
        }
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::other("timed out"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One CSV line per GPU: `driver, memory.used, memory.total, utilization, temperature`. Lines
/// that do not parse (e.g. `[N/A]` fields) are skipped.
pub(crate) fn parse_query(csv: &str) -> GpuSummary {
    let mut summary = GpuSummary::default();
    let (mut used, mut usage, mut temperature) = (0.0, 0.0, 0.0);
    for line in csv.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let [driver, mem_used, mem_total, util, temp] = fields[..] else { continue };
        let (Ok(mem_used), Ok(mem_total)) = (mem_used.parse::<f64>(), mem_total.parse::<f64>()) else { continue };
        summary.count += 1;
        if summary.driver.is_empty() {
            summary.driver = driver.to_string();
        }
        used += mem_used;
        summary.vram_mib += mem_total as u64;
        usage += util.parse::<f64>().unwrap_or(0.0);
        temperature += temp.parse::<f64>().unwrap_or(0.0);
    }
    if summary.count > 0 {
        summary.usage = usage / summary.count as f64;
        summary.temperature = temperature / summary.count as f64;
        if summary.vram_mib > 0 {
            summary.vram_percent = used * 100.0 / summary.vram_mib as f64;
        }
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_gpus() {
        let s = parse_query("535.104.05, 1024, 4096, 30, 50\n535.104.05, 3072, 4096, 70, 70\n");
        assert_eq!(s.count, 2);
        assert_eq!(s.driver, "535.104.05");
        assert_eq!(s.vram_mib, 8192);
        assert!((s.vram_percent - 50.0).abs() < 1e-9);
        assert!((s.usage - 50.0).abs() < 1e-9);
        assert!((s.temperature - 60.0).abs() < 1e-9);
    }

    #[test]
    fn nothing_or_garbage() {
        assert_eq!(parse_query(""), GpuSummary::default());
        assert_eq!(parse_query("No devices were found\n"), GpuSummary::default());
        let s = parse_query("535, [N/A], [N/A], [N/A], [N/A]\n550, 10, 100, [N/A], 40\n");
        assert_eq!((s.count, s.driver.as_str(), s.vram_mib), (1, "550", 100));
    }

    #[test]
    fn missing_binary_reports_nothing() {
        assert_eq!(query(Path::new("/nonexistent/nvidia-smi")), GpuSummary::default());
    }
}
