//! `oak-bench placement` (target P3): the decision time of both schedulers, measured in this
//! process with nothing else competing for the cores, on the sizes `targets.md` names: the
//! cluster scheduler choosing among 1,000 workers, the root scheduler among 100 clusters.
//!
//! Each decision is what the tier does per instance: the cluster runs `choose_node` over its
//! cached node views; the root copies every connected cluster's view, subtracts the outstanding
//! reservations and runs `choose_cluster`. Jobs cycle through plain, GPU, `arch` and `direct`
//! constraints. The floor, same run: one pass over the same views that only reads each one (the
//! least any scheduler that looks at every candidate must do). `hollow` measures the same code
//! under full load, where the p99 mostly shows how long the OS kept the thread waiting.

use std::hint::black_box;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use oak_api::channel::ResourceTotals;
use oak_api::model::{Cluster, Service};
use oak_api::node::NodeInfo;
use oak_api::sla::Microservice;
use oak_core::node_placement::{choose_node, Demand, NodeView};
use oak_core::placement::choose_cluster;
use oak_core::reservations::Reservations;
use serde_json::json;

use crate::machine::{Commit, Machine};
use crate::report::{self, Summary, Table};

const P3_MAX_P99_S: f64 = 0.001;

#[derive(Args, Debug, Clone)]
pub struct PlacementArgs {
    /// Workers the cluster scheduler chooses among.
    #[arg(long, default_value_t = 1000)]
    pub nodes: usize,
    /// Clusters the root scheduler chooses among.
    #[arg(long, default_value_t = 100)]
    pub clusters: usize,
    /// Outstanding reservations at the root, spread over the clusters.
    #[arg(long, default_value_t = 1000)]
    pub reservations: usize,
    /// Decisions measured per tier.
    #[arg(long, default_value_t = 20_000)]
    pub decisions: usize,
    /// Where the JSON result goes.
    #[arg(long, default_value = "bench/results")]
    pub results: PathBuf,
}

fn job(i: usize) -> Microservice {
    let mut spec = json!({
        "microservice_name": format!("s{i}"), "microservice_namespace": "bench",
        "virtualization": "docker", "code": "img", "vcpus": 1, "memory": 256,
    });
    match i % 4 {
        1 => spec["vgpus"] = json!(1),
        2 => spec["arch"] = json!(["arm64"]),
        3 => {
            spec["constraints"] =
                json!([{"type": "direct", "node": format!("node-{};node-{}", i % 997, (i * 7) % 991)}])
        }
        _ => {}
    }
    serde_json::from_value(spec).expect("valid microservice")
}

fn node_views(n: usize) -> Vec<NodeView> {
    (0..n)
        .map(|i| {
            let info = NodeInfo {
                id: format!("{i:024x}"),
                host: format!("node-{i}"),
                vcpus: 2 + (i % 15) as u32,
                memory: 2048 + (i % 31) as u64 * 1024,
                memory_total: 2048 + (i % 31) as u64 * 1024,
                architecture: if i % 10 == 0 { "arm64" } else { "amd64" }.into(),
                virtualization: vec!["docker".into()],
                vgpus: u32::from(i % 50 == 0),
                ..Default::default()
            };
            let placed = Demand { vcpus: (i % 3) as f64, memory_mb: (i % 7) as u64 * 256, gpus: 0 };
            NodeView::from_info(&info, i % 20 != 0, [placed])
        })
        .collect()
}

fn clusters(n: usize) -> Vec<Cluster> {
    (0..n)
        .map(|i| {
            let totals = |share: f64| ResourceTotals {
                nodes: 100,
                total_cpu_cores: 800.0 * share,
                free_vcpus: 400.0 * share + i as f64,
                memory_in_mb: 800_000,
                free_memory_mb: (400_000.0 * share) as u64 + i as u64 * 100,
                free_gpus: (i % 3) as u64,
                ..Default::default()
            };
            let mut c = Cluster {
                id: format!("{i:024x}"),
                cluster_name: format!("cluster-{i}"),
                active: i % 25 != 0,
                vcpus: 400.0 + i as f64,
                memory: 400_000 + i as u64 * 100,
                vgpus: (i % 3) as u64,
                virtualization: vec!["docker".into()],
                ..Default::default()
            };
            c.aggregation_per_architecture.insert("amd64".into(), totals(0.9));
            c.aggregation_per_architecture.insert("arm64".into(), totals(0.1));
            c
        })
        .collect()
}

