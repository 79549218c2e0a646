//! The instance state machine of one worker. A single task owns every instance's state and
//! handles control commands, runtime events, finished runtime calls and periodic observations
//! one at a time, so no two decisions about an instance race. Runtime calls themselves run as
//! separate tasks: a slow image pull never blocks other commands.
//!
//! Desired state (what the cluster asked for) is persisted after every change, and a new instance
//! is recorded before its deploy starts: a worker that cannot write its state file (a full
//! disk) fails the deploy with the reason instead of running an instance a restart would not
//! know about; observed state
//! comes from the runtimes' events and, as the source of truth, from `list` every report
//! interval, so a missed event is caught up with.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use oak_api::node::{DeployCommand, LogsAnswer, LogsQuery, ResourcesReport, ServiceResources};
use oak_api::status;
use oak_runtime::{task_id, InstanceState, InstanceStatus, Runtime, RuntimeError};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::commands;
use crate::desired;
use crate::metrics::{InstanceRow, WorkerMetrics};
use crate::quiet::UsageGate;
use crate::reports::{self, Outgoing};

/// Output returned for a logs query without `tail`, and the most one answer carries (it
/// travels in one MQTT message and one channel frame).
const LOGS_DEFAULT_BYTES: usize = 16 * 1024;
const LOGS_MAX_BYTES: usize = 256 * 1024;

/// An instance: job name and instance number.
pub(crate) type Key = (String, u32);

/// State shared between the engine, the reporter and the MQTT session.
pub(crate) struct Shared {
    /// Whether the broker connection is up; periodic reports are skipped while it is not.
    pub connected: AtomicBool,
    /// Increases at every change of what runs: lets the engine tell whether an observation was
    /// started before or after a change (an instance deployed after `list` began is not missing).
    pub seq: AtomicU64,
    /// What `/metrics` shows.
    pub metrics: Arc<WorkerMetrics>,
    /// Whether the cluster of the current registration offered quiet reports.
    pub quiet_reports: AtomicBool,
    /// Broker sessions so far: the first reports of a new one are never held back.
    pub sessions: AtomicU64,
}

impl Shared {
    #[cfg(test)]
    pub(crate) fn new() -> Self {
        Self::with_metrics(Arc::new(WorkerMetrics::new(None)))
    }

    pub(crate) fn with_metrics(metrics: Arc<WorkerMetrics>) -> Self {
        Self {
            connected: AtomicBool::new(false),
            seq: AtomicU64::new(1),
            metrics,
            quiet_reports: AtomicBool::new(false),
            sessions: AtomicU64::new(0),
        }
    }
}

/// What the engine is told.
#[derive(Debug)]
pub(crate) enum EngineMsg {
    /// Raw payload of `control/deploy`.
    Deploy(Vec<u8>),
    /// Raw payload of `control/delete`.
    Delete(Vec<u8>),
    /// Raw payload of `control/logs`.
    Logs(Vec<u8>),
    /// A runtime event: the instance stopped by itself.
    Exited { runtime: usize, job_name: String, instance: u32, code: i32 },
    /// A runtime event: what a deploy in progress is doing.
    Progress { runtime: usize, job_name: String, instance: u32, detail: String },
    /// What every runtime runs, listed after `seq` was read; one result per runtime, in order.
    Observed { seq: u64, runtimes: Vec<Result<Observation, RuntimeError>> },
}

#[derive(Debug, Default)]
pub(crate) struct Observation {
    pub instances: Vec<InstanceState>,
    pub stats: Vec<ServiceResources>,
}

struct Entry {
    /// `None` for instances the worker never received a command for (deletes of unknown
    /// instances, clean-up of leftovers).
    cmd: Option<DeployCommand>,
    /// Index into the runtimes; `None` means "whichever holds it".
    runtime: Option<usize>,
    phase: Phase,
}

