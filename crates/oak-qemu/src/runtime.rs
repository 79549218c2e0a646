//! [`QemuRuntime`]: instances are QEMU processes, one directory each under
//! `<dir>/instances/<task id>/` (the unpacked archive, `pid`, `qemu.err`), the QMP socket in
//! [`QemuConfig::socket_dir`] (unix socket paths must stay under 108 bytes), the serial
//! console appended to `<log dir>/<task id>.log`. QEMU runs in its own process group and
//! outlives the worker; a restarted worker adopts every instance whose pid file names a live
//! QEMU that answers on its QMP socket, and removes the other directories.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use oak_api::node::{DeployCommand, ServiceResources};
use oak_containerd::egress;
use oak_containerd::logs::LogFiles;
use oak_core::egress::EgressPolicy;
use oak_runtime::{
    parse_task_id, task_id, InstanceState, InstanceStatus, LogChunk, LogCursor, Runtime, RuntimeError, RuntimeEvent,
    EVENT_CAPACITY,
};
use tokio::process::Command;
use tokio::sync::{broadcast, watch};

use crate::command::{kernel_url, qemu_args, InstancePaths, Launch};
use crate::extract::{self, Limits};
use crate::{fetch, qmp, Accel};

pub const NAME: &str = "unikernel";

#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// `cache/` (downloaded archives) and `instances/` live here.
    pub dir: PathBuf,
    /// Serial console files, shared with the container runtime's logs.
    pub log_dir: PathBuf,
    pub log_cap: u64,
    pub binary: PathBuf,
    pub accel: Accel,
    /// The node's architecture (`amd64`, `arm64`): picks the kernel URL and the machine.
    pub arch: String,
    pub max_download: u64,
    pub download_timeout: Duration,
    /// Where kernels may be downloaded from: public addresses and the operator's allowances.
    pub egress: Arc<EgressPolicy>,
    pub limits: Limits,
    /// Where QMP sockets are (`/run/oakestra-qemu`).
    pub socket_dir: PathBuf,
    /// Time QEMU has to quit after QMP `quit` before it is killed.
    pub stop_grace: Duration,
    /// Time QEMU has to answer on QMP after it was started.
    pub start_timeout: Duration,
}

impl QemuConfig {
    pub fn new(dir: PathBuf, log_dir: PathBuf, binary: PathBuf, accel: Accel, arch: String) -> Self {
        Self {
            dir,
            log_dir,
            log_cap: 10 << 20,
            binary,
            accel,
            arch,
            max_download: 512 << 20,
            download_timeout: Duration::from_secs(300),
            egress: Arc::default(),
            limits: Limits::default(),
            socket_dir: PathBuf::from("/run/oakestra-qemu"),
            stop_grace: Duration::from_secs(5),
            start_timeout: Duration::from_secs(30),
        }
    }
}

/// The first of the users VMs run as: VM `n` (counted among this worker's running VMs) runs as
/// uid and gid `VM_UID_BASE + n`, which no account uses, so a guest that escaped into its QEMU
/// is an unprivileged user that owns nothing and cannot touch another VM's QEMU.
pub const VM_UID_BASE: u32 = 2_000_000_000;

struct Vm {
    /// `None` while the deploy is still downloading and starting.
    pid: Option<u32>,
    /// The user its QEMU runs as; `None` until it is chosen at start.
    uid: Option<u32>,
    /// The exit code once QEMU ended (-1: ended, code unknown).
    exit: watch::Receiver<Option<i32>>,
    /// Set by undeploy, so the exit it causes is not reported as an event.
    stopping: bool,
    cpu_sample: Option<(u64, Instant)>,
}

struct Inner {
    config: QemuConfig,
    http: reqwest::Client,
    vms: Mutex<HashMap<String, Vm>>,
    events: broadcast::Sender<RuntimeEvent>,
    logs: LogFiles,
    /// One lock per kernel URL: concurrent deploys of one kernel download it once, while a slow
    /// download does not hold up other kernels.
    downloads: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    cpus: u32,
    memory_total: u64,
    tick_ns: u64,
}

#[derive(Clone)]
pub struct QemuRuntime {
    inner: Arc<Inner>,
}

