//! The runtime abstraction the worker (NodeEngine) drives.
//!
//! A [`Runtime`] runs instances of one virtualization (`docker` for containerd containers,
//! later `unikernel`, …). The worker owns the decisions (what should run, what to report); a
//! runtime only executes them and tells what it observes, so new virtualizations plug in without
//! touching the worker's state machine.

mod error;
#[cfg(any(test, feature = "test-util"))]
mod fake;
mod task_id;

#[cfg(any(test, feature = "test-util"))]
pub use fake::{FakeRuntime, ImageGate};

pub use error::RuntimeError;
pub use oak_api::node::LogCursor;
pub use task_id::{parse_task_id, task_id};

use async_trait::async_trait;
use oak_api::node::{DeployCommand, ServiceResources};
use tokio::sync::broadcast;

/// Capacity a runtime should give its event channel: a worker that falls further behind than
/// this gets `Lagged` and catches up from [`Runtime::list`].
pub const EVENT_CAPACITY: usize = 1024;

/// One instance a runtime knows, as [`Runtime::list`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceState {
    pub job_name: String,
    pub instance: u32,
    pub state: InstanceStatus,
}

/// Where an instance is in its life on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceStatus {
    /// Being set up (image pull, container creation) and not started yet.
    Creating,
    Running,
    /// Stopped by itself; stays listed until [`Runtime::undeploy`] removes it, so the exit code
    /// can still be observed by a worker that missed the event.
    Exited {
        code: i32,
    },
}

/// A piece of an instance's output and where reading continues.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogChunk {
    pub data: String,
    pub cursor: LogCursor,
}

/// Something a runtime observed without being asked.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RuntimeEvent {
    /// An instance stopped on its own (not through [`Runtime::undeploy`]).
    Exited { job_name: String, instance: u32, code: i32 },
    /// What a deploy in progress is doing (pulling an image, unpacking, starting), for the
    /// instance's `status_detail`.
    Progress { job_name: String, instance: u32, detail: String },
    /// One step of a deploy or undeploy finished successfully and took `took`: `pull`,
    /// `create`, `start` or `stop` (for the worker's `/metrics`).
    Timed { operation: &'static str, took: std::time::Duration },
}

/// A virtualization the worker can run instances with.
///
/// Contract the worker relies on:
/// - the worker never calls `deploy` and `undeploy` concurrently for the same instance, but calls
///   for different instances run concurrently (one slow image pull must not block others);
/// - `deploy` returns once the instance is started; on error it leaves nothing behind;
/// - `undeploy` stops and removes the instance; an unknown instance is
///   [`RuntimeError::NotFound`]; it does not emit an [`RuntimeEvent::Exited`] for the stop it
///   causes;
/// - `list` returns every instance the runtime holds, including exited ones not removed yet, and
///   also instances it found at start-up (a restarted worker adopts them).
#[async_trait]
pub trait Runtime: Send + Sync {
    /// The virtualization name this runtime serves and the worker advertises (e.g. `docker`).
    fn name(&self) -> &str;

    /// Creates and starts instance `cmd.instance_number` of `cmd.job`.
    async fn deploy(&self, cmd: &DeployCommand) -> Result<(), RuntimeError>;

    /// Stops and removes an instance.
    async fn undeploy(&self, job_name: &str, instance: u32) -> Result<(), RuntimeError>;

    /// Every instance this runtime holds.
    async fn list(&self) -> Result<Vec<InstanceState>, RuntimeError>;

    /// Usage of every running instance, one entry each.
    async fn stats(&self) -> Result<Vec<ServiceResources>, RuntimeError>;

    /// The last `tail_bytes` bytes of an instance's output.
    async fn logs(&self, job_name: &str, instance: u32, tail_bytes: usize) -> Result<String, RuntimeError>;

    /// Output to follow: without a cursor the last `max_bytes` bytes, with one at most
    /// `max_bytes` bytes from where it points; always with the cursor to continue from. A cursor
    /// the runtime no longer knows (e.g. after log rotation passed it) reads the tail again.
    async fn read_logs(
        &self,
        job_name: &str,
        instance: u32,
        from: Option<LogCursor>,
        max_bytes: usize,
    ) -> Result<LogChunk, RuntimeError>;

    /// A new subscription to this runtime's events. Events may be missed (a lagging receiver);
    /// they only make reactions faster, [`Runtime::list`] stays the source of truth.
    fn events(&self) -> broadcast::Receiver<RuntimeEvent>;
}
