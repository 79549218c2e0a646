//! End to end, multi-host: the real `oakestra` binaries in a lab of network namespaces (one
//! "machine" each) on one bridge: a root, two clusters (`east`, `west`, at different locations)
//! and three workers (`e1`, `e2` in east, `w1` in west) running containers from a registry on the
//! bridge through one shared containerd (each worker in its own containerd namespace).
//!
//! One test runs the scenarios in sequence on one topology (2 cores: starting it once is what
//! keeps the run short), asserting through the public API, the CLI and `ctr`:
//!
//! - MDNC placement: a `clusters` constraint lands on the west worker, a `direct` one on `e2`,
//!   which also takes the scale-up to 3 instances; scaling back down leaves exactly the rest.
//! - Lifecycles: a one-shot service COMPLETES and stays so; a crashing one goes DEAD and is
//!   placed again after a back-off; an unknown image FAILS naming "not found".
//! - A memory limit below what the process touches ends the instance with exit code 137.
//! - A worker restart adopts its running container (same container, same task pid, still
//!   serving) while the root keeps showing the instance RUNNING on that worker.
//! - Overlay network (`e2e_lab/overlay.rs`): a client on w1 reaches the round-robin IP of a
//!   server with instances on e1 and e2 (both answer), each instance IP, and pings it; an
//!   undeployed instance stops getting traffic within a second; a killed worker's instance is
//!   re-placed and reachable under the same instance IP; a port mapping answers on the node's
//!   address only; the closest IP follows the lower round-trip time; tunnel traffic is sealed
//!   and forged or foreign datagrams never reach an instance (`e2e_lab/tunnel_security.rs`).
//! - Undeploying everything and stopping every process leaves no container or task behind, and
//!   no link, address, route, iptables rule or namespace of the overlay.
//!
//! On failure the tails of every node's log, the API's last state and what `ctr` lists are
//! printed, and the work directory (`/var/tmp/oak-e2e/e2e-lab-…`) is kept.

mod e2e;
#[path = "e2e_lab/overlay.rs"]
mod overlay;
#[path = "e2e_lab/tunnel_security.rs"]
mod tunnel_security;

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use oak_e2e::containerd::Containerd;
use oak_e2e::relay::DelayRelay;
use oak_e2e::{images, wait_until, Host, Lab, Registry, Workdir};
use reqwest::Method;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_oakestra");
/// Lab prefix and subnet (10.99.77.0/24) of this file; other tests use others.
const PREFIX: &str = "oke2e";
const SUBNET: u8 = 77;
/// Port of the HTTP server of the worker-restart scenario (on the worker's own address).
const WEB_PORT: u16 = 18080;
const POLL: Duration = Duration::from_millis(200);
const LOG_TAIL: usize = 60;

/// One process of the topology, restartable with the same flags.
type Proc = oak_e2e::lab_proc::LabProc;

/// A process of the lab, logging the overlay's packet path at debug level: a lost packet (a table
/// miss, a dropped or queued packet, a handshake waiting) then leaves a line saying why.
fn new_proc(name: &str, host: &Host, work: &Workdir, args: Vec<String>) -> Proc {
    Proc::new(Path::new(BIN), name, host, work.path(), args).log_filter("info,oak_worker::net::datapath=debug")
}

struct Worker {
    /// `e1`, `e2`, `w1`: the node name `direct` constraints match.
    name: String,
    cluster: String,
    proc: Proc,
    data: PathBuf,
    /// containerd namespace of its containers.
    ns: String,
    /// The node id the cluster gave it (from `<data>/node.json`).
    id: String,
    /// The tunnel address it advertises (its delay relay's for e1 and e2).
    public: std::net::Ipv4Addr,
}

/// The images pushed to the registry, as full references.
struct Images {
    sleeper: String,
    web: String,
    one_shot: String,
    crasher: String,
    hog: String,
    missing: String,
    /// HTTP on port 80 answering `/hostname` with the instance's hostname.
    server: String,
}

/// What the overlay scenarios pass on to each other.
#[derive(Default)]
struct OverlayState {
    /// The client service (its instance 0 runs on w1).
    client: String,
    client_job: String,
    server: String,
    server_job: String,
}

struct Topology {
    /// The work directory's path (the [`Workdir`] itself stays with the test, which keeps it
    /// on failure).
    dir: PathBuf,
    api: String,
    token: String,
    socket: PathBuf,
    cli_home: PathBuf,
    /// Kept alive for the images' pulls; stopped on drop.
    _registry: Registry,
    root: Proc,
    clusters: Vec<Proc>,
    workers: Vec<Worker>,
    /// Cluster name → id (GET /api/clusters).
    cluster_ids: BTreeMap<String, String>,
    images: Images,
    /// Ids of the services created, for the final undeploy.
    services: Vec<String>,
    /// The lab bridge's address.
    gateway: std::net::Ipv4Addr,
    /// Instance namespaces (`/run/netns/oak-*`) that existed before this run: not ours.
    netns_before: std::collections::BTreeSet<String>,
    /// Delay relays in front of e1 and e2 (their public tunnel addresses).
    relays: BTreeMap<String, DelayRelay>,
    overlay: OverlayState,
}

