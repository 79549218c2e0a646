//! `oak-bench recovery` (target P9): how long an instance is gone after a `kill -9`.
//!
//! A root, two clusters and two workers per cluster run as processes (`oakestra root`,
//! `oakestra cluster`, and each worker its own `oak-bench hollow-workers --count 1`: the real
//! worker code over an in-memory runtime, so a kill ends exactly one worker). Two scenarios,
//! each `--runs` times:
//!
//! - worker: an instance of a service allowed only on cluster c1 runs on one of c1's workers;
//!   that worker's process is killed with SIGKILL; measured is the time from the kill until the
//!   root shows the instance `RUNNING` on the other worker. The cluster notices after its
//!   `--node-timeout` (`--worker-timeout` here). The killed worker is started again on its data
//!   dir before the next run.
//! - cluster: an instance of an unconstrained service runs on one cluster; that cluster's
//!   process is killed; measured is the time until the root shows it `RUNNING` on the other
//!   cluster, with the root's `--cluster-timeout`. The cluster is started again (its workers
//!   reconnect) before the next run.
//!
//! The state is read from the root's API every `--poll-ms`. The runtime is in memory: what is
//! measured is detection and re-placement by the control plane, not an image's start (P1).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use oak_api::model::Service;
use oak_client::Client;
use serde_json::json;

use crate::hollow::{cluster_client, free_ports, healthy, login, wait_for};
use crate::machine::{Commit, Machine};
use crate::procs::{self, Children, Kind};
use crate::report::{self, Summary, Table};
use crate::signals::Signals;

#[derive(Args, Debug, Clone)]
pub struct RecoveryArgs {
    /// Kills per scenario.
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// The clusters' `--node-timeout`: seconds without a worker's report before its instances
    /// move (the cluster's default is 6).
    #[arg(long, default_value_t = 6.0)]
    pub worker_timeout: f64,
    /// The root's `--cluster-timeout`: seconds without a frame from a cluster before its
    /// instances move (the root's default is 30).
    #[arg(long, default_value_t = 10.0)]
    pub cluster_timeout: f64,
    /// Seconds between a worker's reports (the real worker's default is 2).
    #[arg(long, default_value_t = 2.0)]
    pub report_interval: f64,
    /// Milliseconds between two reads of the instance at the root.
    #[arg(long, default_value_t = 50)]
    pub poll_ms: u64,
    /// Longest wait for one recovery, or for a restarted process to be back, in seconds.
    #[arg(long, default_value_t = 120.0)]
    pub timeout: f64,
    /// The `oakestra` binary to benchmark (a release build) [default: next to oak-bench].
    #[arg(long)]
    pub oakestra: Option<PathBuf>,
    /// Parent of the run directory (data and logs) [default: the system's temporary directory].
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the run directory.
    #[arg(long)]
    pub keep_dir: bool,
    /// Where the JSON result goes.
    #[arg(long, default_value = "bench/results")]
    pub results_dir: PathBuf,
}

/// Validated parameters.
#[derive(Debug, Clone, serde::Serialize)]
struct Params {
    runs: usize,
    worker_timeout_s: f64,
    cluster_timeout_s: f64,
    report_interval_s: f64,
    poll_ms: u64,
    timeout_s: f64,
    oakestra: PathBuf,
}

impl Params {
    fn resolve(a: &RecoveryArgs) -> anyhow::Result<Params> {
        anyhow::ensure!(a.runs >= 1, "--runs must be at least 1");
        for (v, flag) in
            [(a.worker_timeout, "worker-timeout"), (a.report_interval, "report-interval"), (a.timeout, "timeout")]
        {
            anyhow::ensure!(v.is_finite() && v > 0.0, "--{flag} must be a positive number of seconds");
        }
        anyhow::ensure!(
            a.cluster_timeout.is_finite() && a.cluster_timeout >= 2.0,
            "--cluster-timeout must be at least 2 seconds (the root's minimum)"
        );
        anyhow::ensure!(
            a.report_interval < a.worker_timeout,
            "--report-interval must be shorter than --worker-timeout, or idle workers count as dead"
        );
        let oakestra = crate::procs::oakestra_binary(a.oakestra.as_deref())?;
        Ok(Params {
            runs: a.runs,
            worker_timeout_s: a.worker_timeout,
            cluster_timeout_s: a.cluster_timeout,
            report_interval_s: a.report_interval,
            poll_ms: a.poll_ms.clamp(10, 1000),
            timeout_s: a.timeout,
            oakestra: oakestra.canonicalize().unwrap_or(oakestra),
        })
    }
}

