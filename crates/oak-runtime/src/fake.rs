//! An in-memory runtime for tests and hollow-worker benchmarks: it "runs" instances as map
//! entries and lets the test decide when they exit, fail or take long to start.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use oak_api::node::{DeployCommand, LogCursor, ServiceResources};
use tokio::sync::{broadcast, watch};

use crate::{task_id, InstanceState, InstanceStatus, LogChunk, Runtime, RuntimeError, RuntimeEvent, EVENT_CAPACITY};

/// A fake runtime. Cheap to create and to run many of; state survives as long as the value, so
/// a test can "restart" the worker around it.
pub struct FakeRuntime {
    name: String,
    state: Mutex<State>,
    events: broadcast::Sender<RuntimeEvent>,
}

#[derive(Default)]
struct State {
    instances: BTreeMap<(String, u32), Fake>,
    failing_images: HashMap<String, String>,
    held_images: HashMap<String, watch::Receiver<bool>>,
    held_undeploys: Option<watch::Receiver<bool>>,
    deploys: u64,
    undeploys: u64,
}

struct Fake {
    status: InstanceStatus,
    cmd: DeployCommand,
}

/// Holds deploys of one image (a slow image pull), or undeploys, until [`ImageGate::release`].
pub struct ImageGate(watch::Sender<bool>);

impl ImageGate {
    pub fn release(&self) {
        self.0.send_replace(true);
    }
}

impl FakeRuntime {
    pub fn new(name: impl Into<String>) -> Self {
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        Self { name: name.into(), state: Mutex::new(State::default()), events }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Deploys of `image` fail with `message`.
    pub fn fail_image(&self, image: &str, message: &str) {
        self.state().failing_images.insert(image.to_string(), message.to_string());
    }

    /// Deploys of `image` stay in `Creating` until the returned gate is released.
    pub fn hold_image(&self, image: &str) -> ImageGate {
        let (tx, rx) = watch::channel(false);
        self.state().held_images.insert(image.to_string(), rx);
        ImageGate(tx)
    }

    /// Every `undeploy` waits until the returned gate is released (a slow stop).
    pub fn hold_undeploys(&self) -> ImageGate {
        let (tx, rx) = watch::channel(false);
        self.state().held_undeploys = Some(rx);
        ImageGate(tx)
    }

    /// The instance stops by itself with `code`; false if it was not running.
    pub fn exit(&self, job_name: &str, instance: u32, code: i32) -> bool {
        {
            let mut state = self.state();
            match state.instances.get_mut(&(job_name.to_string(), instance)) {
                Some(fake) if fake.status == InstanceStatus::Running => fake.status = InstanceStatus::Exited { code },
                _ => return false,
            }
        }
        let _ = self.events.send(RuntimeEvent::Exited { job_name: job_name.to_string(), instance, code });
        true
    }

    /// The instance disappears without an event (e.g. removed behind the worker's back).
    pub fn vanish(&self, job_name: &str, instance: u32) -> bool {
        self.state().instances.remove(&(job_name.to_string(), instance)).is_some()
    }

    /// The status of one instance, if the runtime holds it.
    pub fn status(&self, job_name: &str, instance: u32) -> Option<InstanceStatus> {
        self.state().instances.get(&(job_name.to_string(), instance)).map(|f| f.status)
    }

    /// The deploy command an instance was started with.
    pub fn command(&self, job_name: &str, instance: u32) -> Option<DeployCommand> {
        self.state().instances.get(&(job_name.to_string(), instance)).map(|f| f.cmd.clone())
    }

    /// How many times `deploy` was called.
    pub fn deploy_calls(&self) -> u64 {
        self.state().deploys
    }

    /// How many times `undeploy` was called.
    pub fn undeploy_calls(&self) -> u64 {
        self.state().undeploys
    }
}

#[async_trait]
impl Runtime for FakeRuntime {
    fn name(&self) -> &str {
        &self.name
    }

    async fn deploy(&self, cmd: &DeployCommand) -> Result<(), RuntimeError> {
        let key = (cmd.job.job_name.clone(), cmd.instance_number);
        let image = cmd.job.image.clone();
        let gate = {
            let mut state = self.state();
            state.deploys += 1;
            if state.instances.contains_key(&key) {
                return Err(RuntimeError::AlreadyDeployed(task_id(&key.0, key.1)));
            }
            if let Some(message) = state.failing_images.get(&image) {
                return Err(RuntimeError::Image { image, message: message.clone() });
            }
            state.instances.insert(key.clone(), Fake { status: InstanceStatus::Creating, cmd: cmd.clone() });
            state.held_images.get(&image).cloned()
        };
        if let Some(mut gate) = gate {
            // A dropped gate releases too, so a forgotten gate cannot hang a test forever.
            let _ = gate.wait_for(|released| *released).await;
        }
        match self.state().instances.get_mut(&key) {
            Some(fake) => {
                fake.status = InstanceStatus::Running;
                Ok(())
            }
            None => {
                Err(RuntimeError::Failed(format!("instance {} was removed while starting", task_id(&key.0, key.1))))
            }
        }
    }

