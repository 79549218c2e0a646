//! The fault lab: a root, clusters `east` and `west` with two workers each (`e1`, `e2`, `w1`,
//! `w2`) as real `oakestra` processes in network namespaces `okflt-…` on 10.99.79.0/24, each
//! worker with a containerd of its own (so one can be killed under one worker), `w2`'s data
//! directory on a small tmpfs (the disk-full fault), and a registry on the lab's bridge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use oak_e2e::containerd::Containerd;
use oak_e2e::{images, wait_until, Host, Lab, Registry, Workdir};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_oakestra");
/// Namespace prefix and subnet (10.99.79.0/24) of this file; `e2e_lab` uses `oke2e` and 77.
pub const PREFIX: &str = "okflt";
pub const SUBNET: u8 = 79;
pub const POLL: Duration = Duration::from_millis(200);
/// The clusters' worker timeout (`--worker-timeout`, or `--node-timeout` before it existed).
pub const WORKER_TIMEOUT_S: u64 = 5;
/// The clusters' `--deploy-timeout`: an instance not started within it is placed again (also
/// the only way a deploy command lost on the way to a worker is sent again).
pub const DEPLOY_TIMEOUT_S: u64 = 15;
/// The root's `--cluster-timeout`, passed when the root has the flag.
pub const CLUSTER_TIMEOUT_S: u64 = 8;
/// Size of the tmpfs under the disk-full worker's data directory.
pub const TMPFS_SIZE: &str = "16m";
/// The worker whose data directory is the tmpfs.
pub const DISK_WORKER: &str = "w2";
const LOG_TAIL: usize = 40;

/// One process of the topology, restartable with the same flags.
pub type Proc = oak_e2e::lab_proc::LabProc;

fn new_proc(name: &str, host: &Host, work: &Path, args: Vec<String>) -> Proc {
    Proc::new(Path::new(BIN), name, host, work, args)
}

pub struct Cluster {
    pub name: String,
    pub proc: Proc,
}

pub struct Worker {
    /// `e1`, `e2`, `w1`, `w2`: the node name.
    pub name: String,
    pub cluster: String,
    pub proc: Proc,
    pub data: PathBuf,
    /// containerd namespace of its containers.
    pub ns: String,
    /// The node id the cluster gave it (from `<data>/node.json`).
    pub id: String,
    pub containerd: Containerd,
}

/// A tmpfs mounted on a directory, unmounted on drop.
pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Result<Tmpfs> {
        std::fs::create_dir_all(path)?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "okflt-disk"])
            .arg(path)
            .output()?;
        ensure!(
            out.status.success(),
            "mounting a tmpfs on {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Tmpfs { path: path.to_path_buf() })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// The root's API as Admin: logs in again when the token expired or the root forgot it.
pub struct Api {
    pub base: String,
    client: reqwest::blocking::Client,
    token: Mutex<String>,
}

impl Api {
    pub fn new(base: &str, timeout: Duration) -> Api {
        let client = reqwest::blocking::Client::builder().timeout(timeout).build().expect("HTTP client");
        Api { base: base.into(), client, token: Mutex::new(String::new()) }
    }

    pub fn login(&self) -> Result<()> {
        let resp = self
            .client
            .post(format!("{}/api/auth/login", self.base))
            .json(&json!({"username": "Admin", "password": oak_e2e::procs::LAB_ADMIN_PASSWORD}))
            .send()
            .context("POST /api/auth/login")?;
        let status = resp.status();
        let body: Value = resp.json().unwrap_or(Value::Null);
        ensure!(status.is_success(), "login: {status}: {body}");
        let token = body["token"].as_str().context("login answer without token")?;
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = token.to_string();
        Ok(())
    }

    /// `method path` with the token; the JSON answer, or an error naming call, status and body.
    pub fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        for attempt in 0..2 {
            let token = self.token.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let mut req = self.client.request(method.clone(), format!("{}{path}", self.base)).bearer_auth(token);
            if let Some(body) = &body {
                req = req.json(body);
            }
            let resp = req.send().with_context(|| format!("{method} {path}"))?;
            let status = resp.status();
            let text = resp.text()?;
            if status == StatusCode::UNAUTHORIZED && attempt == 0 {
                self.login()?;
                continue;
            }
            ensure!(status.is_success(), "{method} {path}: {status}: {text}");
            return Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)));
        }
        unreachable!("the second attempt returns")
    }

    pub fn get(&self, path: &str) -> Result<Value> {
        self.call(Method::GET, path, None)
    }
}