impl QemuRuntime {
    /// Opens the runtime and adopts the instances a previous worker left running.
    pub async fn open(config: QemuConfig) -> Result<Self, String> {
        let instances = config.dir.join("instances");
        for dir in [&instances, &config.socket_dir] {
            tokio::fs::create_dir_all(dir).await.map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
        let http = egress::client(config.egress.clone(), builder).map_err(|e| format!("http client: {e}"))?;
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        let inner = Arc::new(Inner {
            logs: LogFiles::new(config.log_dir.clone(), config.log_cap),
            config,
            http,
            vms: Mutex::new(HashMap::new()),
            events: broadcast::channel(EVENT_CAPACITY).0,
            downloads: Mutex::new(HashMap::new()),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            memory_total: mem_total().unwrap_or(0),
            tick_ns: 1_000_000_000 / ticks,
        });
        let rt = Self { inner };
        rt.adopt(&instances).await;
        Ok(rt)
    }

    async fn adopt(&self, instances: &Path) {
        let Ok(mut dirs) = tokio::fs::read_dir(instances).await else { return };
        while let Ok(Some(entry)) = dirs.next_entry().await {
            let id = entry.file_name().to_string_lossy().into_owned();
            let dir = entry.path();
            let pid = std::fs::read_to_string(dir.join("pid")).ok().and_then(|s| s.trim().parse::<u32>().ok());
            let alive = match pid {
                Some(pid) => is_our_qemu(pid, &id) && qmp::ping(&self.qmp_socket(&id)).await.is_ok(),
                None => false,
            };
            match (alive, pid, parse_task_id(&id).is_some()) {
                (true, Some(pid), true) => {
                    tracing::info!(instance = %id, pid, "adopting running unikernel");
                    let (tx, rx) = watch::channel(None);
                    self.inner.vms.lock().unwrap().insert(
                        id.clone(),
                        Vm { pid: Some(pid), uid: proc_uid(pid), exit: rx, stopping: false, cpu_sample: None },
                    );
                    let inner = self.inner.clone();
                    tokio::spawn(async move {
                        while Path::new(&format!("/proc/{pid}")).exists() && is_our_qemu(pid, &id) {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                        let _ = tx.send(Some(-1));
                        inner.exited(&id, -1);
                    });
                }
                _ => {
                    if let Some(pid) = pid.filter(|p| is_our_qemu(*p, &id)) {
                        // SAFETY: plain kill(2) of a process verified to be this instance's QEMU.
                        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    }
                    tracing::info!(instance = %id, "removing the files of a unikernel no longer running");
                    self.remove_files(&id);
                }
            }
        }
    }

    fn progress(&self, cmd: &DeployCommand, detail: String) {
        let _ = self.inner.events.send(RuntimeEvent::Progress {
            job_name: cmd.job.job_name.clone(),
            instance: cmd.instance_number,
            detail,
        });
    }

    fn instance_dir(&self, id: &str) -> PathBuf {
        self.inner.config.dir.join("instances").join(id)
    }

    async fn start(&self, cmd: &DeployCommand, id: &str) -> Result<(), RuntimeError> {
        let c = &self.inner.config;
        let url =
            kernel_url(&cmd.job.image, cmd.job.spec.arch.as_deref(), &c.arch).map_err(RuntimeError::InvalidSpec)?;
        self.progress(cmd, format!("downloading kernel {url}"));
        let archive = {
            let lock = self.inner.downloads.lock().unwrap().entry(url.clone()).or_default().clone();
            let _one_at_a_time = lock.lock().await;
            fetch::fetch(&self.inner.http, &c.egress, &c.dir.join("cache"), &url, c.max_download, c.download_timeout)
                .await
                .map_err(RuntimeError::Failed)?
        };
        self.progress(cmd, "unpacking kernel".into());
        let dir = self.instance_dir(id);
        let _ = tokio::fs::remove_dir_all(&dir).await;
        let root = dir.join("root");
        let limits = c.limits;
        let unpacked = tokio::task::spawn_blocking(move || extract::unpack(&archive, &root, limits))
            .await
            .map_err(|e| RuntimeError::Failed(format!("unpacking failed: {e}")))?
            .map_err(|e| RuntimeError::Failed(format!("kernel {url}: {e}")))?;
        if unpacked.files.is_some() {
            // The way to `files/` for the unprivileged QEMU (passing through, not listing).
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711));
        }
        let log = self.inner.logs.prepare(id)?;
        let paths = InstancePaths { log, qmp: self.qmp_socket(id), pid: dir.join("pid") };
        let guest_net = match &cmd.netns {
            Some(ns) => {
                self.progress(cmd, "connecting the VM to the overlay".into());
                Some(crate::net::hand_over(Path::new(ns)).await.map_err(RuntimeError::Failed)?)
            }
            None => None,
        };
        let launch = Launch {
            name: id,
            uid: Some(self.inner.assign_uid(id)),
            arch: &c.arch,
            accel: c.accel,
            memory_mb: cmd.job.spec.memory_mb(),
            vcpus: cmd.job.spec.vcpus,
            unpacked: &unpacked,
            cmd: &cmd.job.spec.cmd,
            net: guest_net.as_ref(),
        };
        let args = qemu_args(&launch, &paths);
        let mut command = Command::new(&c.binary);
        // The overlay's namespace for the instance, entered between fork and exec.
        let netns = match &cmd.netns {
            Some(ns) => Some(
                std::fs::File::open(ns)
                    .map_err(|e| RuntimeError::Failed(format!("cannot open network namespace {ns}: {e}")))?,
            ),
            None => None,
        };
        if let Some(ns) = &netns {
            use std::os::fd::AsRawFd;
            let fd = ns.as_raw_fd();
            // SAFETY: setns(2) is async-signal-safe; `fd` stays open until after the spawn.
            unsafe {
                command.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let err_path = dir.join("qemu.err");
        let err_file = std::fs::File::create(&err_path)?;
        command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err_file)
            .process_group(0)
            .kill_on_drop(false);
        self.progress(cmd, format!("starting QEMU ({})", c.accel.as_str()));
        let mut child = command.spawn().map_err(|e| RuntimeError::Failed(format!("cannot start QEMU: {e}")))?;
        drop(netns);
        let pid = child.id().unwrap_or(0);
        let (tx, rx) = watch::channel(None);
        {
            let mut vms = self.inner.vms.lock().unwrap();
            if let Some(vm) = vms.get_mut(id) {
                vm.pid = Some(pid);
                vm.exit = rx.clone();
            }
        }
        let inner = self.inner.clone();
        let waiter_id = id.to_string();
        tokio::spawn(async move {
            let code = match child.wait().await {
                Ok(status) => exit_code(status),
                Err(_) => -1,
            };
            let _ = tx.send(Some(code));
            inner.exited(&waiter_id, code);
        });
        // Up once QMP answers; an early exit fails the deploy with QEMU's own words.
        let deadline = Instant::now() + c.start_timeout;
        let mut exit = rx;
        loop {
            if let Some(code) = *exit.borrow() {
                let err = std::fs::read_to_string(&err_path).unwrap_or_default();
                return Err(RuntimeError::Failed(format!("QEMU exited with {code} at start: {}", last_lines(&err))));
            }
            if qmp::ping(&paths.qmp).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill_and_wait(pid, &mut exit).await;
                return Err(RuntimeError::Failed(format!("QEMU did not answer on QMP within {:?}", c.start_timeout)));
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), exit.changed()).await;
        }
    }

    async fn kill_and_wait(&self, pid: u32, exit: &mut watch::Receiver<Option<i32>>) {
        if pid > 0 && exit.borrow().is_none() {
            // SAFETY: kill(2) of the QEMU this runtime started (not yet reaped: no exit seen).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), exit.wait_for(|c| c.is_some())).await;
    }

    /// The QMP socket of instance `id`: named by a hash of its directory, so it is short and
    /// distinct for every worker data dir.
    fn qmp_socket(&self, id: &str) -> PathBuf {
        use sha2::{Digest, Sha256};
        let dir = self.instance_dir(id);
        let hash = hex::encode(Sha256::digest(dir.as_os_str().as_encoded_bytes()));
        self.inner.config.socket_dir.join(format!("{}.qmp", &hash[..20]))
    }

    fn remove_files(&self, id: &str) {
        let _ = std::fs::remove_file(self.qmp_socket(id));
        let _ = std::fs::remove_dir_all(self.instance_dir(id));
        self.inner.logs.remove(id);
    }
}

