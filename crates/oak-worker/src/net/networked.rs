//! A runtime with the overlay in front: an instance is wired (namespace, veth, address) before
//! the runtime creates it in that namespace, and unwired after it was removed. The engine and
//! the runtimes stay unaware of the network.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use oak_api::node::{DeployCommand, ServiceResources};
use oak_runtime::{InstanceState, LogChunk, LogCursor, Runtime, RuntimeError, RuntimeEvent};
use tokio::sync::broadcast;

use super::NetManager;

pub(crate) struct Networked {
    inner: Arc<dyn Runtime>,
    /// Every runtime of the worker (this one included): a wiring is a leftover only when no
    /// runtime holds its instance, so a container's wiring survives the unikernel runtime's list.
    all: Arc<Vec<Arc<dyn Runtime>>>,
    net: Arc<NetManager>,
    /// Instances between wiring and the runtime's answer (of any runtime): not yet listed, but
    /// not leftovers.
    deploying: Arc<Mutex<HashSet<(String, u32)>>>,
}

impl Networked {
    /// Puts the overlay in front of each of the worker's runtimes.
    pub(crate) fn wrap_all(runtimes: Vec<Arc<dyn Runtime>>, net: Arc<NetManager>) -> Vec<Arc<dyn Runtime>> {
        let all = Arc::new(runtimes.clone());
        let deploying = Arc::new(Mutex::new(HashSet::new()));
        runtimes
            .into_iter()
            .map(|inner| {
                Arc::new(Self { inner, all: all.clone(), net: net.clone(), deploying: deploying.clone() })
                    as Arc<dyn Runtime>
            })
            .collect()
    }
}

#[async_trait]
impl Runtime for Networked {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn deploy(&self, cmd: &DeployCommand) -> Result<(), RuntimeError> {
        let key = (cmd.job.job_name.clone(), cmd.instance_number);
        self.deploying.lock().unwrap().insert(key.clone());
        let result = async {
            let netns = self.net.attach(cmd).await.map_err(RuntimeError::Failed)?;
            let mut cmd = cmd.clone();
            cmd.netns = Some(netns);
            let result = self.inner.deploy(&cmd).await;
            if result.is_err() {
                self.net.detach(&key.0, key.1).await;
            }
            result
        }
        .await;
        self.deploying.lock().unwrap().remove(&key);
        result
    }

    async fn undeploy(&self, job_name: &str, instance: u32) -> Result<(), RuntimeError> {
        let result = self.inner.undeploy(job_name, instance).await;
        if matches!(result, Ok(()) | Err(RuntimeError::NotFound(_))) {
            self.net.detach(job_name, instance).await;
        }
        result
    }

    async fn list(&self) -> Result<Vec<InstanceState>, RuntimeError> {
        let list = self.inner.list().await?;
        let mut present: Vec<(String, u32)> = list.iter().map(|i| (i.job_name.clone(), i.instance)).collect();
        for other in self.all.iter().filter(|r| !Arc::ptr_eq(r, &self.inner)) {
            match other.list().await {
                Ok(theirs) => present.extend(theirs.into_iter().map(|i| (i.job_name, i.instance))),
                // Cannot tell what the other runtime holds: forget nothing this time.
                Err(_) => return Ok(list),
            }
        }
        let busy: Vec<(String, u32)> = self.deploying.lock().unwrap().iter().cloned().collect();
        self.net.forget_missing(&present, &busy).await;
        Ok(list)
    }

    async fn stats(&self) -> Result<Vec<ServiceResources>, RuntimeError> {
        self.inner.stats().await
    }

    async fn logs(&self, job_name: &str, instance: u32, tail_bytes: usize) -> Result<String, RuntimeError> {
        self.inner.logs(job_name, instance, tail_bytes).await
    }

    async fn read_logs(
        &self,
        job_name: &str,
        instance: u32,
        from: Option<LogCursor>,
        max_bytes: usize,
    ) -> Result<LogChunk, RuntimeError> {
        self.inner.read_logs(job_name, instance, from, max_bytes).await
    }

    fn events(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.inner.events()
    }
}