#[test]
fn lab_root_two_clusters_three_workers() {
    use oak_e2e::Need::{Path, Root, Tool};
    let tools =
        ["containerd", "runc", "ctr", "docker-registry", "skopeo", "ip", "nsenter", "iptables", "busybox", "timeout"];
    let needs: Vec<_> = [Root, Path("/dev/net/tun")].into_iter().chain(tools.map(Tool)).collect();
    if !oak_e2e::can_run("lab_root_two_clusters_three_workers", &needs) {
        return;
    }
    let started = Instant::now();
    let mut work = Workdir::new("e2e-lab").unwrap();
    eprintln!("e2e-lab: work directory {}", work.path().display());
    // Declared before the lab so it is dropped after it: the lab's drop kills what still runs
    // in the namespaces (containers share the workers' namespaces) before containerd goes.
    let containerd = Containerd::start().unwrap();
    let mut lab = Lab::new(PREFIX, SUBNET).unwrap();
    let mut topo = match setup(&mut lab, &work, containerd.socket()) {
        Ok(t) => t,
        Err(e) => {
            work.keep();
            for p in ["root", "cluster-east", "cluster-west", "worker-e1", "worker-e2", "worker-w1"] {
                print_tail(&work.join(format!("{p}.log")));
            }
            panic!("setting up the lab: {e:#}");
        }
    };
    eprintln!("e2e-lab: topology up after {:?}", started.elapsed());

    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| -> Result<()> {
        let t = &mut topo;
        step("MDNC placement", || scenario_placement(t))?;
        step("lifecycles", || scenario_lifecycles(t))?;
        step("memory limit", || scenario_memory_limit(t))?;
        step("worker restart", || scenario_worker_restart(t))?;
        step("overlay: service IPs", || overlay::scenario_service_ips(t))?;
        step("overlay: port mapping", || overlay::scenario_port_mapping(t))?;
        step("overlay: closest", || overlay::scenario_closest(t))?;
        step("overlay: address change", || overlay::scenario_address_change(t))?;
        step("overlay: tunnel security", || tunnel_security::scenario_tunnel_security(t))?;
        step("teardown", || teardown(t))?;
        step("overlay: nothing left", || overlay::check_no_overlay_leftovers(t))?;
        Ok(())
    }));
    let failure = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("{e:#}")),
        Err(panic) => Some(
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into()),
        ),
    };
    if let Some(failure) = failure {
        work.keep();
        // For a person debugging: keep the topology up a while (`OAK_E2E_HOLD_S=300`).
        if let Some(secs) = std::env::var("OAK_E2E_HOLD_S").ok().and_then(|s| s.parse().ok()) {
            eprintln!("e2e-lab: FAILED ({failure}); holding the topology for {secs} s");
            sleep(Duration::from_secs(secs));
        }
        topo.dump();
        let kept = work.join("containerd.log");
        let _ = std::fs::copy(containerd.log_path(), &kept);
        print_tail(&kept);
        for p in topo.procs_mut() {
            let _ = p.stop();
        }
        topo.force_clean();
        panic!("e2e-lab failed after {:?}: {failure}", started.elapsed());
    }
    eprintln!("e2e-lab: passed in {:?}", started.elapsed());
    topo.remove_leftover_dirs();
    drop(topo);
    drop(lab);
    // The lab's drop removed its namespaces and interfaces.
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let links = Command::new("ip").args(["-o", "link", "show"]).output().unwrap();
    let left: Vec<String> = [netns.stdout, links.stdout]
        .iter()
        .flat_map(|o| String::from_utf8_lossy(o).lines().map(str::to_string).collect::<Vec<_>>())
        .filter(|l| l.contains(&format!("{PREFIX}-")))
        .collect();
    drop(containerd);
    assert!(left.is_empty(), "the lab left namespaces or interfaces behind: {left:?}");
    drop(work);
}

fn step(name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    let t = Instant::now();
    eprintln!("e2e-lab: scenario {name}");
    f().with_context(|| format!("scenario {name}"))?;
    eprintln!("e2e-lab: scenario {name} passed in {:?}", t.elapsed());
    Ok(())
}

// ------------------------------------------------------------------------------------ set-up