impl Inner {
    /// The first user of [`VM_UID_BASE`] on that no other VM of this worker runs as, now held
    /// by VM `id`.
    fn assign_uid(&self, id: &str) -> u32 {
        let mut vms = self.vms.lock().unwrap();
        let used: std::collections::HashSet<u32> = vms.values().filter_map(|vm| vm.uid).collect();
        let uid = (VM_UID_BASE..).find(|u| !used.contains(u)).unwrap_or(VM_UID_BASE);
        if let Some(vm) = vms.get_mut(id) {
            vm.uid = Some(uid);
        }
        uid
    }

    fn exited(&self, id: &str, code: i32) {
        let report = {
            let vms = self.vms.lock().unwrap();
            vms.get(id).is_some_and(|vm| !vm.stopping && vm.pid.is_some())
        };
        if report {
            if let Some((job, instance)) = parse_task_id(id) {
                let _ = self.events.send(RuntimeEvent::Exited { job_name: job.to_string(), instance, code });
            }
        }
    }
}

#[async_trait]
impl Runtime for QemuRuntime {
    fn name(&self) -> &str {
        NAME
    }

    async fn deploy(&self, cmd: &DeployCommand) -> Result<(), RuntimeError> {
        let id = task_id(&cmd.job.job_name, cmd.instance_number);
        {
            let mut vms = self.inner.vms.lock().unwrap();
            if vms.contains_key(&id) {
                return Err(RuntimeError::AlreadyDeployed(id));
            }
            let (_, rx) = watch::channel(None);
            vms.insert(id.clone(), Vm { pid: None, uid: None, exit: rx, stopping: false, cpu_sample: None });
        }
        let result = self.start(cmd, &id).await;
        if result.is_err() {
            if let Some(vm) = self.inner.vms.lock().unwrap().get_mut(&id) {
                vm.stopping = true;
            }
            let (pid, mut exit) = {
                let vms = self.inner.vms.lock().unwrap();
                let vm = vms.get(&id);
                (vm.and_then(|v| v.pid).unwrap_or(0), vm.map(|v| v.exit.clone()))
            };
            if let Some(exit) = exit.as_mut() {
                self.kill_and_wait(pid, exit).await;
            }
            self.inner.vms.lock().unwrap().remove(&id);
            self.remove_files(&id);
        }
        result
    }