/// A service of the lab and the instance numbers it should run.
#[derive(Clone, Debug)]
pub struct Service {
    pub id: String,
    pub job: String,
    pub instances: BTreeSet<u64>,
}

pub struct FaultLab {
    pub dir: PathBuf,
    pub api: Api,
    /// Serves the images while the lab runs; stopped on drop.
    _registry: Registry,
    pub root: Proc,
    pub clusters: Vec<Cluster>,
    pub workers: Vec<Worker>,
    /// Cluster name → id.
    pub cluster_ids: BTreeMap<String, String>,
    pub sleeper: String,
    /// The services that should run, with their instances (what the invariants check).
    pub desired: Vec<Service>,
    /// `/run/netns` entries that existed before: not ours.
    pub netns_before: BTreeSet<String>,
    /// Unmounted on drop, after the workers stopped.
    _tmpfs: Option<Tmpfs>,
    /// What the binary's flags offer (the cluster and root timeouts).
    pub flags: Vec<String>,
}

/// Whether `oakestra <tier> --help` lists `flag`.
fn has_flag(tier: &str, flag: &str) -> bool {
    Command::new(BIN)
        .args([tier, "--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(flag))
        .unwrap_or(false)
}

pub fn instance_namespaces() -> BTreeSet<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten().filter_map(|e| e.file_name().into_string().ok()).filter(|n| n.starts_with("oak-")).collect()
        })
        .unwrap_or_default()
}