enum Phase {
    /// `deploy` is running. A delete or an exit that arrives meanwhile is remembered and handled
    /// when it returns.
    Deploying { exit_code: Option<i32>, delete_requested: bool },
    /// Started; `since` is the `seq` at which it was last known to be started.
    Running { since: u64 },
    /// `undeploy` is running (deleted, or cleaning up after an exit).
    Stopping { report_undeployed: bool, then_deploy: Option<Box<(DeployCommand, usize)>> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Deploy,
    Undeploy,
}

pub(crate) struct Engine {
    runtimes: Vec<Arc<dyn Runtime>>,
    data_dir: PathBuf,
    shared: Arc<Shared>,
    outbox: mpsc::UnboundedSender<Outgoing>,
    entries: HashMap<Key, Entry>,
    /// Instances removed recently, with the `seq` of their removal: an observation started
    /// before that may still list them and must not resurrect them.
    tombstones: HashMap<Key, u64>,
    ops: JoinSet<Result<(), RuntimeError>>,
    op_keys: HashMap<tokio::task::Id, (Key, OpKind)>,
    /// Whether the desired set may have changed since it was last written.
    dirty: bool,
    saved: Option<Vec<DeployCommand>>,
    /// Which usage reports go out (with quiet reports, only news and a periodic refresh).
    usage_gate: UsageGate,
}

impl Engine {
    pub(crate) fn new(
        runtimes: Vec<Arc<dyn Runtime>>,
        data_dir: PathBuf,
        shared: Arc<Shared>,
        outbox: mpsc::UnboundedSender<Outgoing>,
    ) -> Self {
        Self {
            runtimes,
            data_dir,
            shared,
            outbox,
            entries: HashMap::new(),
            tombstones: HashMap::new(),
            ops: JoinSet::new(),
            op_keys: HashMap::new(),
            dirty: false,
            saved: None,
            usage_gate: UsageGate::default(),
        }
    }

    /// Adopts what survived a restart, then handles messages until `stop` fires or every sender
    /// is gone. Runtime calls still running at that point are abandoned (their instances are
    /// reconciled at the next start).
    pub(crate) async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<EngineMsg>, mut stop: oneshot::Receiver<()>) {
        self.adopt().await;
        self.persist().await;
        loop {
            tokio::select! {
                msg = inbox.recv() => match msg {
                    Some(EngineMsg::Deploy(first)) => {
                        // Deploys queued back to back are recorded with one write of the
                        // desired set (one sync), then started together.
                        let mut payloads = vec![first];
                        let mut after = None;
                        while let Ok(next) = inbox.try_recv() {
                            match next {
                                EngineMsg::Deploy(p) => payloads.push(p),
                                other => {
                                    after = Some(other);
                                    break;
                                }
                            }
                        }
                        self.on_deploys(payloads).await;
                        if let Some(msg) = after {
                            self.handle(msg).await;
                        }
                    }
                    Some(msg) => self.handle(msg).await,
                    None => break,
                },
                Some(joined) = self.ops.join_next_with_id() => self.on_joined(joined),
                _ = &mut stop => break,
            }
            self.persist().await;
        }
        self.persist().await;
    }

    async fn handle(&mut self, msg: EngineMsg) {
        match msg {
            EngineMsg::Deploy(payload) => self.on_deploys(vec![payload]).await,
            EngineMsg::Delete(payload) => self.on_delete(&payload),
            EngineMsg::Logs(payload) => self.on_logs(&payload),
            EngineMsg::Exited { runtime, job_name, instance, code } => {
                self.on_exit_event(runtime, (job_name, instance), code)
            }
            EngineMsg::Progress { runtime, job_name, instance, detail } => {
                self.on_progress(runtime, (job_name, instance), detail)
            }
            EngineMsg::Observed { seq, runtimes } => self.on_observed(seq, runtimes),
        }
    }

    /// Passes a deploy's progress on as `CREATING` with the detail; ignored once the deploy is
    /// over (a late event must not make a running instance look as if it were starting).
    fn on_progress(&mut self, runtime: usize, key: Key, detail: String) {
        let deploying = self.entries.get(&key).is_some_and(|e| {
            e.runtime == Some(runtime) && matches!(e.phase, Phase::Deploying { delete_requested: false, .. })
        });
        if deploying {
            self.report(&key.0, key.1, status::CREATING, detail);
        }
    }

