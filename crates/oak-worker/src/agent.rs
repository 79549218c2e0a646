//! `run`: one worker from registration to shutdown. Everything a worker owns lives in this call
//! (no globals, no signal handlers), so a process can run many workers side by side.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use oak_runtime::{Runtime, RuntimeEvent};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::engine::{Engine, EngineMsg, Shared};
use crate::host_info::NodeInfoSource;
use crate::net::{NetManager, Networked};
use crate::reporter::{NodeStamp, Reporter};
use crate::reports::Outgoing;
use crate::session::{self, Carry, SessionEnd};
use crate::{identity, register, WorkerConfig, WorkerError};

/// How long the engine may take to write its last state at shutdown.
const ENGINE_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What a worker is given rather than configured with: its runtimes and where its node
/// description comes from. (The HTTPS client to register with is the worker's own: it trusts
/// only the CA its join token pins.)
#[derive(Clone)]
pub struct WorkerDeps {
    /// One per virtualization; the first of several with the same name wins. May be empty: the
    /// worker then joins and reports, and answers every deploy with `FAILED`.
    pub runtimes: Vec<Arc<dyn Runtime>>,
    pub node_source: Arc<dyn NodeInfoSource>,
}

/// Runs a worker until `shutdown` completes or a fatal error (e.g. the cluster refused the join
/// token). Transient failures (cluster or broker unreachable, broker forgot the node) are retried
/// with back-off. Shutting down leaves the instances running: a restarted worker adopts them.
pub async fn run(
    config: WorkerConfig,
    deps: WorkerDeps,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), WorkerError> {
    config.validate()?;
    let runtimes = distinct_runtimes(deps.runtimes);
    if runtimes.is_empty() {
        tracing::warn!(node = %config.node_name, "no runtime configured: the worker registers and reports but runs nothing");
    }
    tokio::fs::create_dir_all(&config.data_dir)
        .await
        .map_err(|source| WorkerError::DataDir { path: config.data_dir.clone(), source })?;
    let span = tracing::info_span!("worker", node = %config.node_name, node_id = tracing::field::Empty);
    let deps = WorkerDeps { runtimes, ..deps };
    run_worker(config, deps, shutdown).instrument(span).await
}

async fn run_worker(
    config: WorkerConfig,
    deps: WorkerDeps,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), WorkerError> {
    let metrics = Arc::new(crate::metrics::WorkerMetrics::new(config.metrics_token.clone()));
    let metrics_port = config.metrics_addr.map_or(0, |a| a.port());
    let metrics_listener = match config.metrics_addr {
        Some(addr) => Some(
            crate::metrics::listen(&metrics, addr).await.map_err(|e| WorkerError::Metrics(format!("{addr}: {e}")))?,
        ),
        None => None,
    };
    let shared = Arc::new(Shared::with_metrics(metrics.clone()));
    let (engine_tx, engine_rx) = mpsc::unbounded_channel();
    let (outbox_tx, mut outbox_rx) = mpsc::unbounded_channel();
    let net = match config.overlay {
        true => Some(
            NetManager::new(
                config.overlay_config.clone(),
                config.data_dir.clone(),
                config.cluster_address.clone(),
                config.cluster_port,
                outbox_tx.clone(),
            )
            .map_err(|e| WorkerError::Overlay(e.0))?,
        ),
        false => None,
    };
    // With the overlay, every runtime runs its instances in namespaces the overlay wired.
    let deps = match &net {
        Some(net) => WorkerDeps { runtimes: Networked::wrap_all(deps.runtimes, net.clone()), ..deps },
        None => deps,
    };
    if let Some(net) = &net {
        metrics.set_overlay(net.clone());
    }
    let stamp = NodeStamp {
        node_name: config.node_name.clone(),
        virtualization: deps.runtimes.iter().map(|r| r.name().to_string()).collect(),
        net: net.clone(),
        metrics_port: metrics_listener.as_ref().and_then(|l| l.local_addr().ok()).map_or(metrics_port, |a| a.port()),
    };

    // Subscribe to runtime events before adopting, so no exit falls between the two.
    let mut tasks = JoinSet::new();
    if let Some(listener) = metrics_listener {
        tasks.spawn(crate::metrics::run(metrics.clone(), listener, std::future::pending()).in_current_span());
    }
    for (index, rt) in deps.runtimes.iter().enumerate() {
        let timed = (metrics.clone(), rt.name().to_string());
        tasks.spawn(forward_events(index, rt.events(), engine_tx.clone(), timed).in_current_span());
    }
    let (stop_engine, engine_stopped) = oneshot::channel();
    let engine = Engine::new(deps.runtimes.clone(), config.data_dir.clone(), shared.clone(), outbox_tx.clone());
    let engine_task = tokio::spawn(engine.run(engine_rx, engine_stopped).in_current_span());
    tasks.spawn(
        Reporter {
            interval: config.report_interval,
            runtimes: deps.runtimes.clone(),
            source: deps.node_source.clone(),
            stamp: stamp.clone(),
            shared: shared.clone(),
            engine: engine_tx.clone(),
            outbox: outbox_tx,
        }
        .run()
        .in_current_span(),
    );

    let result = tokio::select! {
        result = stay_connected(&config, &deps, &stamp, &mut outbox_rx, &engine_tx, &shared, net.as_ref()) => result,
        () = shutdown => {
            tracing::info!("worker shutting down");
            Ok(())
        }
    };

    tasks.shutdown().await;
    let _ = stop_engine.send(());
    let abort = engine_task.abort_handle();
    if tokio::time::timeout(ENGINE_STOP_TIMEOUT, engine_task).await.is_err() {
        tracing::warn!("engine did not stop in time");
        abort.abort();
    }
    if let Some(net) = &net {
        net.shutdown().await;
    }
    result
}