impl FaultLab {
    pub fn setup(net: &mut Lab, work: &Workdir) -> Result<FaultLab> {
        let gateway = net.gateway();
        let root_host = net.add_host("root")?;
        let cluster_hosts = [net.add_host("east")?, net.add_host("west")?];
        let mut worker_hosts = Vec::new();
        for (w, c) in [("e1", "east"), ("e2", "east"), ("w1", "west"), ("w2", "west")] {
            worker_hosts.push((net.add_host(w)?, c));
        }
        let port = oak_e2e::registry::free_port(gateway.into())?;
        let registry = Registry::start(&format!("{gateway}:{port}"))?;
        let spec = images::sleeper();
        let layout = images::build_image(&work.join("images"), &spec)?;
        let sleeper = registry.push(&layout, &spec.tag, "faults/sleeper")?;

        let mut flags = Vec::new();
        let root_data = work.join("data/root");
        let mut root_args = oak_e2e::procs::root_args(&root_data);
        if has_flag("root", "--cluster-timeout") {
            root_args.extend(["--cluster-timeout".into(), CLUSTER_TIMEOUT_S.to_string()]);
            flags.push(format!("root --cluster-timeout {CLUSTER_TIMEOUT_S}"));
        }
        let mut root = new_proc("root", &root_host, work.path(), root_args);
        root.start()?;
        let api = Api::new(&format!("http://{}:10000", root_host.ip()), Duration::from_secs(10));
        wait_until("the root to log Admin in", Duration::from_secs(30), POLL, || {
            root.ensure_alive()?;
            Ok(api.login().ok())
        })?;
        let cluster_token = root_data.join("cluster-token");
        wait_until("the root's cluster-token file", Duration::from_secs(10), POLL, || {
            Ok(cluster_token.exists().then_some(()))
        })?;

        let timeout_flag = if has_flag("cluster", "--worker-timeout") { "--worker-timeout" } else { "--node-timeout" };
        flags.push(format!("cluster {timeout_flag} {WORKER_TIMEOUT_S} --deploy-timeout {DEPLOY_TIMEOUT_S}"));
        let mut clusters = Vec::new();
        for host in &cluster_hosts {
            let name = host.name();
            let data = work.join(format!("data/cluster-{name}"));
            let mut args = oak_e2e::procs::ClusterFlags {
                name,
                location: None,
                root: root_host.ip(),
                data_dir: &data,
                token_file: &cluster_token,
            }
            .args();
            args.extend([timeout_flag.to_string(), WORKER_TIMEOUT_S.to_string()]);
            args.extend(["--deploy-timeout".to_string(), DEPLOY_TIMEOUT_S.to_string()]);
            let mut proc = new_proc(&format!("cluster-{name}"), host, work.path(), args);
            proc.start()?;
            clusters.push(Cluster { name: name.into(), proc });
        }

        let mut tmpfs = None;
        let mut workers = Vec::new();
        for (host, cluster) in worker_hosts {
            let cluster_ip = cluster_hosts.iter().find(|h| h.name() == cluster).context("cluster host")?.ip();
            let node_token = work.join(format!("data/cluster-{cluster}/node-token"));
            wait_until(&format!("cluster {cluster}'s node-token file"), Duration::from_secs(30), POLL, || {
                for c in &clusters {
                    c.proc.ensure_alive()?;
                }
                Ok(node_token.exists().then_some(()))
            })?;
            let name = host.name().to_string();
            let data = work.join(format!("data/worker-{name}"));
            if name == DISK_WORKER {
                tmpfs = Some(Tmpfs::mount(&data, TMPFS_SIZE)?);
            }
            let ns = format!("{PREFIX}-{name}");
            let containerd = Containerd::start()?;
            let args = oak_e2e::procs::WorkerFlags {
                cluster: cluster_ip,
                data_dir: &data,
                token_file: &node_token,
                node_name: &name,
                containerd_socket: containerd.socket(),
                containerd_namespace: &ns,
                registry: &format!("{gateway}:{port}"),
            }
            .args();
            let mut proc = new_proc(&format!("worker-{name}"), &host, work.path(), args);
            proc.start()?;
            workers.push(Worker { name, cluster: cluster.into(), proc, data, ns, id: String::new(), containerd });
        }
        let mut lab = FaultLab {
            dir: work.path().to_path_buf(),
            api,
            _registry: registry,
            root,
            clusters,
            workers,
            cluster_ids: BTreeMap::new(),
            sleeper,
            desired: Vec::new(),
            netns_before: instance_namespaces(),
            _tmpfs: tmpfs,
            flags,
        };
        lab.wait_for_fleet()?;
        Ok(lab)
    }

    /// Waits for every worker's node id and both clusters to be active with two workers.
    fn wait_for_fleet(&mut self) -> Result<()> {
        for i in 0..self.workers.len() {
            let (name, data) = (self.workers[i].name.clone(), self.workers[i].data.clone());
            self.workers[i].id = oak_e2e::lab_proc::wait_node_id(&name, &data, || self.ensure_all_alive())?;
        }
        self.wait_fleet_active(Duration::from_secs(60))?;
        let cs = self.api.get("/api/clusters")?;
        for c in cs.as_array().into_iter().flatten() {
            let name = c["cluster_name"].as_str().context("cluster_name")?;
            self.cluster_ids.insert(name.to_string(), c["_id"].as_str().context("cluster _id")?.to_string());
        }
        Ok(())
    }

    /// Both clusters connected and counting both their workers active.
    pub fn fleet_active(&self) -> Result<bool> {
        let cs = self.api.get("/api/clusters/active")?;
        let cs = cs.as_array().cloned().unwrap_or_default();
        Ok(["east", "west"]
            .iter()
            .all(|name| cs.iter().any(|c| c["cluster_name"] == *name && c["active_nodes"].as_u64() == Some(2))))
    }

