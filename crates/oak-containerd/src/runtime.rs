//! [`ContainerdRuntime`]: the `docker` virtualization of a worker, on containerd.
//!
//! Each instance is one container `<job_name>.instance.<n>` in the worker's namespace, with a
//! snapshot of the same name on top of the image's layers, a task whose output goes to a log
//! file, and a waiter that turns the task's exit into a [`RuntimeEvent::Exited`]. Undeploy
//! removes task, container, snapshot and log files. Containers carry labels naming their job and
//! instance, and `list` reads containerd itself, so a restarted worker finds what it ran.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use containerd_client::services::v1::container::Runtime as ContainerRuntimeInfo;
use containerd_client::services::v1::snapshots::{MountsRequest, PrepareSnapshotRequest, UsageRequest};
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest, DeleteTaskRequest,
    GetContainerRequest, GetRequest, KillRequest, ListContainersRequest, ListTasksRequest, StartRequest, WaitRequest,
};
use containerd_client::types::v1::Status as TaskStatus;
use oak_api::node::{DeployCommand, ServiceResources};
use oak_core::egress::EgressPolicy;
use oak_runtime::{
    parse_task_id, task_id, InstanceState, InstanceStatus, LogChunk, LogCursor, Runtime, RuntimeError, RuntimeEvent,
    EVENT_CAPACITY,
};
use tokio::sync::broadcast;

use crate::cgroup::{cpu_percent, Cgroups};
use crate::client::{grpc_error, is_already_exists, is_not_found, Containerd};
use crate::image::Platform;
use crate::logs::LogFiles;
use crate::pull::Puller;
use crate::reference::ImageRef;
use crate::registry::Registry;
use crate::spec::{self, HostSetup};

const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
const RUNC_V2: &str = "io.containerd.runc.v2";
const LABEL_JOB: &str = "oakestra.job";
const LABEL_INSTANCE: &str = "oakestra.instance";
/// Time a stopping instance gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Processes and threads a container may have at once unless the worker says otherwise
/// (`--pids-limit`): plenty for a service, few enough that a fork bomb cannot exhaust the
/// node's pids (the kernel's default `pid_max` is 32768 on small machines).
pub const DEFAULT_PIDS_LIMIT: u32 = 1024;

/// How a worker's containers are run.
#[derive(Debug, Clone)]
pub struct ContainerdConfig {
    /// containerd's gRPC socket.
    pub socket: PathBuf,
    /// containerd namespace of this worker's containers (several workers may share one
    /// containerd with different namespaces).
    pub namespace: String,
    /// Where instance log files go.
    pub log_dir: PathBuf,
    /// Size at which a log file is rotated.
    pub log_cap: u64,
    /// Registries spoken to over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Where pulls may go: public addresses and the operator's allowances.
    pub egress: Arc<EgressPolicy>,
    /// Run containers in the node's network namespace (no overlay network).
    pub host_network: bool,
    pub snapshotter: String,
    /// Most processes and threads per container; `None`: no limit.
    pub pids_limit: Option<u32>,
}

impl ContainerdConfig {
    pub fn new(socket: PathBuf, namespace: String, log_dir: PathBuf) -> Self {
        Self {
            socket,
            namespace,
            log_dir,
            log_cap: 10 * 1024 * 1024,
            insecure_registries: Vec::new(),
            egress: Arc::default(),
            host_network: true,
            snapshotter: "overlayfs".into(),
            pids_limit: Some(DEFAULT_PIDS_LIMIT),
        }
    }
}

pub struct ContainerdRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    cd: Containerd,
    puller: Puller,
    config: ContainerdConfig,
    logs: LogFiles,
    cgroups: Cgroups,
    events: broadcast::Sender<RuntimeEvent>,
    /// Containers being undeployed: their exits are not events.
    stopping: Mutex<HashSet<String>>,
    /// Last CPU sample per container, for CPU % between two observations.
    cpu_samples: Mutex<HashMap<String, (u64, Instant)>>,
    /// One pull at a time per image, so concurrent deploys share a download.
    pulls: tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    cpus: u32,
    memory_total: u64,
}

