//! Fault injection (issue 16), end to end: a root, clusters `east` and `west` with two workers
//! each as real `oakestra` processes in network namespaces (`okflt-…`, 10.99.79.0/24, apart from
//! `e2e_lab`'s), one containerd per worker, a local registry, and a service of six busybox
//! instances spread over the workers. Faults, one after the other, each healed:
//!
//! - `kill -9` and immediate restart of a worker, of a cluster, of the root;
//! - a network partition (iptables DROP on the host's link) of a worker, then of a cluster, for
//!   longer than the cluster's worker timeout (the root's cluster timeout when it has one);
//! - a lossy link: 20 % loss and 100 ms delay (`tc netem` on the worker's `eth0`; without
//!   `sch_netem` 20 % loss of the same packets by iptables) for 10 s: nothing may be
//!   redeployed, the worker stays active;
//! - a worker's containerd killed and restarted;
//! - the disk-full worker (`w2`, data directory on a 16 MiB tmpfs) filled up, then a deploy
//!   pinned to it: it must FAIL naming the full disk, the worker live on with its state file
//!   intact; after the space is freed the instance runs.
//!
//! After each fault the invariants of `e2e_faults/invariants.rs` must hold again (every desired
//! instance RUNNING exactly once, no orphan container, task, namespace or veth, no duplicate
//! IP) within 90 s; the time from the fault's end (restart, heal) until they hold is its
//! recovery time. A poller reads the API every 100 ms throughout; failures count unless the
//! root is down on purpose. The suite prints a table per fault (runs, recovery p50/max,
//! duplicates, orphans, API failures) and fails if any run failed. One run per fault by
//! default; `OAK_FAULT_RUNS=3` runs each three times.
//!
//! Needs root and the lab's tools (skips otherwise, fails under `CI=true`). Run alone with
//! `flock /tmp/oak-e2e.lock cargo test -p oakestra --test e2e_faults -- --nocapture`. On
//! failure the logs' tails and the lab's state are printed and the work directory
//! (`/var/tmp/oak-e2e/e2e-faults-…`) is kept.

#[path = "e2e_faults/invariants.rs"]
mod invariants;
#[path = "e2e_faults/lab.rs"]
mod lab;
#[path = "e2e_faults/poller.rs"]
mod poller;
#[path = "e2e_faults/scenarios.rs"]
mod scenarios;

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use lab::{FaultLab, PREFIX, SUBNET};
use oak_e2e::{wait_until, Lab, Workdir};
use scenarios::{say, RunResult};
use serde_json::json;

/// Instances of the service the faults hit.
const INSTANCES: u64 = 6;

#[test]
fn faults_root_two_clusters_four_workers() {
    use oak_e2e::Need::{Path, Root, Tool};
    let tools = [
        "containerd",
        "runc",
        "ctr",
        "docker-registry",
        "skopeo",
        "ip",
        "nsenter",
        "iptables",
        "tc",
        "busybox",
        "mount",
        "umount",
    ];
    let needs: Vec<_> = [Root, Path("/dev/net/tun")].into_iter().chain(tools.map(Tool)).collect();
    if !oak_e2e::can_run("faults_root_two_clusters_four_workers", &needs) {
        return;
    }
    let runs: usize = match std::env::var("OAK_FAULT_RUNS") {
        Ok(v) => v.parse().ok().filter(|n| *n >= 1).expect("OAK_FAULT_RUNS must be a number ≥ 1"),
        Err(_) => 1,
    };
    let started = Instant::now();
    let mut work = Workdir::new("e2e-faults").unwrap();
    say(&format!("work directory {}", work.path().display()));
    let mut net = Lab::new(PREFIX, SUBNET).unwrap();
    let mut lab = match FaultLab::setup(&mut net, &work) {
        Ok(l) => l,
        Err(e) => {
            work.keep();
            for p in ["root", "cluster-east", "cluster-west", "worker-e1", "worker-e2", "worker-w1", "worker-w2"] {
                lab::print_tail(&work.join(format!("{p}.log")));
            }
            panic!("setting up the fault lab: {e:#}");
        }
    };
    say(&format!("lab up after {:?} ({})", started.elapsed(), lab.flags.join(", ")));

    let mut results: Vec<RunResult> = Vec::new();
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| -> Result<()> {
        let service = lab.create_service("steady", INSTANCES, json!([]))?;
        lab.desired.push(service);
        for (worker, cluster) in lab.workers.iter().map(|w| (w.name.clone(), w.cluster.clone())).collect::<Vec<_>>() {
            let probe = lab.create_service(
                &format!("probe{worker}"),
                0,
                json!([{"type": "direct", "node": worker, "cluster": cluster}]),
            )?;
            lab.desired.push(probe);
        }
        if let Err(v) = scenarios::recover(&lab, Instant::now()) {
            bail!("the service never ran as desired: {}", v.problems.join("; "));
        }
        say(&format!("{INSTANCES} instances running after {:?}", started.elapsed()));
        let poller = poller::Poller::start(&lab.api.base)?;
        for fault in scenarios::ALL {
            for run in 0..runs {
                results.push(scenarios::run(&mut lab, &poller, fault, run));
            }
        }
        let total = poller.counts();
        drop(poller);
        say(&format!(
            "API poller: {} requests, {} failures, {} while the root was down",
            total.requests, total.failures, total.tolerated
        ));
        teardown(&mut lab)
    }));
    print_table(&results, runs);
    let mut failures: Vec<String> =
        results.iter().filter_map(|r| r.error.as_ref().map(|e| format!("{}: {e}", r.fault.name()))).collect();
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => failures.push(format!("{e:#}")),
        Err(panic) => failures.push(
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into()),
        ),
    }
    if !failures.is_empty() {
        work.keep();
        lab.dump();
        for p in lab.procs_mut() {
            let _ = p.stop();
        }
        lab.force_clean();
        drop(lab);
        drop(net);
        panic!("e2e-faults failed after {:?}:\n{}", started.elapsed(), failures.join("\n"));
    }
    lab.remove_leftover_dirs();
    drop(lab);
    drop(net);
    say(&format!("passed in {:?}", started.elapsed()));
}

