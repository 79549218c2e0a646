//! What must hold after every fault, read from the public API, each worker's containerd (`ctr`),
//! `/run/netns`, the workers' links (`ip`) and their overlay state files:
//!
//! - every desired instance is listed once, RUNNING, on a worker of the lab;
//! - its container exists in that worker's containerd only (never on two workers: a duplicate)
//!   and its task runs;
//! - no container or task any worker's containerd holds beyond those (orphans);
//! - no instance namespace `oak-<node>-…` or veth `oakv…` beyond the wired instances and the one
//!   a worker wires ahead for its next instance (orphans), and every wired instance's namespace
//!   exists;
//! - no instance IP twice in the API, no namespace address twice on a worker;
//! - the root has both clusters connected and they report every worker active.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use anyhow::{Context, Result};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::lab::{FaultLab, Worker};

/// One look at the whole lab.
#[derive(Debug, Default, Clone)]
pub struct Verdict {
    /// Everything that does not hold, readable.
    pub problems: Vec<String>,
    /// Instances whose container exists on more than one worker.
    pub duplicates: usize,
    /// Containers, tasks, namespaces, veths and wirings nobody wants.
    pub orphans: usize,
    /// Instance IPs (API) or namespace addresses (one worker) used twice.
    pub ip_duplicates: usize,
    /// (job, instance) → worker name, as the API places them.
    pub placement: BTreeMap<(String, u64), String>,
}

impl Verdict {
    pub fn holds(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(&mut self, p: String) {
        self.problems.push(p);
    }
}

/// The namespace prefix of a node's instances (`oak-<8 hex of SHA-256 of the id>-`), as the
/// worker names them.
pub fn netns_prefix(node_id: &str) -> String {
    format!("oak-{}-", &hex::encode(Sha256::digest(node_id.as_bytes()))[..8])
}

/// Checks everything; an `Err` only when the API itself cannot be read.
pub fn check(lab: &FaultLab) -> Result<Verdict> {
    let mut v = Verdict::default();
    // ---- the API's view
    let mut ips: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for service in &lab.desired {
        let listed = lab.instances(&service.id).with_context(|| format!("reading service {}", service.job))?;
        let mut seen = BTreeSet::new();
        for inst in &listed {
            let n = inst["instance_number"].as_u64().unwrap_or(u64::MAX);
            let label = format!("{}#{n}", service.job);
            if !service.instances.contains(&n) {
                v.problem(format!("{label}: listed but not desired ({})", brief(inst)));
                continue;
            }
            if !seen.insert(n) {
                v.problem(format!("{label}: listed twice"));
            }
            if let Some(ip) = inst["instance_ip"].as_str().filter(|s| !s.is_empty()) {
                ips.entry(ip.to_string()).or_default().push(label.clone());
            }
            if inst["status"] != "RUNNING" {
                v.problem(format!("{label}: {}", brief(inst)));
                continue;
            }
            match inst["worker_id"].as_str().and_then(|id| lab.worker_by_id(id)) {
                Some(w) => {
                    v.placement.insert((service.job.clone(), n), w.name.clone());
                }
                None => v.problem(format!("{label}: RUNNING on no worker of the lab ({})", brief(inst))),
            }
        }
        for n in service.instances.difference(&seen) {
            v.problem(format!("{}#{n}: not listed", service.job));
        }
    }
    for (ip, holders) in &ips {
        if holders.len() > 1 {
            v.ip_duplicates += 1;
            v.problem(format!("instance IP {ip} used by {holders:?}"));
        }
    }

    // ---- the fleet as the root sees it
    for (name, id) in &lab.cluster_ids {
        let workers = lab.api.get(&format!("/api/clusters/{id}/workers"))?;
        if workers["connected"] != true {
            v.problem(format!("cluster {name} is not connected to the root"));
            continue;
        }
        for w in lab.workers.iter().filter(|w| w.cluster == *name) {
            let listed = workers["workers"].as_array().into_iter().flatten().find(|x| x["id"] == w.id.as_str());
            if !listed.is_some_and(|x| x["active"] == true) {
                v.problem(format!("worker {} is not active in cluster {name}", w.name));
            }
        }
    }

    // ---- containerd: where each instance's container is, and what else is there
    let mut holders: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for w in &lab.workers {
        let expected: BTreeSet<String> = v
            .placement
            .iter()
            .filter(|(_, on)| **on == w.name)
            .map(|((job, n), _)| format!("{job}.instance.{n}"))
            .collect();
        let (containers, tasks) = match (lab.containers(w), lab.tasks(w)) {
            (Ok(c), Ok(t)) => (c, t),
            (Err(e), _) | (_, Err(e)) => {
                v.problem(format!("{}: containerd does not answer: {e:#}", w.name));
                continue;
            }
        };
        for c in &containers {
            holders.entry(c.clone()).or_default().push(w.name.clone());
            if !expected.contains(c) && !is_desired_elsewhere(lab, c) {
                v.orphans += 1;
                v.problem(format!("{}: orphan container {c}", w.name));
            }
        }
        for (id, pid, status) in &tasks {
            if !containers.contains(id) || (!expected.contains(id) && !is_desired_elsewhere(lab, id)) {
                v.orphans += 1;
                v.problem(format!("{}: orphan task {id} (pid {pid}, {status})", w.name));
            }
        }
        for c in &expected {
            match tasks.iter().find(|(id, _, _)| id == c) {
                Some((_, _, status)) if status == "RUNNING" => {}
                Some((_, pid, status)) => v.problem(format!("{}: task {c} is {status} (pid {pid})", w.name)),
                None if containers.contains(c) => v.problem(format!("{}: container {c} has no task", w.name)),
                None => v.problem(format!("{}: no container {c} although the API places it there", w.name)),
            }
        }
    }
    for (container, on) in &holders {
        if on.len() > 1 {
            v.duplicates += 1;
            v.problem(format!("duplicate: {container} on {on:?}"));
        }
    }
    // A desired instance's container on a worker the API does not name is a duplicate (above,
    // if it also runs where the API says) or misplaced.
    for ((job, n), on) in &v.placement.clone() {
        let c = format!("{job}.instance.{n}");
        if let Some(ws) = holders.get(&c) {
            for w in ws.iter().filter(|w| *w != on) {
                v.problem(format!("{c} runs on {w} but the API places it on {on}"));
            }
        }
    }

    // ---- the overlay: namespaces, veths, wirings
    let netns = super::lab::instance_namespaces();
    for w in &lab.workers {
        overlay(w, &netns, &mut v);
    }
    Ok(v)
}

/// Whether `container` is a desired instance the API places on some worker (then it is judged
/// as a duplicate or misplacement, not as an orphan).
fn is_desired_elsewhere(lab: &FaultLab, container: &str) -> bool {
    lab.desired.iter().any(|s| {
        container
            .strip_prefix(&format!("{}.instance.", s.job))
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| s.instances.contains(&n))
    })
}

