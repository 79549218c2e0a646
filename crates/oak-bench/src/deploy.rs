//! `oak-bench deploy`: targets P1 (deploy latency, warm image) and P5 (worker footprint).
//!
//! Starts `oakestra root`, `oakestra cluster` and `oakestra worker` as separate processes on
//! this machine (1-DOC topology, real containerd, image from a local `docker-registry`, built
//! from busybox-static), warms the image with one deploy, then `--deploys` times: request an
//! instance, poll the root until it is `RUNNING`, undeploy it and wait until it is gone.
//! The floor, measured in the same run on the same containerd: `ctr run --rm` of the same image
//! (create, start, exit, remove a container). Then the worker's RSS and CPU while idle with 0
//! and with `--idle-instances` running instances.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};

use crate::machine::{Commit, Machine};
use crate::procs::{self, Children, Kind};
use crate::report::{self, Summary, Table};

#[derive(Args, Debug, Clone)]
pub struct DeployArgs {
    /// The `oakestra` binary to measure.
    #[arg(long)]
    pub oakestra: PathBuf,
    /// Measured deploy/undeploy cycles.
    #[arg(long, default_value_t = 50)]
    pub deploys: usize,
    /// Instances running during the second idle measurement.
    #[arg(long, default_value_t = 20)]
    pub idle_instances: usize,
    /// Seconds of each idle measurement.
    #[arg(long, default_value_t = 20)]
    pub idle_seconds: u64,
    /// Where the JSON result goes.
    #[arg(long, default_value = "bench/results")]
    pub results: PathBuf,
    /// Keep the run directory (the tiers' data and logs; each deploy's way through them is in
    /// the logs under its `deploy_id`) and print where it is.
    #[arg(long)]
    pub keep_dir: bool,
}