fn service(i: usize) -> Service {
    let mut spec = job(i);
    // The root's `direct` names a cluster.
    if i % 4 == 3 {
        spec.constraints =
            serde_json::from_value(json!([{"type": "direct", "cluster": format!("cluster-{}", i % 97)}]))
                .expect("valid constraint");
    }
    let mut v = serde_json::to_value(&spec).expect("serializable");
    v["_id"] = json!(format!("{i:024x}"));
    v["job_name"] = json!(format!("bench.bench.s{i}.bench"));
    for (key, value) in
        [("applicationID", "a"), ("app_name", "bench"), ("app_ns", "bench"), ("service_ns", "bench"), ("image", "img")]
    {
        v[key] = json!(value);
    }
    v["service_name"] = json!(format!("s{i}"));
    serde_json::from_value(v).expect("valid service")
}

fn seconds(samples: &mut Vec<f64>, start: Instant) {
    samples.push(start.elapsed().as_secs_f64());
}

pub fn main(args: PlacementArgs) -> anyhow::Result<ExitCode> {
    let machine = Machine::read(0);
    let views = node_views(args.nodes);
    let jobs: Vec<Microservice> = (0..64).map(job).collect();
    let mut cluster_s = Vec::with_capacity(args.decisions);
    let mut placed = 0usize;
    for i in 0..args.decisions {
        let j = &jobs[i % jobs.len()];
        let start = Instant::now();
        let decision = choose_node(black_box(j), "bench", black_box(&views));
        seconds(&mut cluster_s, start);
        placed += usize::from(decision.is_ok());
    }

    let fleet = clusters(args.clusters);
    let mut reservations = Reservations::new();
    for r in 0..args.reservations {
        let cluster = &fleet[r % fleet.len()];
        reservations.reserve(
            &cluster.id,
            u64::MAX,
            (format!("r{r}"), 0),
            Demand { vcpus: 1.0, memory_mb: 128, gpus: 0 },
        );
    }
    let services: Vec<Service> = (0..64).map(service).collect();
    let mut root_s = Vec::with_capacity(args.decisions);
    let mut chosen = 0usize;
    for i in 0..args.decisions {
        let s = &services[i % services.len()];
        let start = Instant::now();
        let candidates: Vec<Cluster> = fleet
            .iter()
            .map(|c| {
                let mut c = c.clone();
                reservations.apply(&mut c);
                c
            })
            .collect();
        let decision = choose_cluster(black_box(s), black_box(&candidates)).map(|c| c.id.len());
        seconds(&mut root_s, start);
        chosen += usize::from(decision.is_ok());
    }

    let mut floor_s = Vec::with_capacity(args.decisions);
    for _ in 0..args.decisions {
        let start = Instant::now();
        let most = views.iter().map(|v| black_box(v).free_memory_mb).max();
        black_box(most);
        seconds(&mut floor_s, start);
    }

    let (cl, ro, fl) = (Summary::of(&cluster_s), Summary::of(&root_s), Summary::of(&floor_s));
    let verdict = |p99: f64| if p99 <= P3_MAX_P99_S { "PASS" } else { "MISS" };
    let ms = |s: f64| format!("{:.4} ms", s * 1000.0);
    let mut t = Table::default();
    t.section(&format!("P3 cluster scheduler, {} workers ({placed} of {} placed)", args.nodes, args.decisions));
    t.row("p50 / p99", format!("{} / {}", ms(cl.p50), ms(cl.p99)), format!("p99 <= 1 ms {}", verdict(cl.p99)));
    t.row("min / max", format!("{} / {}", ms(cl.min), ms(cl.max)), "");
    t.row("ratio p50 to the floor", format!("{:.1}", cl.p50 / fl.p50.max(1e-12)), "one read of each of the same views");
    t.section(&format!(
        "P3 root scheduler, {} clusters, {} reservations ({chosen} of {} placed)",
        args.clusters, args.reservations, args.decisions
    ));
    t.row("p50 / p99", format!("{} / {}", ms(ro.p50), ms(ro.p99)), format!("p99 <= 1 ms {}", verdict(ro.p99)));
    t.row("min / max", format!("{} / {}", ms(ro.min), ms(ro.max)), "");
    t.section("floor");
    t.row("one pass over the node views p50 / p99", format!("{} / {}", ms(fl.p50), ms(fl.p99)), "");
    print!("{}", t.render());
    let out = json!({
        "benchmark": "placement",
        "machine": machine,
        "commit": Commit::read(),
        "nodes": args.nodes, "clusters": args.clusters, "reservations": args.reservations, "decisions": args.decisions,
        "cluster_summary": cl, "root_summary": ro, "floor_summary": fl,
        "cluster_seconds": cluster_s, "root_seconds": root_s, "floor_seconds": floor_s,
    });
    let path = report::write_json(&args.results, "placement", &out).context("writing the result")?;
    println!("results: {}", path.display());
    Ok(ExitCode::SUCCESS)
}