fn overlay(w: &Worker, netns: &BTreeSet<String>, v: &mut Verdict) {
    let expected: BTreeSet<(String, u64)> =
        v.placement.iter().filter(|(_, on)| **on == w.name).map(|(k, _)| k.clone()).collect();
    let file = w.data.join("overlay.json");
    let attachments: Vec<Value> = match std::fs::read(&file) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let mut wired_netns = BTreeSet::new();
    let mut wired_veths = BTreeSet::new();
    let mut nsips: BTreeMap<String, usize> = BTreeMap::new();
    let mut wired = BTreeSet::new();
    for a in &attachments {
        let key = (a["job_name"].as_str().unwrap_or("").to_string(), a["instance"].as_u64().unwrap_or(u64::MAX));
        let ns = a["wiring"]["netns"].as_str().unwrap_or("").to_string();
        *nsips.entry(a["wiring"]["nsip"].as_str().unwrap_or("").to_string()).or_default() += 1;
        if !expected.contains(&key) {
            v.orphans += 1;
            v.problem(format!("{}: wiring of {}#{} which does not run there", w.name, key.0, key.1));
        } else if !netns.contains(&ns) {
            v.problem(format!("{}: namespace {ns} of {}#{} is missing", w.name, key.0, key.1));
        }
        wired.insert(key);
        wired_netns.insert(ns);
        wired_veths.insert(a["wiring"]["veth"].as_str().unwrap_or("").to_string());
    }
    for key in expected.difference(&wired) {
        v.problem(format!("{}: {}#{} runs without a wiring in overlay.json", w.name, key.0, key.1));
    }
    for (ip, n) in nsips {
        if n > 1 {
            v.ip_duplicates += 1;
            v.problem(format!("{}: namespace address {ip} wired {n} times", w.name));
        }
    }
    // Beyond the wired ones, one namespace and veth may be the one wired ahead.
    let prefix = netns_prefix(&w.id);
    let spare_ns: Vec<&String> = netns.iter().filter(|n| n.starts_with(&prefix) && !wired_netns.contains(*n)).collect();
    if spare_ns.len() > 1 {
        v.orphans += spare_ns.len() - 1;
        v.problem(format!("{}: orphan namespaces {spare_ns:?}", w.name));
    }
    match veths(w) {
        Ok(veths) => {
            let spare: Vec<&String> = veths.iter().filter(|l| !wired_veths.contains(*l)).collect();
            if spare.len() > 1 {
                v.orphans += spare.len() - 1;
                v.problem(format!("{}: orphan veths {spare:?}", w.name));
            }
        }
        Err(e) => v.problem(format!("{}: listing links: {e:#}", w.name)),
    }
}

/// The `oakv…` links in the worker's network namespace.
fn veths(w: &Worker) -> Result<Vec<String>> {
    let out = Command::new("ip").args(["-n", w.proc.host.netns(), "-o", "link", "show"]).output()?;
    anyhow::ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|f| f.trim_end_matches(':').split('@').next().unwrap_or("").to_string())
        .filter(|n| n.starts_with("oakv"))
        .collect())
}

/// `STATUS@worker (detail)` of an instance.
pub fn brief(inst: &Value) -> String {
    format!(
        "{}@{} ({})",
        inst["status"].as_str().unwrap_or("?"),
        inst["worker_name"].as_str().or(inst["worker_id"].as_str()).unwrap_or("-"),
        inst["status_detail"].as_str().unwrap_or("")
    )
}