fn setup(lab: &mut Lab, work: &Workdir, socket: &Path) -> Result<Topology> {
    let gateway = lab.gateway();
    let root_host = lab.add_host("root")?;
    let east_host = lab.add_host("east")?;
    let west_host = lab.add_host("west")?;
    let worker_hosts: Vec<(Host, &str)> = [("e1", "east"), ("e2", "east"), ("w1", "west")]
        .into_iter()
        .map(|(w, c)| Ok((lab.add_host(w)?, c)))
        .collect::<Result<_>>()?;

    // The registry on the bridge, reachable from every namespace.
    let port = oak_e2e::registry::free_port(gateway.into())?;
    let registry = Registry::start(&format!("{gateway}:{port}"))?;
    let dir = work.join("images");
    let push = |spec: images::ImageSpec, repo: &str| -> Result<String> {
        let layout = images::build_image(&dir, &spec)?;
        registry.push(&layout, &spec.tag, repo)
    };
    let images = Images {
        sleeper: push(images::sleeper(), "e2e/sleeper")?,
        web: push(images::http_server_on("hello from the lab", WEB_PORT), "e2e/web")?,
        one_shot: push(images::one_shot("one shot done"), "e2e/oneshot")?,
        crasher: push(images::crasher(), "e2e/crasher")?,
        hog: push(images::memory_hog(64), "e2e/hog")?,
        missing: format!("{}/nope/missing:1", registry.addr()),
        server: push(images::http_server("overlay server"), "e2e/server")?,
    };
    // e1 and e2 are reached through delay relays on extra addresses of the bridge.
    let mut relays = BTreeMap::new();
    let mut public = BTreeMap::new();
    for (i, (host, _)) in worker_hosts.iter().enumerate().filter(|(_, (_, c))| *c == "east") {
        let addr = std::net::Ipv4Addr::new(10, 99, SUBNET, 201 + i as u8);
        let out = Command::new("ip").args(["addr", "add", &format!("{addr}/32"), "dev", lab.bridge()]).output()?;
        ensure!(out.status.success(), "adding {addr} to the bridge: {}", String::from_utf8_lossy(&out.stderr));
        let port = oak_worker::DEFAULT_TUNNEL_PORT;
        let relay =
            DelayRelay::start(std::net::SocketAddrV4::new(addr, port), std::net::SocketAddrV4::new(host.ip(), port))?;
        relays.insert(host.name().to_string(), relay);
        public.insert(host.name().to_string(), addr);
    }
    let root_ip = root_host.ip();
    let root_data = work.join("data/root");
    let api = format!("http://{root_ip}:10000");
    let mut root = new_proc("root", &root_host, work, oak_e2e::procs::root_args(&root_data));
    root.start()?;
    let token = wait_until("the root to log Admin in", Duration::from_secs(30), POLL, || {
        root.ensure_alive()?;
        Ok(e2e::try_login(&api, oak_e2e::procs::LAB_ADMIN_PASSWORD))
    })?;
    let cluster_token = root_data.join("cluster-token");
    wait_until("the root's cluster-token file", Duration::from_secs(10), POLL, || {
        Ok(cluster_token.exists().then_some(()))
    })?;

    let mut clusters = Vec::new();
    for (host, location) in [(&east_host, "48.1,11.6"), (&west_host, "40.4,-3.7")] {
        let name = host.name();
        let data = work.join(format!("data/cluster-{name}"));
        let mut p = new_proc(
            &format!("cluster-{name}"),
            host,
            work,
            oak_e2e::procs::ClusterFlags {
                name,
                location: Some(location),
                root: root_ip,
                data_dir: &data,
                token_file: &cluster_token,
            }
            .args(),
        );
        p.start()?;
        clusters.push(p);
    }
    let mut workers = Vec::new();
    for (host, cluster) in worker_hosts {
        let cluster_ip = if cluster == "east" { east_host.ip() } else { west_host.ip() };
        let node_token = work.join(format!("data/cluster-{cluster}/node-token"));
        wait_until(&format!("cluster {cluster}'s node-token file"), Duration::from_secs(30), POLL, || {
            for c in &clusters {
                c.ensure_alive()?;
            }
            Ok(node_token.exists().then_some(()))
        })?;
        let name = host.name().to_string();
        let data = work.join(format!("data/worker-{name}"));
        let ns = format!("{PREFIX}-{name}");
        let advertised = public.get(&name).copied().unwrap_or(host.ip());
        let mut p = new_proc(&format!("worker-{name}"), &host, work, {
            let mut args = oak_e2e::procs::WorkerFlags {
                cluster: cluster_ip,
                data_dir: &data,
                token_file: &node_token,
                node_name: &name,
                containerd_socket: socket,
                containerd_namespace: &ns,
                registry: &format!("{gateway}:{port}"),
            }
            .args();
            match public.get(&name) {
                Some(relay) => args.extend(["--public-addr".to_string(), relay.to_string()]),
                // The automatic address, looked up every second (the address-change scenario).
                None => args.extend(["--address-check".to_string(), "1".to_string()]),
            }
            args
        });
        p.start()?;
        workers.push(Worker {
            name,
            cluster: cluster.into(),
            proc: p,
            data,
            ns,
            id: String::new(),
            public: advertised,
        });
    }

    let mut topo = Topology {
        dir: work.path().to_path_buf(),
        api,
        token,
        socket: socket.to_path_buf(),
        cli_home: work.join("cli"),
        _registry: registry,
        root,
        clusters,
        workers,
        cluster_ids: BTreeMap::new(),
        images,
        services: Vec::new(),
        gateway,
        netns_before: overlay::instance_namespaces(),
        relays,
        overlay: OverlayState::default(),
    };
    topo.wait_for_fleet()?;
    Ok(topo)
}

/// The last [`LOG_TAIL`] lines of `path` to stderr, framed with its name.
fn print_tail(path: &Path) {
    oak_e2e::lab_proc::print_tail(path, LOG_TAIL);
}

/// `s` without its `logs` fields (instances' last log lines), which would drown the rest.
fn without_logs(mut v: Value) -> Value {
    match &mut v {
        Value::Object(m) => {
            m.remove("logs");
            for (_, x) in m.iter_mut() {
                *x = without_logs(x.take());
            }
        }
        Value::Array(a) => {
            for x in a.iter_mut() {
                *x = without_logs(x.take());
            }
        }
        _ => {}
    }
    v
}

fn status_of(inst: &Value) -> &str {
    inst["status"].as_str().unwrap_or("")
}

fn detail_of(inst: &Value) -> &str {
    inst["status_detail"].as_str().unwrap_or("")
}