    // ---- control commands ----

    /// Deploy commands received together: each checked, the new instances among them recorded
    /// in one write of the desired set, then each started (or refused if the write failed).
    async fn on_deploys(&mut self, payloads: Vec<Vec<u8>>) {
        let payloads: Vec<Vec<u8>> = payloads.into_iter().flat_map(commands::split_deploys).collect();
        let checked: Vec<(Key, usize, DeployCommand, bool)> =
            payloads.iter().filter_map(|p| self.check_deploy(p)).collect();
        let new: Vec<&DeployCommand> = checked.iter().filter(|c| c.3).map(|c| &c.2).collect();
        let recorded = if new.is_empty() { Ok(()) } else { self.record(&new).await };
        for (key, runtime, cmd, starts) in checked {
            if starts {
                if let Err(detail) = &recorded {
                    tracing::error!(job = %key.0, instance = key.1, %detail, "rejecting deploy command");
                    self.report(&key.0, key.1, status::FAILED, detail.clone());
                    continue;
                }
            }
            self.apply_deploy(key, runtime, cmd);
        }
    }

    /// A deploy command parsed and checked: its instance, runtime, command and whether it starts
    /// a new instance (which must be recorded first); `None` (reported `FAILED`) if refused.
    fn check_deploy(&mut self, payload: &[u8]) -> Option<(Key, usize, DeployCommand, bool)> {
        let cmd = match commands::parse_deploy(payload) {
            Ok(cmd) => cmd,
            Err(rejected) => {
                tracing::warn!(job = %rejected.job_name, instance = rejected.instance, detail = %rejected.detail, "rejecting deploy command");
                self.report(&rejected.job_name, rejected.instance, status::FAILED, rejected.detail);
                return None;
            }
        };
        let key: Key = (cmd.job.job_name.clone(), cmd.instance_number);
        let Some(runtime) = self.runtime_index(&cmd.job.spec.virtualization) else {
            let runs = match self.runtime_names().join(", ") {
                names if names.is_empty() => "this worker has no runtime".to_string(),
                names => format!("this worker runs {names}"),
            };
            let detail = format!("unknown virtualization {:?}: {runs}", cmd.job.spec.virtualization);
            tracing::warn!(job = %key.0, instance = key.1, %detail, "rejecting deploy command");
            self.report(&key.0, key.1, status::FAILED, detail);
            return None;
        };
        // A new instance (or a new one after the old copy stops) is recorded first.
        let starts = match self.entries.get(&key).map(|e| &e.phase) {
            None | Some(Phase::Stopping { .. }) => true,
            Some(Phase::Deploying { .. } | Phase::Running { .. }) => false,
        };
        Some((key, runtime, cmd, starts))
    }

    /// Acts on a checked (and, if new, recorded) deploy command.
    fn apply_deploy(&mut self, key: Key, runtime: usize, cmd: DeployCommand) {
        self.dirty = true;
        let Some(entry) = self.entries.get_mut(&key) else {
            self.start_deploy(key, runtime, cmd);
            return;
        };
        match &mut entry.phase {
            Phase::Deploying { delete_requested, .. } => {
                tracing::debug!(job = %key.0, instance = key.1, "deploy already in progress");
                *delete_requested = false;
            }
            Phase::Running { .. } => {
                tracing::debug!(job = %key.0, instance = key.1, "instance already running; reporting it again");
                self.report(&key.0, key.1, status::RUNNING, "instance is already running");
            }
            Phase::Stopping { then_deploy, .. } => *then_deploy = Some(Box::new((cmd, runtime))),
        }
    }

