//! The faults, each injected into the running lab and then healed, and the run of one fault:
//! invariants hold before it, the fault, then the time until every invariant holds again (and
//! still holds a second later), with the API poller's failures meanwhile.
//!
//! Invariants that held all along would say nothing about a component that was restarted or
//! cut off: so when a fault ends, a probe instance is added at once to a service pinned to the
//! worker the fault hit (`probe<worker>`). Recovery includes it RUNNING there, which needs
//! the whole chain root → cluster → worker → containerd and back to work again; it is removed
//! before the next fault.

use std::collections::BTreeMap;
use std::io::Write;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use oak_e2e::{wait_until, Host};
use serde_json::{json, Value};

use super::invariants::{self, brief, Verdict};
use super::lab::{FaultLab, CLUSTER_TIMEOUT_S, DISK_WORKER, POLL, WORKER_TIMEOUT_S};
use super::poller::{Counts, Poller};

/// Longest wait for the invariants after a fault ends.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(90);
/// The invariants must hold this long (checked again) to count as recovered.
const STABLE: Duration = Duration::from_secs(1);
/// How long the lossy link stays lossy.
const LOSSY_FOR: Duration = Duration::from_secs(10);
/// How long a worker's containerd stays dead.
const CONTAINERD_DOWN: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    WorkerKill,
    ClusterKill,
    RootKill,
    WorkerPartition,
    ClusterPartition,
    LossyLink,
    ContainerdKill,
    DiskFull,
}

pub const ALL: [Fault; 8] = [
    Fault::WorkerKill,
    Fault::ClusterKill,
    Fault::RootKill,
    Fault::WorkerPartition,
    Fault::ClusterPartition,
    Fault::LossyLink,
    Fault::ContainerdKill,
    Fault::DiskFull,
];

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::WorkerKill => "worker kill -9 + restart",
            Fault::ClusterKill => "cluster kill -9 + restart",
            Fault::RootKill => "root kill -9 + restart",
            Fault::WorkerPartition => "worker partition",
            Fault::ClusterPartition => "cluster partition",
            Fault::LossyLink => "lossy worker link",
            Fault::ContainerdKill => "containerd kill -9 + restart",
            Fault::DiskFull => "disk full + deploy",
        }
    }
}

/// One run of one fault.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub fault: Fault,
    /// From the fault's end (restart, heal) until the invariants hold; `None` if they did not.
    pub recovery: Option<Duration>,
    pub duplicates: usize,
    pub orphans: usize,
    pub ip_duplicates: usize,
    pub api: Counts,
    /// What went wrong, if anything.
    pub error: Option<String>,
    /// What the run observed along the way (target, impairment used, details).
    pub notes: Vec<String>,
}

/// How a fault ended: when (recovery is measured from there), and which worker's probe service
/// gets an instance (`None`: the fault deployed its own).
pub struct Ended {
    at: Instant,
    probe: Option<String>,
}

fn ended(probe: &str) -> Ended {
    Ended { at: Instant::now(), probe: Some(probe.to_string()) }
}