/// Registers, keeps an MQTT session, and registers again whenever the broker refuses the
/// credentials. Returns only on a fatal registration error.
async fn stay_connected(
    config: &WorkerConfig,
    deps: &WorkerDeps,
    stamp: &NodeStamp,
    outbox: &mut mpsc::UnboundedReceiver<Outgoing>,
    engine: &mpsc::UnboundedSender<EngineMsg>,
    shared: &Shared,
    net: Option<&Arc<NetManager>>,
) -> Result<(), WorkerError> {
    let mut identity = identity::load(&config.data_dir).await;
    let mut carry = Carry::default();
    let mut refused = Backoff::reconnect();
    loop {
        let registering = register::register_with_retry(config, identity.as_ref(), || async {
            stamp.apply(deps.node_source.sample().await)
        });
        let registration = carry.draining(outbox, registering).await?;
        if !registration.node_ip.is_empty() {
            carry.ip.clone_from(&registration.node_ip);
        }
        let node_id = registration.identity.id.clone();
        tracing::Span::current().record("node_id", node_id.as_str());
        if identity.as_ref() != Some(&registration.identity) {
            if let Some(old) = identity.as_ref().filter(|old| old.id != node_id) {
                tracing::warn!(old_id = %old.id, new_id = %node_id, "the cluster gave this worker a new node id");
            }
            if let Err(e) = identity::save(&config.data_dir, &registration.identity).await {
                tracing::error!(error = %e, "cannot persist the node identity; a restart registers as a new node");
            }
            identity = Some(registration.identity.clone());
        }
        tracing::info!(%node_id, broker = %format!("{}:{}", registration.mqtt.host, registration.mqtt.port), "registered with the cluster");
        if let Some(net) = net {
            if registration.subnet.is_empty() {
                return Err(WorkerError::Overlay(
                    "the cluster gave no overlay subnet (is it older than this worker?)".into(),
                ));
            }
            net.start(&node_id, &registration.subnet).await.map_err(|e| WorkerError::Overlay(e.0))?;
        }

        shared.quiet_reports.store(registration.quiet_reports, Ordering::Relaxed);
        let session_span = tracing::info_span!("session", %node_id);
        let end = session::run(&registration, outbox, &mut carry, engine, shared, net).instrument(session_span).await;
        match end {
            SessionEnd::CredentialsRefused { was_connected } => {
                if was_connected {
                    refused.reset();
                }
                let delay = refused.next_delay();
                tracing::warn!(
                    retry_in_s = delay.as_secs(),
                    "registering again after the broker refused the credentials"
                );
                carry.draining(outbox, tokio::time::sleep(delay)).await;
            }
        }
    }
}

/// Passes a runtime's exit and progress events to the engine. A lagging subscription loses events; the next
/// observation of the runtime catches up.
async fn forward_events(
    runtime: usize,
    mut events: broadcast::Receiver<RuntimeEvent>,
    engine: mpsc::UnboundedSender<EngineMsg>,
    (metrics, runtime_name): (Arc<crate::metrics::WorkerMetrics>, String),
) {
    loop {
        match events.recv().await {
            Ok(RuntimeEvent::Exited { job_name, instance, code }) => {
                if engine.send(EngineMsg::Exited { runtime, job_name, instance, code }).is_err() {
                    return;
                }
            }
            Ok(RuntimeEvent::Progress { job_name, instance, detail }) => {
                if engine.send(EngineMsg::Progress { runtime, job_name, instance, detail }).is_err() {
                    return;
                }
            }
            Ok(RuntimeEvent::Timed { operation, took }) => metrics.operation(&runtime_name, operation, took),
            Ok(other) => tracing::debug!(?other, "ignoring runtime event"),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "missed runtime events; the next observation catches up");
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

fn distinct_runtimes(runtimes: Vec<Arc<dyn Runtime>>) -> Vec<Arc<dyn Runtime>> {
    let mut names = HashSet::new();
    runtimes
        .into_iter()
        .filter(|rt| {
            let first = names.insert(rt.name().to_string());
            if !first {
                tracing::warn!(runtime = rt.name(), "ignoring a second runtime with the same name");
            }
            first
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runtime_step_times_reach_the_metrics() {
        let (events_tx, events) = broadcast::channel(8);
        let (engine, _inbox) = mpsc::unbounded_channel();
        let metrics = Arc::new(crate::metrics::WorkerMetrics::new(None));
        let forwarding = tokio::spawn(forward_events(0, events, engine, (metrics.clone(), "docker".into())));
        for operation in ["pull", "create", "start", "stop", "pull"] {
            events_tx.send(RuntimeEvent::Timed { operation, took: Duration::from_millis(40) }).unwrap();
        }
        drop(events_tx);
        forwarding.await.unwrap();
        let text = metrics.render();
        for (operation, n) in [("pull", 2), ("create", 1), ("start", 1), ("stop", 1)] {
            let line = format!(
                "oakestra_runtime_operation_seconds_count{{runtime=\"docker\",operation=\"{operation}\"}} {n}\n"
            );
            assert!(text.contains(&line), "missing {line:?} in\n{text}");
        }
    }
}
