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
    net: Arc<NetManager>,
    /// Instances between wiring and the runtime's answer: not yet listed, but not leftovers.
    deploying: Mutex<HashSet<(String, u32)>>,
}

impl Networked {
    pub(crate) fn wrap(inner: Arc<dyn Runtime>, net: Arc<NetManager>) -> Arc<dyn Runtime> {
        Arc::new(Self { inner, net, deploying: Mutex::new(HashSet::new()) })
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
        let present: Vec<(String, u32)> = list.iter().map(|i| (i.job_name.clone(), i.instance)).collect();
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
