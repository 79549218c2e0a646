//! `oak-bench hollow`: targets P3 (placement decision time), P4 (placement throughput) and P6
//! (control-plane memory) on one machine.
//!
//! Starts as real processes one `oakestra root`, `--clusters` × `oakestra cluster` and, per
//! cluster, `oak-bench hollow-workers` processes running `--workers-per-cluster` hollow workers
//! (real registration, real MQTT to the cluster's embedded broker, real reports; fake runtime).
//! Once every worker is active at the root, it creates one application with `--services`
//! services and fires `--instances` `POST /api/service/<id>/instance` requests at once
//! (`--concurrency` in flight), then polls `GET /api/services` until every instance is `RUNNING`.
//!
//! Figures:
//! - throughput: instances / (last instance `RUNNING` at the root − first request sent). The
//!   moment an instance became `RUNNING` is the root's own `last_modified_timestamp` of the
//!   instance at the first poll that shows it running (the root stamps the report that made it
//!   `RUNNING`; metrics-only updates come ≥ 10 s later). The poll-bounded figure (time of the
//!   poll that saw the last one) is reported too, as a conservative bound.
//! - reference (same run, same root, same client, same concurrency): as many authenticated
//!   `GET /api/clusters` requests — the rate of a trivial authenticated request, the ceiling no
//!   instance request can beat.
//! - placement decision p50/p99 from the root's and each cluster's `/metrics`.
//! - RSS (VmRSS) at the end and peak (VmHWM) of the root and the clusters; CPU seconds each
//!   process used during the measured phase.
//! - P10: bytes per idle worker per second on the MQTT links (both ways, TLS included, as the
//!   kernel counted them) over the idle window before the requests; the same with every instance
//!   running, over a window after the measured phase (quiet workers refresh usage every 10 s).
//! - MQTT messages published at the clusters' brokers during the measured phase, per instance.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use clap::{Args, ValueEnum};
use oak_api::status;
use oak_client::Client;
use serde::Serialize;
use serde_json::json;

use crate::link_bytes::{self, LinkBytes};
use crate::machine::{Commit, Machine};
use crate::procs::{self, Children, Kind, ProcUsage};
use crate::report::{self, Summary, Table};
use crate::signals::Signals;

/// Targets from `targets.md`.
const P3_MAX_P99_S: f64 = 0.001;
const P4_MIN_PER_S: f64 = 2000.0;
const P6_MAX_MB: f64 = 400.0;
const P10_MAX_KBIT_S: f64 = 0.25;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scale {
    /// 2 clusters × 50 workers, 500 instances of 10 services.
    Quick,
    /// 10 clusters × 1,000 workers, 10,000 instances of 100 services (the defaults).
    Full,
}

#[derive(Args, Debug, Clone)]
pub struct HollowArgs {
    /// Preset sizes; the flags below override single values.
    #[arg(long, value_enum)]
    pub scale: Option<Scale>,
    /// Cluster processes [full: 10, quick: 2].
    #[arg(long)]
    pub clusters: Option<usize>,
    /// Hollow workers per cluster [full: 1000, quick: 50].
    #[arg(long)]
    pub workers_per_cluster: Option<usize>,
    /// Instances requested at once [full: 10000, quick: 500].
    #[arg(long)]
    pub instances: Option<usize>,
    /// Services sharing the instances, round-robin [full: 100, quick: 10].
    #[arg(long)]
    pub services: Option<usize>,
    /// Hollow workers per `hollow-workers` process [default: one process per cluster].
    #[arg(long)]
    pub workers_per_process: Option<usize>,
    /// The `oakestra` binary to benchmark (a release build) [default: next to oak-bench].
    #[arg(long)]
    pub oakestra: Option<PathBuf>,
    /// Keep the run directory (data, logs) and the workers' data even after a successful run.
    #[arg(long)]
    pub keep_dir: bool,
    /// Where the run directory (root and cluster data, logs) is created [default: $TMPDIR].
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Where the hollow workers keep their state files [default: /dev/shm if writable]. On a
    /// tmpfs, 10,000 workers' fsyncs do not queue on one disk as they never would on 10,000
    /// machines; the root's and the clusters' data stay in the run directory.
    #[arg(long)]
    pub worker_data_root: Option<PathBuf>,
    /// Instance requests in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Instances asked for per request (`POST /api/service/{id}/instance?count=N`, 1 to 100);
    /// 1 sends the plain request without `count`.
    #[arg(long, default_value_t = 1)]
    pub per_request: u32,
    /// Seconds the instances may take to all reach RUNNING.
    #[arg(long, default_value_t = 300.0)]
    pub timeout: f64,
    /// Seconds the workers may take to all be active at the root.
    #[arg(long, default_value_t = 300.0)]
    pub ready_timeout: f64,
    /// Milliseconds between two reads of the clusters' RUNNING counts (their `/metrics`). Only
    /// says when to read the root's stamps, so a read costs precision nowhere; each read renders
    /// a thousand workers' metrics in every cluster, which every 100 ms took 7 % of the
    /// clusters' CPU from the phase it measures.
    #[arg(long, default_value_t = 500)]
    pub poll_ms: u64,
    /// Least milliseconds between two polls of the root's `GET /api/services` before the clusters
    /// report every instance running (polls are also spaced by 5× their own duration: a listing
    /// of every instance holds the root's store while it runs). The moment each instance became
    /// RUNNING comes from the root's own timestamps, so rare polls lose no precision.
    #[arg(long, default_value_t = 2000)]
    pub root_poll_ms: u64,
    /// First port to try for the root's and the clusters' listeners [default: from the pid,
    /// below the ephemeral range so the workers' outgoing connections cannot take them].
    #[arg(long)]
    pub port_base: Option<u16>,
    /// vCPUs each service asks for per instance.
    #[arg(long, default_value_t = 1)]
    pub instance_vcpus: u64,
    /// Memory (MB) each service asks for per instance.
    #[arg(long, default_value_t = 32)]
    pub instance_memory: u64,
    /// vCPUs each hollow worker advertises.
    #[arg(long, default_value_t = 8)]
    pub worker_vcpus: u32,
    /// Memory (MB) each hollow worker advertises.
    #[arg(long, default_value_t = 16_384)]
    pub worker_memory: u64,
    /// Seconds between a hollow worker's reports (the real worker's default is 2).
    #[arg(long, default_value_t = 2.0)]
    pub report_interval: f64,
    /// The clusters' `--worker-timeout` in seconds [default: the cluster's own, 15]; below 15
    /// the clusters do not offer quiet reports, and workers report every interval.
    #[arg(long)]
    pub worker_timeout: Option<f64>,
    /// Seconds to measure the idle fleet's CPU use before the requests.
    #[arg(long, default_value_t = 5.0)]
    pub idle_window: f64,
    /// Log filter of the hollow-worker processes.
    #[arg(long, default_value = "warn")]
    pub worker_log: String,
    /// Where the JSON result goes.
    #[arg(long, default_value = "bench/results")]
    pub results_dir: PathBuf,
}

/// The parameters of a run, after presets and defaults.
#[derive(Debug, Clone, Serialize)]
struct Params {
    scale: Option<Scale>,
    clusters: usize,
    workers_per_cluster: usize,
    workers_per_process: usize,
    instances: usize,
    services: usize,
    concurrency: usize,
    per_request: u32,
    timeout_s: f64,
    ready_timeout_s: f64,
    poll_ms: u64,
    root_poll_ms: u64,
    instance_vcpus: u64,
    instance_memory_mb: u64,
    worker_vcpus: u32,
    worker_memory_mb: u64,
    report_interval_s: f64,
    worker_timeout_s: Option<f64>,
    idle_window_s: f64,
    oakestra: PathBuf,
    #[serde(skip)]
    worker_log: String,
    #[serde(skip)]
    results_dir: PathBuf,
}