    async fn undeploy(&self, job_name: &str, instance: u32) -> Result<(), RuntimeError> {
        let gate = {
            let mut state = self.state();
            state.undeploys += 1;
            state.held_undeploys.clone()
        };
        if let Some(mut gate) = gate {
            let _ = gate.wait_for(|released| *released).await;
        }
        let mut state = self.state();
        match state.instances.remove(&(job_name.to_string(), instance)) {
            Some(_) => Ok(()),
            None => Err(RuntimeError::NotFound(task_id(job_name, instance))),
        }
    }

    async fn list(&self) -> Result<Vec<InstanceState>, RuntimeError> {
        let state = self.state();
        Ok(state
            .instances
            .iter()
            .map(|((job_name, instance), fake)| InstanceState {
                job_name: job_name.clone(),
                instance: *instance,
                state: fake.status,
            })
            .collect())
    }

    async fn stats(&self) -> Result<Vec<ServiceResources>, RuntimeError> {
        let state = self.state();
        Ok(state
            .instances
            .iter()
            .filter(|(_, fake)| fake.status == InstanceStatus::Running)
            .map(|((job_name, instance), _)| ServiceResources {
                job_name: job_name.clone(),
                instance: *instance,
                virtualization: self.name.clone(),
                cpu_percent: "0.500000".into(),
                memory_percent: "1.000000".into(),
                memory_bytes: "1048576".into(),
                disk: "4096".into(),
                logs: format!("output of {}\n", task_id(job_name, *instance)),
                cpu_seconds: Some(0.5),
                memory_limit_bytes: Some(256 << 20),
                oom_kills: Some(0),
            })
            .collect())
    }

    async fn logs(&self, job_name: &str, instance: u32, tail_bytes: usize) -> Result<String, RuntimeError> {
        if !self.state().instances.contains_key(&(job_name.to_string(), instance)) {
            return Err(RuntimeError::NotFound(task_id(job_name, instance)));
        }
        let full = format!("output of {}\n", task_id(job_name, instance));
        let mut start = full.len().saturating_sub(tail_bytes);
        while !full.is_char_boundary(start) {
            start += 1;
        }
        Ok(full[start..].to_string())
    }

    /// The output is one fixed line per instance; a cursor is the offset in it.
    async fn read_logs(
        &self,
        job_name: &str,
        instance: u32,
        from: Option<LogCursor>,
        max_bytes: usize,
    ) -> Result<LogChunk, RuntimeError> {
        if !self.state().instances.contains_key(&(job_name.to_string(), instance)) {
            return Err(RuntimeError::NotFound(task_id(job_name, instance)));
        }
        let full = format!("output of {}\n", task_id(job_name, instance));
        let start = match from {
            Some(c) if c.generation == 0 && (c.offset as usize) <= full.len() => c.offset as usize,
            _ => full.len().saturating_sub(max_bytes),
        };
        let end = (start + max_bytes).min(full.len());
        let data = String::from_utf8_lossy(&full.as_bytes()[start..end]).into_owned();
        Ok(LogChunk { data, cursor: LogCursor { generation: 0, offset: end as u64 } })
    }

    fn events(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.events.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(job: &str, n: u32, image: &str) -> DeployCommand {
        serde_json::from_value(serde_json::json!({
            "_id": "svc1", "job_name": job, "image": image, "instance_number": n,
            "microservice_name": "svc", "microservice_namespace": "test",
            "virtualization": "docker", "code": image,
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn deploy_list_exit_undeploy() {
        let rt = FakeRuntime::new("docker");
        let mut events = rt.events();
        rt.deploy(&cmd("a.b.c.d", 0, "img")).await.unwrap();
        assert!(matches!(rt.deploy(&cmd("a.b.c.d", 0, "img")).await, Err(RuntimeError::AlreadyDeployed(_))));
        assert_eq!(rt.stats().await.unwrap().len(), 1);
        assert!(rt.exit("a.b.c.d", 0, 3));
        assert_eq!(
            events.recv().await.unwrap(),
            RuntimeEvent::Exited { job_name: "a.b.c.d".into(), instance: 0, code: 3 }
        );
        let listed = rt.list().await.unwrap();
        assert_eq!(listed[0].state, InstanceStatus::Exited { code: 3 });
        assert!(rt.stats().await.unwrap().is_empty());
        rt.undeploy("a.b.c.d", 0).await.unwrap();
        assert!(matches!(rt.undeploy("a.b.c.d", 0).await, Err(RuntimeError::NotFound(_))));
        assert_eq!((rt.deploy_calls(), rt.undeploy_calls()), (2, 2));
    }

    #[tokio::test]
    async fn failing_and_held_images() {
        let rt = std::sync::Arc::new(FakeRuntime::new("docker"));
        rt.fail_image("bad", "manifest unknown");
        let err = rt.deploy(&cmd("j", 0, "bad")).await.unwrap_err();
        assert_eq!(err.to_string(), "image bad: manifest unknown");
        assert!(rt.list().await.unwrap().is_empty());

        let gate = rt.hold_image("slow");
        let slow = tokio::spawn({
            let rt = rt.clone();
            async move { rt.deploy(&cmd("j", 1, "slow")).await }
        });
        tokio::task::yield_now().await;
        rt.deploy(&cmd("j", 2, "fast")).await.unwrap();
        gate.release();
        slow.await.unwrap().unwrap();
        assert_eq!(rt.status("j", 1), Some(InstanceStatus::Running));
        assert_eq!(rt.logs("j", 1, 6).await.unwrap(), "nce.1\n");
    }
}