/// Injects `fault`, heals it and measures the recovery. Never panics on the lab's behaviour:
/// what fails is in the result, so the other faults still run.
pub fn run(lab: &mut FaultLab, poller: &Poller, fault: Fault, run: usize) -> RunResult {
    let mut r = RunResult {
        fault,
        recovery: None,
        duplicates: 0,
        orphans: 0,
        ip_duplicates: 0,
        api: Counts::default(),
        error: None,
        notes: Vec::new(),
    };
    say(&format!("fault {} (run {})", fault.name(), run + 1));
    let started = Instant::now();
    if let Err(v) = recover(lab, Instant::now()) {
        r.error = Some(format!("the invariants did not hold before the fault: {}", v.problems.join("; ")));
        count(&mut r, &v);
        return r;
    }
    let before = poller.counts();
    let cluster_logs: Vec<u64> = lab.clusters.iter().map(|c| c.proc.log_len()).collect();
    let injected = match fault {
        Fault::WorkerKill => worker_kill(lab, &mut r.notes),
        Fault::ClusterKill => cluster_kill(lab, &mut r.notes),
        Fault::RootKill => root_kill(lab, poller, &mut r.notes),
        Fault::WorkerPartition => worker_partition(lab, &mut r.notes),
        Fault::ClusterPartition => cluster_partition(lab, &mut r.notes),
        Fault::LossyLink => lossy_link(lab, &mut r.notes),
        Fault::ContainerdKill => containerd_kill(lab, &mut r.notes),
        Fault::DiskFull => disk_full(lab, run, &mut r.notes),
    };
    let mut errors = Vec::new();
    let injected = injected.and_then(|e| {
        if let Some(worker) = &e.probe {
            add_probe(lab, worker)?;
        }
        Ok(e.at)
    });
    match injected {
        Ok(ended) => match recover(lab, ended) {
            Ok((took, v)) => {
                r.recovery = Some(took);
                count(&mut r, &v);
            }
            Err(v) => {
                count(&mut r, &v);
                errors.push(format!(
                    "the invariants did not hold within {RECOVERY_TIMEOUT:?} of the fault's end: {}",
                    v.problems.join("; ")
                ));
            }
        },
        Err(e) => errors.push(format!("{e:#}")),
    }
    // A deploy command that never reached its worker is only sent again when the cluster's
    // deploy timeout places the instance anew: say so, it is most of such a recovery.
    let resent: usize = lab
        .clusters
        .iter()
        .zip(&cluster_logs)
        .map(|(c, from)| c.proc.log_since(*from).matches("did not start it within").count())
        .sum();
    if resent > 0 {
        r.notes.push(format!("{resent} deploy(s) re-sent after the clusters' --deploy-timeout (command lost)"));
    }
    if let Err(e) = remove_probes(lab) {
        errors.push(format!("removing the probe instance: {e:#}"));
    }
    if fault == Fault::DiskFull {
        if let Err(e) = after_disk_full(lab) {
            errors.push(format!("removing the disk-full service: {e:#}"));
        }
    }
    r.api = poller.counts().since(&before);
    if r.api.failures > 0 {
        let examples: Vec<&String> = r.api.examples.iter().take(3).collect();
        errors.push(format!("the API failed {} times while the root was up: {examples:?}", r.api.failures));
    }
    if !errors.is_empty() {
        r.error = Some(errors.join("; "));
    }
    say(&format!(
        "fault {} (run {}): {} in {:?}; recovery {:?}; notes: {}",
        fault.name(),
        run + 1,
        if r.error.is_none() { "ok" } else { "FAILED" },
        started.elapsed(),
        r.recovery,
        r.notes.join("; ")
    ));
    if let Some(e) = &r.error {
        say(&format!("fault {}: {e}", fault.name()));
    }
    r
}

/// A line on stderr, past the test harness's capture (progress of a long test).
pub fn say(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "e2e-faults: {line}");
}

fn count(r: &mut RunResult, v: &Verdict) {
    r.duplicates = v.duplicates;
    r.orphans = v.orphans;
    r.ip_duplicates = v.ip_duplicates;
}

/// Polls the invariants from `since` until they hold twice [`STABLE`] apart: the time from
/// `since` to the first of the two, and that verdict; or the last verdict after
/// [`RECOVERY_TIMEOUT`] (or as soon as a process of the lab exits).
pub fn recover(lab: &FaultLab, since: Instant) -> std::result::Result<(Duration, Verdict), Verdict> {
    let deadline = since + RECOVERY_TIMEOUT;
    let mut first_ok: Option<Instant> = None;
    loop {
        let at = Instant::now();
        if let Err(e) = lab.ensure_all_alive() {
            return Err(Verdict { problems: vec![format!("{e:#}")], ..Verdict::default() });
        }
        let v = invariants::check(lab)
            .unwrap_or_else(|e| Verdict { problems: vec![format!("{e:#}")], ..Verdict::default() });
        if v.holds() {
            match first_ok {
                Some(first) if at.duration_since(first) >= STABLE => {
                    return Ok((first.saturating_duration_since(since), v));
                }
                Some(_) => {}
                None => first_ok = Some(at),
            }
        } else {
            first_ok = None;
            if at >= deadline {
                return Err(v);
            }
        }
        sleep(Duration::from_millis(250));
    }
}

// ------------------------------------------------------------------------------- the faults