/// Deletes every service, waits until every containerd is empty, stops every process (which
/// must exit cleanly) and checks that no instance namespace of the lab's workers is left.
fn teardown(lab: &mut FaultLab) -> Result<()> {
    for id in lab.desired.iter().map(|s| s.id.clone()).collect::<Vec<_>>() {
        lab.delete_service(&id)?;
    }
    let empty = |lab: &FaultLab| -> Result<Option<()>> {
        for w in &lab.workers {
            let (c, t) = (lab.containers(w)?, lab.tasks(w)?);
            if !c.is_empty() || !t.is_empty() {
                bail!("{}: containers {c:?}, tasks {t:?}", w.name);
            }
        }
        Ok(Some(()))
    };
    wait_until("every containerd to be empty after the undeploys", Duration::from_secs(60), lab::POLL, || empty(lab))?;
    let mut errors = Vec::new();
    for p in lab.procs_mut() {
        match p.stop() {
            Ok(Some(s)) if !s.success() => errors.push(format!("{} exited with {s} on SIGTERM", p.name)),
            Ok(_) => {}
            Err(e) => errors.push(format!("stopping {}: {e:#}", p.name)),
        }
    }
    if !errors.is_empty() {
        bail!("{errors:?}");
    }
    let prefixes: Vec<String> = lab.workers.iter().map(|w| invariants::netns_prefix(&w.id)).collect();
    let left: Vec<String> =
        lab::instance_namespaces().into_iter().filter(|n| prefixes.iter().any(|p| n.starts_with(p))).collect();
    if !left.is_empty() {
        bail!("instance namespaces left after the workers stopped: {left:?}");
    }
    Ok(())
}

/// The summary, past the harness's capture so it shows in every run.
fn print_table(results: &[RunResult], runs: usize) {
    let mut out = String::new();
    out.push_str(&format!(
        "\n{:<30} {:>4} {:>13} {:>13} {:>10} {:>7} {:>18}  {}\n",
        "fault", "runs", "recovery p50", "recovery max", "duplicates", "orphans", "API failures", "result"
    ));
    for fault in scenarios::ALL {
        let rs: Vec<&RunResult> = results.iter().filter(|r| r.fault == fault).collect();
        if rs.is_empty() {
            out.push_str(&format!(
                "{:<30} {:>4} {:>13} {:>13} {:>10} {:>7} {:>18}  not run\n",
                fault.name(),
                0,
                "-",
                "-",
                "-",
                "-",
                "-"
            ));
            continue;
        }
        let mut times: Vec<Duration> = rs.iter().filter_map(|r| r.recovery).collect();
        times.sort();
        let secs = |d: Option<&Duration>| d.map(|d| format!("{:.1} s", d.as_secs_f64())).unwrap_or_else(|| "-".into());
        let p50 = secs(times.get(times.len().saturating_sub(1) / 2));
        let max = secs(times.last());
        let dups: usize = rs.iter().map(|r| r.duplicates).sum();
        let orphans: usize = rs.iter().map(|r| r.orphans).sum();
        let failures: u64 = rs.iter().map(|r| r.api.failures).sum();
        let tolerated: u64 = rs.iter().map(|r| r.api.tolerated).sum();
        let api = if tolerated > 0 { format!("{failures} (+{tolerated} down)") } else { failures.to_string() };
        let failed = rs.iter().filter(|r| r.error.is_some()).count();
        let result = if failed == 0 { "ok".to_string() } else { format!("FAILED {failed}/{}", rs.len()) };
        out.push_str(&format!(
            "{:<30} {:>4} {:>13} {:>13} {:>10} {:>7} {:>18}  {result}\n",
            fault.name(),
            rs.len(),
            p50,
            max,
            dups,
            orphans,
            api
        ));
    }
    out.push_str(&format!("({runs} run(s) per fault; recovery from the fault's end to every invariant holding)\n"));
    for r in results {
        if !r.notes.is_empty() {
            out.push_str(&format!("  {}: {}\n", r.fault.name(), r.notes.join("; ")));
        }
    }
    say(&out);
}