impl Params {
    fn resolve(args: &HollowArgs) -> anyhow::Result<Params> {
        let (c, w, i, s) = match args.scale {
            Some(Scale::Quick) => (2, 50, 500, 10),
            Some(Scale::Full) | None => (10, 1000, 10_000, 100),
        };
        let clusters = args.clusters.unwrap_or(c);
        let workers_per_cluster = args.workers_per_cluster.unwrap_or(w);
        let instances = args.instances.unwrap_or(i);
        let services = args.services.unwrap_or(s).min(instances.max(1));
        let workers_per_process = args.workers_per_process.unwrap_or(workers_per_cluster).max(1);
        anyhow::ensure!(clusters >= 1 && workers_per_cluster >= 1, "need at least one cluster and one worker");
        anyhow::ensure!(instances >= 1 && services >= 1, "need at least one instance and one service");
        anyhow::ensure!(services <= 10_000, "at most 10000 services");
        anyhow::ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
        anyhow::ensure!((1..=100).contains(&args.per_request), "--per-request must be from 1 to 100");
        for (v, flag) in [
            (args.timeout, "timeout"),
            (args.ready_timeout, "ready-timeout"),
            (args.report_interval, "report-interval"),
        ] {
            anyhow::ensure!(v.is_finite() && v > 0.0, "--{flag} must be a positive number of seconds");
        }
        let oakestra = crate::procs::oakestra_binary(args.oakestra.as_deref())?;
        Ok(Params {
            scale: args.scale,
            clusters,
            workers_per_cluster,
            workers_per_process,
            instances,
            services,
            concurrency: args.concurrency,
            per_request: args.per_request,
            timeout_s: args.timeout,
            ready_timeout_s: args.ready_timeout,
            poll_ms: args.poll_ms.max(10),
            // Metrics-only updates re-stamp an instance 10 s after it turned RUNNING at the
            // earliest: polls must come sooner to read the RUNNING stamp.
            root_poll_ms: args.root_poll_ms.clamp(100, 5000),
            instance_vcpus: args.instance_vcpus,
            instance_memory_mb: args.instance_memory,
            worker_vcpus: args.worker_vcpus,
            worker_memory_mb: args.worker_memory,
            report_interval_s: args.report_interval,
            worker_timeout_s: args.worker_timeout,
            idle_window_s: args.idle_window.max(0.0),
            oakestra: oakestra.canonicalize().unwrap_or(oakestra),
            worker_log: args.worker_log.clone(),
            results_dir: args.results_dir.clone(),
        })
    }

    fn total_workers(&self) -> usize {
        self.clusters * self.workers_per_cluster
    }
}

/// Where a run keeps its files, and the ports of its processes.
struct Layout {
    run_dir: PathBuf,
    worker_root: PathBuf,
    root_api: u16,
    root_channel: u16,
    /// (node API port, MQTT port) per cluster.
    cluster_ports: Vec<(u16, u16)>,
}

impl Layout {
    fn create(args: &HollowArgs, params: &Params) -> anyhow::Result<Layout> {
        let name = format!("oak-hollow-{}-{}", report::utc_stamp(), std::process::id());
        let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
        let run_dir = parent.join(&name);
        std::fs::create_dir_all(&run_dir).with_context(|| format!("cannot create {}", run_dir.display()))?;
        let worker_root = match &args.worker_data_root {
            Some(dir) => dir.join(format!("{name}-workers")),
            None if is_writable_dir(Path::new("/dev/shm")) => PathBuf::from("/dev/shm").join(format!("{name}-workers")),
            None => run_dir.join("workers"),
        };
        std::fs::create_dir_all(&worker_root).with_context(|| format!("cannot create {}", worker_root.display()))?;
        let base = args.port_base.unwrap_or(20_000 + (std::process::id() % 500) as u16 * 20);
        let ports = free_ports(base, 2 + 2 * params.clusters)?;
        Ok(Layout {
            run_dir,
            worker_root,
            root_api: ports[0],
            root_channel: ports[1],
            cluster_ports: ports[2..].chunks(2).map(|p| (p[0], p[1])).collect(),
        })
    }

    fn root_dir(&self) -> PathBuf {
        self.run_dir.join("root")
    }

    fn cluster_dir(&self, i: usize) -> PathBuf {
        self.run_dir.join(format!("cluster-{}", cluster_name(i)))
    }

    fn root_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.root_api)
    }
}

fn cluster_name(i: usize) -> String {
    format!("c{}", i + 1)
}

fn is_writable_dir(dir: &Path) -> bool {
    let probe = dir.join(format!(".oak-bench-probe-{}", std::process::id()));
    let ok = std::fs::write(&probe, b"").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

/// `n` ports from `base` upwards that can be bound on 127.0.0.1 right now.
pub(crate) fn free_ports(base: u16, n: usize) -> anyhow::Result<Vec<u16>> {
    let mut ports = Vec::with_capacity(n);
    let mut port = base.max(1024);
    while ports.len() < n {
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            ports.push(port);
        }
        port = port.checked_add(1).ok_or_else(|| anyhow!("no {n} free ports from {base} up"))?;
    }
    Ok(ports)
}