fn worker_kill(lab: &mut FaultLab, notes: &mut Vec<String>) -> Result<Ended> {
    let target = lab.busiest_worker(&["e1", "e2", "w1", "w2"])?;
    notes.push(format!("killed {target}"));
    let w = lab.worker_mut(&target);
    w.proc.kill9()?;
    w.proc.start()?;
    Ok(ended(&target))
}

fn cluster_kill(lab: &mut FaultLab, notes: &mut Vec<String>) -> Result<Ended> {
    let worker = lab.busiest_worker(&["e1", "e2", "w1", "w2"])?;
    let target = lab.worker(&worker).cluster.clone();
    notes.push(format!("killed cluster {target}"));
    let c = lab.cluster_mut(&target);
    c.proc.kill9()?;
    c.proc.start()?;
    Ok(ended(&worker))
}

fn root_kill(lab: &mut FaultLab, poller: &Poller, notes: &mut Vec<String>) -> Result<Ended> {
    let worker = lab.busiest_worker(&["e1", "e2", "w1", "w2"])?;
    poller.set_root_down(true);
    let killed = Instant::now();
    let restarted = (|| {
        lab.root.kill9()?;
        lab.root.start()?;
        let e = ended(&worker);
        wait_until("the restarted root's API", Duration::from_secs(30), Duration::from_millis(50), || {
            lab.root.ensure_alive()?;
            Ok(lab.api.get("/api/services/").ok())
        })?;
        Ok(e)
    })();
    poller.set_root_down(false);
    notes.push(format!("API back {:.2} s after the kill", killed.elapsed().as_secs_f64()));
    restarted
}

/// DROP rules on `eth0` of a lab host (its only link to the others), removed on drop.
struct Partition {
    host: Host,
    rules: Vec<Vec<String>>,
}

impl Partition {
    fn cut(host: &Host) -> Result<Partition> {
        Partition::with(host, &[], false)
    }

    /// DROP of the packets on eth0 matching `extra` (nothing: all of them), both ways or only
    /// those leaving.
    fn with(host: &Host, extra: &[&str], egress_only: bool) -> Result<Partition> {
        let mut p = Partition { host: host.clone(), rules: Vec::new() };
        let both = [("INPUT", "-i"), ("OUTPUT", "-o"), ("FORWARD", "-i"), ("FORWARD", "-o")];
        let chains = if egress_only { &[both[1], both[3]][..] } else { &both[..] };
        for &(chain, dir) in chains {
            let mut rule: Vec<String> = vec![chain.into(), dir.into(), "eth0".into()];
            rule.extend(extra.iter().map(|s| s.to_string()));
            rule.extend(["-j".into(), "DROP".into()]);
            let mut args = vec!["-w".to_string(), "-I".into(), chain.into(), "1".into()];
            args.extend(rule[1..].iter().cloned());
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            host.run_ok("iptables", &args)?;
            p.rules.push(rule);
        }
        Ok(p)
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        for rule in &self.rules {
            let mut args: Vec<&str> = vec!["-w", "-D"];
            args.extend(rule.iter().map(String::as_str));
            if let Err(e) = self.host.run_ok("iptables", &args) {
                say(&format!("healing {}: {e:#}", self.host.name()));
            }
        }
    }
}

/// Seconds the instances of the first service spent off `worker` before it is healed, or how
/// long the partition lasted without that.
fn hold_partition(lab: &FaultLab, for_at_least: Duration, gone_from: &[String], notes: &mut Vec<String>) {
    let started = Instant::now();
    let limit = for_at_least + Duration::from_secs(10);
    let mut moved_at = None;
    while started.elapsed() < limit {
        if moved_at.is_none() && moved_off(lab, gone_from).unwrap_or(false) {
            moved_at = Some(started.elapsed());
        }
        if started.elapsed() >= for_at_least && moved_at.is_some() {
            break;
        }
        sleep(POLL);
    }
    match moved_at {
        Some(d) => {
            notes.push(format!("its instances were RUNNING elsewhere {:.1} s into the partition", d.as_secs_f64()))
        }
        None => notes.push(format!(
            "its instances were not re-placed during the {:.0} s partition",
            started.elapsed().as_secs_f64()
        )),
    }
}