    async fn undeploy(&self, job_name: &str, instance: u32) -> Result<(), RuntimeError> {
        let id = task_id(job_name, instance);
        let (pid, mut exit) = {
            let mut vms = self.inner.vms.lock().unwrap();
            let vm = vms.get_mut(&id).ok_or_else(|| RuntimeError::NotFound(id.clone()))?;
            vm.stopping = true;
            (vm.pid.unwrap_or(0), vm.exit.clone())
        };
        if exit.borrow().is_none() {
            if let Err(e) = qmp::quit(&self.qmp_socket(&id)).await {
                tracing::warn!(instance = %id, error = %e, "QMP quit failed; killing QEMU");
            }
            let grace = self.inner.config.stop_grace;
            if tokio::time::timeout(grace, exit.wait_for(|c| c.is_some())).await.is_err() {
                self.kill_and_wait(pid, &mut exit).await;
            }
            // An adopted QEMU is not our child: its end is seen by polling /proc.
            for _ in 0..50 {
                if pid == 0 || !Path::new(&format!("/proc/{pid}")).exists() || !is_our_qemu(pid, &id) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        self.inner.vms.lock().unwrap().remove(&id);
        self.remove_files(&id);
        Ok(())
    }

    async fn list(&self) -> Result<Vec<InstanceState>, RuntimeError> {
        let vms = self.inner.vms.lock().unwrap();
        let mut out: Vec<InstanceState> = vms
            .iter()
            .filter_map(|(id, vm)| {
                let (job, instance) = parse_task_id(id)?;
                let state = match (*vm.exit.borrow(), vm.pid) {
                    (Some(code), Some(_)) => InstanceStatus::Exited { code },
                    (_, None) => InstanceStatus::Creating,
                    (None, Some(_)) => InstanceStatus::Running,
                };
                Some(InstanceState { job_name: job.to_string(), instance, state })
            })
            .collect();
        out.sort_by(|a, b| (&a.job_name, a.instance).cmp(&(&b.job_name, b.instance)));
        Ok(out)
    }

    async fn stats(&self) -> Result<Vec<ServiceResources>, RuntimeError> {
        let inner = &self.inner;
        let now = Instant::now();
        let mut out = Vec::new();
        let mut vms = inner.vms.lock().unwrap();
        for (id, vm) in vms.iter_mut() {
            let (Some(pid), None) = (vm.pid, *vm.exit.borrow()) else { continue };
            let Some((job_name, instance)) = parse_task_id(id) else { continue };
            if let Err(e) = inner.logs.rotate_if_needed(id) {
                tracing::warn!(instance = %id, error = %e, "cannot rotate log file");
            }
            let (cpu, rss) = proc_usage(pid).unwrap_or((0, 0));
            let cpu_ns = cpu * inner.tick_ns;
            let pct = vm
                .cpu_sample
                .map_or(0.0, |(ns, at)| oak_containerd::cgroup::cpu_percent(ns, cpu_ns, now - at, inner.cpus));
            vm.cpu_sample = Some((cpu_ns, now));
            let memory_percent =
                if inner.memory_total > 0 { rss as f64 * 100.0 / inner.memory_total as f64 } else { 0.0 };
            out.push(ServiceResources {
                job_name: job_name.to_string(),
                instance,
                virtualization: NAME.into(),
                cpu_percent: format!("{pct:.6}"),
                memory_percent: format!("{memory_percent:.6}"),
                memory_bytes: rss.to_string(),
                disk: "0".into(),
                logs: inner.logs.tail(id, 1024).unwrap_or_default(),
                cpu_seconds: Some(cpu_ns as f64 / 1e9),
                memory_limit_bytes: None,
                oom_kills: None,
            });
        }
        out.sort_by(|a, b| (&a.job_name, a.instance).cmp(&(&b.job_name, b.instance)));
        Ok(out)
    }

    async fn logs(&self, job_name: &str, instance: u32, tail_bytes: usize) -> Result<String, RuntimeError> {
        self.inner.logs.runtime_tail(&task_id(job_name, instance), tail_bytes)
    }

    async fn read_logs(
        &self,
        job_name: &str,
        instance: u32,
        from: Option<LogCursor>,
        max_bytes: usize,
    ) -> Result<LogChunk, RuntimeError> {
        self.inner.logs.runtime_read(&task_id(job_name, instance), from, max_bytes)
    }

    fn events(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.inner.events.subscribe()
    }
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Whether `pid` is a QEMU started for instance `id` (its command line names it).
fn is_our_qemu(pid: u32, id: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let name = format!("{id},debug-threads=on");
    cmdline.split(|b| *b == 0).any(|arg| arg == name.as_bytes())
}

/// CPU ticks (user + system) and resident bytes of a process.
fn proc_usage(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at state (field 3).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    Some((ticks, rss_kb * 1024))
}

/// The real uid of a process (an adopted VM's QEMU keeps the user it was started as).
fn proc_uid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.parse().ok()
}

fn mem_total() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb =
        meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?.split_whitespace().next()?.parse::<u64>().ok()?;
    Some(kb * 1024)
}

fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = &lines[lines.len().saturating_sub(3)..];
    if tail.is_empty() {
        "no error output".into()
    } else {
        tail.join(" / ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_of_this_process_is_read_from_proc() {
        let (_, rss) = proc_usage(std::process::id()).unwrap();
        assert!(rss > 0);
        assert!(mem_total().unwrap() > rss);
        assert!(!is_our_qemu(std::process::id(), "a.b.c.d.instance.0"));
        assert_eq!(last_lines("a\n\nb\nc\nd\n"), "b / c / d");
    }
}