pub fn main(args: HollowArgs) -> anyhow::Result<ExitCode> {
    let params = Params::resolve(&args)?;
    let open_files = procs::raise_nofile();
    let needed = params.workers_per_process.max(params.workers_per_cluster) as u64 + 1024;
    if open_files < needed {
        eprintln!(
            "warning: the open-files limit is {open_files}; {needed} are needed per process (raise `ulimit -Hn`)"
        );
    }
    let machine = Machine::read(open_files);
    let commit = Commit::read();
    let layout = Layout::create(&args, &params)?;
    // Current-thread: every child is spawned from this thread, which their parent-death signal
    // is tied to, and the benchmark's own CPU use stays at most one core.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut children = Children::default();
    let outcome = runtime.block_on(async {
        let mut signals = Signals::new()?;
        tokio::select! {
            r = execute(&params, &layout, &mut children, (machine, commit)) => r.map(Some),
            () = signals.recv() => Ok(None),
        }
    });
    eprintln!("stopping the benchmark's processes…");
    children.shutdown(Duration::from_secs(10));
    drop(runtime);

    let logs = format!("{}/*.log", layout.run_dir.display());
    // The workers' data (10,000 small directories, in RAM by default) goes unless asked to stay.
    let worker_data = |keep: bool| {
        if !keep {
            let _ = std::fs::remove_dir_all(&layout.worker_root);
        } else if layout.worker_root.exists() {
            eprintln!("workers' data: {}", layout.worker_root.display());
        }
    };
    match outcome {
        Ok(Some(outcome)) => {
            println!("{}", outcome.table.render());
            let path = report::write_json(&params.results_dir, "hollow", &outcome.json)?;
            println!("result: {}", path.display());
            if outcome.complete && !args.keep_dir {
                worker_data(false);
                let _ = std::fs::remove_dir_all(&layout.run_dir);
                Ok(ExitCode::SUCCESS)
            } else {
                worker_data(args.keep_dir);
                println!("logs: {logs}");
                if outcome.complete {
                    Ok(ExitCode::SUCCESS)
                } else {
                    eprintln!("oak-bench hollow: {}", outcome.failure.unwrap_or_default());
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Ok(None) => {
            worker_data(args.keep_dir);
            eprintln!("interrupted; logs: {logs}");
            Ok(ExitCode::from(130))
        }
        Err(e) => {
            worker_data(args.keep_dir);
            eprintln!("oak-bench hollow: {e:#}\nlogs: {logs}");
            Ok(ExitCode::FAILURE)
        }
    }
}

struct Outcome {
    /// Every instance reached RUNNING.
    complete: bool,
    failure: Option<String>,
    table: Table,
    json: serde_json::Value,
}

/// A progress line on stderr, with the time since the benchmark started.
fn progress(started: Instant, message: impl std::fmt::Display) {
    eprintln!("[{:7.1} s] {message}", started.elapsed().as_secs_f64());
}

async fn execute(
    params: &Params,
    layout: &Layout,
    children: &mut Children,
    (machine, commit): (Machine, Commit),
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let oakestra = params.oakestra.as_path();
    progress(
        started,
        format!("run directory {}; workers' data {}", layout.run_dir.display(), layout.worker_root.display()),
    );

    // ---- root ----
    let root_dir = layout.root_dir();
    let s = |v: &dyn std::fmt::Display| v.to_string();
    let root_args = vec![
        "root".into(),
        "--api-addr".into(),
        "127.0.0.1".into(),
        "--api-port".into(),
        s(&layout.root_api),
        "--cluster-port".into(),
        s(&layout.root_channel),
        "--data-dir".into(),
        s(&root_dir.display()),
    ];
    let root_pid = children.spawn("root", Kind::Root, oakestra, &root_args, &layout.run_dir.join("root.log"))?;
    let token_file = root_dir.join("cluster-token");
    let health = format!("{}/api/health", layout.root_url());
    wait_for(children, "the root to answer", Duration::from_secs(60), || async {
        (healthy(&http, &health).await && token_file.is_file()).then_some(())
    })
    .await?;
    progress(started, format!("root up (pid {root_pid}, API {})", layout.root_url()));

    // ---- clusters ----
    for (i, (api, mqtt)) in layout.cluster_ports.iter().enumerate() {
        let name = cluster_name(i);
        let mut args: Vec<String> = vec![
            "cluster".into(),
            "--name".into(),
            name.clone(),
            "--root-channel".into(),
            format!("127.0.0.1:{}", layout.root_channel),
            "--root-url".into(),
            layout.root_url(),
            "--api-port".into(),
            s(api),
            "--mqtt-port".into(),
            s(mqtt),
            "--data-dir".into(),
            s(&layout.cluster_dir(i).display()),
            "--token-file".into(),
            s(&token_file.display()),
            "--listen-addr".into(),
            "127.0.0.1".into(),
        ];
        if let Some(timeout) = params.worker_timeout_s {
            args.extend(["--worker-timeout".into(), s(&timeout)]);
        }
        let log = layout.run_dir.join(format!("cluster-{name}.log"));
        children.spawn(&format!("cluster {name}"), Kind::Cluster, oakestra, &args, &log)?;
    }
    // A cluster's node API is HTTPS with its own CA, which its node token pins.
    let mut cluster_http = Vec::new();
    for (i, (api, _)) in layout.cluster_ports.iter().enumerate() {
        let url = format!("https://127.0.0.1:{api}/api/health");
        let node_token = layout.cluster_dir(i).join("node-token");
        let what = format!("cluster {} to answer", cluster_name(i));
        let cluster = wait_for(children, &what, Duration::from_secs(60), || async {
            let client = cluster_client(&node_token)?;
            healthy(&client, &url).await.then_some(client)
        })
        .await?;
        cluster_http.push(cluster);
    }
    progress(started, format!("{} clusters up", params.clusters));

    // ---- hollow workers ----
    let workers_started = Instant::now();
    let bench = std::env::current_exe()?;
    for (i, (api, _)) in layout.cluster_ports.iter().enumerate() {
        let name = cluster_name(i);
        let mut first = 0;
        let mut part = 0;
        while first < params.workers_per_cluster {
            let count = params.workers_per_process.min(params.workers_per_cluster - first);
            let args = vec![
                "hollow-workers".into(),
                "--cluster-address".into(),
                "127.0.0.1".into(),
                "--cluster-port".into(),
                s(api),
                "--token-file".into(),
                s(&layout.cluster_dir(i).join("node-token").display()),
                "--count".into(),
                s(&count),
                "--name-prefix".into(),
                format!("hollow-{name}-w"),
                "--first-index".into(),
                s(&(first + 1)),
                "--data-root".into(),
                s(&layout.worker_root.join(&name).display()),
                "--vcpus".into(),
                s(&params.worker_vcpus),
                "--memory-mb".into(),
                s(&params.worker_memory_mb),
                "--report-interval".into(),
                s(&params.report_interval_s),
                "--log".into(),
                params.worker_log.clone(),
            ];
            let log = layout.run_dir.join(format!("workers-{name}-{part}.log"));
            children.spawn(&format!("workers {name}/{part}"), Kind::Workers, &bench, &args, &log)?;
            first += count;
            part += 1;
        }
    }
    let client = login(&layout.root_url()).await?;
    let expected: BTreeMap<String, usize> =
        (0..params.clusters).map(|i| (cluster_name(i), params.workers_per_cluster)).collect();
    let last_report = std::cell::Cell::new(Instant::now());
    wait_for(
        children,
        "every worker to be active at the root",
        Duration::from_secs_f64(params.ready_timeout_s),
        || {
            let (client, expected, last_report) = (&client, &expected, &last_report);
            async move {
                let active = client.list_active_clusters().await.ok()?;
                let nodes: usize = active.iter().map(|c| c.active_nodes as usize).sum();
                let ready = expected
                    .iter()
                    .all(|(name, n)| active.iter().any(|c| &c.cluster_name == name && c.active_nodes as usize >= *n));
                if !ready && last_report.get().elapsed() >= Duration::from_secs(5) {
                    last_report.set(Instant::now());
                    progress(
                        started,
                        format!("{} clusters active, {nodes}/{} workers active", active.len(), params.total_workers()),
                    );
                }
                ready.then_some(())
            }
        },
    )
    .await?;
    let workers_ready_s = workers_started.elapsed().as_secs_f64();
    progress(started, format!("{} workers active after {workers_ready_s:.1} s", params.total_workers()));

    // ---- application ----
    let client = login(&layout.root_url()).await?;
    let sla = sla(params);
    client.create_application(&sla).await.context("creating the benchmark application")?;
    let app = client
        .list_applications()
        .await?
        .into_iter()
        .find(|a| a.application_name == APP_NAME)
        .ok_or_else(|| anyhow!("the benchmark application is missing after creating it"))?;
    let mut services = client.list_app_services(&app.id).await?;
    services.sort_by_key(|s| s.service_name.trim_start_matches('s').parse::<usize>().unwrap_or(usize::MAX));
    anyhow::ensure!(
        services.len() == params.services,
        "expected {} services, found {}",
        params.services,
        services.len()
    );
    let service_ids: Arc<Vec<String>> = Arc::new(services.iter().map(|s| s.id.clone()).collect());

    // ---- reference: trivial authenticated requests, same root, client and concurrency ----
    let root_cpu = || procs::usage(root_pid).map(|u| u.cpu_seconds).unwrap_or_default();
    let root_cpu_before = root_cpu();
    let mut reference = run_reference(&client, params.instances, params.concurrency).await;
    reference.root_cpu_s = root_cpu() - root_cpu_before;
    progress(
        started,
        format!(
            "reference: {} × GET /api/clusters in {:.2} s ({:.0}/s, {} errors)",
            params.instances,
            reference.duration_s,
            reference.rate(),
            reference.errors.len()
        ),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    // ---- background: what the idle fleet costs (reports, timers) before any instance ----
    let mqtt_ports: Vec<u16> = layout.cluster_ports.iter().map(|(_, mqtt)| *mqtt).collect();
    let idle = watch_fleet(children, &mqtt_ports, params.idle_window_s).await?;
    progress(
        started,
        format!(
            "idle links carry {:.0} bytes/s per worker ({:.3} kbit/s) over {} connections",
            idle.bytes_per_worker_s(params.total_workers()),
            idle.kbit_per_worker_s(params.total_workers()),
            idle.link_after.connections
        ),
    );
    progress(
        started,
        format!(
            "idle fleet uses {:.2} / {:.2} / {:.2} cores (root / clusters / workers)",
            idle.cores(Kind::Root),
            idle.cores(Kind::Cluster),
            idle.cores(Kind::Workers)
        ),
    );

    // ---- measured phase ----
    let cpu_before = usage_by_process(children);
    progress(started, format!("requesting {} instances ({} in flight)", params.instances, params.concurrency));
    let cluster_metrics_urls: Vec<(reqwest::Client, String)> = (layout.cluster_ports.iter())
        .zip(&cluster_http)
        .map(|((api, _), client)| (client.clone(), format!("https://127.0.0.1:{api}/metrics")))
        .collect();
    let mut mqtt_before = Vec::new();
    for (client, url) in &cluster_metrics_urls {
        mqtt_before.push(scrape_placement(client, url).await);
    }
    let measured = measure(params, children, &cluster_metrics_urls, &client, &app.id, service_ids.clone()).await?;
    let cpu_after = usage_by_process(children);
    let root_metrics = scrape_placement(&http, &format!("{}/metrics", layout.root_url())).await;
    let mut cluster_metrics = Vec::new();
    for (i, (client, url)) in cluster_metrics_urls.iter().enumerate() {
        let m = scrape_placement(client, url).await;
        cluster_metrics.push((cluster_name(i), m));
    }

    // ---- after: the fleet with every instance running, once the first usage reports are out ----
    let busy = if !measured.timed_out {
        tokio::time::sleep(BUSY_SETTLE).await;
        let busy = watch_fleet(children, &mqtt_ports, BUSY_WINDOW_S).await?;
        progress(
            started,
            format!(
                "with every instance running, links carry {:.0} bytes/s per worker; the fleet uses {:.2} / {:.2} / {:.2} cores",
                busy.bytes_per_worker_s(params.total_workers()),
                busy.cores(Kind::Root),
                busy.cores(Kind::Cluster),
                busy.cores(Kind::Workers)
            ),
        );
        Some(busy)
    } else {
        None
    };
    let bench_usage = procs::usage(std::process::id()).unwrap_or_default();
    Ok(summarize(Summarize {
        params,
        machine,
        commit,
        workers_ready_s,
        reference,
        measured,
        root_metrics,
        cluster_metrics,
        mqtt_before,
        idle,
        busy,
        cpu_before,
        cpu_after,
        bench_usage,
        root_pid,
    }))
}

const APP_NAME: &str = "hollow";

/// One application with `services` services `s1…sN`, each asking for a little CPU and memory.
fn sla(params: &Params) -> serde_json::Value {
    let microservices: Vec<serde_json::Value> = (1..=params.services)
        .map(|i| {
            json!({
                "microserviceID": "",
                "microservice_name": format!("s{i}"),
                "microservice_namespace": "bench",
                "virtualization": "container",
                "cmd": [],
                "memory": params.instance_memory_mb,
                "vcpus": params.instance_vcpus,
                "vgpus": 0,
                "vtpus": 0,
                "bandwidth_in": 0,
                "bandwidth_out": 0,
                "storage": 0,
                "code": "docker.io/library/nginx:latest",
                "state": "",
                "added_files": [],
                "constraints": []
            })
        })
        .collect();
    json!({
        "sla_version": "v2.0",
        "customerID": "Admin",
        "applications": [{
            "applicationID": "",
            "application_name": APP_NAME,
            "application_namespace": "bench",
            "application_desc": "hollow-worker benchmark",
            "microservices": microservices
        }]
    })
}

pub(crate) async fn login(url: &str) -> anyhow::Result<Client> {
    let client = Client::new(url);
    let tokens = client.login("Admin", "Admin", None).await.context("logging in as Admin/Admin")?;
    Ok(client.with_token(tokens.token))
}

/// A client of a cluster's node API, once its node token exists (it pins the cluster's CA).
pub(crate) fn cluster_client(node_token: &std::path::Path) -> Option<reqwest::Client> {
    let token = std::fs::read_to_string(node_token).ok()?;
    oak_worker::cluster_client_builder(&token).ok()?.timeout(Duration::from_secs(5)).build().ok()
}

pub(crate) async fn healthy(http: &reqwest::Client, url: &str) -> bool {
    http.get(url).send().await.is_ok_and(|r| r.status().is_success())
}

/// Polls `check` every 100 ms until it yields a value, failing if a child exits or `timeout`
/// passes.
pub(crate) async fn wait_for<T, F, Fut>(
    children: &mut Children,
    what: &str,
    timeout: Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        children.check_alive()?;
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {:.0} s waiting for {what}", timeout.as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---- the reference ----

#[derive(Debug, Default, Serialize)]
struct Reference {
    requests: usize,
    duration_s: f64,
    latencies_ms: Vec<f64>,
    errors: Vec<String>,
    /// CPU seconds the root used while answering them.
    root_cpu_s: f64,
}

impl Reference {
    fn rate(&self) -> f64 {
        (self.requests - self.errors.len()) as f64 / self.duration_s.max(1e-9)
    }
}

async fn run_reference(client: &Client, n: usize, concurrency: usize) -> Reference {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.min(n) {
        let client = client.clone();
        let next = next.clone();
        tasks.spawn(async move {
            let mut out = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let t = Instant::now();
                let r = client.list_clusters().await;
                out.push((t.elapsed().as_secs_f64() * 1e3, r.err().map(|e| e.to_string())));
            }
            out
        });
    }
    let mut reference = Reference { requests: n, ..Default::default() };
    while let Some(joined) = tasks.join_next().await {
        for (ms, err) in joined.unwrap_or_default() {
            reference.latencies_ms.push(ms);
            if let Some(e) = err {
                reference.errors.push(e);
            }
        }
    }
    reference.duration_s = started.elapsed().as_secs_f64();
    reference
}

// ---- the measured phase ----

/// One instance request.
#[derive(Debug, Clone, Serialize)]
struct Sent {
    service: usize,
    instance_number: Option<u32>,
    /// Seconds after t0 the request was sent.
    sent_s: f64,
    latency_ms: f64,
    /// The instance's status in the root's answer.
    status: Option<String>,
    /// Why the request failed.
    error: Option<String>,
}

impl Sent {
    fn ok(&self) -> bool {
        self.error.is_none()
    }
}

#[derive(Debug, Clone, Serialize)]
struct Poll {
    start_s: f64,
    end_s: f64,
    running: usize,
    listed: usize,
}

/// RUNNING instances summed over the clusters' `/metrics` (None if one did not answer).
#[derive(Debug, Clone, Serialize)]
struct ClusterPoll {
    t_s: f64,
    running: Option<usize>,
}

async fn running_at_clusters(urls: &[(reqwest::Client, String)]) -> Option<usize> {
    let mut sum = 0;
    for (http, url) in urls {
        let response = http.get(url).send().await.ok().filter(|r| r.status().is_success())?;
        let text = response.text().await.ok()?;
        sum += text
            .lines()
            .find_map(|l| l.strip_prefix("oakestra_instances{status=\"RUNNING\"}"))
            .map_or(Some(0), |v| v.trim().parse::<usize>().ok())?;
    }
    Some(sum)
}

struct Measured {
    sent: Vec<Sent>,
    /// Seconds after t0 when the last answer arrived.
    requests_done_s: f64,
    polls: Vec<Poll>,
    cluster_polls: Vec<ClusterPoll>,
    /// Per instance (service index, number): seconds after t0 it became RUNNING (root clock).
    running_at: HashMap<(usize, u32), f64>,
    /// Status counts at the last poll.
    final_status: BTreeMap<String, usize>,
    timed_out: bool,
}

impl Measured {
    fn accepted(&self) -> usize {
        self.sent.iter().filter(|s| s.ok()).count()
    }
}

fn wall_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    params: &Params,
    children: &mut Children,
    cluster_metrics: &[(reqwest::Client, String)],
    client: &Client,
    app_id: &str,
    service_ids: Arc<Vec<String>>,
) -> anyhow::Result<Measured> {
    let index_of: HashMap<String, usize> = service_ids.iter().enumerate().map(|(i, id)| (id.clone(), i)).collect();
    let n = params.instances;
    let next = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let wall_t0 = wall_now();
    let t0 = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    let per = params.per_request as usize;
    for _ in 0..params.concurrency.min(n.div_ceil(per)) {
        let (client, next, sent, ids) = (client.clone(), next.clone(), sent.clone(), service_ids.clone());
        senders.spawn(async move {
            loop {
                let i = next.fetch_add(per, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let k = per.min(n - i);
                let service = (i / per) % ids.len();
                let sent_at = t0.elapsed();
                let r = if per == 1 {
                    client.request_instance(&ids[service]).await
                } else {
                    client.request_instances(&ids[service], k as u32).await
                };
                let latency_ms = (t0.elapsed() - sent_at).as_secs_f64() * 1e3;
                let sent_s = sent_at.as_secs_f64();
                // One record per instance asked for, each with the request's latency.
                let records: Vec<Sent> = match r {
                    Ok(ok) if ok.instances.is_empty() => vec![Sent {
                        service,
                        instance_number: Some(ok.instance_number),
                        sent_s,
                        latency_ms,
                        status: Some(ok.status),
                        error: None,
                    }],
                    Ok(ok) => ok
                        .instances
                        .into_iter()
                        .map(|inst| Sent {
                            service,
                            instance_number: Some(inst.instance_number),
                            sent_s,
                            latency_ms,
                            status: Some(inst.status),
                            error: None,
                        })
                        .collect(),
                    Err(e) => (0..k)
                        .map(|_| Sent {
                            service,
                            instance_number: None,
                            sent_s,
                            latency_ms,
                            status: None,
                            error: Some(e.to_string()),
                        })
                        .collect(),
                };
                sent.lock().unwrap_or_else(|e| e.into_inner()).extend(records);
            }
        });
    }

    let mut requests_done_s = None;
    let mut polls = Vec::new();
    let mut cluster_polls = Vec::new();
    let mut running_at = HashMap::new();
    let mut final_status = BTreeMap::new();
    let mut timed_out = false;
    let mut reported = Instant::now();
    let mut next_root_poll = Instant::now();
    let timeout = Duration::from_secs_f64(params.timeout_s);
    loop {
        children.check_alive()?;
        if requests_done_s.is_none() {
            while let Some(joined) = senders.try_join_next() {
                joined.context("a request task failed")?;
            }
            if senders.is_empty() {
                // When the last answer came, from the requests' own records (this loop only
                // looks every `poll_ms`).
                let records = sent.lock().unwrap_or_else(|e| e.into_inner());
                let done = records.iter().map(|s| s.sent_s + s.latency_ms / 1e3).fold(0.0, f64::max);
                requests_done_s = Some(done);
                let failed = records.iter().filter(|s| !s.ok()).count();
                drop(records);
                progress_line(t0, format!("all {n} requests answered after {done:.2} s ({failed} failed)"));
            }
        }
        let accepted = sent.lock().unwrap_or_else(|e| e.into_inner()).iter().filter(|s| s.ok()).count();

        // The clusters' counts are cheap to read; the root's full listing is not (it holds the
        // root's store while it reads every instance), so the root is polled rarely until the
        // clusters say every instance runs.
        let at_clusters = running_at_clusters(cluster_metrics).await;
        cluster_polls.push(ClusterPoll { t_s: t0.elapsed().as_secs_f64(), running: at_clusters });
        let all_at_clusters = requests_done_s.is_some() && at_clusters.is_some_and(|r| r >= accepted);
        if all_at_clusters || Instant::now() >= next_root_poll {
            let start_s = t0.elapsed().as_secs_f64();
            let listed = client.list_services().await;
            let end_s = t0.elapsed().as_secs_f64();
            let cost = Duration::from_secs_f64((end_s - start_s).max(0.0));
            let spacing = Duration::from_millis(params.root_poll_ms).max(cost * 5).min(Duration::from_secs(5));
            next_root_poll = Instant::now() + spacing;
            match listed {
                Ok(services) => {
                    let mut running = 0;
                    let mut count = 0;
                    final_status.clear();
                    for svc in services.iter().filter(|s| s.application_id == app_id) {
                        let Some(&index) = index_of.get(&svc.id) else { continue };
                        for inst in &svc.instance_list {
                            count += 1;
                            *final_status.entry(inst.status.clone()).or_insert(0) += 1;
                            if inst.status == status::RUNNING {
                                running += 1;
                                running_at
                                    .entry((index, inst.instance_number))
                                    .or_insert(inst.last_modified_timestamp - wall_t0);
                            }
                        }
                    }
                    polls.push(Poll { start_s, end_s, running, listed: count });
                    if requests_done_s.is_some() && running >= accepted {
                        progress_line(t0, format!("{running}/{n} RUNNING at the root"));
                        break;
                    }
                }
                Err(e) => progress_line(t0, format!("polling the services failed: {e}")),
            }
        }
        if reported.elapsed() >= Duration::from_secs(2) {
            reported = Instant::now();
            let root = polls.last().map_or(0, |p| p.running);
            let clusters = at_clusters.map_or("?".to_string(), |r| r.to_string());
            progress_line(t0, format!("RUNNING: {clusters}/{n} at the clusters, {root} at the root's last poll"));
        }
        if t0.elapsed() >= timeout {
            timed_out = true;
            senders.abort_all();
            progress_line(t0, format!("timed out after {:.0} s", params.timeout_s));
            break;
        }
        tokio::time::sleep(Duration::from_millis(params.poll_ms)).await;
    }
    let sent = std::mem::take(&mut *sent.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(Measured {
        sent,
        requests_done_s: requests_done_s.unwrap_or(f64::NAN),
        polls,
        cluster_polls,
        running_at,
        final_status,
        timed_out,
    })
}

fn progress_line(t0: Instant, message: impl std::fmt::Display) {
    eprintln!("    [t0 + {:6.2} s] {message}", t0.elapsed().as_secs_f64());
}

// ---- metrics and process usage ----

#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Placement {
    p50_s: f64,
    p99_s: f64,
    count: u64,
    /// Whether `/metrics` answered with the three figures.
    scraped: bool,
    /// Messages published to a cluster's embedded broker so far (0 for the root).
    mqtt_in: u64,
    /// Deliveries the broker queued to subscribers so far.
    mqtt_out: u64,
}

async fn scrape_placement(http: &reqwest::Client, url: &str) -> Placement {
    let text = match http.get(url).send().await {
        Ok(r) if r.status().is_success() => r.text().await.unwrap_or_default(),
        _ => String::new(),
    };
    parse_placement(&text)
}

fn parse_placement(text: &str) -> Placement {
    let value =
        |prefix: &str| text.lines().find_map(|l| l.strip_prefix(prefix)).and_then(|v| v.trim().parse::<f64>().ok());
    let p50 = value("oakestra_placement_p50_seconds ");
    let p99 = value("oakestra_placement_p99_seconds ");
    let count = value("oakestra_placement_seconds_count");
    let mqtt_in = value("oakestra_mqtt_messages_received_total ").unwrap_or(0.0) as u64;
    let mqtt_out = value("oakestra_mqtt_messages_delivered_total ").unwrap_or(0.0) as u64;
    match (p50, p99, count) {
        (Some(p50_s), Some(p99_s), Some(count)) => {
            Placement { p50_s, p99_s, count: count as u64, scraped: true, mqtt_in, mqtt_out }
        }
        _ => Placement::default(),
    }
}

#[derive(Debug, Clone, Serialize)]
struct ProcSample {
    name: String,
    pid: u32,
    #[serde(flatten)]
    usage: ProcUsage,
}

fn usage_by_process(children: &Children) -> Vec<(Kind, ProcSample)> {
    children
        .iter()
        .map(|c| {
            let sample =
                ProcSample { name: c.name.clone(), pid: c.pid(), usage: procs::usage(c.pid()).unwrap_or_default() };
            (c.kind, sample)
        })
        .collect()
}

/// CPU use of every process over a window with no requests.
struct IdleWindow {
    wall_s: f64,
    before: Vec<(Kind, ProcSample)>,
    after: Vec<(Kind, ProcSample)>,
    /// The MQTT links' bytes at the start and the end.
    link_before: LinkBytes,
    link_after: LinkBytes,
}

impl IdleWindow {
    /// Bytes each worker's link carried per second, both ways.
    fn bytes_per_worker_s(&self, workers: usize) -> f64 {
        self.link_before.since(&self.link_after) as f64 / workers.max(1) as f64 / self.wall_s.max(1e-9)
    }

    fn kbit_per_worker_s(&self, workers: usize) -> f64 {
        self.bytes_per_worker_s(workers) * 8.0 / 1000.0
    }

    /// Cores used by all processes of `kind` (CPU seconds / wall seconds).
    fn cores(&self, kind: Kind) -> f64 {
        cpu_seconds(&self.before, &self.after, kind) / self.wall_s.max(1e-9)
    }
}

/// How long the fleet is watched with every instance running: a quiet worker refreshes its
/// instances' usage every 10 s, so a shorter window would miss part of the refreshes.
const BUSY_WINDOW_S: f64 = 10.0;
/// Wait before that window: the first usage reports of the last instances go within a report
/// interval (2 s) of their start.
const BUSY_SETTLE: Duration = Duration::from_secs(3);

/// What the fleet's processes and MQTT links use over `window_s` seconds of doing nothing new.
async fn watch_fleet(children: &Children, mqtt_ports: &[u16], window_s: f64) -> anyhow::Result<IdleWindow> {
    let link_before = link_bytes::to_ports(mqtt_ports)?;
    let (start, before) = (Instant::now(), usage_by_process(children));
    tokio::time::sleep(Duration::from_secs_f64(window_s)).await;
    Ok(IdleWindow {
        wall_s: start.elapsed().as_secs_f64(),
        before,
        after: usage_by_process(children),
        link_before,
        link_after: link_bytes::to_ports(mqtt_ports)?,
    })
}

/// CPU seconds the processes of `kind` used between two samples.
fn cpu_seconds(before: &[(Kind, ProcSample)], after: &[(Kind, ProcSample)], kind: Kind) -> f64 {
    let sum =
        |v: &[(Kind, ProcSample)]| v.iter().filter(|(k, _)| *k == kind).map(|(_, x)| x.usage.cpu_seconds).sum::<f64>();
    sum(after) - sum(before)
}

// ---- the summary ----

struct Summarize<'a> {
    params: &'a Params,
    machine: Machine,
    commit: Commit,
    workers_ready_s: f64,
    reference: Reference,
    measured: Measured,
    root_metrics: Placement,
    cluster_metrics: Vec<(String, Placement)>,
    /// The clusters' `/metrics` just before the measured phase (for its MQTT message counts).
    mqtt_before: Vec<Placement>,
    idle: IdleWindow,
    /// The same, after the measured phase, with every instance running.
    busy: Option<IdleWindow>,
    cpu_before: Vec<(Kind, ProcSample)>,
    cpu_after: Vec<(Kind, ProcSample)>,
    bench_usage: ProcUsage,
    root_pid: u32,
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "MISS"
    }
}

fn summarize(s: Summarize<'_>) -> Outcome {
    let p = s.params;
    let m = &s.measured;
    let accepted = m.accepted();
    let failed_requests: Vec<&Sent> = m.sent.iter().filter(|x| !x.ok()).collect();
    let running_now = m.polls.last().map_or(0, |p| p.running);
    let complete = !m.timed_out && failed_requests.is_empty() && accepted == p.instances && running_now >= accepted;

    // When each instance became RUNNING, per the root's clock; and the poll-bounded end.
    let mut running_times: Vec<f64> = m.running_at.values().copied().collect();
    running_times.sort_by(f64::total_cmp);
    let last_poll = m.polls.last().map_or(f64::NAN, |p| p.end_s);
    let previous_poll_start = m.polls.len().checked_sub(2).and_then(|i| m.polls.get(i)).map_or(0.0, |p| p.start_s);
    let last_running_root = running_times.last().copied().unwrap_or(f64::NAN);
    // The root's stamps must fall in the window the polls allow (same machine, same clock);
    // if they do not, the poll-bounded figure is the only trustworthy one.
    let root_clock_consistent = complete && last_running_root > 0.0 && last_running_root <= last_poll + 0.05;
    let t_all = if root_clock_consistent { last_running_root } else { last_poll };
    let throughput = accepted as f64 / t_all;
    let throughput_poll = accepted as f64 / last_poll;
    let at_fraction = |f: f64| {
        if running_times.is_empty() {
            return f64::NAN;
        }
        let rank = ((f * p.instances as f64).ceil() as usize).clamp(1, p.instances);
        running_times.get(rank - 1).copied().unwrap_or(f64::NAN)
    };

    // Request → RUNNING per instance.
    let mut to_running_s = Vec::new();
    for sent in &m.sent {
        if let Some(at) = sent.instance_number.and_then(|n| m.running_at.get(&(sent.service, n))) {
            to_running_s.push(at - sent.sent_s);
        }
    }
    let to_running = Summary::of(&to_running_s);
    let request_latency = Summary::of(&m.sent.iter().map(|x| x.latency_ms).collect::<Vec<_>>());
    let request_rate = m.sent.len() as f64 / m.requests_done_s;
    let mut answered_status: BTreeMap<String, usize> = BTreeMap::new();
    for x in &m.sent {
        let key = x.status.clone().unwrap_or_else(|| "request failed".to_string());
        *answered_status.entry(key).or_insert(0) += 1;
    }
    let reference_latency = Summary::of(&s.reference.latencies_ms);
    let reference_rate = s.reference.rate();

    // Placement decisions.
    let root_pl = s.root_metrics;
    let cluster_p50s: Vec<f64> = s.cluster_metrics.iter().filter(|(_, m)| m.scraped).map(|(_, m)| m.p50_s).collect();
    let cluster_p99s: Vec<f64> = s.cluster_metrics.iter().filter(|(_, m)| m.scraped).map(|(_, m)| m.p99_s).collect();
    let cluster_p50_median = Summary::of(&cluster_p50s).p50;
    let cluster_p99_max = cluster_p99s.iter().copied().fold(f64::NAN, f64::max);
    let clusters_ok = cluster_p99s.len() == s.cluster_metrics.len() && cluster_p99_max <= P3_MAX_P99_S;
    let root_ok = root_pl.scraped && root_pl.p99_s <= P3_MAX_P99_S;

    // Memory at the end and peak.
    let of_kind = |kind: Kind| s.cpu_after.iter().filter(move |(k, _)| *k == kind).map(|(_, x)| x);
    let root = of_kind(Kind::Root).next().map(|x| x.usage).unwrap_or_default();
    let clusters: Vec<&ProcSample> = of_kind(Kind::Cluster).collect();
    let workers: Vec<&ProcSample> = of_kind(Kind::Workers).collect();
    let clusters_rss: u64 = clusters.iter().map(|c| c.usage.rss_kb).sum();
    let clusters_hwm: u64 = clusters.iter().map(|c| c.usage.hwm_kb).sum();
    let largest_cluster_rss = clusters.iter().map(|c| c.usage.rss_kb).max().unwrap_or(0);
    let largest_cluster_hwm = clusters.iter().map(|c| c.usage.hwm_kb).max().unwrap_or(0);
    let workers_rss: u64 = workers.iter().map(|c| c.usage.rss_kb).sum();
    let control_rss = root.rss_kb + clusters_rss;
    let control_hwm = root.hwm_kb + clusters_hwm;

    // CPU used during the measured phase.
    let cpu_delta = |kind: Kind| cpu_seconds(&s.cpu_before, &s.cpu_after, kind);
    let phase_s = last_poll;

    let p3_ok = root_ok && clusters_ok;
    let p4_ok = complete && throughput >= P4_MIN_PER_S;
    let p6_ok = mb(control_hwm.max(control_rss)) <= P6_MAX_MB;

    let mut t = Table::default();
    t.section("setup");
    t.row("clusters × workers per cluster", format!("{} × {}", p.clusters, p.workers_per_cluster), "");
    t.row("instances / services / in flight", format!("{} / {} / {}", p.instances, p.services, p.concurrency), "");
    t.row("all workers active after", format!("{:.1} s", s.workers_ready_s), "");
    t.section("P4 placement throughput");
    t.row(
        "instances RUNNING at the root",
        format!("{running_now} / {}", p.instances),
        if complete { "" } else { "INCOMPLETE" },
    );
    t.row(
        "throughput (root's RUNNING stamps)",
        format!("{throughput:.0} /s"),
        format!(">= {P4_MIN_PER_S:.0} /s {}", verdict(p4_ok)),
    );
    t.row("throughput (poll-bounded, conservative)", format!("{throughput_poll:.0} /s"), "");
    t.row(
        "last RUNNING after t0",
        format!("{t_all:.2} s"),
        format!("(poll window {previous_poll_start:.2}–{last_poll:.2} s)"),
    );
    t.row(
        "50% / 90% / 100% RUNNING after",
        format!("{:.2} / {:.2} / {:.2} s", at_fraction(0.5), at_fraction(0.9), at_fraction(1.0)),
        "",
    );
    t.row(
        "request phase",
        format!("{:.2} s ({request_rate:.0} instances/s, {} per request)", m.requests_done_s, s.params.per_request),
        "",
    );
    t.row(
        "request latency p50 / p99 / max",
        format!("{:.1} / {:.1} / {:.1} ms", request_latency.p50, request_latency.p99, request_latency.max),
        "",
    );
    t.row(
        "request → RUNNING p50 / p99 / max",
        format!("{:.2} / {:.2} / {:.2} s", to_running.p50, to_running.p99, to_running.max),
        "",
    );
    t.row(
        "reference: GET /api/clusters, same load",
        format!("{:.2} s ({reference_rate:.0} req/s)", s.reference.duration_s),
        format!("p50 {:.1} ms, p99 {:.1} ms", reference_latency.p50, reference_latency.p99),
    );
    t.row("ratio throughput / reference rate", format!("{:.3}", throughput / reference_rate), "");
    t.row(
        "ratio instance-request rate / reference rate",
        format!("{:.3}", request_rate / reference_rate),
        format!(">= 0.6 {}", verdict(request_rate / reference_rate >= 0.6)),
    );
    // What each request costs the root itself: on its own machine (clusters and workers
    // elsewhere) this, not the shared cores, bounds the rate it accepts requests at.
    let root_per_get_us = s.reference.root_cpu_s / s.reference.requests.max(1) as f64 * 1e6;
    let root_per_request_us = cpu_delta(Kind::Root) / m.sent.len().max(1) as f64 * 1e6;
    t.row(
        "root CPU per GET / per instance asked for",
        format!("{root_per_get_us:.0} / {root_per_request_us:.0} µs"),
        "instance requests' include their reports",
    );
    t.row(
        "ratio root CPU per GET / per instance asked for",
        format!("{:.3}", root_per_get_us / root_per_request_us),
        "",
    );
    t.section("P3 placement decision");
    t.row(
        "root p50 / p99",
        format!("{:.4} / {:.4} ms", root_pl.p50_s * 1e3, root_pl.p99_s * 1e3),
        format!("p99 <= 1 ms {}", verdict(root_ok)),
    );
    t.row(
        "clusters p50 (median) / p99 (max)",
        format!("{:.4} / {:.4} ms", cluster_p50_median * 1e3, cluster_p99_max * 1e3),
        format!("p99 <= 1 ms {}", verdict(clusters_ok)),
    );
    t.row(
        "decisions counted root / clusters",
        format!("{} / {}", root_pl.count, s.cluster_metrics.iter().map(|(_, m)| m.count).sum::<u64>()),
        "",
    );
    t.section("P6 control-plane memory (end / peak)");
    t.row("root", format!("{:.1} / {:.1} MB", mb(root.rss_kb), mb(root.hwm_kb)), "");
    t.row(
        "clusters (sum)",
        format!("{:.1} / {:.1} MB", mb(clusters_rss), mb(clusters_hwm)),
        format!("largest {:.1} / {:.1} MB", mb(largest_cluster_rss), mb(largest_cluster_hwm)),
    );
    t.row(
        "root + all clusters",
        format!("{:.1} / {:.1} MB", mb(control_rss), mb(control_hwm)),
        format!("<= {P6_MAX_MB:.0} MB {}", verdict(p6_ok)),
    );
    t.row(
        "root + largest cluster",
        format!("{:.1} / {:.1} MB", mb(root.rss_kb + largest_cluster_rss), mb(root.hwm_kb + largest_cluster_hwm)),
        "",
    );
    t.row(
        "hollow workers (sum, per worker)",
        format!("{:.1} MB, {:.1} KB", mb(workers_rss), workers_rss as f64 / p.total_workers() as f64),
        "",
    );
    t.section("P10 idle control traffic (MQTT links, both ways, TLS included)");
    let p10_kbit = s.idle.kbit_per_worker_s(p.total_workers());
    let p10_ok = s.idle.link_after.connections as usize >= p.total_workers() && p10_kbit <= P10_MAX_KBIT_S;
    t.row(
        "per idle worker",
        format!("{:.1} bytes/s = {p10_kbit:.3} kbit/s", s.idle.bytes_per_worker_s(p.total_workers())),
        format!("<= {P10_MAX_KBIT_S} kbit/s {}", verdict(p10_ok)),
    );
    t.row(
        "links / bytes in the window",
        format!("{} / {}", s.idle.link_after.connections, s.idle.link_before.since(&s.idle.link_after)),
        format!("over {:.1} s", s.idle.wall_s),
    );
    if let Some(busy) = &s.busy {
        t.row(
            "per worker, every instance running",
            format!(
                "{:.1} bytes/s = {:.3} kbit/s",
                busy.bytes_per_worker_s(p.total_workers()),
                busy.kbit_per_worker_s(p.total_workers())
            ),
            format!(
                "fleet cores {:.2} / {:.2} / {:.2} (root / clusters / workers) over {:.1} s",
                busy.cores(Kind::Root),
                busy.cores(Kind::Cluster),
                busy.cores(Kind::Workers),
                busy.wall_s
            ),
        );
    }
    t.section("CPU seconds during the measured phase");
    t.row(
        "root / clusters / workers",
        format!("{:.1} / {:.1} / {:.1}", cpu_delta(Kind::Root), cpu_delta(Kind::Cluster), cpu_delta(Kind::Workers)),
        format!("over {phase_s:.1} s wall, {} cores", s.machine.nproc),
    );
    t.row(
        "idle fleet before, cores: root / clusters / workers",
        format!(
            "{:.2} / {:.2} / {:.2}",
            s.idle.cores(Kind::Root),
            s.idle.cores(Kind::Cluster),
            s.idle.cores(Kind::Workers)
        ),
        format!("over {:.1} s", s.idle.wall_s),
    );
    let mqtt_delta = |f: fn(&Placement) -> u64| {
        let after: u64 = s.cluster_metrics.iter().map(|(_, m)| f(m)).sum();
        after.saturating_sub(s.mqtt_before.iter().map(f).sum())
    };
    let (mqtt_in, mqtt_out) = (mqtt_delta(|m| m.mqtt_in), mqtt_delta(|m| m.mqtt_out));
    let per_instance = |n: u64| n as f64 / p.instances.max(1) as f64;
    t.row(
        "MQTT messages published / delivered at the clusters",
        format!("{mqtt_in} / {mqtt_out}"),
        format!("{:.2} / {:.2} per instance", per_instance(mqtt_in), per_instance(mqtt_out)),
    );
    t.row("machine load average at start (1/5/15 min)", s.machine.loadavg.clone(), "other jobs share the cores");

    let failure = (!complete).then(|| {
        let mut why = format!("{running_now} of {} instances reached RUNNING", p.instances);
        if m.timed_out {
            why.push_str(&format!(" within {:.0} s", p.timeout_s));
        }
        if !failed_requests.is_empty() {
            why.push_str(&format!(
                "; {} requests failed (first: {})",
                failed_requests.len(),
                failed_requests[0].error.as_deref().unwrap_or_default()
            ));
        }
        why.push_str(&format!("; statuses at the end: {:?}", m.final_status));
        why
    });

    let cluster_json: Vec<serde_json::Value> = s
        .cluster_metrics
        .iter()
        .map(|(name, pl)| {
            let usage = clusters.iter().find(|c| c.name == format!("cluster {name}")).map(|c| c.usage);
            json!({"name": name, "placement": pl, "usage_end": usage})
        })
        .collect();
    let mut sent_sorted = m.sent.clone();
    sent_sorted.sort_by(|a, b| a.sent_s.total_cmp(&b.sent_s));
    let json = json!({
        "benchmark": "hollow",
        "targets": ["P3", "P4", "P6"],
        "time": report::utc_stamp(),
        "commit": s.commit,
        "machine": s.machine,
        "parameters": p,
        "complete": complete,
        "failure": failure,
        "setup": { "workers_ready_s": s.workers_ready_s, "root_pid": s.root_pid },
        "throughput": {
            "instances_accepted": accepted,
            "instances_running": running_now,
            "per_s": throughput,
            "per_s_poll_bounded": throughput_poll,
            "last_running_s": t_all,
            "last_running_root_clock_s": last_running_root,
            "root_clock_consistent": root_clock_consistent,
            "last_poll_window_s": [previous_poll_start, last_poll],
            "running_50_90_100_s": [at_fraction(0.5), at_fraction(0.9), at_fraction(1.0)],
            "request_phase_s": m.requests_done_s,
            "request_rate_per_s": request_rate,
            "request_latency_ms": request_latency,
            "request_to_running_s": to_running,
            "answered_status": answered_status,
            "final_status": m.final_status,
            "ratio_to_reference": throughput / reference_rate,
            "target_per_s": P4_MIN_PER_S,
            "pass": p4_ok,
        },
        "reference": {
            "what": "authenticated GET /api/clusters, same root, client and concurrency, before the measured phase",
            "requests": s.reference.requests,
            "duration_s": s.reference.duration_s,
            "rate_per_s": reference_rate,
            "root_cpu_s": s.reference.root_cpu_s,
            "root_cpu_per_request_us": root_per_get_us,
            "latency_ms": reference_latency,
            "errors": s.reference.errors.iter().take(20).collect::<Vec<_>>(),
            "error_count": s.reference.errors.len(),
            "latencies_ms": s.reference.latencies_ms,
        },
        "placement": {
            "root": root_pl,
            "clusters": cluster_json,
            "cluster_p50_median_s": cluster_p50_median,
            "cluster_p99_max_s": cluster_p99_max,
            "target_p99_s": P3_MAX_P99_S,
            "pass": p3_ok,
        },
        "memory": {
            "root_rss_kb": root.rss_kb,
            "root_hwm_kb": root.hwm_kb,
            "clusters_rss_kb": clusters_rss,
            "clusters_hwm_kb": clusters_hwm,
            "largest_cluster_rss_kb": largest_cluster_rss,
            "largest_cluster_hwm_kb": largest_cluster_hwm,
            "root_plus_clusters_rss_kb": control_rss,
            "root_plus_clusters_hwm_kb": control_hwm,
            "workers_rss_kb": workers_rss,
            "target_mb": P6_MAX_MB,
            "pass": p6_ok,
        },
        "p10_idle_traffic": {
            "bytes_per_worker_s": s.idle.bytes_per_worker_s(p.total_workers()),
            "kbit_per_worker_s": p10_kbit,
            "links": s.idle.link_after.connections,
            "bytes_before": s.idle.link_before.total(),
            "bytes_after": s.idle.link_after.total(),
            "target_kbit_s": P10_MAX_KBIT_S,
            "pass": p10_ok,
        },
        "idle_window": {
            "wall_s": s.idle.wall_s,
            "cores": {
                "root": s.idle.cores(Kind::Root),
                "clusters": s.idle.cores(Kind::Cluster),
                "workers": s.idle.cores(Kind::Workers),
            },
            "processes_before": s.idle.before.iter().map(|(_, x)| x).collect::<Vec<_>>(),
            "processes_after": s.idle.after.iter().map(|(_, x)| x).collect::<Vec<_>>(),
        },
        "busy_window": s.busy.as_ref().map(|b| serde_json::json!({
            "what": "after the measured phase, every instance running, nothing new asked",
            "wall_s": b.wall_s,
            "bytes_per_worker_s": b.bytes_per_worker_s(p.total_workers()),
            "kbit_per_worker_s": b.kbit_per_worker_s(p.total_workers()),
            "cores": {
                "root": b.cores(Kind::Root),
                "clusters": b.cores(Kind::Cluster),
                "workers": b.cores(Kind::Workers),
            },
        })),
        "cpu_seconds_measured_phase": {
            "root": cpu_delta(Kind::Root),
            "clusters": cpu_delta(Kind::Cluster),
            "workers": cpu_delta(Kind::Workers),
            "wall_s": phase_s,
            "root_per_instance_request_us": root_per_request_us,
        },
        "mqtt_measured_phase": {
            "published_at_clusters": mqtt_in,
            "delivered_at_clusters": mqtt_out,
        },
        "processes_before": s.cpu_before.iter().map(|(_, x)| x).collect::<Vec<_>>(),
        "processes_end": s.cpu_after.iter().map(|(_, x)| x).collect::<Vec<_>>(),
        "bench_process_end": s.bench_usage,
        "samples": {
            "requests": sent_sorted,
            "root_polls": m.polls,
            "cluster_polls": m.cluster_polls,
            "running_s": running_times,
        },
    });
    Outcome { complete, failure, table: t, json }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_lines_are_parsed() {
        let text = "# TYPE oakestra_placement_p50_seconds gauge\n\
                    oakestra_placement_p50_seconds 0.000012\n\
                    # TYPE oakestra_placement_p99_seconds gauge\n\
                    oakestra_placement_p99_seconds 0.00031\n\
                    # TYPE oakestra_placement_seconds histogram\n\
                    oakestra_placement_seconds_bucket{le=\"+Inf\"} 10000\n\
                    oakestra_placement_seconds_count 10000\n\
                    oakestra_mqtt_messages_received_total 4321\n\
                    oakestra_mqtt_messages_delivered_total 4000\n";
        let p = parse_placement(text);
        assert!(p.scraped);
        assert_eq!((p.p50_s, p.p99_s, p.count), (0.000012, 0.00031, 10_000));
        assert_eq!((p.mqtt_in, p.mqtt_out), (4321, 4000));
        assert!(!parse_placement("oakestra_clusters 3\n").scraped);
    }

    fn parse(extra: &[&str]) -> HollowArgs {
        #[derive(clap::Parser)]
        struct Wrap {
            #[command(flatten)]
            args: HollowArgs,
        }
        let mut argv = vec!["x"];
        if !extra.contains(&"--oakestra") {
            argv.extend(["--oakestra", "/bin/sh"]);
        }
        argv.extend_from_slice(extra);
        <Wrap as clap::Parser>::parse_from(argv).args
    }

    #[test]
    fn presets_and_overrides() {
        let full = Params::resolve(&parse(&[])).unwrap();
        assert_eq!((full.clusters, full.workers_per_cluster, full.instances, full.services), (10, 1000, 10_000, 100));
        assert_eq!(full.workers_per_process, 1000);
        let quick = Params::resolve(&parse(&["--scale", "quick", "--instances", "200"])).unwrap();
        assert_eq!((quick.clusters, quick.workers_per_cluster, quick.instances, quick.services), (2, 50, 200, 10));
        assert!(Params::resolve(&parse(&["--clusters", "0"])).is_err());
        assert!(Params::resolve(&parse(&["--timeout", "0"])).is_err());
        assert_eq!(full.per_request, 1, "plain requests unless asked");
        assert_eq!(Params::resolve(&parse(&["--per-request", "10"])).unwrap().per_request, 10);
        for bad in ["0", "101"] {
            let e = Params::resolve(&parse(&["--per-request", bad])).unwrap_err().to_string();
            assert!(e.contains("--per-request must be from 1 to 100"), "{bad}: {e}");
        }
        assert!(Params::resolve(&parse(&["--oakestra", "/nonexistent/oakestra"])).is_err());
    }

    #[test]
    fn the_sla_has_one_service_per_name() {
        let params = Params::resolve(&parse(&["--services", "3"])).unwrap();
        let sla = sla(&params);
        let services = sla["applications"][0]["microservices"].as_array().unwrap();
        let names: Vec<&str> = services.iter().map(|s| s["microservice_name"].as_str().unwrap()).collect();
        assert_eq!(names, ["s1", "s2", "s3"]);
        assert_eq!(services[0]["memory"], 32);
    }

    #[test]
    fn ports_are_distinct_and_bindable() {
        let ports = free_ports(24_000, 6).unwrap();
        let mut sorted = ports.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), 6);
        assert!(ports.iter().all(|p| *p >= 24_000));
    }
}