/// Every instance of the first service is RUNNING on a worker not in `workers`.
fn moved_off(lab: &FaultLab, workers: &[String]) -> Result<bool> {
    let service = lab.desired.first().context("no service")?;
    let all = lab.instances(&service.id)?;
    Ok(!all.is_empty()
        && all.iter().all(|i| {
            i["status"] == "RUNNING"
                && i["worker_id"]
                    .as_str()
                    .and_then(|id| lab.worker_by_id(id))
                    .is_some_and(|w| !workers.contains(&w.name))
        }))
}

fn worker_partition(lab: &mut FaultLab, notes: &mut Vec<String>) -> Result<Ended> {
    let target = lab.busiest_worker(&["e1", "e2", "w1", "w2"])?;
    notes.push(format!("partitioned {target}"));
    let cut = Partition::cut(&lab.worker(&target).proc.host)?;
    hold_partition(lab, Duration::from_secs(WORKER_TIMEOUT_S + 4), std::slice::from_ref(&target), notes);
    lab.worker(&target).proc.ensure_alive()?;
    drop(cut);
    Ok(ended(&target))
}

fn cluster_partition(lab: &mut FaultLab, notes: &mut Vec<String>) -> Result<Ended> {
    let worker = lab.busiest_worker(&["e1", "e2", "w1", "w2"])?;
    let target = lab.worker(&worker).cluster.clone();
    let workers: Vec<String> = lab.workers.iter().filter(|w| w.cluster == target).map(|w| w.name.clone()).collect();
    notes.push(format!("partitioned cluster {target}"));
    let host = lab.clusters.iter().find(|c| c.name == target).context("cluster")?.proc.host.clone();
    let cut = Partition::cut(&host)?;
    let hold = if lab.flags.iter().any(|f| f.contains("--cluster-timeout")) {
        CLUSTER_TIMEOUT_S + 4
    } else {
        WORKER_TIMEOUT_S + 4
    };
    hold_partition(lab, Duration::from_secs(hold), &workers, notes);
    drop(cut);
    Ok(ended(&worker))
}

