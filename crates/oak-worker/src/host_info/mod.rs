//! What the worker tells its cluster about the machine: registration payload and the periodic
//! `nodes/<id>/information` report.

mod gpu;
mod net;

pub(crate) use net::route_source;
mod proc;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use oak_api::node::{NodeInfo, SystemInfo};

/// Where the node description comes from: the real host ([`HostInfo`]) or, in hollow-worker
/// benchmarks and tests, something made up. The worker fills in `id`, `host` and
/// `virtualization` itself.
#[async_trait]
pub trait NodeInfoSource: Send + Sync {
    /// A current description of the node: static facts plus usage since the previous sample.
    async fn sample(&self) -> NodeInfo;
}

/// Refresh the node's IP every this many samples (interfaces rarely change; resolving the
/// cluster's name every 2 s would be wasteful).
const IP_REFRESH_SAMPLES: u32 = 30;
/// A sample that takes longer (hung `nvidia-smi`, stuck file system) yields the previous one.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The machine the worker runs on, read from `/proc`, `/etc/os-release`, `statvfs` of the data
/// directory and `nvidia-smi`. Never fails: what cannot be read is reported as zero or empty.
#[derive(Clone)]
pub struct HostInfo {
    inner: Arc<Inner>,
}

struct Inner {
    data_dir: PathBuf,
    cluster_address: String,
    cluster_port: u16,
    statics: OnceLock<Statics>,
    state: Mutex<SampleState>,
}

/// Facts that do not change while the worker runs.
struct Statics {
    system_info: SystemInfo,
    vcpus: u32,
    architecture: String,
    nvidia_smi: Option<PathBuf>,
}

#[derive(Default)]
struct SampleState {
    previous_cpu: Option<proc::CpuTimes>,
    ip: Option<String>,
    samples_since_ip: u32,
    last: Option<NodeInfo>,
}

impl HostInfo {
    /// `data_dir` is where disk space is measured; the cluster address picks the interface whose
    /// IP is reported.
    pub fn new(data_dir: impl Into<PathBuf>, cluster_address: impl Into<String>, cluster_port: u16) -> Self {
        Self {
            inner: Arc::new(Inner {
                data_dir: data_dir.into(),
                cluster_address: cluster_address.into(),
                cluster_port,
                statics: OnceLock::new(),
                state: Mutex::new(SampleState::default()),
            }),
        }
    }
}

#[async_trait]
impl NodeInfoSource for HostInfo {
    async fn sample(&self) -> NodeInfo {
        let inner = self.inner.clone();
        let task = tokio::task::spawn_blocking(move || inner.sample_blocking());
        match tokio::time::timeout(SAMPLE_TIMEOUT, task).await {
            Ok(Ok(info)) => info,
            outcome => {
                tracing::warn!(timed_out = outcome.is_err(), "sampling the host failed; repeating the previous sample");
                self.inner.lock().last.clone().unwrap_or_default()
            }
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, SampleState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sample_blocking(&self) -> NodeInfo {
        let statics = self.statics.get_or_init(read_statics);
        let stat = read("/proc/stat");
        let cpu_now = stat.as_deref().and_then(proc::parse_cpu_times);
        let memory = read("/proc/meminfo").as_deref().and_then(proc::parse_meminfo);
        let uptime = read("/proc/uptime").as_deref().and_then(proc::parse_uptime);
        let gpus = statics.nvidia_smi.as_deref().map(gpu::query).unwrap_or_default();
        let disk_free = free_disk_mib(&self.data_dir);

        let (cpu_percent, ip) = {
            let mut state = self.lock();
            // The first sample measures since boot; later ones since the previous sample.
            let before = state.previous_cpu.unwrap_or(proc::CpuTimes { idle: 0, total: 0 });
            let cpu = cpu_now.map(|now| proc::cpu_percent(before, now)).unwrap_or(0.0);
            if cpu_now.is_some() {
                state.previous_cpu = cpu_now;
            }
            let refresh = state.ip.is_none() || state.samples_since_ip >= IP_REFRESH_SAMPLES;
            (cpu, if refresh { None } else { state.ip.clone() })
        };
        let ip = ip.unwrap_or_else(|| {
            let ip =
                net::node_ipv4(&self.cluster_address, self.cluster_port).map(|ip| ip.to_string()).unwrap_or_default();
            let mut state = self.lock();
            state.ip = Some(ip.clone());
            state.samples_since_ip = 0;
            ip
        });

        let mut system_info = statics.system_info.clone();
        system_info.uptime = uptime.map(|s| s.to_string()).unwrap_or_default();
        let info = NodeInfo {
            ip,
            system_info,
            cpu_percent,
            vcpus: statics.vcpus,
            architecture: statics.architecture.clone(),
            memory_percent: memory.map(|m| m.used_percent()).unwrap_or(0.0),
            memory: memory.map(|m| m.available_kib / 1024).unwrap_or(0),
            memory_total: memory.map(|m| m.total_kib / 1024).unwrap_or(0),
            disk_free,
            gpu_driver: gpus.driver,
            gpu_usage: gpus.usage,
            vgpus: gpus.count,
            gpu_temp: gpus.temperature,
            vram_percent: gpus.vram_percent,
            vram: gpus.vram_mib,
            ..NodeInfo::default()
        };
        let mut state = self.lock();
        state.samples_since_ip += 1;
        state.last = Some(info.clone());
        info
    }
}

fn read_statics() -> Statics {
    let architecture = proc::go_arch(std::env::consts::ARCH).to_string();
    let vcpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .ok()
        .or_else(|| read("/proc/stat").map(|s| proc::count_cpus(&s)))
        .unwrap_or(1);
    Statics {
        system_info: SystemInfo {
            kernel_version: read("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default(),
            architecture: architecture.clone(),
            os_version: read("/etc/os-release").as_deref().and_then(proc::parse_os_release).unwrap_or_default(),
            uptime: String::new(),
        },
        vcpus: u32::try_from(vcpus).unwrap_or(u32::MAX),
        architecture,
        nvidia_smi: gpu::find_nvidia_smi(),
    }
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// Space available to unprivileged users on the data directory's file system, in MiB.
fn free_disk_mib(dir: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return 0 };
    // SAFETY: `path` is a valid NUL-terminated string and `stats` a properly sized, writable
    // statvfs; the result is only read when the call succeeded.
    unsafe {
        let mut stats: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(path.as_ptr(), &mut stats) != 0 {
            return 0;
        }
        (stats.f_bavail as u64).saturating_mul(stats.f_frsize as u64) / (1024 * 1024)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn samples_this_host() {
        let dir = tempfile::tempdir().unwrap();
        let host = HostInfo::new(dir.path(), "127.0.0.1", 10100);
        let first = host.sample().await;
        let second = host.sample().await;
        for info in [&first, &second] {
            assert!(info.vcpus >= 1);
            assert!(info.memory_total > 0 && info.memory <= info.memory_total);
            assert!((0.0..=100.0).contains(&info.cpu_percent));
            assert!((0.0..=100.0).contains(&info.memory_percent));
            assert!(!info.architecture.is_empty());
            assert!(!info.system_info.kernel_version.is_empty());
            assert!(!info.ip.is_empty());
        }
        assert!(first.disk_free > 0);
    }

    #[test]
    fn disk_of_a_missing_directory_is_zero() {
        assert_eq!(free_disk_mib(Path::new("/nonexistent/dir")), 0);
    }
}