const CLUSTERS: [&str; 2] = ["c1", "c2"];
const WORKERS_PER_CLUSTER: usize = 2;

/// Processes and their command lines, so a killed one can be started again alike.
struct Fleet {
    run_dir: PathBuf,
    oakestra: PathBuf,
    bench: PathBuf,
    root_api: u16,
    root_channel: u16,
    /// (node API, MQTT) port per cluster.
    cluster_ports: Vec<(u16, u16)>,
    worker_timeout_s: f64,
    report_interval_s: f64,
    /// Processes started so far (numbers the log files).
    starts: std::cell::Cell<usize>,
}

impl Fleet {
    fn root_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.root_api)
    }

    fn cluster_dir(&self, i: usize) -> PathBuf {
        self.run_dir.join(format!("cluster-{}", CLUSTERS[i]))
    }

    /// `<run dir>/<what>-<n>.log`, a new file for every start of the same process.
    fn log(&self, what: &str) -> PathBuf {
        let n = self.starts.get() + 1;
        self.starts.set(n);
        self.run_dir.join(format!("{what}-{n}.log"))
    }

    fn worker_name(cluster: usize, w: usize) -> String {
        format!("rec-{}-w{}", CLUSTERS[cluster], w + 1)
    }

    fn start_cluster(&self, children: &mut Children, i: usize) -> anyhow::Result<()> {
        let (api, mqtt) = self.cluster_ports[i];
        let s = |v: &dyn std::fmt::Display| v.to_string();
        let args = vec![
            "cluster".into(),
            "--name".into(),
            CLUSTERS[i].into(),
            "--root-channel".into(),
            format!("127.0.0.1:{}", self.root_channel),
            "--root-url".into(),
            self.root_url(),
            "--api-port".into(),
            s(&api),
            "--mqtt-port".into(),
            s(&mqtt),
            "--data-dir".into(),
            s(&self.cluster_dir(i).display()),
            "--token-file".into(),
            s(&self.run_dir.join("root/cluster-token").display()),
            "--listen-addr".into(),
            "127.0.0.1".into(),
            "--node-timeout".into(),
            s(&self.worker_timeout_s),
        ];
        let log = self.log(&format!("cluster-{}", CLUSTERS[i]));
        children.spawn(&format!("cluster {}", CLUSTERS[i]), Kind::Cluster, &self.oakestra, &args, &log).map(drop)
    }

    fn start_worker(&self, children: &mut Children, cluster: usize, w: usize) -> anyhow::Result<()> {
        let name = Self::worker_name(cluster, w);
        let s = |v: &dyn std::fmt::Display| v.to_string();
        let args = vec![
            "hollow-workers".into(),
            "--cluster-address".into(),
            "127.0.0.1".into(),
            "--cluster-port".into(),
            s(&self.cluster_ports[cluster].0),
            "--token-file".into(),
            s(&self.cluster_dir(cluster).join("node-token").display()),
            "--count".into(),
            "1".into(),
            "--name-prefix".into(),
            name.clone(),
            "--first-index".into(),
            "0".into(),
            "--data-root".into(),
            s(&self.run_dir.join("workers").display()),
            "--report-interval".into(),
            s(&self.report_interval_s),
            "--start-interval-ms".into(),
            "0".into(),
        ];
        let log = self.log(&format!("worker-{name}"));
        children.spawn(&format!("worker {name}"), Kind::Workers, &self.bench, &args, &log).map(drop)
    }
}