/// 20 % loss and 100 ms delay on what a worker sends on its link (`tc netem` on its `eth0`)
/// where the kernel has `sch_netem`, else 20 % loss of the same packets by iptables'
/// `statistic` match, without delay.
enum Impairment {
    Netem { host: Host },
    Statistic(#[allow(dead_code)] Partition),
}

impl Impairment {
    fn apply(host: &Host, notes: &mut Vec<String>) -> Result<Impairment> {
        let netem = ["qdisc", "add", "dev", "eth0", "root", "netem", "loss", "20%", "delay", "100ms"];
        let out = host.run("tc", &netem)?;
        if out.status.success() {
            notes.push("tc netem loss 20% delay 100ms on its eth0".into());
            return Ok(Impairment::Netem { host: host.clone() });
        }
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(err.contains("qdisc kind is unknown"), "tc netem: {err}");
        notes.push("no sch_netem in this kernel: 20 % loss of what it sends by iptables statistic, no delay".into());
        let random = ["-m", "statistic", "--mode", "random", "--probability", "0.2"];
        Ok(Impairment::Statistic(Partition::with(host, &random, true)?))
    }
}

impl Drop for Impairment {
    fn drop(&mut self) {
        if let Impairment::Netem { host } = self {
            let _ = host.run("tc", &["qdisc", "del", "dev", "eth0", "root"]);
        }
    }
}

fn lossy_link(lab: &mut FaultLab, notes: &mut Vec<String>) -> Result<Ended> {
    let target = lab.busiest_worker(&["e1", "e2", "w1", "w2"])?;
    notes.push(format!("lossy link of {target}"));
    let placement = current_placement(lab)?;
    let tasks = all_tasks(lab)?;
    let (cluster, id) = {
        let w = lab.worker(&target);
        (lab.cluster_ids.get(&w.cluster).cloned().context("cluster id")?, w.id.clone())
    };
    let imp = Impairment::apply(&lab.worker(&target).proc.host, notes)?;
    let started = Instant::now();
    let mut problems = Vec::new();
    while started.elapsed() < LOSSY_FOR {
        let now = current_placement(lab)?;
        if now != placement {
            problems.push(format!(
                "placement changed {:.1} s in: {placement:?} → {now:?}",
                started.elapsed().as_secs_f64()
            ));
            break;
        }
        let workers = lab.api.get(&format!("/api/clusters/{cluster}/workers"))?;
        let active = workers["workers"].as_array().into_iter().flatten().any(|w| w["id"] == id && w["active"] == true);
        if !active {
            problems.push(format!("{target} was declared inactive {:.1} s in", started.elapsed().as_secs_f64()));
            break;
        }
        sleep(Duration::from_millis(500));
    }
    drop(imp);
    let end = ended(&target);
    let after = all_tasks(lab)?;
    if after != tasks {
        problems.push(format!("tasks changed (redeployed): {tasks:?} → {after:?}"));
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(end)
}

/// (job, instance) → (status, worker id) of every desired service.
fn current_placement(lab: &FaultLab) -> Result<BTreeMap<(String, u64), (String, String)>> {
    let mut m = BTreeMap::new();
    for s in &lab.desired {
        for i in lab.instances(&s.id)? {
            m.insert(
                (s.job.clone(), i["instance_number"].as_u64().unwrap_or(u64::MAX)),
                (i["status"].as_str().unwrap_or("").to_string(), i["worker_id"].as_str().unwrap_or("").to_string()),
            );
        }
    }
    Ok(m)
}

/// worker → its (task, pid) list.
fn all_tasks(lab: &FaultLab) -> Result<BTreeMap<String, Vec<(String, u32)>>> {
    let mut m = BTreeMap::new();
    for w in &lab.workers {
        let mut t: Vec<(String, u32)> = lab.tasks(w)?.into_iter().map(|(id, pid, _)| (id, pid)).collect();
        t.sort();
        m.insert(w.name.clone(), t);
    }
    Ok(m)
}

fn containerd_kill(lab: &mut FaultLab, notes: &mut Vec<String>) -> Result<Ended> {
    let target = lab.busiest_worker(&["e1", "e2", "w1", "w2"])?;
    let before = all_tasks(lab)?;
    lab.worker_mut(&target).containerd.kill()?;
    sleep(CONTAINERD_DOWN);
    lab.worker(&target).proc.ensure_alive().context("the worker without its containerd")?;
    let t = ended(&target);
    lab.worker_mut(&target).containerd.restart()?;
    let after = all_tasks(lab)?;
    notes.push(format!(
        "killed {target}'s containerd for {CONTAINERD_DOWN:?}; its containers {}",
        if after.get(&target) == before.get(&target) { "kept running (same tasks and pids)" } else { "changed" }
    ));
    Ok(t)
}

/// Fills the tmpfs under [`DISK_WORKER`]'s data directory, deploys an instance pinned there
/// (it must fail naming the full disk, the worker must live on and keep its state file), then
/// frees the space: the instance must then run (recovery).
fn disk_full(lab: &mut FaultLab, run: usize, notes: &mut Vec<String>) -> Result<Ended> {
    let (data, cluster) = {
        let w = lab.worker(DISK_WORKER);
        (w.data.clone(), w.cluster.clone())
    };
    // `None` while the worker never had an instance to record.
    let state_before = std::fs::read(data.join("instances.json")).ok();
    let fill = data.join("fill");
    let written = fill_up(&fill)?;
    notes.push(format!("filled {DISK_WORKER}'s data dir with {} KiB", written / 1024));
    let deployed = (|| -> Result<()> {
        let name = format!("diskfull{run}");
        let service =
            lab.create_service(&name, 1, json!([{"type": "direct", "node": DISK_WORKER, "cluster": cluster}]))?;
        lab.desired.push(service.clone());
        let inst = wait_until("the deploy on the full disk to fail", Duration::from_secs(40), POLL, || {
            lab.worker(DISK_WORKER).proc.ensure_alive().map_err(|e| oak_e2e::procs::Hopeless(format!("{e:#}")))?;
            let all = lab.instances(&service.id)?;
            let Some(i) = all.first() else { return Ok(None) };
            if i["status"] == "RUNNING" {
                return Err(oak_e2e::procs::Hopeless(format!("RUNNING on a full disk: {}", brief(i))).into());
            }
            Ok((i["status"] == "FAILED" && !i["status_detail"].as_str().unwrap_or("").is_empty()).then(|| i.clone()))
        })?;
        let detail = inst["status_detail"].as_str().unwrap_or("");
        notes.push(format!("deploy FAILED: {detail}"));
        ensure!(detail.contains("No space left on device"), "the failure does not name the full disk: {detail}");
        lab.worker(DISK_WORKER).proc.ensure_alive()?;
        // The state file is intact: what ran there is still recorded, nothing half-written.
        let state_now = std::fs::read(data.join("instances.json")).ok();
        if let Some(bytes) = &state_now {
            let parsed: Value = serde_json::from_slice(bytes).context("instances.json no longer parses")?;
            ensure!(parsed["instances"].is_array(), "instances.json: {parsed}");
        }
        ensure!(state_now == state_before, "instances.json changed while the disk was full");
        ensure!(!data.join("instances.json.tmp").exists(), "a partial instances.json.tmp was left on the full disk");
        Ok(())
    })();
    let freed = std::fs::remove_file(&fill).context("freeing the space");
    let t = Ended { at: Instant::now(), probe: None };
    deployed?;
    freed?;
    Ok(t)
}

/// Writes zeros to `path` until the file system is full; the bytes written.
fn fill_up(path: &std::path::Path) -> Result<u64> {
    let mut f = std::fs::File::create(path)?;
    let mut written = 0u64;
    for chunk in [1 << 20, 4096, 1] {
        let buf = vec![0u8; chunk];
        loop {
            match f.write(&buf) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
    let _ = f.sync_all();
    Ok(written)
}

/// Adds an instance to `probe<worker>` (retried while the API does not take it) and to the
/// desired set.
fn add_probe(lab: &mut FaultLab, worker: &str) -> Result<()> {
    let name = format!("probe{worker}");
    let service =
        lab.desired.iter().find(|s| s.job.starts_with(&format!("{name}."))).cloned().context("probe service")?;
    let n = wait_until(&format!("the API to take an instance of {name}"), Duration::from_secs(30), POLL, || {
        let a = lab.api.call(reqwest::Method::POST, &format!("/api/service/{}/instance", service.id), None)?;
        Ok(a["instance_number"].as_u64())
    })?;
    let s = lab.desired.iter_mut().find(|s| s.id == service.id).context("probe service")?;
    s.instances.insert(n);
    Ok(())
}

/// Deletes every probe instance and waits until their containers are gone.
fn remove_probes(lab: &mut FaultLab) -> Result<()> {
    let probes: Vec<(String, String, Vec<u64>)> = lab
        .desired
        .iter()
        .filter(|s| s.job.starts_with("probe") && !s.instances.is_empty())
        .map(|s| (s.id.clone(), s.job.clone(), s.instances.iter().copied().collect()))
        .collect();
    for (id, _, numbers) in &probes {
        for n in numbers {
            lab.api.call(reqwest::Method::DELETE, &format!("/api/service/{id}/instance/{n}"), None)?;
        }
        if let Some(s) = lab.desired.iter_mut().find(|s| s.id == *id) {
            s.instances.clear();
        }
    }
    wait_until("the probe instances' containers to go", Duration::from_secs(40), POLL, || {
        for w in &lab.workers {
            let left: Vec<String> = lab
                .containers(w)?
                .into_iter()
                .filter(|c| probes.iter().any(|(_, job, _)| c.starts_with(&format!("{job}.instance."))))
                .collect();
            if !left.is_empty() {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
}

/// Deletes the disk-full run's service and waits until its container is gone.
fn after_disk_full(lab: &mut FaultLab) -> Result<()> {
    let Some(service) = lab.desired.iter().find(|s| s.job.starts_with("diskfull")).cloned() else { return Ok(()) };
    lab.delete_service(&service.id)?;
    let w = lab.worker(DISK_WORKER);
    wait_until("the disk-full service's container to go", Duration::from_secs(40), POLL, || {
        let left: Vec<String> =
            lab.containers(w)?.into_iter().filter(|c| c.starts_with(&format!("{}.instance.", service.job))).collect();
        Ok(left.is_empty().then_some(()))
    })
}
