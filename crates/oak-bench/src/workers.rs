//! `oak-bench hollow-workers`: many workers in one process. Each is the real worker
//! (`oak_worker::run`: HTTP registration, its own MQTT connection, reports, instance state
//! machine) with its own data directory and its own in-memory [`FakeRuntime`]; only the node
//! description is made up (fixed resources instead of this machine's).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use clap::Args;
use oak_api::node::{NodeInfo, SystemInfo};
use oak_runtime::FakeRuntime;
use oak_worker::{NodeInfoSource, WorkerConfig, WorkerDeps};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::signals::Signals;

#[derive(Args, Debug, Clone)]
pub struct WorkersArgs {
    /// Host of the cluster's node API.
    #[arg(long, default_value = "127.0.0.1")]
    pub cluster_address: String,
    /// Port of the cluster's node API.
    #[arg(long, default_value_t = oak_worker::DEFAULT_CLUSTER_PORT)]
    pub cluster_port: u16,
    /// The cluster's worker join token.
    #[arg(long, hide_env_values = true, env = "OAKESTRA_NODE_TOKEN")]
    pub token: Option<String>,
    /// File holding the join token (the cluster's `<data-dir>/node-token`).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// How many workers to run.
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    /// Node names are `<prefix><index>`.
    #[arg(long, default_value = "hollow-w")]
    pub name_prefix: String,
    /// Index of the first worker.
    #[arg(long, default_value_t = 0)]
    pub first_index: usize,
    /// Each worker keeps its state in `<data-root>/<node name>`.
    #[arg(long)]
    pub data_root: PathBuf,
    /// vCPUs each worker advertises.
    #[arg(long, default_value_t = 8)]
    pub vcpus: u32,
    /// Memory (MB) each worker advertises, all of it free.
    #[arg(long, default_value_t = 16_384)]
    pub memory_mb: u64,
    /// Seconds between a worker's reports (the real worker's default is 2).
    #[arg(long, default_value_t = 2.0)]
    pub report_interval: f64,
    /// Milliseconds between starting two workers, so registrations do not all arrive at once.
    #[arg(long, default_value_t = 1.0)]
    pub start_interval_ms: f64,
    /// Threads of the async runtime (1: a single-threaded runtime).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(long, default_value = "warn")]
    pub log: String,
}

pub fn main(args: WorkersArgs) -> anyhow::Result<ExitCode> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log).context("--log")?;
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_writer(std::io::stderr).try_init();
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => t.trim().to_string(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the join token from {}", path.display()))?
            .trim()
            .to_string(),
        (None, None) => anyhow::bail!("no join token: pass --token or --token-file"),
    };
    anyhow::ensure!(!token.is_empty(), "the join token is empty");
    anyhow::ensure!(args.report_interval.is_finite() && args.report_interval > 0.0, "--report-interval must be > 0");
    crate::procs::raise_nofile();
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().max_blocking_threads(8).build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .max_blocking_threads(8)
            .build()?
    };
    runtime.block_on(run(args, token))
}

async fn run(args: WorkersArgs, token: String) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.data_root).with_context(|| format!("cannot create {}", args.data_root.display()))?;
    let source: Arc<dyn NodeInfoSource> = Arc::new(FixedNode::new(args.vcpus, args.memory_mb));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut workers = JoinSet::new();
    let interval = Duration::from_secs_f64(args.start_interval_ms.max(0.0) / 1000.0);
    let mut signals = Signals::new()?;

    for i in 0..args.count {
        let name = format!("{}{}", args.name_prefix, args.first_index + i);
        let mut config = WorkerConfig::new(args.cluster_address.clone(), args.data_root.join(&name), token.clone());
        config.cluster_port = args.cluster_port;
        config.node_name = name.clone();
        config.report_interval = Duration::from_secs_f64(args.report_interval);
        config.overlay = false;
        let deps = WorkerDeps { runtimes: vec![Arc::new(FakeRuntime::new("docker"))], node_source: source.clone() };
        let mut stop = stop_rx.clone();
        workers.spawn(async move {
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            (name, oak_worker::run(config, deps, shutdown).await)
        });
        if !interval.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = signals.recv() => return stop_all(stop_tx, workers).await,
            }
        }
    }
    eprintln!(
        "oak-bench hollow-workers: started {} workers against {}:{}",
        args.count, args.cluster_address, args.cluster_port
    );

    let mut failed = 0usize;
    loop {
        tokio::select! {
            joined = workers.join_next() => match joined {
                None => break,
                Some(Ok((name, Ok(())))) => eprintln!("worker {name} stopped"),
                Some(Ok((name, Err(e)))) => {
                    failed += 1;
                    eprintln!("worker {name} failed: {e}");
                }
                Some(Err(e)) => {
                    failed += 1;
                    eprintln!("a worker task panicked: {e}");
                }
            },
            () = signals.recv() => return stop_all(stop_tx, workers).await,
        }
    }
    eprintln!("oak-bench hollow-workers: every worker ended ({failed} failed)");
    Ok(ExitCode::FAILURE)
}

/// Asks every worker to stop and waits (bounded) for them to write their state.
async fn stop_all(
    stop: watch::Sender<bool>,
    mut workers: JoinSet<(String, Result<(), oak_worker::WorkerError>)>,
) -> anyhow::Result<ExitCode> {
    let _ = stop.send(true);
    let drained = tokio::time::timeout(Duration::from_secs(10), async { while workers.join_next().await.is_some() {} });
    if drained.await.is_err() {
        eprintln!("oak-bench hollow-workers: {} workers did not stop within 10 s", workers.len());
    }
    Ok(ExitCode::SUCCESS)
}

/// A made-up node: fixed capacity, all of it free, a little load.
struct FixedNode {
    info: NodeInfo,
}

impl FixedNode {
    fn new(vcpus: u32, memory_mb: u64) -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        }
        .to_string();
        let info = NodeInfo {
            ip: "127.0.0.1".into(),
            system_info: SystemInfo {
                kernel_version: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                    .map(|s| s.trim().to_string())
                    .unwrap_or_default(),
                architecture: architecture.clone(),
                os_version: "hollow".into(),
                uptime: "0".into(),
            },
            cpu_percent: 2.0,
            vcpus,
            architecture,
            memory_percent: 0.0,
            memory: memory_mb,
            memory_total: memory_mb,
            disk_free: 100 * 1024,
            ..NodeInfo::default()
        };
        FixedNode { info }
    }
}

#[async_trait]
impl NodeInfoSource for FixedNode {
    async fn sample(&self) -> NodeInfo {
        self.info.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fixed_node_describes_the_configured_capacity() {
        let node = FixedNode::new(8, 16_384);
        let info = node.sample().await;
        assert_eq!((info.vcpus, info.memory, info.memory_total), (8, 16_384, 16_384));
        assert!(!info.architecture.is_empty() && !info.ip.is_empty());
    }
}