    pub fn wait_fleet_active(&self, timeout: Duration) -> Result<()> {
        wait_until("both clusters active with both their workers", timeout, POLL, || {
            self.ensure_all_alive()?;
            Ok(self.fleet_active()?.then_some(()))
        })
    }

    pub fn ensure_all_alive(&self) -> Result<()> {
        for p in self.procs() {
            p.ensure_alive()?;
        }
        Ok(())
    }

    pub fn procs(&self) -> Vec<&Proc> {
        let mut v: Vec<&Proc> = self.workers.iter().map(|w| &w.proc).collect();
        v.extend(self.clusters.iter().map(|c| &c.proc));
        v.push(&self.root);
        v
    }

    /// Workers first, then clusters, then the root: the order to stop them in.
    pub fn procs_mut(&mut self) -> Vec<&mut Proc> {
        let mut v: Vec<&mut Proc> = self.workers.iter_mut().map(|w| &mut w.proc).collect();
        v.extend(self.clusters.iter_mut().map(|c| &mut c.proc));
        v.push(&mut self.root);
        v
    }

    pub fn worker(&self, name: &str) -> &Worker {
        self.workers.iter().find(|w| w.name == name).expect("known worker")
    }

    pub fn worker_mut(&mut self, name: &str) -> &mut Worker {
        self.workers.iter_mut().find(|w| w.name == name).expect("known worker")
    }

    pub fn cluster_mut(&mut self, name: &str) -> &mut Cluster {
        self.clusters.iter_mut().find(|c| c.name == name).expect("known cluster")
    }

    pub fn worker_by_id(&self, id: &str) -> Option<&Worker> {
        self.workers.iter().find(|w| w.id == id)
    }