impl ContainerdRuntime {
    /// Connects to containerd and starts watching the tasks of containers found in the
    /// namespace (left by an earlier run of this worker).
    pub async fn connect(config: ContainerdConfig) -> Result<Self, RuntimeError> {
        let cd = Containerd::connect(&config.socket, &config.namespace).await?;
        let puller = Puller {
            cd: cd.clone(),
            registry: Registry::new(config.insecure_registries.clone(), config.egress.clone()),
            snapshotter: config.snapshotter.clone(),
        };
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let inner = Arc::new(Inner {
            logs: LogFiles::new(config.log_dir.clone(), config.log_cap),
            cgroups: Cgroups::default(),
            cd,
            puller,
            config,
            events,
            stopping: Mutex::new(HashSet::new()),
            cpu_samples: Mutex::new(HashMap::new()),
            pulls: tokio::sync::Mutex::new(HashMap::new()),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            memory_total: memory_total_bytes().unwrap_or(0),
        });
        for (id, status) in inner.task_statuses().await? {
            if matches!(status, TaskStatus::Running | TaskStatus::Created | TaskStatus::Paused) {
                inner.watch(id);
            }
        }
        Ok(Self { inner })
    }

    /// Connects to the configured containerd; if none answers on the default socket and the
    /// `containerd` binary is installed, starts one of the worker's own under `data_dir`
    /// (stopped when `stop` turns true). Returns the runtime and the supervisor task, if any.
    pub async fn open(
        mut config: ContainerdConfig,
        data_dir: &std::path::Path,
        default_socket: bool,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(Self, Option<tokio::task::JoinHandle<()>>), RuntimeError> {
        let first = match Self::connect(config.clone()).await {
            Ok(rt) => return Ok((rt, None)),
            Err(e) => e,
        };
        if !default_socket || !crate::supervise::containerd_installed() {
            let hint = if crate::supervise::containerd_installed() {
                "start it or pass the right --containerd-socket"
            } else {
                "install containerd (Debian: apt-get install containerd runc) or pass --containerd-socket"
            };
            return Err(RuntimeError::Unavailable(format!("{first}; {hint}")));
        }
        let own = crate::supervise::OwnContainerd::under(data_dir);
        tracing::info!(socket = %config.socket.display(), "no containerd answers; starting the worker's own");
        let handle = crate::supervise::start(own.clone(), stop).await.map_err(RuntimeError::Unavailable)?;
        config.socket = own.socket;
        match Self::connect(config).await {
            Ok(rt) => Ok((rt, Some(handle))),
            Err(e) => {
                handle.abort();
                Err(e)
            }
        }
    }

    /// The containerd version, for logs.
    pub async fn version(&self) -> Result<String, RuntimeError> {
        self.inner.cd.version().await
    }
}

impl Inner {
    fn cgroup_path(&self, id: &str) -> String {
        format!("/oakestra/{}/{id}", self.config.namespace)
    }

    async fn task_statuses(&self) -> Result<HashMap<String, TaskStatus>, RuntimeError> {
        let tasks = self
            .cd
            .tasks()
            .list(self.cd.req(ListTasksRequest { filter: String::new() }))
            .await
            .map_err(|e| grpc_error("list tasks", e))?
            .into_inner()
            .tasks;
        Ok(tasks
            .into_iter()
            .map(|t| {
                let status = TaskStatus::try_from(t.status).unwrap_or(TaskStatus::Unknown);
                // containerd fills `id` (the task's, which is the container's) and not always
                // `container_id`.
                let id = if t.container_id.is_empty() { t.id } else { t.container_id };
                (id, status)
            })
            .collect())
    }

