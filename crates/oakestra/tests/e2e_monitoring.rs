//! End to end, monitoring: a real Prometheus, configured with the shipped
//! `deploy/monitoring/prometheus.yml` (only its paths and intervals changed), scrapes a real root,
//! cluster and two workers (processes on loopback, the workers' `/metrics` on every address and
//! so behind the scrape token) found through the root's scrape-targets file. Through
//! Prometheus' HTTP API: `up == 1` for all four targets, the memory series of a running
//! instance (real containerd, image from a local registry), and that series gone after the
//! undeploy; and the deploy's id in the logs of all three tiers.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use oak_e2e::{images, wait_until, Registry, Workdir};
use serde_json::{json, Value};

mod e2e;

const BIN: &str = env!("CARGO_BIN_EXE_oakestra");
const TOKEN: &str = "e2e-monitoring-scrape-token";

/// Processes ended (SIGTERM, then SIGKILL) when dropped, newest first.
#[derive(Default)]
struct Procs(Vec<(String, Child)>);

impl Procs {
    fn spawn(&mut self, name: &str, program: &str, args: &[String], work: &Workdir) -> Result<()> {
        let log = std::fs::File::create(work.join(format!("{name}.log")))?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        self.0.push((name.to_string(), child));
        Ok(())
    }

    /// Fails if a process has exited.
    fn alive(&mut self) -> Result<()> {
        for (name, child) in &mut self.0 {
            if let Some(status) = child.try_wait()? {
                return Err(oak_e2e::procs::Hopeless(format!("{name} exited ({status})")).into());
            }
        }
        Ok(())
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        while let Some((_, mut child)) = self.0.pop() {
            let _ = oak_e2e::procs::terminate(&mut child, Duration::from_secs(15));
        }
    }
}

/// Removes every task and container of the test's namespaces when dropped (before its
/// containerd stops), so a failed run leaves no container running.
struct RemoveContainers<'a> {
    socket: &'a Path,
    namespaces: [&'static str; 2],
}

impl Drop for RemoveContainers<'_> {
    fn drop(&mut self) {
        for ns in self.namespaces {
            let ids = |what: &str| -> Vec<String> {
                e2e::ctr(self.socket, ns, &[what, "ls", "-q"])
                    .map(|out| out.lines().map(str::to_string).collect())
                    .unwrap_or_default()
            };
            for task in ids("tasks") {
                let _ = e2e::ctr(self.socket, ns, &["tasks", "kill", "-s", "SIGKILL", &task]);
                std::thread::sleep(Duration::from_millis(300));
                let _ = e2e::ctr(self.socket, ns, &["tasks", "rm", "-f", &task]);
            }
            for container in ids("containers") {
                let _ = e2e::ctr(self.socket, ns, &["containers", "rm", &container]);
            }
        }
    }
}

fn port() -> Result<u16> {
    oak_e2e::registry::free_port("127.0.0.1".parse()?)
}

fn s(v: impl ToString) -> String {
    v.to_string()
}

/// `query`'s instant vector from Prometheus at `prom`.
fn query(prom: &str, query: &str) -> Result<Vec<Value>> {
    let answer: Value =
        e2e::http().get(format!("http://{prom}/api/v1/query")).query(&[("query", query)]).send()?.json()?;
    if answer["status"] != "success" {
        bail!("prometheus: {answer}");
    }
    Ok(answer["data"]["result"].as_array().cloned().unwrap_or_default())
}

#[test]
fn prometheus_scrapes_every_tier_and_follows_instances() -> Result<()> {
    use oak_e2e::Need::{Root, Tool};
    let needs = [Root, Tool("containerd"), Tool("runc"), Tool("docker-registry"), Tool("skopeo"), Tool("prometheus")];
    if !oak_e2e::can_run("prometheus_scrapes_every_tier_and_follows_instances", &needs) {
        return Ok(());
    }
    let mut work = Workdir::new("e2e-monitoring")?;
    let result = scenario(&work);
    if result.is_err() {
        work.keep();
        for name in ["root", "cluster", "w1", "w2", "prometheus"] {
            let log = std::fs::read_to_string(work.join(format!("{name}.log"))).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            eprintln!("--- {name}.log (last lines, newest first)\n{}", tail.join("\n"));
        }
    }
    result
}