    /// `ctr -a <worker's containerd> -n <its namespace> args…`, its standard output.
    pub fn ctr(&self, w: &Worker, args: &[&str]) -> Result<String> {
        let out = Command::new("ctr")
            .arg("-a")
            .arg(w.containerd.socket())
            .args(["--timeout", "5s", "-n", &w.ns])
            .args(args)
            .output()?;
        ensure!(out.status.success(), "ctr of {} {args:?}: {}", w.name, String::from_utf8_lossy(&out.stderr).trim());
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn containers(&self, w: &Worker) -> Result<Vec<String>> {
        Ok(self.ctr(w, &["containers", "ls", "-q"])?.lines().map(str::to_string).filter(|l| !l.is_empty()).collect())
    }

    /// `(task id, pid, status)` of the tasks of `w`.
    pub fn tasks(&self, w: &Worker) -> Result<Vec<(String, u32, String)>> {
        oak_e2e::lab_proc::parse_tasks(&self.ctr(w, &["tasks", "ls"])?)
    }

    /// Creates application `name` with one container microservice `name` (namespace `flt`),
    /// scales it to `instances` and returns it (not yet added to [`FaultLab::desired`]).
    pub fn create_service(&mut self, name: &str, instances: u64, constraints: Value) -> Result<Service> {
        let sla = json!({
            "sla_version": "v2.0", "customerID": "Admin",
            "applications": [{
                "applicationID": "", "application_name": name, "application_namespace": "flt",
                "application_desc": "fault lab",
                "microservices": [{
                    "microserviceID": "", "microservice_name": name, "microservice_namespace": "flt",
                    "virtualization": "container", "cmd": [], "memory": 32, "vcpus": 0, "vgpus": 0,
                    "vtpus": 0, "bandwidth_in": 0, "bandwidth_out": 0, "storage": 0, "code": self.sleeper,
                    "state": "", "port": "", "added_files": [], "one_shot": false,
                    "constraints": constraints
                }]
            }]
        });
        self.api.call(Method::POST, "/api/application/", Some(sla))?;
        let services = self.api.get("/api/services/")?;
        let service = services
            .as_array()
            .and_then(|s| s.iter().find(|s| s["microservice_name"] == name))
            .with_context(|| format!("service {name} not in GET /api/services/: {services}"))?;
        let id = service["microserviceID"].as_str().or(service["_id"].as_str()).context("service id")?.to_string();
        let job = service["job_name"].as_str().context("job name")?.to_string();
        let mut numbers = BTreeSet::new();
        for _ in 0..instances {
            let a = self.api.call(Method::POST, &format!("/api/service/{id}/instance"), None)?;
            numbers.insert(a["instance_number"].as_u64().with_context(|| format!("scale-up answer {a}"))?);
        }
        Ok(Service { id, job, instances: numbers })
    }

    pub fn delete_service(&mut self, id: &str) -> Result<()> {
        self.api.call(Method::DELETE, &format!("/api/service/{id}"), None)?;
        self.desired.retain(|s| s.id != id);
        Ok(())
    }

    pub fn instances(&self, id: &str) -> Result<Vec<Value>> {
        let s = self.api.get(&format!("/api/service/{id}"))?;
        Ok(s["instance_list"].as_array().cloned().unwrap_or_default())
    }

    /// Name of the worker holding the most RUNNING instances of the first desired service.
    pub fn busiest_worker(&self, among: &[&str]) -> Result<String> {
        let service = self.desired.first().context("no service")?;
        let mut counts: BTreeMap<String, usize> = among.iter().map(|w| (w.to_string(), 0)).collect();
        for i in self.instances(&service.id)? {
            if let Some(w) = i["worker_id"].as_str().and_then(|id| self.worker_by_id(id)) {
                if let Some(n) = counts.get_mut(&w.name) {
                    *n += 1;
                }
            }
        }
        let best = counts.iter().max_by_key(|(name, n)| (**n, std::cmp::Reverse((*name).clone())));
        best.map(|(name, _)| name.clone()).context("no worker")
    }

    /// The last lines of every process's log, the API's view and what containerd lists.
    pub fn dump(&self) {
        eprintln!("===== e2e-faults diagnostics (work directory {}) =====", self.dir.display());
        for p in self.procs() {
            print_tail(&p.log);
        }
        match self.api.get("/api/services/") {
            Ok(v) => {
                eprintln!("----- GET /api/services/ -----\n{}", serde_json::to_string_pretty(&v).unwrap_or_default())
            }
            Err(e) => eprintln!("----- GET /api/services/ failed: {e:#}"),
        }
        for w in &self.workers {
            eprintln!("----- ctr -n {} (worker {} of {}, id {}) -----", w.ns, w.name, w.cluster, w.id);
            for args in [&["containers", "ls"][..], &["tasks", "ls"][..]] {
                match self.ctr(w, args) {
                    Ok(out) => eprint!("{out}"),
                    Err(e) => eprintln!("{e:#}"),
                }
            }
        }
    }

    /// After a failure: removes what the containerds still hold and the instance namespaces,
    /// so nothing outlives the test.
    pub fn force_clean(&self) {
        for w in &self.workers {
            for (id, _, _) in self.tasks(w).unwrap_or_default() {
                let _ = self.ctr(w, &["tasks", "rm", "-f", &id]);
            }
            for id in self.containers(w).unwrap_or_default() {
                let _ = self.ctr(w, &["containers", "rm", &id]);
            }
        }
        for ns in instance_namespaces().difference(&self.netns_before) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        self.remove_leftover_dirs();
    }

    pub fn remove_leftover_dirs(&self) {
        oak_e2e::lab_proc::remove_leftover_dirs(self.workers.iter().map(|w| w.ns.as_str()));
    }
}

/// The last lines of `path` to stderr, framed with its name.
pub fn print_tail(path: &Path) {
    oak_e2e::lab_proc::print_tail(path, LOG_TAIL);
}