pub fn main(args: DeployArgs) -> anyhow::Result<ExitCode> {
    use oak_e2e::Need::{Root, Tool};
    let missing = oak_e2e::missing(&[
        Root,
        Tool("containerd"),
        Tool("runc"),
        Tool("ctr"),
        Tool("docker-registry"),
        Tool("skopeo"),
    ]);
    if !missing.is_empty() {
        bail!("the deploy benchmark cannot run: {}", missing.join("; "));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(run(args))
}

pub(crate) struct Api {
    pub(crate) http: reqwest::Client,
    pub(crate) url: String,
    pub(crate) token: String,
}

impl Api {
    pub(crate) async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut req = self.http.request(method.clone(), format!("{}{path}", self.url)).bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.with_context(|| format!("{method} {path}"))?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("{method} {path}: {status}: {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub(crate) async fn instances(&self, service: &str) -> anyhow::Result<Vec<Value>> {
        let s = self.call(reqwest::Method::GET, &format!("/api/service/{service}"), None).await?;
        Ok(s["instance_list"].as_array().cloned().unwrap_or_default())
    }

    /// Requests one instance; the seconds until a poll (every 5 ms) shows it `RUNNING` at the
    /// root, and until the root's own stamp of that change (its `last_modified_timestamp`, not
    /// rounded up to the next poll; this machine's clock, as the request's start).
    async fn deploy_one(&self, service: &str, number: u64) -> anyhow::Result<(f64, f64)> {
        let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs_f64();
        let start = Instant::now();
        self.call(reqwest::Method::POST, &format!("/api/service/{service}/instance"), None).await?;
        loop {
            let list = self.instances(service).await?;
            if let Some(inst) = list.iter().find(|i| i["instance_number"].as_u64() == Some(number)) {
                match inst["status"].as_str() {
                    Some("RUNNING") => {
                        let polled = start.elapsed().as_secs_f64();
                        let stamped = inst["last_modified_timestamp"].as_f64().map_or(polled, |t| t - wall);
                        return Ok((polled, stamped));
                    }
                    Some("FAILED") => bail!("instance {number} FAILED: {}", inst["status_detail"]),
                    _ => {}
                }
            }
            if start.elapsed() > Duration::from_secs(120) {
                bail!("instance {number} not RUNNING within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub(crate) async fn undeploy_one(&self, service: &str, number: u64) -> anyhow::Result<()> {
        self.call(reqwest::Method::DELETE, &format!("/api/service/{service}/instance/{number}"), None).await?;
        let start = Instant::now();
        while self.instances(service).await?.iter().any(|i| i["instance_number"].as_u64() == Some(number)) {
            if start.elapsed() > Duration::from_secs(60) {
                bail!("instance {number} still listed 60 s after its undeploy");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

async fn run(args: DeployArgs) -> anyhow::Result<ExitCode> {
    let machine = Machine::read(procs::raise_nofile());
    let work = tempfile::Builder::new().prefix("oak-bench-deploy-").tempdir_in("/var/tmp")?;
    let dir = work.path();
    let registry = oak_e2e::Registry::start_local()?;
    let layout = oak_e2e::images::build_image(&dir.join("images"), &oak_e2e::images::sleeper())?;
    let image = registry.push(&layout, "latest", "bench/sleeper")?;

    // A namespace of this run's own: leftovers of an interrupted run cannot collide with it.
    let namespace = format!("oak-bench-{}", std::process::id());
    let (mut children, url, worker_pid) =
        start_tiers(&args.oakestra, dir, &namespace, &["--fetch-allow", registry.addr()])?;

    let result = measure(&args, &url, &image, worker_pid, &mut children, dir, &namespace).await;
    children.shutdown(Duration::from_secs(15));
    let Measured { latencies, stamped, floor, direct, idle } = match result {
        Ok(r) => r,
        Err(e) => {
            print_log_tails(dir);
            return Err(e);
        }
    };

    let lat = Summary::of(&latencies);
    let fl = Summary::of(&floor);
    let di = Summary::of(&direct);
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    let mut table = Table::default();
    table.section("P1 deploy latency, warm image (request → RUNNING at the root)");
    table.row("deploy p50", format!("{:.3} s", lat.p50), format!("≤ 3× floor: {:.2}×", ratio(lat.p50, fl.p50)));
    table.row("deploy p99", format!("{:.3} s", lat.p99), format!("≤ 6× floor: {:.2}×", ratio(lat.p99, fl.p50)));
    table.row("deploy min / max", format!("{:.3} / {:.3} s", lat.min, lat.max), "");
    table.row(
        "floor `ctr run --rm` p50 / p99",
        format!("{:.3} / {:.3} s", fl.p50, fl.p99),
        "same image, same containerd",
    );
    table.section("P2 scheduler overhead (through root, cluster, MQTT vs. the runtime called directly)");
    table.row("direct runtime deploy p50 / p99", format!("{:.3} / {:.3} s", di.p50, di.p99), "");
    let added_ms = (lat.p50 - di.p50) * 1000.0;
    table.row(
        "added p50",
        format!("{added_ms:.1} ms"),
        format!("≤ 10 ms {}", if added_ms <= 10.0 { "PASS" } else { "MISS" }),
    );
    let st = Summary::of(&stamped);
    let stamped_ms = (st.p50 - di.p50) * 1000.0;
    table.row(
        "added p50, to the root's RUNNING stamp",
        format!("{stamped_ms:.1} ms"),
        format!("(no 5 ms poll rounding) ≤ 10 ms {}", if stamped_ms <= 10.0 { "PASS" } else { "MISS" }),
    );
    table.section("P5 worker footprint (overlay on)");
    for (n, rss_kb, cpu) in &idle {
        table.row(format!("worker idle, {n} instances: RSS"), format!("{:.1} MB", *rss_kb as f64 / 1024.0), "≤ 15 MB");
        table.row(format!("worker idle, {n} instances: CPU"), format!("{:.2} % of a core", cpu), "≤ 0.5 %");
    }
    print!("{}", table.render());
    let out = json!({
        "benchmark": "deploy",
        "machine": machine,
        "commit": Commit::read(),
        "deploys": args.deploys,
        "deploy_seconds": latencies,
        "deploy_summary": lat,
        "floor_seconds": floor,
        "floor_summary": fl,
        "direct_seconds": direct,
        "direct_summary": di,
        "overhead_p50_seconds": lat.p50 - di.p50,
        "stamped_seconds": stamped,
        "stamped_summary": st,
        "stamped_overhead_p50_seconds": st.p50 - di.p50,
        "ratio_p50": ratio(lat.p50, fl.p50),
        "ratio_p99": ratio(lat.p99, fl.p50),
        "worker_idle": idle.iter().map(|(n, rss, cpu)| json!({"instances": n, "rss_kb": rss, "cpu_percent": cpu})).collect::<Vec<_>>(),
    });
    let path = report::write_json(&args.results, "deploy", &out)?;
    println!("results: {}", path.display());
    if args.keep_dir {
        println!("run directory (data, logs): {}", work.keep().display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Deploy latencies at the root, `ctr run --rm` floor, direct runtime deploys, idle usage.
struct Measured {
    latencies: Vec<f64>,
    /// The same deploys to the root's RUNNING stamp.
    stamped: Vec<f64>,
    floor: Vec<f64>,
    direct: Vec<f64>,
    idle: Vec<(usize, u64, f64)>,
}

async fn measure(
    args: &DeployArgs,
    url: &str,
    image: &str,
    worker_pid: u32,
    children: &mut Children,
    dir: &Path,
    namespace: &str,
) -> anyhow::Result<Measured> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let password = "Admin";
    let start = Instant::now();
    let token = loop {
        let resp = http
            .post(format!("{url}/api/auth/login"))
            .json(&json!({"username": "Admin", "password": password}))
            .send()
            .await;
        if let Ok(r) = resp {
            if let Ok(v) = r.json::<Value>().await {
                if let Some(t) = v["token"].as_str() {
                    break t.to_string();
                }
            }
        }
        children.check_alive()?;
        if start.elapsed() > Duration::from_secs(30) {
            bail!("cannot log in to the root");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let api = Api { http, url: url.to_string(), token };
    loop {
        let clusters = api.call(reqwest::Method::GET, "/api/clusters/active", None).await?;
        let ready =
            clusters.as_array().is_some_and(|cs| cs.iter().any(|c| c["virtualization"].to_string().contains("docker")));
        if ready {
            break;
        }
        children.check_alive()?;
        if start.elapsed() > Duration::from_secs(60) {
            bail!("the worker did not become active with docker within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sla = json!({
        "sla_version": "v2.0", "customerID": "Admin",
        "applications": [{"applicationID": "", "application_name": "bench", "application_namespace": "deploy", "application_desc": "",
            "microservices": [{"microserviceID": "", "microservice_name": "sleeper", "microservice_namespace": "deploy",
                "virtualization": "container", "cmd": [], "memory": 16, "vcpus": 0, "code": image, "port": "", "constraints": []}]}]
    });
    api.call(reqwest::Method::POST, "/api/application/", Some(sla)).await?;
    let services = api.call(reqwest::Method::GET, "/api/services/", None).await?;
    let service =
        services[0]["microserviceID"].as_str().or(services[0]["_id"].as_str()).context("no service id")?.to_string();

    // Warm-up: pulls and unpacks the image.
    let mut number = 0u64;
    api.deploy_one(&service, number).await.context("warm-up deploy")?;
    api.undeploy_one(&service, number).await?;
    number += 1;

    // The worker's containerd (its own one if it started it): the floor runs on it too.
    let own = dir.join("worker/containerd/containerd.sock");
    let socket = if own.exists() { own } else { PathBuf::from("/run/containerd/containerd.sock") };
    let mut latencies = Vec::with_capacity(args.deploys);
    let mut stamped = Vec::with_capacity(args.deploys);
    for _ in 0..args.deploys {
        let (polled, stamp) = api.deploy_one(&service, number).await?;
        latencies.push(polled);
        stamped.push(stamp);
        api.undeploy_one(&service, number).await?;
        // The root forgets an instance before its worker has removed the container: the next
        // deploy starts once it is gone, as each direct runtime deploy starts after the previous
        // undeploy returned, so neither measures a deploy racing an undeploy.
        wait_no_containers(&socket, namespace, Duration::from_secs(60)).await?;
        number += 1;
    }

    let floor_ns = format!("{namespace}-floor");
    let ctr_in = |ns: &str, args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new("ctr").arg("-a").arg(&socket).args(["-n", ns]).args(args).output()?;
        if !out.status.success() {
            bail!("ctr {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let ctr = |args: &[&str]| ctr_in(&floor_ns, args).map(|_| ());
    ctr(&["images", "pull", "--plain-http", image])?;
    let mut floor = Vec::with_capacity(args.deploys);
    for i in 0..args.deploys {
        let t = Instant::now();
        ctr(&["run", "--rm", "--net-host", image, &format!("floor-{i}"), "/bin/true"])?;
        floor.push(t.elapsed().as_secs_f64());
    }
    let _ = ctr(&["images", "rm", image]);

    // The same deploy straight through the worker's runtime (no root, cluster or MQTT): what
    // scheduling and the control plane add is the difference (P2).
    let direct_ns = format!("{namespace}-direct");
    let mut config = oak_containerd::ContainerdConfig::new(socket.clone(), direct_ns.clone(), dir.join("direct-logs"));
    // The image's registry (`host:port/…`) is on loopback: allowed as the worker's is.
    let registry = image.split('/').next().unwrap_or_default();
    config.egress = std::sync::Arc::new(oak_core::egress::EgressPolicy::parse([registry]).map_err(anyhow::Error::msg)?);
    let runtime = oak_containerd::ContainerdRuntime::connect(config).await?;
    let cmd: oak_api::node::DeployCommand = serde_json::from_value(json!({
        "_id": "direct", "job_name": "bench.direct.sleeper.direct", "image": image, "instance_number": 0,
        "microservice_name": "sleeper", "microservice_namespace": "direct", "virtualization": "docker",
        "code": image, "memory": 16,
    }))?;
    use oak_runtime::Runtime;
    runtime.deploy(&cmd).await.context("warm-up of the direct deploy")?;
    runtime.undeploy("bench.direct.sleeper.direct", 0).await?;
    let mut direct = Vec::with_capacity(args.deploys);
    for _ in 0..args.deploys {
        let t = Instant::now();
        runtime.deploy(&cmd).await?;
        direct.push(t.elapsed().as_secs_f64());
        runtime.undeploy("bench.direct.sleeper.direct", 0).await?;
    }
    let _ = ctr_in(&direct_ns, &["images", "rm", image]);

    // Worker footprint: idle, then with instances running.
    let mut idle = vec![idle_usage(worker_pid, args.idle_seconds, 0).await?];
    let first = number;
    for _ in 0..args.idle_instances {
        api.deploy_one(&service, number).await?;
        number += 1;
    }
    idle.push(idle_usage(worker_pid, args.idle_seconds, args.idle_instances).await?);
    for n in first..number {
        api.undeploy_one(&service, n).await?;
    }
    // So stopping the worker leaves nothing running.
    wait_no_containers(&socket, namespace, Duration::from_secs(60)).await?;
    Ok(Measured { latencies, stamped, floor, direct, idle })
}

/// Waits until containerd namespace `ns` holds no container (the worker removed what the root
/// already forgot).
async fn wait_no_containers(socket: &Path, ns: &str, limit: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let out = Command::new("ctr").arg("-a").arg(socket).args(["-n", ns, "containers", "ls", "-q"]).output()?;
        if !out.status.success() {
            bail!("ctr containers ls: {}", String::from_utf8_lossy(&out.stderr));
        }
        if out.stdout.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        if start.elapsed() > limit {
            bail!("containers of the benchmark still exist {} s after their undeploy", limit.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// RSS at the end and CPU % of one core over `seconds` of the worker doing nothing new.
async fn idle_usage(pid: u32, seconds: u64, instances: usize) -> anyhow::Result<(usize, u64, f64)> {
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = procs::usage(pid).context("worker gone")?;
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let after = procs::usage(pid).context("worker gone")?;
    let cpu = (after.cpu_seconds - before.cpu_seconds) / t.elapsed().as_secs_f64() * 100.0;
    Ok((instances, after.rss_kb, cpu))
}
/// Root, cluster and one worker (with `worker_args` added) as processes on free loopback ports,
/// data and logs under `dir`, the worker's containers in containerd namespace `namespace`; the
/// processes, the API's URL and the worker's pid.
pub(crate) fn start_tiers(
    bin: &Path,
    dir: &Path,
    namespace: &str,
    worker_args: &[&str],
) -> anyhow::Result<(Children, String, u32)> {
    let free = |n: usize| -> anyhow::Result<Vec<u16>> {
        (0..n).map(|_| oak_e2e::registry::free_port("127.0.0.1".parse()?)).collect()
    };
    let ports = free(5)?;
    let (api_port, channel_port, node_port, mqtt_port, tunnel_port) =
        (ports[0], ports[1], ports[2], ports[3], ports[4]);
    let s = |v: &str| v.to_string();
    let mut children = Children::default();
    children.spawn(
        "root",
        Kind::Root,
        bin,
        &[
            s("root"),
            s("--api-addr"),
            s("127.0.0.1"),
            s("--api-port"),
            api_port.to_string(),
            s("--cluster-port"),
            channel_port.to_string(),
            s("--data-dir"),
            dir.join("root").display().to_string(),
        ],
        &dir.join("root.log"),
    )?;
    let url = format!("http://127.0.0.1:{api_port}");
    wait_file(&dir.join("root/cluster-token"), Duration::from_secs(30))?;
    children.spawn(
        "cluster",
        Kind::Cluster,
        bin,
        &[
            s("cluster"),
            s("--name"),
            s("bench"),
            s("--root-url"),
            url.clone(),
            s("--root-channel"),
            format!("127.0.0.1:{channel_port}"),
            s("--api-port"),
            node_port.to_string(),
            s("--mqtt-port"),
            mqtt_port.to_string(),
            s("--data-dir"),
            dir.join("cluster").display().to_string(),
            s("--token-file"),
            dir.join("root/cluster-token").display().to_string(),
        ],
        &dir.join("cluster.log"),
    )?;
    wait_file(&dir.join("cluster/node-token"), Duration::from_secs(30))?;
    let mut worker = vec![
        s("worker"),
        s("-a"),
        s("127.0.0.1"),
        s("-p"),
        node_port.to_string(),
        s("--node-name"),
        s("bench-worker"),
        s("--data-dir"),
        dir.join("worker").display().to_string(),
        s("--token-file"),
        dir.join("cluster/node-token").display().to_string(),
        s("--containerd-namespace"),
        s(namespace),
        s("--tunnel-port"),
        tunnel_port.to_string(),
    ];
    worker.extend(worker_args.iter().map(|a| s(a)));
    let worker_pid = children.spawn("worker", Kind::Workers, bin, &worker, &dir.join("worker.log"))?;
    Ok((children, url, worker_pid))
}

/// The end of each tier's log under `dir`, for a run that failed.
pub(crate) fn print_log_tails(dir: &Path) {
    for name in ["root", "cluster", "worker"] {
        eprintln!("--- {name}.log (tail)\n{}", procs::log_tail(&dir.join(format!("{name}.log")), 4000));
    }
}

pub(crate) fn wait_file(path: &Path, timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    while !path.exists() {
        if start.elapsed() > timeout {
            bail!("{} did not appear within {timeout:?}", path.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