    async fn task_exit(&self, id: &str) -> Result<Option<(TaskStatus, u32)>, RuntimeError> {
        match self
            .cd
            .tasks()
            .get(self.cd.req(GetRequest { container_id: id.to_string(), exec_id: String::new() }))
            .await
        {
            Ok(resp) => Ok(resp
                .into_inner()
                .process
                .map(|p| (TaskStatus::try_from(p.status).unwrap_or(TaskStatus::Unknown), p.exit_status))),
            Err(s) if is_not_found(&s) => Ok(None),
            Err(s) => Err(grpc_error("get task", s)),
        }
    }

    /// Waits for the task's exit in the background and reports it, unless it was stopped by
    /// an undeploy.
    fn watch(self: &Arc<Self>, id: String) {
        let inner = self.clone();
        tokio::spawn(async move {
            let waited = inner
                .cd
                .tasks()
                .wait(inner.cd.req(WaitRequest { container_id: id.clone(), exec_id: String::new() }))
                .await;
            let code = match waited {
                Ok(resp) => resp.into_inner().exit_status as i32,
                Err(s) if is_not_found(&s) => return,
                Err(s) => {
                    // containerd restarted or went away: `list` catches up later.
                    tracing::debug!(container = %id, error = %s.message(), "lost the wait on a task");
                    return;
                }
            };
            if inner.stopping.lock().unwrap_or_else(|p| p.into_inner()).contains(&id) {
                return;
            }
            let Some((job_name, instance)) = parse_task_id(&id) else { return };
            let oom = inner.cgroups.oom_killed(&inner.cgroup_path(&id));
            tracing::info!(container = %id, code, oom, "task exited");
            let _ = inner.events.send(RuntimeEvent::Exited { job_name: job_name.to_string(), instance, code });
        });
    }

    async fn container_exists(&self, id: &str) -> Result<bool, RuntimeError> {
        match self.cd.containers().get(self.cd.req(GetContainerRequest { id: id.to_string() })).await {
            Ok(_) => Ok(true),
            Err(s) if is_not_found(&s) => Ok(false),
            Err(s) => Err(grpc_error("get container", s)),
        }
    }

    async fn pull_lock(&self, image: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.pulls.lock().await.entry(image.to_string()).or_default().clone()
    }

    async fn deploy(self: &Arc<Self>, cmd: &DeployCommand) -> Result<(), RuntimeError> {
        let id = task_id(&cmd.job.job_name, cmd.instance_number);
        let service = &cmd.job.spec;
        let image_ref = ImageRef::parse(&cmd.job.image)
            .map_err(|e| RuntimeError::InvalidSpec(format!("image {:?}: {e}", cmd.job.image)))?;
        let platform = match service.platform.as_deref().filter(|p| !p.trim().is_empty()) {
            Some(p) => Platform::parse(p).map_err(RuntimeError::InvalidSpec)?,
            None => Platform::host(),
        };
        if self.container_exists(&id).await? {
            if let Some((TaskStatus::Running, _)) = self.task_exit(&id).await? {
                return Err(RuntimeError::AlreadyDeployed(id));
            }
            tracing::info!(container = %id, "removing a leftover container before deploying");
            self.remove(&id).await?;
        }

        let pulling = Instant::now();
        let image = {
            let lock = self.pull_lock(&image_ref.to_string()).await;
            let _held = lock.lock().await;
            let progress = |msg: String| {
                tracing::info!(container = %id, "{msg}");
                let _ = self.events.send(RuntimeEvent::Progress {
                    job_name: cmd.job.job_name.clone(),
                    instance: cmd.instance_number,
                    detail: msg,
                });
            };
            self.puller.ensure(&image_ref, &platform, &progress).await?
        };
        self.timed("pull", pulling);
        // The overlay gives each instance a namespace of its own (prepared with its veth before
        // the container exists); without it, containers share the worker's.
        let joins_netns = self.config.host_network || cmd.netns.is_some();
        let host = HostSetup {
            host_network: joins_netns,
            host_netns_path: Some(cmd.netns.clone().unwrap_or_else(|| format!("/proc/{}/ns/net", std::process::id()))),
            cgroup_path: self.cgroup_path(&id),
            resolv_conf: std::path::Path::new("/etc/resolv.conf").exists().then(|| "/etc/resolv.conf".to_string()),
            hosts: (self.config.host_network && cmd.netns.is_none() && std::path::Path::new("/etc/hosts").exists())
                .then(|| "/etc/hosts".to_string()),
            pids_limit: self.config.pids_limit,
            bounding_caps: std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| spec::bounding_caps(&s))
                .unwrap_or(u64::MAX),
        };
        let spec =
            spec::build(&image.config, service, cmd.instance_number, &host).map_err(RuntimeError::InvalidSpec)?;