pub fn main(args: RecoveryArgs) -> anyhow::Result<ExitCode> {
    let params = Params::resolve(&args)?;
    let machine = Machine::read(procs::raise_nofile());
    let commit = Commit::read();
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let run_dir = parent.join(format!("oak-recovery-{}-{}", report::utc_stamp(), std::process::id()));
    std::fs::create_dir_all(&run_dir).with_context(|| format!("cannot create {}", run_dir.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut children = Children::default();
    let outcome = runtime.block_on(async {
        let mut signals = Signals::new()?;
        tokio::select! {
            r = execute(&params, &run_dir, &mut children) => r.map(Some),
            () = signals.recv() => Ok(None),
        }
    });
    eprintln!("stopping the benchmark's processes…");
    children.shutdown(Duration::from_secs(10));
    drop(runtime);
    let logs = format!("{}/*.log", run_dir.display());
    match outcome {
        Ok(Some(samples)) => {
            let (table, json) = summarize(&params, &samples, &machine, &commit);
            println!("{}", table.render());
            let path = report::write_json(&args.results_dir, "recovery", &json)?;
            println!("result: {}", path.display());
            if args.keep_dir {
                println!("logs: {logs}");
            } else {
                let _ = std::fs::remove_dir_all(&run_dir);
            }
            Ok(ExitCode::SUCCESS)
        }
        Ok(None) => {
            eprintln!("interrupted; logs: {logs}");
            Ok(ExitCode::from(130))
        }
        Err(e) => {
            eprintln!("oak-bench recovery: {e:#}\nlogs: {logs}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Recovery times in seconds, per scenario.
#[derive(Debug, Default)]
struct Samples {
    worker_s: Vec<f64>,
    cluster_s: Vec<f64>,
}

fn progress(started: Instant, message: impl std::fmt::Display) {
    eprintln!("[{:7.1} s] {message}", started.elapsed().as_secs_f64());
}

async fn execute(params: &Params, run_dir: &Path, children: &mut Children) -> anyhow::Result<Samples> {
    let started = Instant::now();
    let ports = free_ports(21_000 + (std::process::id() % 400) as u16 * 10, 2 + 2 * CLUSTERS.len())?;
    let fleet = Fleet {
        run_dir: run_dir.to_path_buf(),
        oakestra: params.oakestra.clone(),
        bench: std::env::current_exe()?,
        root_api: ports[0],
        root_channel: ports[1],
        cluster_ports: ports[2..].chunks(2).map(|p| (p[0], p[1])).collect(),
        worker_timeout_s: params.worker_timeout_s,
        report_interval_s: params.report_interval_s,
        starts: Default::default(),
    };
    let timeout = Duration::from_secs_f64(params.timeout_s);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let s = |v: &dyn std::fmt::Display| v.to_string();
    let root_args = vec![
        "root".into(),
        "--api-addr".into(),
        "127.0.0.1".into(),
        "--api-port".into(),
        s(&fleet.root_api),
        "--cluster-port".into(),
        s(&fleet.root_channel),
        "--data-dir".into(),
        s(&run_dir.join("root").display()),
        "--cluster-timeout".into(),
        s(&params.cluster_timeout_s),
    ];
    children.spawn("root", Kind::Root, &fleet.oakestra, &root_args, &run_dir.join("root.log"))?;
    let token = run_dir.join("root/cluster-token");
    let health = format!("{}/api/health", fleet.root_url());
    wait_for(children, "the root to answer", timeout, || async {
        (healthy(&http, &health).await && token.is_file()).then_some(())
    })
    .await?;
    for i in 0..CLUSTERS.len() {
        fleet.start_cluster(children, i)?;
    }
    for (i, name) in CLUSTERS.iter().enumerate() {
        let url = format!("https://127.0.0.1:{}/api/health", fleet.cluster_ports[i].0);
        let node_token = fleet.cluster_dir(i).join("node-token");
        wait_for(children, &format!("cluster {name} to answer"), timeout, || async {
            let client = cluster_client(&node_token)?;
            healthy(&client, &url).await.then_some(())
        })
        .await?;
        for w in 0..WORKERS_PER_CLUSTER {
            fleet.start_worker(children, i, w)?;
        }
    }
    let client = login(&fleet.root_url()).await?;
    all_active(children, &client, timeout).await?;
    progress(started, "root, 2 clusters and 4 workers up");

    let sla = json!({
        "sla_version": "v2.0", "customerID": "Admin",
        "applications": [{
            "applicationID": "", "application_name": "recovery", "application_namespace": "bench",
            "application_desc": "", "microservices": [
                service("pinned", json!([{"type": "clusters", "allowed": [CLUSTERS[0]]}])),
                service("free", json!([])),
            ]
        }]
    });
    let app = client.create_application(&sla).await.context("creating the benchmark's application")?;
    let services = client.list_app_services(&app[0].id).await?;
    let id_of = |name: &str| {
        services.iter().find(|s| s.spec.microservice_name == name).map(|s| s.id.clone()).context("service missing")
    };
    let (pinned, free) = (id_of("pinned")?, id_of("free")?);
    let poll = Duration::from_millis(params.poll_ms);
    let mut samples = Samples::default();

    // ---- a worker ----
    client.request_instance(&pinned).await?;
    let mut at = running_instance(children, &client, &pinned, timeout, |_| true).await?;
    for run in 0..params.runs {
        let worker = at.worker_name.clone().context("the root does not name the instance's worker")?;
        let (cluster, w) = locate_worker(&worker)?;
        let old = at.worker_id.clone();
        children.kill(&format!("worker {}", Fleet::worker_name(cluster, w)))?;
        let killed = Instant::now();
        at = wait_until(children, &client, &pinned, timeout, poll, |i| i.worker_id != old && i.worker_id.is_some())
            .await?;
        let took = killed.elapsed().as_secs_f64();
        samples.worker_s.push(took);
        progress(
            started,
            format!("worker run {}: {worker} killed, RUNNING on {:?} after {took:.2} s", run + 1, at.worker_name),
        );
        fleet.start_worker(children, cluster, w)?;
        all_active(children, &client, timeout).await?;
    }

    // ---- a cluster ----
    client.request_instance(&free).await?;
    let mut at = running_instance(children, &client, &free, timeout, |_| true).await?;
    for run in 0..params.runs {
        let cluster = at.cluster_name.clone().context("the root does not name the instance's cluster")?;
        let i = CLUSTERS.iter().position(|c| *c == cluster).context("an unknown cluster")?;
        let old = at.cluster_id.clone();
        children.kill(&format!("cluster {cluster}"))?;
        let killed = Instant::now();
        at = wait_until(children, &client, &free, timeout, poll, |inst| {
            inst.cluster_id != old && inst.cluster_id.is_some()
        })
        .await?;
        let took = killed.elapsed().as_secs_f64();
        samples.cluster_s.push(took);
        progress(
            started,
            format!("cluster run {}: {cluster} killed, RUNNING on {:?} after {took:.2} s", run + 1, at.cluster_name),
        );
        fleet.start_cluster(children, i)?;
        all_active(children, &client, timeout).await?;
    }
    Ok(samples)
}

fn service(name: &str, constraints: serde_json::Value) -> serde_json::Value {
    json!({
        "microserviceID": "", "microservice_name": name, "microservice_namespace": "bench",
        "virtualization": "container", "cmd": [], "memory": 64, "vcpus": 1, "vgpus": 0,
        "code": "docker.io/library/nginx:latest", "port": "", "constraints": constraints
    })
}

/// The worker named `rec-c1-w20` at the root (hollow-workers appends the index 0 to the
/// prefix `rec-c1-w2`) → (cluster 0, worker 1).
fn locate_worker(name: &str) -> anyhow::Result<(usize, usize)> {
    for c in 0..CLUSTERS.len() {
        for w in 0..WORKERS_PER_CLUSTER {
            // hollow-workers names its one worker `<prefix><first index>`.
            if name == format!("{}0", Fleet::worker_name(c, w)) {
                return Ok((c, w));
            }
        }
    }
    bail!("the instance runs on {name:?}, not a worker of this benchmark")
}

/// Both clusters active (not lost) with all their workers active.
async fn all_active(children: &mut Children, client: &Client, timeout: Duration) -> anyhow::Result<()> {
    wait_for(children, "both clusters active with their workers", timeout, || async {
        let clusters = client.list_clusters().await.ok()?;
        CLUSTERS
            .iter()
            .all(|name| {
                clusters.iter().any(|c| {
                    c.cluster_name == *name && c.status == "active" && c.active_nodes as usize == WORKERS_PER_CLUSTER
                })
            })
            .then_some(())
    })
    .await
}

/// The service's one instance once `RUNNING` and `moved` holds.
async fn running_instance(
    children: &mut Children,
    client: &Client,
    service: &str,
    timeout: Duration,
    moved: impl Fn(&oak_api::model::Instance) -> bool,
) -> anyhow::Result<oak_api::model::Instance> {
    wait_for(children, "the instance RUNNING", timeout, || async {
        let s: Service = client.get_service(service).await.ok()?;
        s.instance_list.first().filter(|i| i.status == "RUNNING" && moved(i)).cloned()
    })
    .await
}

/// Polls every `poll` (not 100 ms) while measuring; a killed child is expected, so only the
/// others are checked.
async fn wait_until(
    children: &mut Children,
    client: &Client,
    service: &str,
    timeout: Duration,
    poll: Duration,
    moved: impl Fn(&oak_api::model::Instance) -> bool,
) -> anyhow::Result<oak_api::model::Instance> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(s) = client.get_service(service).await {
            if let Some(i) = s.instance_list.first().filter(|i| i.status == "RUNNING" && moved(i)) {
                return Ok(i.clone());
            }
        }
        children.check_alive()?;
        if Instant::now() >= deadline {
            bail!("the instance was not RUNNING elsewhere within {:.0} s", timeout.as_secs_f64());
        }
        tokio::time::sleep(poll).await;
    }
}

fn summarize(params: &Params, samples: &Samples, machine: &Machine, commit: &Commit) -> (Table, serde_json::Value) {
    let mut table = Table::default();
    let beyond = |v: &[f64], t: f64| v.iter().map(|x| x - t).collect::<Vec<f64>>();
    let w = Summary::of(&samples.worker_s);
    let c = Summary::of(&samples.cluster_s);
    let wb = Summary::of(&beyond(&samples.worker_s, params.worker_timeout_s));
    let cb = Summary::of(&beyond(&samples.cluster_s, params.cluster_timeout_s));
    let mut scenario = |title: String, what: &str, timeout: &str, s: &Summary, beyond: &Summary| {
        let verdict = if beyond.max <= 10.0 { "met" } else { "MISSED" };
        table.section(&title);
        table.row(format!("kill → {what} p50"), format!("{:.2} s", s.p50), "");
        table.row(format!("kill → {what} p99 / max"), format!("{:.2} / {:.2} s", s.p99, s.max), "");
        table.row("min", format!("{:.2} s", s.min), "");
        table.row(
            format!("beyond the {timeout} timeout p50 / max"),
            format!("{:.2} / {:.2} s", beyond.p50, beyond.max),
            format!("≤ 10 s: {verdict}"),
        );
    };
    let title = format!("worker killed (cluster --node-timeout {} s), {} runs", params.worker_timeout_s, w.count);
    scenario(title, "RUNNING elsewhere", "worker", &w, &wb);
    let title = format!("cluster killed (root --cluster-timeout {} s), {} runs", params.cluster_timeout_s, c.count);
    scenario(title, "RUNNING on the other cluster", "cluster", &c, &cb);
    let json = json!({
        "benchmark": "recovery",
        "target": "P9",
        "machine": machine,
        "commit": commit,
        "params": params,
        "worker": { "timeout_s": params.worker_timeout_s, "summary_s": w, "beyond_timeout_s": wb, "samples_s": samples.worker_s },
        "cluster": { "timeout_s": params.cluster_timeout_s, "summary_s": c, "beyond_timeout_s": cb, "samples_s": samples.cluster_s },
    });
    (table, json)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: RecoveryArgs,
    }

    fn parse(extra: &[&str]) -> RecoveryArgs {
        let mut argv = vec!["oak-bench"];
        argv.extend(extra);
        if !extra.contains(&"--oakestra") {
            argv.extend(["--oakestra", "/bin/sh"]);
        }
        Cli::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn parameters_are_validated() {
        let p = Params::resolve(&parse(&[])).unwrap();
        assert_eq!((p.runs, p.worker_timeout_s, p.cluster_timeout_s), (10, 6.0, 10.0));
        for bad in [
            &["--runs", "0"][..],
            &["--cluster-timeout", "1"],
            &["--worker-timeout", "0"],
            &["--report-interval", "7"],
            &["--oakestra", "/nonexistent/oakestra"],
        ] {
            assert!(Params::resolve(&parse(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn workers_are_found_by_name() {
        assert_eq!(locate_worker("rec-c1-w20").unwrap(), (0, 1));
        assert_eq!(locate_worker("rec-c2-w10").unwrap(), (1, 0));
        assert!(locate_worker("elsewhere").is_err());
    }

    #[test]
    fn the_table_reports_against_the_timeouts() {
        let p = Params::resolve(&parse(&["--worker-timeout", "3", "--cluster-timeout", "5"])).unwrap();
        let s = Samples { worker_s: vec![4.0, 5.0, 14.0], cluster_s: vec![6.0, 7.5] };
        let machine = Machine::read(0);
        let commit = Commit { commit: "x".into(), dirty: false };
        let (table, json) = summarize(&p, &s, &machine, &commit);
        let text = table.render();
        assert!(text.contains("≤ 10 s: MISSED"), "a worker took 11 s beyond its timeout:\n{text}");
        assert!(text.contains("≤ 10 s: met"), "{text}");
        assert_eq!(json["cluster"]["beyond_timeout_s"]["max"], 2.5);
        assert_eq!(json["worker"]["samples_s"], json!([4.0, 5.0, 14.0]));
    }
}
