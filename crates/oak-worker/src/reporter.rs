//! The periodic report (spec §5.4, every 2 s by default): asks every runtime what it runs and
//! hands that to the engine (which reconciles and publishes `jobs/resources`), and publishes the
//! node description on `information` (with quiet reports, only when [`crate::quiet`] says so).
//! Skipped while the broker is unreachable.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use oak_api::node::NodeInfo;
use oak_runtime::{Runtime, RuntimeError};
use tokio::sync::mpsc;

use crate::engine::{EngineMsg, Observation, Shared};
use crate::host_info::NodeInfoSource;
use crate::quiet::{random_phase, InfoGate};
use crate::reports::Outgoing;

/// A runtime that does not answer within this time is reported as unavailable for this round.
const OBSERVE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the worker itself says about the node, over whatever the [`NodeInfoSource`] measured.
#[derive(Debug, Clone)]
pub(crate) struct NodeStamp {
    pub node_name: String,
    pub virtualization: Vec<String>,
    pub net: Option<Arc<crate::net::NetManager>>,
    /// Port of `/metrics` (0: none).
    pub metrics_port: u16,
}

impl NodeStamp {
    pub(crate) fn apply(&self, mut info: NodeInfo) -> NodeInfo {
        info.host = self.node_name.clone();
        info.virtualization = self.virtualization.clone();
        info.overlay = self.net.as_ref().map(|net| net.info());
        info.metrics_port = self.metrics_port;
        info.features = vec![oak_api::node::features::DEPLOY_BATCH.to_string()];
        info
    }
}

pub(crate) struct Reporter {
    pub interval: Duration,
    pub runtimes: Vec<Arc<dyn Runtime>>,
    pub source: Arc<dyn NodeInfoSource>,
    pub stamp: NodeStamp,
    pub shared: Arc<Shared>,
    pub engine: mpsc::UnboundedSender<EngineMsg>,
    pub outbox: mpsc::UnboundedSender<Outgoing>,
}

impl Reporter {
    pub(crate) async fn run(self) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut gate = InfoGate::new(random_phase());
        loop {
            ticker.tick().await;
            if !self.shared.connected.load(Ordering::Relaxed) {
                continue;
            }
            // Read before listing: whatever changes after this is not judged by this listing.
            let seq = self.shared.seq.load(Ordering::SeqCst);
            let mut runtimes = Vec::with_capacity(self.runtimes.len());
            for rt in &self.runtimes {
                runtimes.push(observe(rt.as_ref()).await);
            }
            if self.engine.send(EngineMsg::Observed { seq, runtimes }).is_err() {
                return;
            }
            let info = self.stamp.apply(self.source.sample().await);
            let session = self.shared.sessions.load(Ordering::Relaxed);
            let quiet = self.shared.quiet_reports.load(Ordering::Relaxed);
            // Most samples of a quiet worker go only to `/metrics`: copied only when also sent.
            if !gate.due(&info, std::time::Instant::now(), session, quiet) {
                self.shared.metrics.node(info);
                continue;
            }
            self.shared.metrics.node(info.clone());
            if self.outbox.send(Outgoing::Info(Box::new(info))).is_err() {
                return;
            }
        }
    }
}

async fn observe(rt: &dyn Runtime) -> Result<Observation, RuntimeError> {
    let both = async { Ok(Observation { instances: rt.list().await?, stats: rt.stats().await? }) };
    tokio::time::timeout(OBSERVE_TIMEOUT, both)
        .await
        .unwrap_or_else(|_| Err(RuntimeError::Unavailable(format!("{} did not answer in time", rt.name()))))
}