        match self.create_and_start(&id, cmd, &image.name, &image.chain_id, &spec).await {
            Ok(()) => Ok(()),
            Err(e) => {
                // Leave nothing behind.
                if let Err(cleanup) = self.remove(&id).await {
                    tracing::warn!(container = %id, error = %cleanup, "cleanup after a failed deploy failed");
                }
                Err(e)
            }
        }
    }

    async fn create_and_start(
        self: &Arc<Self>,
        id: &str,
        cmd: &DeployCommand,
        image: &str,
        parent: &str,
        spec: &serde_json::Value,
    ) -> Result<(), RuntimeError> {
        // The snapshot is unreferenced until the container record exists: a lease keeps
        // containerd's garbage collector off it meanwhile.
        let creating = Instant::now();
        let lease = self.puller.create_lease().await?;
        let created = self.create_container(id, cmd, image, parent, spec, &lease).await;
        self.puller.delete_lease(&lease).await;
        let mounts = created?;

        let log = self.logs.prepare(id)?;
        let log_uri = format!("file://{}", log.display());
        self.cd
            .tasks()
            .create(self.cd.req(CreateTaskRequest {
                container_id: id.to_string(),
                rootfs: mounts,
                stdin: String::new(),
                stdout: log_uri.clone(),
                stderr: log_uri,
                terminal: false,
                checkpoint: None,
                options: None,
                runtime_path: String::new(),
            }))
            .await
            .map_err(|e| grpc_error("create task", e))?;
        self.timed("create", creating);
        let starting = Instant::now();
        self.watch(id.to_string());
        self.cd
            .tasks()
            .start(self.cd.req(StartRequest { container_id: id.to_string(), exec_id: String::new() }))
            .await
            .map_err(|e| grpc_error("start task", e))?;
        self.timed("start", starting);
        Ok(())
    }

    /// Tells the worker how long a step (`pull`, `create`, `start`, `stop`) took.
    fn timed(&self, operation: &'static str, since: Instant) {
        let _ = self.events.send(RuntimeEvent::Timed { operation, took: since.elapsed() });
    }