    /// Writes the desired set with `cmds` added (replacing commands for the same instances), or
    /// says why it could not: an instance must not start unrecorded. The old file stays intact.
    async fn record(&mut self, cmds: &[&DeployCommand]) -> Result<(), String> {
        let mut desired = self.desired();
        for cmd in cmds {
            desired.retain(|d| (&d.job.job_name, d.instance_number) != (&cmd.job.job_name, cmd.instance_number));
            desired.push((*cmd).clone());
        }
        desired.sort_by(|a, b| (&a.job.job_name, a.instance_number).cmp(&(&b.job.job_name, b.instance_number)));
        match desired::save(&self.data_dir, &desired).await {
            Ok(()) => {
                self.saved = Some(desired);
                Ok(())
            }
            Err(e) => Err(format!(
                "not deployed: the worker cannot record the instance in {}: {e}",
                desired::path(&self.data_dir).display()
            )),
        }
    }

    fn on_delete(&mut self, payload: &[u8]) {
        let cmd = match commands::parse_delete(payload) {
            Ok(cmd) => cmd,
            Err(rejected) => {
                tracing::warn!(detail = %rejected.detail, "ignoring delete command");
                return;
            }
        };
        let key: Key = (cmd.job_name, cmd.instance_number);
        self.dirty = true;
        self.shared.metrics.deleted(&key);
        let Some(entry) = self.entries.get_mut(&key) else {
            // Unknown here, but a runtime may still hold it (e.g. from before a lost state file):
            // remove it wherever it is and confirm, so deletes are idempotent.
            let runtime = self.runtime_index(&cmd.virtualization);
            let phase = Phase::Stopping { report_undeployed: true, then_deploy: None };
            self.entries.insert(key.clone(), Entry { cmd: None, runtime, phase });
            self.spawn_undeploy(key, runtime);
            return;
        };
        match &mut entry.phase {
            Phase::Deploying { delete_requested, .. } => *delete_requested = true,
            Phase::Running { .. } => {
                entry.phase = Phase::Stopping { report_undeployed: true, then_deploy: None };
                let runtime = entry.runtime;
                self.spawn_undeploy(key, runtime);
            }
            Phase::Stopping { report_undeployed, then_deploy } => {
                *report_undeployed = true;
                *then_deploy = None;
            }
        }
    }