/// Compact description of instances for messages: `n:STATUS@worker (detail)`.
fn describe(instances: &[Value]) -> String {
    instances
        .iter()
        .map(|i| {
            format!(
                "{}:{}@{} ({})",
                i["instance_number"],
                status_of(i),
                i["worker_id"].as_str().unwrap_or("-"),
                detail_of(i)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl Topology {
    // ---------------------------------------------------------------- API, CLI, ctr

    fn api(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        e2e::api(&self.api, &self.token, method, path, body)
    }

    fn instances(&self, id: &str) -> Result<Vec<Value>> {
        let s = self.api(Method::GET, &format!("/api/service/{id}"), None)?;
        Ok(s["instance_list"].as_array().cloned().unwrap_or_default())
    }

    fn instance(&self, id: &str, n: u64) -> Result<Option<Value>> {
        Ok(self.instances(id)?.into_iter().find(|i| i["instance_number"].as_u64() == Some(n)))
    }

    /// Creates application `name` with one microservice `name` (namespace `e2e`) and returns the
    /// service's id and job name.
    fn create_service(
        &mut self,
        name: &str,
        image: &str,
        one_shot: bool,
        constraints: Value,
    ) -> Result<(String, String)> {
        self.create_service_with(name, image, constraints, json!({"one_shot": one_shot}))
    }

    /// [`Topology::create_service`] with more microservice fields (`memory`, `port`, …).
    fn create_service_with(
        &mut self,
        name: &str,
        image: &str,
        constraints: Value,
        fields: Value,
    ) -> Result<(String, String)> {
        let one_shot = false;
        let mut sla = json!({
            "sla_version": "v2.0", "customerID": "Admin",
            "applications": [{
                "applicationID": "", "application_name": name, "application_namespace": "e2e",
                "application_desc": "e2e lab",
                "microservices": [{
                    "microserviceID": "", "microservice_name": name, "microservice_namespace": "e2e",
                    "virtualization": "container", "cmd": [], "memory": 32, "vcpus": 0, "vgpus": 0,
                    "vtpus": 0, "bandwidth_in": 0, "bandwidth_out": 0, "storage": 0, "code": image,
                    "state": "", "port": "", "added_files": [], "one_shot": one_shot,
                    "constraints": constraints
                }]
            }]
        });
        if let (Some(ms), Some(fields)) =
            (sla["applications"][0]["microservices"][0].as_object_mut(), fields.as_object())
        {
            for (k, v) in fields {
                ms.insert(k.clone(), v.clone());
            }
        }
        self.api(Method::POST, "/api/application/", Some(sla))?;
        let services = self.api(Method::GET, "/api/services/", None)?;
        let service = services
            .as_array()
            .and_then(|s| s.iter().find(|s| s["microservice_name"] == name))
            .with_context(|| format!("service {name} not in GET /api/services/: {services}"))?;
        let id = service["microserviceID"].as_str().or(service["_id"].as_str()).context("service id")?.to_string();
        let job = service["job_name"].as_str().context("job name")?.to_string();
        ensure!(job == format!("{name}.e2e.{name}.e2e"), "job name {job:?}");
        self.services.push(id.clone());
        Ok((id, job))
    }

    fn scale_up(&self, id: &str) -> Result<u64> {
        let a = self.api(Method::POST, &format!("/api/service/{id}/instance"), None)?;
        a["instance_number"].as_u64().with_context(|| format!("scale-up answer without instance_number: {a}"))
    }

    fn delete_service(&mut self, id: &str) -> Result<()> {
        self.api(Method::DELETE, &format!("/api/service/{id}"), None)?;
        self.services.retain(|s| s != id);
        Ok(())
    }

    /// Polls instance `n` of `id` until `done` says yes, failing at once when `done` errs.
    fn wait_instance(
        &self,
        id: &str,
        n: u64,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&Value) -> Result<bool>,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            match self.instance(id, n) {
                Ok(Some(inst)) => {
                    if done(&inst).with_context(|| format!("waiting for {what}"))? {
                        return Ok(inst);
                    }
                    last = Some(inst);
                }
                Ok(None) => {}
                Err(e) => eprintln!("e2e-lab: polling {id}: {e:#}"),
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {what}; last instance state: {}",
                    last.map(without_logs).unwrap_or(Value::Null)
                );
            }
            self.ensure_all_alive()?;
            sleep(POLL);
        }
    }

    fn wait_running(&self, id: &str, n: u64, what: &str) -> Result<Value> {
        self.wait_instance(id, n, what, Duration::from_secs(60), |i| Ok(status_of(i) == "RUNNING"))
    }

    fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(BIN)
            .args(["--url", &self.api])
            .args(args)
            .env("OAKESTRA_CONFIG_DIR", &self.cli_home)
            .output()
            .context("running the CLI")?;
        if !out.status.success() {
            bail!("oakestra {args:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn ctr(&self, ns: &str, args: &[&str]) -> Result<String> {
        e2e::ctr(&self.socket, ns, args)
    }

    /// Container ids in containerd namespace `ns`.
    fn containers(&self, ns: &str) -> Result<Vec<String>> {
        Ok(self.ctr(ns, &["containers", "ls", "-q"])?.lines().map(str::to_string).filter(|l| !l.is_empty()).collect())
    }

    /// `(task id, pid, status)` of the tasks in `ns`.
    fn tasks(&self, ns: &str) -> Result<Vec<(String, u32, String)>> {
        oak_e2e::lab_proc::parse_tasks(&self.ctr(ns, &["tasks", "ls"])?)
    }

    /// Containers of `job` per worker name (workers without any left out).
    fn containers_of(&self, job: &str) -> Result<BTreeMap<String, Vec<String>>> {
        let mut found = BTreeMap::new();
        for w in &self.workers {
            let mine: Vec<String> =
                self.containers(&w.ns)?.into_iter().filter(|c| c.starts_with(&format!("{job}.instance."))).collect();
            if !mine.is_empty() {
                found.insert(w.name.clone(), mine);
            }
        }
        Ok(found)
    }

    fn wait_no_containers_of(&self, job: &str) -> Result<()> {
        wait_until(&format!("no container of {job} in any worker namespace"), Duration::from_secs(40), POLL, || {
            let left = self.containers_of(job)?;
            if !left.is_empty() {
                bail!("still there: {left:?}");
            }
            Ok(Some(()))
        })
    }

    fn worker(&self, name: &str) -> &Worker {
        self.workers.iter().find(|w| w.name == name).expect("known worker")
    }

    fn worker_mut(&mut self, name: &str) -> &mut Worker {
        self.workers.iter_mut().find(|w| w.name == name).expect("known worker")
    }

    fn worker_name_of(&self, inst: &Value) -> String {
        let id = inst["worker_id"].as_str().unwrap_or("");
        self.workers.iter().find(|w| w.id == id).map(|w| w.name.clone()).unwrap_or_else(|| format!("unknown({id})"))
    }

    fn ensure_all_alive(&self) -> Result<()> {
        for p in self.procs() {
            p.ensure_alive()?;
        }
        Ok(())
    }

    fn procs(&self) -> Vec<&Proc> {
        let mut v: Vec<&Proc> = self.workers.iter().map(|w| &w.proc).collect();
        v.extend(self.clusters.iter());
        v.push(&self.root);
        v
    }

    /// Workers first, then clusters, then the root: the order to stop them in.
    fn procs_mut(&mut self) -> Vec<&mut Proc> {
        let mut v: Vec<&mut Proc> = self.workers.iter_mut().map(|w| &mut w.proc).collect();
        v.extend(self.clusters.iter_mut());
        v.push(&mut self.root);
        v
    }

    // ---------------------------------------------------------------- set-up, diagnostics

    /// Waits for every worker's node id and both clusters to be active with their workers, and
    /// logs the CLI in.
    fn wait_for_fleet(&mut self) -> Result<()> {
        for i in 0..self.workers.len() {
            let (name, data) = (self.workers[i].name.clone(), self.workers[i].data.clone());
            self.workers[i].id = oak_e2e::lab_proc::wait_node_id(&name, &data, || self.ensure_all_alive())?;
        }
        let want: BTreeMap<&str, u64> = [("east", 2), ("west", 1)].into();
        let clusters = wait_until("east (2 workers) and west (1) to be active", Duration::from_secs(60), POLL, || {
            self.ensure_all_alive()?;
            let cs = self.api(Method::GET, "/api/clusters/active", None)?;
            let cs = cs.as_array().cloned().unwrap_or_default();
            let ok = want.iter().all(|(name, nodes)| {
                cs.iter().any(|c| {
                    c["cluster_name"] == *name
                        && c["active_nodes"].as_u64() == Some(*nodes)
                        && c["virtualization"].to_string().contains("docker")
                })
            });
            Ok(ok.then_some(cs))
        })?;
        for c in &clusters {
            let name = c["cluster_name"].as_str().context("cluster_name")?;
            self.cluster_ids.insert(name.to_string(), c["_id"].as_str().context("cluster _id")?.to_string());
        }
        let all = self.api(Method::GET, "/api/clusters", None)?;
        let locations: BTreeMap<String, String> = all
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                (
                    c["cluster_name"].as_str().unwrap_or("").to_string(),
                    c["cluster_location"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        ensure!(locations.get("east").is_some_and(|l| l.starts_with("48.1,11.6")), "east's location: {locations:?}");
        ensure!(locations.get("west").is_some_and(|l| l.starts_with("40.4,-3.7")), "west's location: {locations:?}");
        std::fs::create_dir_all(&self.cli_home)?;
        self.cli(&["login", "-u", "Admin", "-p", oak_e2e::procs::LAB_ADMIN_PASSWORD])?;
        Ok(())
    }

    /// Waits until the clusters count every worker active again (after a restart).
    fn wait_for_worker(&self, name: &str) -> Result<()> {
        let want: BTreeMap<&str, u64> = [("east", 2), ("west", 1)].into();
        wait_until(&format!("{name} to be active again"), Duration::from_secs(40), POLL, || {
            self.ensure_all_alive()?;
            let cs = self.api(Method::GET, "/api/clusters/active", None)?;
            let cs = cs.as_array().cloned().unwrap_or_default();
            let ok = want.iter().all(|(cluster, nodes)| {
                cs.iter().any(|c| c["cluster_name"] == *cluster && c["active_nodes"].as_u64() == Some(*nodes))
            });
            Ok(ok.then_some(()))
        })
    }

    /// After a failure: kills and removes what containerd still holds for the workers, so no
    /// shim outlives the test's containerd.
    fn force_clean(&self) {
        for w in &self.workers {
            for (id, _, _) in self.tasks(&w.ns).unwrap_or_default() {
                let _ = self.ctr(&w.ns, &["tasks", "rm", "-f", &id]);
            }
            for id in self.containers(&w.ns).unwrap_or_default() {
                let _ = self.ctr(&w.ns, &["containers", "rm", &id]);
            }
        }
        self.remove_leftover_dirs();
        for ns in overlay::instance_namespaces().difference(&self.netns_before) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }

    fn remove_leftover_dirs(&self) {
        oak_e2e::lab_proc::remove_leftover_dirs(self.workers.iter().map(|w| w.ns.as_str()));
    }

    /// Everything needed to see why a run failed: log tails, API state, containerd's view.
    fn dump(&self) {
        eprintln!("===== e2e-lab diagnostics (work directory {}) =====", self.dir.display());
        for p in self.procs() {
            print_tail(&p.log);
        }
        for path in ["/api/services/", "/api/clusters"] {
            match self.api(Method::GET, path, None) {
                Ok(v) => eprintln!(
                    "----- GET {path} -----\n{}",
                    serde_json::to_string_pretty(&without_logs(v)).unwrap_or_default()
                ),
                Err(e) => eprintln!("----- GET {path} failed: {e:#}"),
            }
        }
        for w in &self.workers {
            eprintln!("----- ctr -n {} (worker {} of {}, id {}) -----", w.ns, w.name, w.cluster, w.id);
            for args in [&["containers", "ls"][..], &["tasks", "ls"][..]] {
                match self.ctr(&w.ns, args) {
                    Ok(out) => eprint!("{out}"),
                    Err(e) => eprintln!("{e:#}"),
                }
            }
        }
    }
}

// -------------------------------------------------------------------------------- scenarios

/// Instance `inst` runs in cluster `cluster` on worker `worker`, whose ctr namespace (and only
/// its) holds the container.
fn check_placed(t: &Topology, inst: &Value, job: &str, cluster: &str, worker: &str) -> Result<()> {
    let w = t.worker(worker);
    ensure!(
        inst["cluster_id"].as_str() == Some(t.cluster_ids[cluster].as_str()),
        "not in cluster {cluster} ({}): {inst}",
        t.cluster_ids[cluster]
    );
    ensure!(
        inst["worker_id"].as_str() == Some(w.id.as_str()),
        "not on worker {worker} ({}) but {}: {inst}",
        w.id,
        t.worker_name_of(inst)
    );
    ensure!(
        inst["host_ip"].as_str() == Some(w.public.to_string().as_str()),
        "host_ip is not {worker}'s tunnel address {}: {inst}",
        w.public
    );
    let container = format!("{job}.instance.{}", inst["instance_number"]);
    let found = t.containers_of(job)?;
    ensure!(
        found.iter().all(|(name, cs)| name == worker || !cs.contains(&container))
            && found.get(worker).is_some_and(|cs| cs.contains(&container)),
        "container {container} should be in {}'s namespace only: {found:?}",
        w.ns
    );
    Ok(())
}

fn scenario_placement(t: &mut Topology) -> Result<()> {
    // `clusters` constraint: only west may run it, and west has one worker.
    let image = t.images.sleeper.clone();
    let (west, west_job) =
        t.create_service("westonly", &image, false, json!([{"type": "clusters", "allowed": ["west"]}]))?;
    ensure!(t.scale_up(&west)? == 0);
    let inst = t.wait_running(&west, 0, "westonly's instance to be RUNNING")?;
    check_placed(t, &inst, &west_job, "west", "w1")?;
    // The CLI shows the same.
    let shown: Value = serde_json::from_str(&t.cli(&["--json", "service", "show", &west])?).context("CLI JSON")?;
    let cli_inst = &shown["instance_list"][0];
    ensure!(status_of(cli_inst) == "RUNNING" && cli_inst["worker_id"] == inst["worker_id"], "CLI shows {cli_inst}");
    let tasks = t.tasks(&t.worker("w1").ns)?;
    ensure!(
        tasks.iter().any(|(id, _, s)| *id == format!("{west_job}.instance.0") && s == "RUNNING"),
        "w1's tasks: {tasks:?}"
    );

    // `direct` constraint: node e2 of east, for every instance.
    let (pinned, job) =
        t.create_service("pinned", &image, false, json!([{"type": "direct", "node": "e2", "cluster": "east"}]))?;
    ensure!(t.scale_up(&pinned)? == 0);
    let inst = t.wait_running(&pinned, 0, "pinned's instance 0 to be RUNNING")?;
    check_placed(t, &inst, &job, "east", "e2")?;
    ensure!(t.scale_up(&pinned)? == 1);
    ensure!(t.scale_up(&pinned)? == 2);
    for n in 1..=2 {
        let inst = t.wait_running(&pinned, n, &format!("pinned's instance {n} to be RUNNING"))?;
        check_placed(t, &inst, &job, "east", "e2")?;
    }
    let all = t.instances(&pinned)?;
    ensure!(all.len() == 3 && all.iter().all(|i| status_of(i) == "RUNNING"), "{}", describe(&all));
    let e2 = t.worker("e2").ns.clone();
    let want: Vec<String> = (0..3).map(|n| format!("{job}.instance.{n}")).collect();
    let mut have = t.containers(&e2)?;
    have.sort();
    ensure!(have == want, "e2's containers: {have:?}");
    let running: Vec<String> =
        t.tasks(&e2)?.into_iter().filter(|(_, _, s)| s == "RUNNING").map(|(id, _, _)| id).collect();
    ensure!(running.len() == 3, "e2's running tasks: {running:?}");

    // Back to one: instances 1 and 2 go, 0 stays untouched.
    let pid0 = t.tasks(&e2)?.into_iter().find(|(id, _, _)| *id == want[0]).map(|(_, pid, _)| pid);
    for n in [2, 1] {
        t.api(Method::DELETE, &format!("/api/service/{pinned}/instance/{n}"), None)?;
    }
    wait_until("pinned to be back to instance 0 alone, in the API and in ctr", Duration::from_secs(40), POLL, || {
        let all = t.instances(&pinned)?;
        let containers = t.containers(&e2)?;
        let tasks = t.tasks(&e2)?;
        let api_ok = all.len() == 1 && all[0]["instance_number"] == 0 && status_of(&all[0]) == "RUNNING";
        let ctr_ok = containers == want[..1] && tasks.len() == 1 && tasks[0].0 == want[0] && tasks[0].2 == "RUNNING";
        if !(api_ok && ctr_ok) {
            bail!("API: {}; containers {containers:?}; tasks {tasks:?}", describe(&all));
        }
        Ok(Some(()))
    })?;
    let pid_now = t.tasks(&e2)?.first().map(|(_, pid, _)| *pid);
    ensure!(pid_now == pid0, "instance 0's task was restarted by the scale-down: pid {pid0:?} → {pid_now:?}");
    // Nothing of it anywhere else.
    let found = t.containers_of(&job)?;
    ensure!(found.keys().all(|w| w == "e2"), "pinned's containers: {found:?}");
    // Done with these two: free the workers for the next scenarios.
    t.delete_service(&west)?;
    t.delete_service(&pinned)?;
    t.wait_no_containers_of(&west_job)?;
    t.wait_no_containers_of(&job)?;
    Ok(())
}

fn scenario_lifecycles(t: &mut Topology) -> Result<()> {
    // One-shot: exits 0, COMPLETED, final.
    let image = t.images.one_shot.clone();
    let (once, once_job) = t.create_service("oneshot", &image, true, json!([]))?;
    t.scale_up(&once)?;
    let inst = t.wait_instance(&once, 0, "the one-shot instance to COMPLETE", Duration::from_secs(60), |i| {
        match status_of(i) {
            "COMPLETED" => Ok(true),
            "FAILED" | "DEAD" => bail!("one-shot instance ended {}: {}", status_of(i), detail_of(i)),
            _ => Ok(false),
        }
    })?;
    eprintln!("e2e-lab: one-shot: {} ({})", status_of(&inst), detail_of(&inst));
    ensure!(detail_of(&inst).contains("code 0"), "one-shot detail: {inst}");
    t.wait_no_containers_of(&once_job)?;
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        let all = t.instances(&once)?;
        ensure!(all.len() == 1 && status_of(&all[0]) == "COMPLETED", "one-shot after completion: {}", describe(&all));
        let found = t.containers_of(&once_job)?;
        ensure!(found.is_empty(), "one-shot was deployed again: {found:?}");
        sleep(Duration::from_millis(500));
    }
    t.delete_service(&once)?;

    // Crasher: exits 3 after a second, DEAD, placed again after a back-off, again and again.
    let image = t.images.crasher.clone();
    let (crash, crash_job) = t.create_service("crasher", &image, false, json!([]))?;
    t.scale_up(&crash)?;
    // (status, root's last_modified_timestamp, when seen) at every change.
    let mut seen: Vec<(String, String, f64)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(45);
    let episodes = |seen: &[(String, String, f64)]| seen.iter().filter(|(s, _, _)| s == "DEAD").count();
    while episodes(&seen) < 3 {
        ensure!(Instant::now() < deadline, "crasher did not go DEAD 3 times in 45 s; statuses seen: {seen:?}");
        t.ensure_all_alive()?;
        if let Some(i) = t.instance(&crash, 0)? {
            let s = status_of(&i).to_string();
            if seen.last().map(|(l, _, _)| l) != Some(&s) {
                seen.push((s, detail_of(&i).to_string(), i["last_modified_timestamp"].as_f64().unwrap_or(0.0)));
            }
        }
        sleep(Duration::from_millis(100));
    }
    eprintln!("e2e-lab: crasher went through {seen:?}");
    let deads: Vec<&(String, String, f64)> = seen.iter().filter(|(s, _, _)| s == "DEAD").collect();
    ensure!(deads.iter().all(|(_, d, _)| d.contains("code 3")), "DEAD details should name exit code 3: {seen:?}");
    // Between two DEADs it was placed and ran again (at least one RUNNING in between).
    let first = seen.iter().position(|(s, _, _)| s == "DEAD").unwrap();
    ensure!(seen[first..].iter().any(|(s, _, _)| s == "RUNNING"), "no RUNNING after the first DEAD: {seen:?}");
    // The back-off: at least a second from a DEAD to the next placement on a worker, doubling
    // while the instance keeps crashing.
    let mut gaps = Vec::new();
    for w in seen.windows(2) {
        if w[0].0 == "DEAD" && w[0].2 > 0.0 && w[1].2 > 0.0 {
            gaps.push(w[1].2 - w[0].2);
        }
    }
    ensure!(gaps.iter().all(|g| *g >= 0.9), "re-placed less than a second after going DEAD: {gaps:?} {seen:?}");
    ensure!(gaps.len() < 2 || gaps[1] >= 1.8, "the back-off did not grow: {gaps:?} {seen:?}");
    let exits: usize = t
        .workers
        .iter()
        .map(|w| w.proc.log_text().lines().filter(|l| l.contains("instance exited") && l.contains(&crash_job)).count())
        .sum();
    ensure!(exits >= 3, "workers logged {exits} exits of {crash_job}, expected ≥ 3");
    t.delete_service(&crash)?;
    t.wait_no_containers_of(&crash_job)?;

    // An image the registry does not have: FAILED, naming what was not found.
    let image = t.images.missing.clone();
    let (missing, missing_job) = t.create_service("missing", &image, false, json!([]))?;
    t.scale_up(&missing)?;
    let inst = t.wait_instance(&missing, 0, "the missing image's instance to FAIL", Duration::from_secs(60), |i| {
        if status_of(i) == "RUNNING" {
            bail!("an instance of a missing image is RUNNING: {i}");
        }
        Ok(status_of(i) == "FAILED" && !detail_of(i).is_empty())
    })?;
    eprintln!("e2e-lab: missing image: {} ({})", status_of(&inst), detail_of(&inst));
    ensure!(detail_of(&inst).contains("not found"), "FAILED detail should say \"not found\": {inst}");
    t.delete_service(&missing)?;
    t.wait_no_containers_of(&missing_job)?;
    Ok(())
}

fn scenario_memory_limit(t: &mut Topology) -> Result<()> {
    let image = t.images.hog.clone();
    let (hog, hog_job) = t.create_service("hog", &image, false, json!([]))?;
    t.scale_up(&hog)?;
    // Every end it went through (it is placed again after each).
    let mut ends: Vec<String> = Vec::new();
    let mut last = String::new();
    let inst = t.wait_instance(&hog, 0, "the memory hog to be killed (exit 137)", Duration::from_secs(60), |i| {
        let s = status_of(i);
        let ended = matches!(s, "DEAD" | "FAILED" | "COMPLETED");
        if ended && last != s {
            ends.push(format!("{s}: {}", detail_of(i)));
        }
        last = s.to_string();
        if ended && detail_of(i).contains("137") {
            return Ok(true);
        }
        if ends.len() >= 3 {
            bail!("the hog ended 3 times, never with exit code 137: {ends:?}");
        }
        Ok(false)
    })?;
    eprintln!("e2e-lab: memory hog: {} ({})", status_of(&inst), detail_of(&inst));
    ensure!(matches!(status_of(&inst), "DEAD" | "FAILED"), "{inst}");
    t.delete_service(&hog)?;
    t.wait_no_containers_of(&hog_job)?;
    Ok(())
}

/// The `/metrics` of `worker`'s cluster.
fn cluster_metrics(t: &Topology, worker: &str) -> Result<String> {
    let w = t.worker(worker);
    let cluster = t.clusters.iter().find(|c| c.name == format!("cluster-{}", w.cluster)).context("its cluster")?;
    // The node API is HTTPS, trusted through the CA the cluster's node token pins.
    let token = std::fs::read_to_string(t.dir.join(format!("data/{}/node-token", cluster.name)))?;
    let pin = oak_tls::JoinToken::parse(&token, oak_tls::TokenKind::Node)?.ca;
    let tls = oak_tls::pinned_client_config(pin, oak_tls::CLUSTER_SERVER_NAME, None)?;
    let client = reqwest::blocking::Client::builder()
        .use_preconfigured_tls(oak_tls::rustls::ClientConfig::clone(&tls))
        .build()?;
    let url = format!("https://{}:10100/metrics", cluster.host.ip());
    let request = client.get(&url).bearer_auth(oak_e2e::procs::LAB_METRICS_TOKEN);
    Ok(request.send()?.error_for_status()?.text()?)
}

/// How long ago `worker`'s cluster last heard from it.
fn report_age(t: &Topology, worker: &str) -> Result<Duration> {
    let prefix = format!("oakestra_worker_report_age_seconds{{node=\"{}\"}} ", t.worker(worker).id);
    let text = cluster_metrics(t, worker)?;
    let line = text.lines().find_map(|l| l.strip_prefix(&prefix)).with_context(|| format!("{prefix} in\n{text}"))?;
    Ok(Duration::from_secs_f64(line.trim().parse()?))
}

fn scenario_worker_restart(t: &mut Topology) -> Result<()> {
    let image = t.images.web.clone();
    // The overlay gives the container a namespace of its own: the node's port is a mapping.
    let (web, job) = t.create_service_with(
        "web",
        &image,
        json!([{"type": "direct", "node": "e1", "cluster": "east"}]),
        json!({"port": WEB_PORT.to_string()}),
    )?;
    t.scale_up(&web)?;
    let inst = t.wait_running(&web, 0, "the web server to be RUNNING")?;
    check_placed(t, &inst, &job, "east", "e1")?;
    let e1_ip = t.worker("e1").proc.host.ip();
    let addr = format!("{e1_ip}:{WEB_PORT}");
    let answer = |what: &str| {
        wait_until(what, Duration::from_secs(20), POLL, || {
            Ok(oak_e2e::http::get(&addr, "/").ok().filter(|r| r.status == 200).map(|r| r.body))
        })
    };
    let body = answer("the web server to answer on e1's address")?;
    ensure!(body.contains("hello from the lab"), "{body}");
    let ns = t.worker("e1").ns.clone();
    let container = format!("{job}.instance.0");
    ensure!(t.containers(&ns)? == [container.clone()], "e1's containers: {:?}", t.containers(&ns)?);
    let task = t.tasks(&ns)?.into_iter().find(|(id, _, _)| *id == container).context("web's task")?;
    ensure!(task.2 == "RUNNING", "{task:?}");
    let old_id = t.worker("e1").id.clone();

    let log_before = t.worker("e1").proc.log_text().len();
    let cluster_name = format!("cluster-{}", t.worker("e1").cluster);
    let cluster_log = |t: &Topology| t.clusters.iter().find(|c| c.name == cluster_name).map(|c| c.log_text());
    let cluster_log_before = cluster_log(t).context("e1's cluster")?.len();
    let stopped_at = Instant::now();
    let status = t.worker_mut("e1").proc.stop()?.context("e1 was running")?;
    ensure!(status.success(), "worker e1 exited with {status} on SIGTERM");
    // A stopping worker leaves its containers running.
    let during = t.tasks(&ns)?;
    ensure!(during.contains(&task), "the worker's stop touched the task: {task:?} → {during:?}");
    t.worker_mut("e1").proc.start()?;

    let mut statuses = Vec::new();
    let watch = |t: &Topology, statuses: &mut Vec<String>| -> Result<()> {
        if let Ok(all) = t.instances(&web) {
            let d = describe(&all);
            if statuses.last() != Some(&d) {
                statuses.push(d);
            }
        }
        Ok(())
    };
    wait_until("the restarted e1 to adopt its instance", Duration::from_secs(30), POLL, || {
        t.ensure_all_alive()?;
        watch(t, &mut statuses)?;
        let log = t.worker("e1").proc.log_text();
        let new = log.get(log_before..).unwrap_or("");
        Ok((new.contains("adopted running instance") && new.contains("connected to the broker")).then_some(()))
    })?;
    let back = Instant::now();
    eprintln!("e2e-lab: e1 back after {:?}", stopped_at.elapsed());
    // Once the cluster has heard from the restarted e1, the restart can no longer cost e1 its
    // instance (its reports reset the worker timeout): until then, and at that point, the
    // instance must still be RUNNING there, and the cluster must never have declared e1 lost.
    wait_until("the cluster to hear from the restarted e1", Duration::from_secs(30), POLL, || {
        watch(t, &mut statuses)?;
        Ok((report_age(t, "e1")? < back.elapsed()).then_some(()))
    })?;
    watch(t, &mut statuses)?;
    let log = cluster_log(t).context("cluster-east")?;
    let lost =
        log.get(cluster_log_before..).unwrap_or("").lines().find(|l| l.contains("worker inactive")).map(str::to_string);
    ensure!(lost.is_none(), "the cluster declared a worker lost during e1's restart: {lost:?}");
    let want = format!("0:RUNNING@{old_id}");
    ensure!(
        statuses.iter().all(|d| d.starts_with(&want) && !d.contains(", ")),
        "the instance should stay RUNNING on e1 throughout the restart; saw {statuses:?}"
    );
    let node: Value = serde_json::from_slice(&std::fs::read(t.worker("e1").data.join("node.json"))?)?;
    ensure!(node["id"] == old_id.as_str(), "e1 re-registered as a new node: {node}");
    ensure!(t.containers(&ns)? == [container.clone()], "e1's containers after the restart: {:?}", t.containers(&ns)?);
    let after = t.tasks(&ns)?;
    ensure!(after == [task.clone()], "the task should be the same one (not restarted): {task:?} → {after:?}");
    let body = answer("the web server to still answer after the restart")?;
    ensure!(body.contains("hello from the lab"), "{body}");
    let inst = t.instance(&web, 0)?.context("web's instance")?;
    check_placed(t, &inst, &job, "east", "e1")?;
    // Usage read from the (adopted) container's cgroup and its log lines reach the API (the
    // cluster forwards an instance's metrics every 10 s).
    let inst =
        t.wait_instance(&web, 0, "the web server's usage and logs in the API", Duration::from_secs(20), |i| {
            Ok(i["memory_percent"].as_f64().is_some_and(|m| m > 0.0)
                && i["logs"].as_str().is_some_and(|l| l.contains("http server starting")))
        })?;
    eprintln!("e2e-lab: web usage: cpu {} %, memory {} %", inst["cpu_percent"], inst["memory_percent"]);
    Ok(())
}

fn teardown(t: &mut Topology) -> Result<()> {
    for id in t.services.clone() {
        t.delete_service(&id)?;
    }
    wait_until("no services left", Duration::from_secs(10), POLL, || {
        let s = t.api(Method::GET, "/api/services/", None)?;
        Ok(s.as_array().is_some_and(|a| a.is_empty()).then_some(()))
    })?;
    let empty = |t: &Topology| -> Result<Option<()>> {
        for w in &t.workers {
            let (c, k) = (t.containers(&w.ns)?, t.tasks(&w.ns)?);
            if !c.is_empty() || !k.is_empty() {
                bail!("{}: containers {c:?}, tasks {k:?}", w.ns);
            }
        }
        Ok(Some(()))
    };
    wait_until("every worker namespace to be empty after the undeploys", Duration::from_secs(40), POLL, || empty(t))?;
    let mut errors = Vec::new();
    for p in t.procs_mut() {
        match p.stop() {
            Ok(Some(s)) if !s.success() => errors.push(format!("{} exited with {s} on SIGTERM", p.name)),
            Ok(_) => {}
            Err(e) => errors.push(format!("stopping {}: {e:#}", p.name)),
        }
    }
    ensure!(errors.is_empty(), "{errors:?}");
    empty(t).context("after stopping every process")?;
    Ok(())
}