    /// The container's snapshot and record, under `lease`; returns the rootfs mounts.
    async fn create_container(
        &self,
        id: &str,
        cmd: &DeployCommand,
        image: &str,
        parent: &str,
        spec: &serde_json::Value,
        lease: &str,
    ) -> Result<Vec<containerd_client::types::Mount>, RuntimeError> {
        let snapshotter = self.config.snapshotter.clone();
        let prepared = self
            .cd
            .snapshots()
            .prepare(self.cd.leased(
                PrepareSnapshotRequest {
                    snapshotter: snapshotter.clone(),
                    key: id.to_string(),
                    parent: parent.to_string(),
                    labels: HashMap::new(),
                },
                lease,
            ))
            .await;
        let mounts = match prepared {
            Ok(resp) => resp.into_inner().mounts,
            Err(s) if is_already_exists(&s) => {
                self.cd
                    .snapshots()
                    .mounts(self.cd.req(MountsRequest { snapshotter: snapshotter.clone(), key: id.to_string() }))
                    .await
                    .map_err(|e| grpc_error("snapshot mounts", e))?
                    .into_inner()
                    .mounts
            }
            Err(s) => return Err(grpc_error("prepare container snapshot", s)),
        };
        let labels = HashMap::from([
            (LABEL_JOB.to_string(), cmd.job.job_name.clone()),
            (LABEL_INSTANCE.to_string(), cmd.instance_number.to_string()),
        ]);
        let container = Container {
            id: id.to_string(),
            labels,
            image: image.to_string(),
            runtime: Some(ContainerRuntimeInfo { name: RUNC_V2.into(), options: None }),
            spec: Some(prost_types::Any {
                type_url: SPEC_TYPE_URL.into(),
                value: serde_json::to_vec(spec).unwrap_or_default(),
            }),
            snapshotter,
            snapshot_key: id.to_string(),
            created_at: None,
            updated_at: None,
            extensions: HashMap::new(),
            sandbox: String::new(),
        };
        self.cd
            .containers()
            .create(self.cd.leased(CreateContainerRequest { container: Some(container) }, lease))
            .await
            .map_err(|e| grpc_error("create container", e))?;
        Ok(mounts)
    }