fn scenario(work: &Workdir) -> Result<()> {
    let containerd = oak_e2e::containerd::Containerd::start()?;
    let _remove = RemoveContainers { socket: containerd.socket(), namespaces: ["oakmon-w1", "oakmon-w2"] };
    let registry = Registry::start_local()?;
    let spec = images::ImageSpec::shell("monitored", "echo started; while true; do sleep 1; done");
    let image = registry.push(&images::build_image(&work.join("images"), &spec)?, "latest", "e2e/monitored")?;

    let data = work.join("data");
    let (api, channel, node_api, mqtt, prom_port) = (port()?, port()?, port()?, port()?, port()?);
    let (m1, m2) = (port()?, port()?);
    let mut procs = Procs::default();
    let root_data = data.join("root");
    procs.spawn(
        "root",
        BIN,
        &[
            s("root"),
            s("--api-addr"),
            s("127.0.0.1"),
            s("--api-port"),
            s(api),
            s("--cluster-port"),
            s(channel),
            s("--data-dir"),
            s(root_data.display()),
            s("--metrics-token"),
            s(TOKEN),
        ],
        work,
    )?;
    let token_file = root_data.join("cluster-token");
    wait_until("the root's cluster token", Duration::from_secs(30), Duration::from_millis(100), || {
        procs.alive()?;
        Ok(token_file.exists().then_some(()))
    })?;
    let cluster_data = data.join("cluster");
    procs.spawn(
        "cluster",
        BIN,
        &[
            s("cluster"),
            s("--name"),
            s("mon"),
            s("--root-url"),
            format!("http://127.0.0.1:{api}"),
            s("--root-channel"),
            format!("127.0.0.1:{channel}"),
            s("--listen-addr"),
            s("127.0.0.1"),
            s("--api-port"),
            s(node_api),
            s("--mqtt-port"),
            s(mqtt),
            s("--data-dir"),
            s(cluster_data.display()),
            s("--token-file"),
            s(token_file.display()),
            s("--metrics-token"),
            s(TOKEN),
        ],
        work,
    )?;
    let node_token = cluster_data.join("node-token");
    wait_until("the cluster's node token", Duration::from_secs(30), Duration::from_millis(100), || {
        procs.alive()?;
        Ok(node_token.exists().then_some(()))
    })?;
    for (name, metrics) in [("w1", m1), ("w2", m2)] {
        procs.spawn(
            name,
            BIN,
            &[
                s("worker"),
                s("-a"),
                s("127.0.0.1"),
                s("-p"),
                s(node_api),
                s("--data-dir"),
                s(data.join(name).display()),
                s("--token-file"),
                s(node_token.display()),
                s("--node-name"),
                s(name),
                s("--containerd-socket"),
                s(containerd.socket().display()),
                s("--containerd-namespace"),
                format!("oakmon-{name}"),
                s("--insecure-registry"),
                s(registry.addr()),
                s("--no-overlay"),
                s("--metrics-port"),
                s(metrics),
                s("--metrics-token"),
                s(TOKEN),
            ],
            work,
        )?;
    }

    // The shipped configuration, with this run's paths and 1 s intervals.
    let monitoring = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/monitoring");
    let prom_dir = work.join("prometheus");
    std::fs::create_dir_all(&prom_dir)?;
    let targets = root_data.join(oak_root::PROMETHEUS_TARGETS_FILE);
    let config = std::fs::read_to_string(monitoring.join("prometheus.yml"))?
        .replace("/var/lib/oakestra/prometheus-targets.json", &targets.display().to_string())
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("evaluation_interval: 15s", "evaluation_interval: 1s")
        .replace("refresh_interval: 30s", "refresh_interval: 1s");
    assert_eq!(config.matches(&targets.display().to_string()).count(), 3, "the three jobs read this run's targets");
    std::fs::write(prom_dir.join("prometheus.yml"), config)?;
    std::fs::copy(monitoring.join("oakestra-rules.yml"), prom_dir.join("oakestra-rules.yml"))?;
    std::fs::write(prom_dir.join("oakestra-metrics-token"), TOKEN)?;
    let prometheus = oak_e2e::which("prometheus").context("prometheus")?;
    procs.spawn(
        "prometheus",
        &prometheus.display().to_string(),
        &[
            format!("--config.file={}", prom_dir.join("prometheus.yml").display()),
            format!("--storage.tsdb.path={}", prom_dir.join("tsdb").display()),
            format!("--web.listen-address=127.0.0.1:{prom_port}"),
        ],
        work,
    )?;
    let prom = format!("127.0.0.1:{prom_port}");

    // Every tier found through the targets file and scraped: up == 1 for all four.
    let ups = wait_until(
        "up == 1 for root, cluster and both workers",
        Duration::from_secs(90),
        Duration::from_secs(1),
        || {
            procs.alive()?;
            let Ok(up) = query(&prom, "up") else { return Ok(None) };
            let all_up = up.len() == 4 && up.iter().all(|s| s["value"][1] == "1");
            Ok(all_up.then_some(up))
        },
    )?;
    let mut jobs: Vec<String> =
        ups.iter().map(|s| format!("{}/{}", s["metric"]["job"], s["metric"]["node"].as_str().unwrap_or("-"))).collect();
    jobs.sort();
    assert_eq!(
        jobs,
        ["\"oakestra-cluster\"/-", "\"oakestra-root\"/-", "\"oakestra-worker\"/w1", "\"oakestra-worker\"/w2"],
        "{ups:?}"
    );

    // A running instance shows its memory.
    let base = format!("http://127.0.0.1:{api}");
    let token = e2e::try_login(&base, "Admin").context("login as Admin")?;
    let call = |method, path: &str, body| e2e::api(&base, &token, method, path, body);
    let sla = json!({
        "sla_version": "v2.0", "customerID": "Admin",
        "applications": [{"application_name": "mon", "application_namespace": "e2e", "application_desc": "",
            "microservices": [{"microservice_name": "sleeper", "microservice_namespace": "e2e",
                "virtualization": "container", "code": image, "memory": 64, "vcpus": 1}]}],
    });
    call(reqwest::Method::POST, "/api/application", Some(sla))?;
    let services = call(reqwest::Method::GET, "/api/services", None)?;
    let id = services[0]["_id"].as_str().context("service id")?.to_string();
    call(reqwest::Method::POST, &format!("/api/service/{id}/instance"), None)?;
    wait_until("the instance to be RUNNING", Duration::from_secs(90), Duration::from_millis(500), || {
        procs.alive()?;
        let s = call(reqwest::Method::GET, &format!("/api/service/{id}"), None)?;
        let inst = &s["instance_list"][0];
        if inst["status"] == "FAILED" {
            bail!("instance FAILED: {}", inst["status_detail"]);
        }
        Ok((inst["status"] == "RUNNING").then_some(()))
    })?;
    // One grep follows the deploy through the three tiers' logs.
    let grep = format!("deploy_id={id}.0");
    for logs in [&["root"][..], &["cluster"], &["w1", "w2"]] {
        let found = logs
            .iter()
            .any(|name| std::fs::read_to_string(work.join(format!("{name}.log"))).is_ok_and(|log| log.contains(&grep)));
        assert!(found, "{grep} is not in the log of {logs:?}");
    }
    let memory = format!("oakestra_instance_memory_bytes{{service_id=\"{id}\"}}");
    let series =
        wait_until("the instance's memory in Prometheus", Duration::from_secs(60), Duration::from_secs(1), || {
            let found = query(&prom, &memory)?;
            Ok((found.len() == 1).then_some(found))
        })?;
    let bytes: f64 = series[0]["value"][1].as_str().context("value")?.parse()?;
    assert!(bytes > 0.0, "{series:?}");
    assert_eq!(series[0]["metric"]["instance_number"], "0", "{series:?}");
    assert_eq!(series[0]["metric"]["job"], "oakestra-worker", "{series:?}");
    let node = series[0]["metric"]["node"].as_str().unwrap_or_default();
    assert!(node == "w1" || node == "w2", "the target's labels from the targets file: {series:?}");
    let limit = query(&prom, &format!("oakestra_instance_memory_limit_bytes{{service_id=\"{id}\"}}"))?;
    assert_eq!(limit.first().map(|s| s["value"][1].clone()), Some(json!((64u64 << 20).to_string())), "{limit:?}");

    // containerd's deploy steps were timed.
    for operation in ["pull", "create", "start"] {
        let q = format!("oakestra_runtime_operation_seconds_count{{runtime=\"docker\",operation=\"{operation}\"}}");
        let found = wait_until(&format!("{operation} timed"), Duration::from_secs(30), Duration::from_secs(1), || {
            Ok(Some(query(&prom, &q)?).filter(|r| !r.is_empty()))
        })?;
        assert_eq!(found[0]["value"][1], "1", "{operation}: {found:?}");
    }

    // Undeployed: the series is gone.
    call(reqwest::Method::DELETE, &format!("/api/service/{id}/instance/0"), None)?;
    wait_until("the instance's series gone from Prometheus", Duration::from_secs(60), Duration::from_secs(1), || {
        Ok(query(&prom, &memory)?.is_empty().then_some(()))
    })?;
    let job_name = services[0]["job_name"].as_str().context("job name")?;
    for namespace in ["oakmon-w1", "oakmon-w2"] {
        let left = e2e::ctr(containerd.socket(), namespace, &["containers", "ls", "-q"])?;
        assert!(!left.contains(job_name), "a container is left in {namespace}: {left}");
    }
    call(reqwest::Method::DELETE, &format!("/api/service/{id}"), None)?;
    Ok(())
}