    /// Reads an instance's output off the runtime that holds it (or any, for instances this
    /// worker does not track) in a task of its own, and answers on `nodes/<id>/logs`.
    fn on_logs(&mut self, payload: &[u8]) {
        let query: LogsQuery = match serde_json::from_slice(payload) {
            Ok(q) => q,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring malformed logs query");
                return;
            }
        };
        let key: Key = (query.job_name.clone(), query.instance_number);
        let targets: Vec<Arc<dyn Runtime>> = match self.entries.get(&key).and_then(|e| e.runtime) {
            Some(index) => vec![self.runtimes[index].clone()],
            None => self.runtimes.clone(),
        };
        let outbox = self.outbox.clone();
        tokio::spawn(async move {
            let max = match query.tail {
                0 => LOGS_DEFAULT_BYTES,
                n => (n as usize).min(LOGS_MAX_BYTES),
            };
            let mut answer = LogsAnswer { request_id: query.request_id, ..LogsAnswer::default() };
            answer.error =
                format!("no output of instance {} of {} on this worker", query.instance_number, query.job_name);
            for rt in targets {
                match rt.read_logs(&query.job_name, query.instance_number, query.cursor, max).await {
                    Ok(chunk) => {
                        answer.data = chunk.data;
                        answer.cursor = chunk.cursor;
                        answer.error.clear();
                        break;
                    }
                    Err(RuntimeError::NotFound(_)) => {}
                    Err(e) => answer.error = format!("cannot read the output: {e}"),
                }
            }
            let _ = outbox.send(Outgoing::Logs(answer));
        });
    }

    // ---- runtime observations ----

    fn on_exit_event(&mut self, runtime: usize, key: Key, code: i32) {
        let Some(entry) = self.entries.get_mut(&key) else {
            tracing::debug!(job = %key.0, instance = key.1, runtime, "exit of an instance this worker does not track");
            return;
        };
        if entry.runtime != Some(runtime) {
            tracing::debug!(job = %key.0, instance = key.1, runtime, "exit of a same-named instance in another runtime");
            return;
        }
        match &mut entry.phase {
            Phase::Deploying { exit_code, .. } => *exit_code = Some(code),
            Phase::Running { .. } => self.handle_exit(key, code),
            Phase::Stopping { .. } => {}
        }
    }

    /// Reports the exit of a running instance and removes what is left of it.
    fn handle_exit(&mut self, key: Key, code: i32) {
        let Some(entry) = self.entries.get_mut(&key) else { return };
        let one_shot = entry.cmd.as_ref().is_some_and(|c| c.job.spec.one_shot);
        let status = reports::exit_status(one_shot, code);
        tracing::info!(job = %key.0, instance = key.1, code, status, "instance exited");
        self.shared.metrics.exited(&key);
        entry.phase = Phase::Stopping { report_undeployed: false, then_deploy: None };
        let runtime = entry.runtime;
        self.dirty = true;
        self.report(&key.0, key.1, status, format!("exited with code {code}"));
        self.spawn_undeploy(key, runtime);
    }

    fn on_observed(&mut self, seq: u64, results: Vec<Result<Observation, RuntimeError>>) {
        let mut services = Vec::new();
        let mut seen = HashSet::new();
        let mut rows = BTreeMap::new();
        for (index, result) in results.into_iter().enumerate() {
            let Some(runtime) = self.runtimes.get(index).cloned() else { continue };
            let observation = match result {
                Ok(observation) => observation,
                Err(e) => {
                    tracing::warn!(runtime = runtime.name(), error = %e, "cannot observe runtime");
                    continue;
                }
            };
            self.reconcile(index, seq, &observation.instances);
            self.metric_rows(&observation, &mut rows);
            for mut usage in observation.stats {
                let key: Key = (usage.job_name.clone(), usage.instance);
                let include = match self.entries.get(&key) {
                    Some(entry) => matches!(entry.phase, Phase::Running { .. }),
                    None => !self.removed_after(&key, seq),
                };
                // One entry per instance, even if two runtimes see the same one.
                if include && seen.insert(key) {
                    if usage.virtualization.is_empty() {
                        usage.virtualization = runtime.name().to_string();
                    }
                    services.push(usage);
                }
            }
        }
        // Later observations start after every removal recorded so far.
        self.tombstones.retain(|_, removed| *removed > seq);
        services.sort_by(|a, b| (&a.job_name, a.instance).cmp(&(&b.job_name, b.instance)));
        let session = self.shared.sessions.load(Ordering::Relaxed);
        let quiet = self.shared.quiet_reports.load(Ordering::Relaxed);
        if self.usage_gate.due(&services, std::time::Instant::now(), session, quiet) {
            let _ = self.outbox.send(Outgoing::Resources(ResourcesReport { services }));
        }
        self.shared.metrics.instances(rows);
    }

    /// The instances one runtime lists, as `/metrics` shows them: with their service id (from
    /// the deploy command, empty for instances the worker has no command for) and usage.
    fn metric_rows(&self, observation: &Observation, rows: &mut BTreeMap<Key, InstanceRow>) {
        for listed in &observation.instances {
            let key: Key = (listed.job_name.clone(), listed.instance);
            let service_id =
                (self.entries.get(&key).and_then(|e| e.cmd.as_ref())).map(|c| c.job.id.clone()).unwrap_or_default();
            let state = match listed.state {
                InstanceStatus::Creating => "creating",
                InstanceStatus::Running => "running",
                InstanceStatus::Exited { .. } => "exited",
            };
            let usage = (observation.stats.iter()).find(|u| u.job_name == key.0 && u.instance == key.1).cloned();
            rows.entry(key).or_insert(InstanceRow { service_id, state, usage });
        }
    }

    /// Compares what runtime `index` lists with what the engine believes runs there.
    fn reconcile(&mut self, index: usize, seq: u64, listed: &[InstanceState]) {
        let listed: HashMap<Key, InstanceStatus> =
            listed.iter().map(|i| ((i.job_name.clone(), i.instance), i.state)).collect();
        let running: Vec<Key> = self
            .entries
            .iter()
            .filter(|(_, e)| e.runtime == Some(index) && matches!(e.phase, Phase::Running { since } if since <= seq))
            .map(|(key, _)| key.clone())
            .collect();
        for key in running {
            match listed.get(&key) {
                Some(InstanceStatus::Running | InstanceStatus::Creating) => {}
                Some(InstanceStatus::Exited { code }) => self.handle_exit(key, *code),
                None => {
                    let name = self.runtimes[index].name().to_string();
                    tracing::warn!(job = %key.0, instance = key.1, runtime = %name, "instance disappeared");
                    self.report(&key.0, key.1, status::DEAD, format!("instance no longer exists in runtime {name}"));
                    self.remove(&key);
                }
            }
        }
        // Exited leftovers nobody asked for (e.g. after a lost state file): clean them up.
        for (key, state) in listed {
            if matches!(state, InstanceStatus::Exited { .. })
                && !self.entries.contains_key(&key)
                && !self.removed_after(&key, seq)
            {
                tracing::info!(job = %key.0, instance = key.1, "removing an exited instance this worker does not track");
                let phase = Phase::Stopping { report_undeployed: false, then_deploy: None };
                self.entries.insert(key.clone(), Entry { cmd: None, runtime: Some(index), phase });
                self.spawn_undeploy(key, Some(index));
            }
        }
    }

    // ---- finished runtime calls ----

    fn on_joined(&mut self, joined: Result<(tokio::task::Id, Result<(), RuntimeError>), tokio::task::JoinError>) {
        let (id, result) = match joined {
            Ok((id, result)) => (id, result),
            Err(e) => (e.id(), Err(RuntimeError::Failed(format!("runtime call failed: {e}")))),
        };
        let Some((key, kind)) = self.op_keys.remove(&id) else { return };
        self.dirty = true;
        match kind {
            OpKind::Deploy => self.on_deployed(key, result),
            OpKind::Undeploy => self.on_undeployed(key, result),
        }
    }

    fn on_deployed(&mut self, key: Key, result: Result<(), RuntimeError>) {
        let Some(entry) = self.entries.get_mut(&key) else { return };
        let Phase::Deploying { exit_code, delete_requested } = entry.phase else {
            tracing::error!(job = %key.0, instance = key.1, "deploy finished for an instance that was not deploying");
            return;
        };
        match result {
            Ok(()) if delete_requested => {
                entry.phase = Phase::Stopping { report_undeployed: true, then_deploy: None };
                let runtime = entry.runtime;
                self.spawn_undeploy(key, runtime);
            }
            Ok(()) => {
                let deploy_id = entry.cmd.as_ref().map(|c| oak_core::deploy_id(&c.job.id, c.instance_number));
                let span = tracing::info_span!("deploy", deploy_id = %deploy_id.as_deref().unwrap_or(""));
                span.in_scope(|| tracing::info!(job = %key.0, instance = key.1, "instance deployed"));
                entry.phase = Phase::Running { since: self.shared.seq.fetch_add(1, Ordering::SeqCst) + 1 };
                self.report(&key.0, key.1, status::CREATED, "");
                if let Some(code) = exit_code {
                    self.handle_exit(key, code);
                }
            }
            Err(e) => {
                if delete_requested {
                    self.report(&key.0, key.1, status::UNDEPLOYED, "");
                } else {
                    let deploy_id = entry.cmd.as_ref().map(|c| oak_core::deploy_id(&c.job.id, c.instance_number));
                    let span = tracing::info_span!("deploy", deploy_id = %deploy_id.as_deref().unwrap_or(""));
                    span.in_scope(|| tracing::warn!(job = %key.0, instance = key.1, error = %e, "deploy failed"));
                    self.report(&key.0, key.1, status::FAILED, e.to_string());
                }
                self.remove(&key);
            }
        }
    }

    fn on_undeployed(&mut self, key: Key, result: Result<(), RuntimeError>) {
        let Some(entry) = self.entries.get_mut(&key) else { return };
        let Phase::Stopping { report_undeployed, then_deploy } =
            std::mem::replace(&mut entry.phase, Phase::Running { since: 0 })
        else {
            tracing::error!(job = %key.0, instance = key.1, "undeploy finished for an instance that was not stopping");
            return;
        };
        match result {
            Ok(()) | Err(RuntimeError::NotFound(_)) => {
                if report_undeployed {
                    tracing::info!(job = %key.0, instance = key.1, "instance undeployed");
                    self.report(&key.0, key.1, status::UNDEPLOYED, "");
                }
            }
            // Still listed, so reported as unknown: the cluster deletes it again.
            Err(e) => tracing::warn!(job = %key.0, instance = key.1, error = %e, "undeploy failed"),
        }
        self.remove(&key);
        if let Some(next) = then_deploy {
            let (cmd, runtime) = *next;
            self.start_deploy(key, runtime, cmd);
        }
    }

    // ---- helpers ----

    fn start_deploy(&mut self, key: Key, runtime: usize, cmd: DeployCommand) {
        let phase = Phase::Deploying { exit_code: None, delete_requested: false };
        self.entries.insert(key.clone(), Entry { cmd: Some(cmd.clone()), runtime: Some(runtime), phase });
        let rt = self.runtimes[runtime].clone();
        let deploy_id = oak_core::deploy_id(&cmd.job.id, cmd.instance_number);
        let span = tracing::info_span!("deploy", %deploy_id, job = %key.0, instance = key.1);
        span.in_scope(|| tracing::info!("deploying"));
        let metrics = self.shared.metrics.clone();
        let deploy = async move {
            let started = std::time::Instant::now();
            let result = rt.deploy(&cmd).await;
            metrics.operation(rt.name(), "deploy", started.elapsed());
            result
        };
        let handle = self.ops.spawn(deploy.instrument(span));
        self.op_keys.insert(handle.id(), (key, OpKind::Deploy));
    }

    fn spawn_undeploy(&mut self, key: Key, runtime: Option<usize>) {
        let targets: Vec<Arc<dyn Runtime>> = match runtime {
            Some(index) => vec![self.runtimes[index].clone()],
            None => self.runtimes.clone(),
        };
        let (job, instance) = key.clone();
        let span = tracing::info_span!("undeploy", job = %job, instance);
        let metrics = self.shared.metrics.clone();
        let handle = self.ops.spawn(
            async move {
                // Removed from any runtime counts as success; "not found" everywhere too.
                let mut outcome = Err(RuntimeError::NotFound(task_id(&job, instance)));
                for rt in targets {
                    let started = std::time::Instant::now();
                    let result = rt.undeploy(&job, instance).await;
                    if !matches!(result, Err(RuntimeError::NotFound(_))) {
                        metrics.operation(rt.name(), "undeploy", started.elapsed());
                    }
                    match result {
                        Ok(()) => outcome = Ok(()),
                        Err(RuntimeError::NotFound(_)) => {}
                        Err(e) if outcome.is_err() => outcome = Err(e),
                        Err(e) => tracing::warn!(runtime = rt.name(), error = %e, "undeploy failed"),
                    }
                }
                outcome
            }
            .instrument(span),
        );
        self.op_keys.insert(handle.id(), (key, OpKind::Undeploy));
    }

    fn remove(&mut self, key: &Key) {
        self.entries.remove(key);
        self.dirty = true;
        let now = self.shared.seq.fetch_add(1, Ordering::SeqCst) + 1;
        self.tombstones.insert(key.clone(), now);
    }

    /// Whether `key` was removed after an observation that started at `seq`.
    fn removed_after(&self, key: &Key, seq: u64) -> bool {
        self.tombstones.get(key).is_some_and(|removed| *removed > seq)
    }

    fn report(&self, job_name: &str, instance: u32, status: &str, detail: impl Into<String>) {
        let _ = self.outbox.send(reports::job(job_name, instance, status, detail));
    }

    fn runtime_index(&self, virtualization: &str) -> Option<usize> {
        let exact = self.runtimes.iter().position(|r| r.name() == virtualization);
        // The SLA's `container` means the container runtime, advertised as `docker`.
        exact.or_else(|| (virtualization == "container").then(|| self.runtime_index("docker")).flatten())
    }

    fn runtime_names(&self) -> Vec<&str> {
        self.runtimes.iter().map(|r| r.name()).collect()
    }

    // ---- persistence and adoption ----

    fn desired(&self) -> Vec<DeployCommand> {
        let mut desired: Vec<&DeployCommand> = self
            .entries
            .values()
            .filter_map(|entry| match &entry.phase {
                Phase::Deploying { delete_requested: false, .. } | Phase::Running { .. } => entry.cmd.as_ref(),
                Phase::Stopping { then_deploy: Some(next), .. } => Some(&next.0),
                _ => None,
            })
            .collect();
        desired.sort_by(|a, b| (&a.job.job_name, a.instance_number).cmp(&(&b.job.job_name, b.instance_number)));
        desired.into_iter().cloned().collect()
    }

    async fn persist(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let desired = self.desired();
        if self.saved.as_ref() == Some(&desired) {
            return;
        }
        match desired::save(&self.data_dir, &desired).await {
            Ok(()) => self.saved = Some(desired),
            Err(e) => {
                tracing::error!(error = %e, "cannot persist desired instances; a restart may not adopt them");
                self.dirty = true;
            }
        }
    }

    /// After a restart: keeps desired instances that still run (without touching them), reports
    /// the ones that stopped meanwhile, and cleans up interrupted deploys.
    async fn adopt(&mut self) {
        let desired = desired::load(&self.data_dir).await;
        self.saved = Some(desired.clone());
        if desired.is_empty() {
            return;
        }
        let mut listings: Vec<Option<HashMap<Key, InstanceStatus>>> = Vec::with_capacity(self.runtimes.len());
        for rt in &self.runtimes {
            match rt.list().await {
                Ok(list) => {
                    listings.push(Some(list.into_iter().map(|i| ((i.job_name, i.instance), i.state)).collect()))
                }
                Err(e) => {
                    tracing::warn!(runtime = rt.name(), error = %e, "cannot list runtime; adopting its instances unchecked");
                    listings.push(None);
                }
            }
        }
        self.dirty = true;
        for cmd in desired {
            let key: Key = (cmd.job.job_name.clone(), cmd.instance_number);
            if self.entries.contains_key(&key) {
                continue;
            }
            let Some(index) = self.runtime_index(&cmd.job.spec.virtualization) else {
                let detail =
                    format!("virtualization {:?} is no longer configured on this worker", cmd.job.spec.virtualization);
                self.report(&key.0, key.1, status::DEAD, detail);
                continue;
            };
            let listed = listings[index].as_ref().map(|l| l.get(&key).copied());
            let running = Entry { cmd: Some(cmd), runtime: Some(index), phase: Phase::Running { since: 0 } };
            match listed {
                // The runtime could not be asked: the next observation decides.
                None => {
                    self.entries.insert(key, running);
                }
                Some(Some(InstanceStatus::Running)) => {
                    tracing::info!(job = %key.0, instance = key.1, "adopted running instance");
                    self.report(&key.0, key.1, status::RUNNING, "adopted after a worker restart");
                    self.entries.insert(key, running);
                }
                Some(Some(InstanceStatus::Exited { code })) => {
                    self.entries.insert(key.clone(), running);
                    self.handle_exit(key, code);
                }
                Some(Some(InstanceStatus::Creating)) => {
                    self.report(&key.0, key.1, status::FAILED, "deploy interrupted by a worker restart");
                    let phase = Phase::Stopping { report_undeployed: false, then_deploy: None };
                    self.entries.insert(key.clone(), Entry { phase, ..running });
                    self.spawn_undeploy(key, Some(index));
                }
                Some(None) => {
                    tracing::info!(job = %key.0, instance = key.1, "desired instance stopped while the worker was down");
                    self.report(&key.0, key.1, status::DEAD, "instance stopped while the worker was down");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