    /// Stops (SIGTERM, then SIGKILL after the grace time) and removes everything of `id`.
    async fn stop_and_remove(&self, id: &str) -> Result<(), RuntimeError> {
        if let Some((status, _)) = self.task_exit(id).await? {
            if status != TaskStatus::Stopped {
                let stopping = Instant::now();
                self.kill(id, libc::SIGTERM as u32).await?;
                let deadline = Instant::now() + STOP_GRACE;
                while Instant::now() < deadline {
                    if matches!(self.task_exit(id).await?, None | Some((TaskStatus::Stopped, _))) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                if !matches!(self.task_exit(id).await?, None | Some((TaskStatus::Stopped, _))) {
                    tracing::info!(container = %id, "did not stop within the grace time; killing");
                    self.kill(id, libc::SIGKILL as u32).await?;
                    for _ in 0..100 {
                        if matches!(self.task_exit(id).await?, None | Some((TaskStatus::Stopped, _))) {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                self.timed("stop", stopping);
            }
        }
        self.remove(id).await
    }

    async fn kill(&self, id: &str, signal: u32) -> Result<(), RuntimeError> {
        let req = KillRequest { container_id: id.to_string(), exec_id: String::new(), signal, all: true };
        match self.cd.tasks().kill(self.cd.req(req)).await {
            Ok(_) => Ok(()),
            Err(s) if is_not_found(&s) => Ok(()),
            Err(s) => Err(grpc_error("kill task", s)),
        }
    }

    /// Removes the (stopped) task, the container, its snapshot and its logs; whatever of it
    /// exists.
    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        match self.cd.tasks().delete(self.cd.req(DeleteTaskRequest { container_id: id.to_string() })).await {
            Ok(_) => {}
            Err(s) if is_not_found(&s) => {}
            Err(s) => return Err(grpc_error("delete task", s)),
        }
        match self.cd.containers().delete(self.cd.req(DeleteContainerRequest { id: id.to_string() })).await {
            Ok(_) => {}
            Err(s) if is_not_found(&s) => {}
            Err(s) => return Err(grpc_error("delete container", s)),
        }
        self.puller.remove_snapshot(id).await;
        self.logs.remove(id);
        self.cpu_samples.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        Ok(())
    }

    async fn containers(&self) -> Result<Vec<Container>, RuntimeError> {
        Ok(self
            .cd
            .containers()
            .list(self.cd.req(ListContainersRequest { filters: Vec::new() }))
            .await
            .map_err(|e| grpc_error("list containers", e))?
            .into_inner()
            .containers)
    }
}

#[async_trait]
impl Runtime for ContainerdRuntime {
    fn name(&self) -> &str {
        "docker"
    }

    async fn deploy(&self, cmd: &DeployCommand) -> Result<(), RuntimeError> {
        self.inner.deploy(cmd).await
    }

    async fn undeploy(&self, job_name: &str, instance: u32) -> Result<(), RuntimeError> {
        let id = task_id(job_name, instance);
        let inner = &self.inner;
        if !inner.container_exists(&id).await? {
            // Nothing to stop, but make sure no snapshot or log of it stays.
            inner.remove(&id).await?;
            return Err(RuntimeError::NotFound(id));
        }
        inner.stopping.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone());
        let result = inner.stop_and_remove(&id).await;
        inner.stopping.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        result
    }

    async fn list(&self) -> Result<Vec<InstanceState>, RuntimeError> {
        let containers = self.inner.containers().await?;
        let tasks = self.inner.task_statuses().await?;
        let mut out = Vec::new();
        for c in containers {
            let Some((job_name, instance)) = parse_task_id(&c.id) else { continue };
            let state = match tasks.get(&c.id) {
                Some(TaskStatus::Running | TaskStatus::Paused | TaskStatus::Pausing) => InstanceStatus::Running,
                Some(TaskStatus::Stopped) => {
                    let code = self.inner.task_exit(&c.id).await?.map_or(255, |(_, code)| code as i32);
                    InstanceStatus::Exited { code }
                }
                _ => InstanceStatus::Creating,
            };
            out.push(InstanceState { job_name: job_name.to_string(), instance, state });
        }
        Ok(out)
    }

    async fn stats(&self) -> Result<Vec<ServiceResources>, RuntimeError> {
        let inner = &self.inner;
        let tasks = inner.task_statuses().await?;
        let now = Instant::now();
        let mut out = Vec::new();
        for (id, status) in tasks {
            if status != TaskStatus::Running {
                continue;
            }
            let Some((job_name, instance)) = parse_task_id(&id) else { continue };
            if let Err(e) = inner.logs.rotate_if_needed(&id) {
                tracing::warn!(container = %id, error = %e, "cannot rotate log file");
            }
            let cgroup = inner.cgroup_path(&id);
            let usage = inner.cgroups.usage(&cgroup);
            let cpu = match usage {
                Some(u) => {
                    let mut samples = inner.cpu_samples.lock().unwrap_or_else(|p| p.into_inner());
                    let pct =
                        samples.get(&id).map_or(0.0, |(ns, at)| cpu_percent(*ns, u.cpu_ns, now - *at, inner.cpus));
                    samples.insert(id.clone(), (u.cpu_ns, now));
                    pct
                }
                None => 0.0,
            };
            let memory = usage.map_or(0, |u| u.memory_bytes);
            let memory_percent =
                if inner.memory_total > 0 { memory as f64 * 100.0 / inner.memory_total as f64 } else { 0.0 };
            let disk = inner
                .cd
                .snapshots()
                .usage(inner.cd.req(UsageRequest { snapshotter: inner.config.snapshotter.clone(), key: id.clone() }))
                .await
                .map(|r| r.into_inner().size.max(0) as u64)
                .unwrap_or(0);
            out.push(ServiceResources {
                job_name: job_name.to_string(),
                instance,
                virtualization: "docker".into(),
                cpu_percent: format!("{cpu:.6}"),
                memory_percent: format!("{memory_percent:.6}"),
                memory_bytes: memory.to_string(),
                disk: disk.to_string(),
                logs: inner.logs.tail(&id, 1024).unwrap_or_default(),
                cpu_seconds: usage.map(|u| u.cpu_ns as f64 / 1e9),
                memory_limit_bytes: inner.cgroups.memory_limit(&cgroup),
                oom_kills: inner.cgroups.oom_kills(&cgroup),
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

fn memory_total_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
