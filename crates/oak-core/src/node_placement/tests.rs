use super::*;
use oak_api::sla::Constraint;

const CLUSTER: &str = "edge-1";

fn node(name: &str, arch: &str, free_vcpus: f64, free_memory_mb: u64, free_gpus: u64) -> NodeView {
    NodeView {
        id: format!("id-{name}"),
        name: name.into(),
        active: true,
        architecture: arch.into(),
        virtualization: vec!["docker".into()],
        total_vcpus: free_vcpus,
        free_vcpus,
        memory_total_mb: free_memory_mb,
        free_memory_mb,
        total_gpus: free_gpus,
        free_gpus,
        ..Default::default()
    }
}

fn job(vcpus: u64, memory: u64, vgpus: u64) -> Microservice {
    let mut ms: Microservice = serde_json::from_value(serde_json::json!({
        "microservice_name": "web", "microservice_namespace": "test",
        "virtualization": "docker", "code": "img"
    }))
    .unwrap();
    ms.vcpus = vcpus;
    ms.memory = memory;
    ms.vgpus = vgpus;
    ms
}

fn with(mut ms: Microservice, f: impl FnOnce(&mut Microservice)) -> Microservice {
    f(&mut ms);
    ms
}

fn constrained(constraints: Vec<Constraint>) -> Microservice {
    with(job(1, 100, 0), |j| j.constraints = constraints)
}

fn direct(nodes: Option<&str>, cluster: Option<&str>) -> Constraint {
    Constraint {
        kind: "direct".into(),
        node: nodes.map(Into::into),
        cluster: cluster.map(Into::into),
        ..Default::default()
    }
}

fn addons(needs: &[&str]) -> Constraint {
    Constraint {
        kind: "addons".into(),
        needs: Some(needs.iter().map(|s| s.to_string()).collect()),
        ..Default::default()
    }
}

fn arch(archs: &[&str]) -> Microservice {
    with(job(1, 100, 0), |j| j.arch = Some(archs.iter().map(|s| s.to_string()).collect()))
}

fn inactive(mut n: NodeView) -> NodeView {
    n.active = false;
    n
}

fn runs(mut n: NodeView, virt: &[&str]) -> NodeView {
    n.virtualization = virt.iter().map(|s| s.to_string()).collect();
    n
}

fn addon_node(mut n: NodeView, addons: &[&str]) -> NodeView {
    n.supported_addons = addons.iter().map(|s| s.to_string()).collect();
    n
}

fn id(mut n: NodeView, id: &str) -> NodeView {
    n.id = id.into();
    n
}

#[test]
fn choose_node_table() {
    let small = node("small", "amd64", 2.0, 1000, 0);
    let big = node("big", "amd64", 8.0, 8000, 0);
    let arm = node("arm", "arm64", 4.0, 4000, 0);
    let gpu = node("gpu", "amd64", 4.0, 2000, 2);
    let fleet = vec![small.clone(), big.clone(), arm.clone(), gpu.clone()];
    let three =
        vec![node("n1", "amd64", 2.0, 1000, 0), node("n2", "amd64", 4.0, 3000, 0), node("n3", "amd64", 2.0, 2000, 0)];

    type Case = (&'static str, Microservice, Vec<NodeView>, Result<&'static str, &'static str>);
    let cases: Vec<Case> = vec![
        // no candidates at all
        ("no nodes", job(1, 100, 0), vec![], Err(status::NO_WORKER_CAPACITY)),
        ("only inactive nodes", job(1, 100, 0), vec![inactive(big.clone())], Err(status::NO_WORKER_CAPACITY)),
        ("inactive node skipped", job(1, 100, 0), vec![inactive(big.clone()), small.clone()], Ok("small")),
        // ranking
        ("most free memory wins", job(1, 100, 0), fleet.clone(), Ok("big")),
        (
            "memory tie: most free vcpus",
            job(1, 100, 0),
            vec![node("a", "amd64", 2.0, 4000, 0), node("b", "amd64", 6.0, 4000, 0)],
            Ok("b"),
        ),
        (
            "memory and vcpus tie: lowest name",
            job(1, 100, 0),
            vec![node("m", "amd64", 2.0, 4000, 0), node("c", "amd64", 2.0, 4000, 0), node("x", "amd64", 2.0, 4000, 0)],
            Ok("c"),
        ),
        (
            "full tie: lowest id",
            job(1, 100, 0),
            vec![id(node("same", "amd64", 2.0, 4000, 0), "id-9"), id(node("same", "amd64", 2.0, 4000, 0), "id-3")],
            Ok("id-3"),
        ),
        // vcpus
        ("vcpus exactly enough", job(8, 100, 0), fleet.clone(), Ok("big")),
        ("vcpus pick the only fitting", job(5, 100, 0), vec![small.clone(), arm.clone(), big.clone()], Ok("big")),
        ("vcpus too many for all", job(9, 100, 0), fleet.clone(), Err(status::NO_WORKER_CAPACITY)),
        // memory
        ("memory exactly enough", job(1, 4000, 0), vec![small.clone(), arm.clone()], Ok("arm")),
        ("memory too much for all", job(1, 8001, 0), fleet.clone(), Err(status::NO_WORKER_CAPACITY)),
        // gpus
        ("gpus: only the gpu node fits", job(1, 100, 2), fleet.clone(), Ok("gpu")),
        ("gpus too many", job(1, 100, 3), fleet.clone(), Err(status::NO_WORKER_CAPACITY)),
        // virtualization
        (
            "virtualization missing everywhere",
            with(job(1, 100, 0), |j| j.virtualization = "unikernel".into()),
            fleet.clone(),
            Err(status::NO_QUALIFIED_WORKER_FOUND),
        ),
        (
            "virtualization selects the unikernel node",
            with(job(1, 100, 0), |j| j.virtualization = "unikernel".into()),
            vec![big.clone(), runs(small.clone(), &["docker", "unikernel"])],
            Ok("small"),
        ),
        // architecture
        ("arch selects arm64", arch(&["arm64"]), fleet.clone(), Ok("arm")),
        ("arch nobody has", arch(&["riscv64"]), fleet.clone(), Err(status::NO_QUALIFIED_WORKER_FOUND)),
        ("arch empty list does not restrict", arch(&[]), fleet.clone(), Ok("big")),
        ("arch list of two: best of both", arch(&["arm64", "amd64"]), vec![small.clone(), arm.clone()], Ok("arm")),
        (
            "arch: node without architecture does not qualify",
            arch(&["amd64"]),
            vec![node("anon", "", 8.0, 8000, 0)],
            Err(status::NO_QUALIFIED_WORKER_FOUND),
        ),
        // addons
        (
            "addons present on one node",
            constrained(vec![addons(&["gpu-monitor"])]),
            vec![big.clone(), addon_node(small.clone(), &["gpu-monitor"])],
            Ok("small"),
        ),
        (
            "addons: all needs required",
            constrained(vec![addons(&["a", "b"])]),
            vec![addon_node(big.clone(), &["a"]), addon_node(small.clone(), &["b", "a"])],
            Ok("small"),
        ),
        (
            "addons missing",
            constrained(vec![addons(&["flops"])]),
            fleet.clone(),
            Err(status::NO_QUALIFIED_WORKER_FOUND),
        ),
        // direct
        ("direct one node", constrained(vec![direct(Some("small"), None)]), fleet.clone(), Ok("small")),
        (
            "direct several names, whitespace and empties",
            constrained(vec![direct(Some(" n1 ; ;n3 ;"), None)]),
            three.clone(),
            Ok("n3"),
        ),
        (
            "direct unknown node",
            constrained(vec![direct(Some("nope"), None)]),
            fleet.clone(),
            Err(status::NO_QUALIFIED_WORKER_FOUND),
        ),
        ("direct this cluster and node", constrained(vec![direct(Some("n1"), Some(CLUSTER))]), three.clone(), Ok("n1")),
        ("direct this cluster only", constrained(vec![direct(None, Some(CLUSTER))]), three.clone(), Ok("n2")),
        (
            "direct another cluster",
            constrained(vec![direct(Some("n1"), Some("elsewhere"))]),
            three.clone(),
            Err(status::NO_QUALIFIED_WORKER_FOUND),
        ),
        ("direct only separators", constrained(vec![direct(Some(" ; ;"), None)]), three.clone(), Ok("n2")),
        (
            "direct: two constraints intersect",
            constrained(vec![direct(Some("n1;n2"), None), direct(Some("n2;n3"), None)]),
            three.clone(),
            Ok("n2"),
        ),
        (
            "direct node without resources",
            with(constrained(vec![direct(Some("n1"), None)]), |j| j.memory = 2000),
            three.clone(),
            Err(status::NO_WORKER_CAPACITY),
        ),
        (
            "direct names only an inactive node",
            constrained(vec![direct(Some("n1"), None)]),
            vec![inactive(three[0].clone()), three[1].clone()],
            Err(status::NO_QUALIFIED_WORKER_FOUND),
        ),
        // mixed
        (
            "qualified node lacks capacity, unqualified has it",
            with(arch(&["arm64"]), |j| j.memory = 5000),
            fleet.clone(),
            Err(status::NO_WORKER_CAPACITY),
        ),
        (
            "latency and geo constraints are ignored",
            constrained(vec![
                Constraint {
                    kind: "latency".into(),
                    area: Some("munich".into()),
                    threshold: Some(1.0),
                    ..Default::default()
                },
                Constraint {
                    kind: "geo".into(),
                    location: Some("0,0".into()),
                    threshold: Some(1.0),
                    ..Default::default()
                },
                Constraint { kind: "clusters".into(), allowed: Some(vec!["other".into()]), ..Default::default() },
            ]),
            fleet.clone(),
            Ok("big"),
        ),
    ];
    assert!(cases.len() >= 20);
    for (name, job, nodes, want) in cases {
        let got = choose_node(&job, CLUSTER, &nodes).map(|i| {
            let n = &nodes[i];
            if n.id == format!("id-{}", n.name) {
                n.name.as_str()
            } else {
                n.id.as_str()
            }
        });
        assert_eq!(got.map_err(|u| u.status), want, "{name}");
    }
}

#[test]
fn explain_covers_node_statuses() {
    assert!(explain(status::NO_QUALIFIED_WORKER_FOUND).contains("constraints"));
    assert!(explain(status::NO_WORKER_CAPACITY).contains("free resources"));
    assert_eq!(explain("whatever"), "not scheduled");
}

fn d(vcpus: f64, memory_mb: u64, gpus: u64) -> Demand {
    Demand { vcpus, memory_mb, gpus }
}

fn f(vcpus: f64, memory_mb: u64, gpus: u64) -> Free {
    Free { vcpus, memory_mb, gpus }
}

#[test]
fn free_resources_table() {
    type Case = (&'static str, (f64, u64, u64, u64), Vec<Demand>, Free);
    let cases: Vec<Case> = vec![
        ("nothing placed: available memory bounds", (4.0, 8000, 6000, 1), vec![], f(4.0, 6000, 1)),
        ("placements subtract", (4.0, 8000, 8000, 2), vec![d(1.0, 2000, 1), d(0.5, 1000, 0)], f(2.5, 5000, 1)),
        ("available lower than total minus placed", (4.0, 8000, 3000, 0), vec![d(1.0, 2000, 0)], f(3.0, 3000, 0)),
        ("vcpus over-committed clamp to 0", (2.0, 1000, 1000, 0), vec![d(3.0, 0, 0)], f(0.0, 1000, 0)),
        ("memory over-committed saturates", (4.0, 1000, 1000, 0), vec![d(0.0, 600, 0), d(0.0, 600, 0)], f(4.0, 0, 0)),
        ("gpus over-committed saturate", (4.0, 1000, 1000, 1), vec![d(0.0, 0, 2)], f(4.0, 1000, 0)),
        ("unknown total memory uses available", (4.0, 0, 3000, 0), vec![d(1.0, 1000, 0)], f(3.0, 2000, 0)),
        (
            "huge demands do not overflow",
            (1.0, 10, 10, 1),
            vec![d(0.0, u64::MAX, u64::MAX), d(0.0, 5, 5)],
            f(1.0, 0, 0),
        ),
    ];
    for (name, (cores, total, avail, gpus), placed, want) in cases {
        assert_eq!(free_resources(cores, total, avail, gpus, placed), want, "{name}");
    }
}

#[test]
fn demand_arithmetic() {
    assert_eq!(Demand::of(&job(2, 512, 1)), d(2.0, 512, 1));
    assert_eq!(d(1.0, 100, 1).plus(d(0.5, 50, 2)), d(1.5, 150, 3));
    assert_eq!(d(1.0, 100, 1).minus(d(0.5, 50, 0)), d(0.5, 50, 1));
    assert_eq!(d(1.0, 100, 1).minus(d(2.0, 500, 3)), Demand::default());
}

#[test]
fn view_from_node_info() {
    let info = NodeInfo {
        id: "n-1".into(),
        host: "pi".into(),
        vcpus: 4,
        memory: 3000,
        memory_total: 4000,
        vgpus: 1,
        architecture: "arm64".into(),
        cpu_percent: 12.5,
        memory_percent: 25.0,
        virtualization: vec!["docker".into()],
        supported_addons: vec!["x".into()],
        csi_drivers: vec![
            serde_json::json!("csi.a"),
            serde_json::json!({"csi_driver_name": "csi.b"}),
            serde_json::json!(""),
            serde_json::json!(7),
        ],
        ..Default::default()
    };
    let v = NodeView::from_info(&info, true, [d(1.0, 1500, 1)]);
    assert_eq!((v.id.as_str(), v.name.as_str(), v.active, v.architecture.as_str()), ("n-1", "pi", true, "arm64"));
    assert_eq!((v.total_vcpus, v.free_vcpus), (4.0, 3.0));
    assert_eq!((v.memory_total_mb, v.free_memory_mb), (4000, 2500));
    assert_eq!((v.total_gpus, v.free_gpus), (1, 0));
    assert_eq!(v.csi_drivers, vec!["csi.a".to_string(), "csi.b".to_string()]);
    assert_eq!((v.cpu_percent, v.memory_percent), (12.5, 25.0));
    assert!(v.host_ports.is_empty(), "no overlay, no tunnel port");
    let overlay =
        NodeInfo { overlay: Some(oak_api::net::OverlayInfo { tunnel_port: 40000, ..Default::default() }), ..info };
    let v = NodeView::from_info(&overlay, true, []);
    assert_eq!(v.host_ports, [HostPort { port: 40000, protocol: Protocol::Udp }].into());
}

fn loaded(name: &str, arch: &str, cpu: f64, mem: f64) -> NodeView {
    let mut n = node(name, arch, 4.0, 4000, 1);
    n.total_vcpus = 8.0;
    n.memory_total_mb = 8000;
    n.total_gpus = 2;
    n.cpu_percent = cpu;
    n.memory_percent = mem;
    n
}

#[test]
fn aggregate_over_active_nodes() {
    let mut a = addon_node(runs(loaded("a", "amd64", 10.0, 20.0), &["docker", "unikernel"]), &["z", "y"]);
    a.csi_drivers = vec!["csi.b".into()];
    let mut b = addon_node(loaded("b", "amd64", 30.0, 40.0), &["y"]);
    b.csi_drivers = vec!["csi.a".into(), "csi.b".into()];
    let c = runs(loaded("c", "arm64", 0.0, 0.0), &["docker"]);
    let off = addon_node(runs(inactive(loaded("off", "riscv64", 100.0, 100.0)), &["crosvm"]), &["gone"]);
    let anon = loaded("anon", "", 20.0, 40.0);
    let r = aggregate(&[a, b, off, c, anon]);

    assert_eq!(r.active_nodes, 4);
    let t = &r.totals;
    assert_eq!(t.nodes, 4);
    assert_eq!((t.total_cpu_cores, t.free_vcpus), (32.0, 16.0));
    assert_eq!((t.memory_in_mb, t.free_memory_mb), (32000, 16000));
    assert_eq!((t.total_gpus, t.free_gpus), (8, 4));
    // means over every active node, zeros included, inactive excluded
    assert_eq!((t.cpu_percent, t.memory_percent), (15.0, 25.0));
    assert_eq!(r.virtualization, vec!["docker", "unikernel"]);
    assert_eq!(r.supported_addons, vec!["y", "z"]);
    assert_eq!(r.csi_drivers, vec!["csi.a", "csi.b"]);

    let keys: Vec<&str> = r.aggregation_per_architecture.keys().map(String::as_str).collect();
    assert_eq!(keys, vec!["amd64", "arm64"], "inactive riscv64 and the node without arch are left out");
    let amd = &r.aggregation_per_architecture["amd64"];
    assert_eq!(
        (amd.nodes, amd.total_cpu_cores, amd.free_vcpus, amd.free_memory_mb, amd.free_gpus),
        (2, 16.0, 8.0, 8000, 2)
    );
    assert_eq!((amd.cpu_percent, amd.memory_percent), (20.0, 30.0));
    let arm = &r.aggregation_per_architecture["arm64"];
    assert_eq!((arm.nodes, arm.memory_in_mb, arm.total_gpus, arm.cpu_percent), (1, 8000, 2, 0.0));
}

#[test]
fn aggregate_nothing_active() {
    let r = aggregate(&[inactive(loaded("off", "amd64", 50.0, 50.0))]);
    assert_eq!(r, ClusterResources::default());
    assert_eq!(aggregate(&[]), ClusterResources::default());
}

/// 1,000 instances placed one after another on 1,000 nodes, each decision seeing the free
/// capacity left by the previous ones: every instance lands and no node is over-committed.
#[test]
fn thousand_placements_never_over_commit() {
    struct Node {
        cores: f64,
        memory: u64,
        gpus: u64,
        placed: Vec<Demand>,
    }
    let mut nodes: Vec<Node> = (0..1000)
        .map(|i| Node {
            cores: (1 + i % 4) as f64,
            memory: 256 * (1 + i % 5) as u64,
            gpus: (i % 3) as u64,
            placed: vec![],
        })
        .collect();
    let view = |i: usize, n: &Node| {
        let free = free_resources(n.cores, n.memory, n.memory, n.gpus, n.placed.iter().copied());
        NodeView {
            id: format!("{i:04}"),
            name: format!("node-{i:04}"),
            active: true,
            architecture: "amd64".into(),
            virtualization: vec!["docker".into()],
            total_vcpus: n.cores,
            free_vcpus: free.vcpus,
            memory_total_mb: n.memory,
            free_memory_mb: free.memory_mb,
            total_gpus: n.gpus,
            free_gpus: free.gpus,
            ..Default::default()
        }
    };
    let mut views: Vec<NodeView> = nodes.iter().enumerate().map(|(i, n)| view(i, n)).collect();
    let mut placed = 0;
    for k in 0..1000u64 {
        let j = job(1 + k % 2, 128 * (1 + k % 4), u64::from(k % 5 == 0));
        let i = choose_node(&j, CLUSTER, &views).unwrap_or_else(|e| panic!("instance {k}: {e:?}"));
        nodes[i].placed.push(Demand::of(&j));
        views[i] = view(i, &nodes[i]);
        placed += 1;
    }
    assert_eq!(placed, 1000);
    for (i, n) in nodes.iter().enumerate() {
        let used = n.placed.iter().copied().fold(Demand::default(), Demand::plus);
        assert!(used.vcpus <= n.cores, "node {i} vcpus {} > {}", used.vcpus, n.cores);
        assert!(used.memory_mb <= n.memory, "node {i} memory {} > {}", used.memory_mb, n.memory);
        assert!(used.gpus <= n.gpus, "node {i} gpus {} > {}", used.gpus, n.gpus);
    }
    // Demand beyond what is left is refused with the capacity status.
    assert_eq!(
        choose_node(&job(1, 100_000, 0), CLUSTER, &views).map_err(|e| e.status),
        Err(status::NO_WORKER_CAPACITY)
    );
}

/// One decision over 1,000 mixed nodes picks the best fit (its speed is measured by the `hollow`
/// benchmark, never asserted here).
#[test]
fn thousand_nodes_pick_the_best_fit() {
    let nodes: Vec<NodeView> = (0..1000)
        .map(|i| {
            let arch = if i % 2 == 0 { "amd64" } else { "arm64" };
            addon_node(node(&format!("node-{i:04}"), arch, (i % 8) as f64, 100 * (i % 50) as u64, 0), &["a", "b"])
        })
        .collect();
    let job =
        with(constrained(vec![addons(&["b"]), direct(None, Some(CLUSTER))]), |j| j.arch = Some(vec!["arm64".into()]));
    let i = choose_node(&job, CLUSTER, &nodes).unwrap();
    assert_eq!(nodes[i].name, "node-0199", "4,900 MB and 7 vCPUs, lowest such name");
}

fn ports(mut n: NodeView, taken: &[(u16, Protocol)]) -> NodeView {
    n.host_ports = taken.iter().map(|&(port, protocol)| HostPort { port, protocol }).collect();
    n
}

fn mapping(port: &str) -> Microservice {
    with(job(1, 100, 0), |j| j.port = port.into())
}

/// Host ports are a placement resource: a node where a port the job maps is taken is skipped,
/// and when that leaves no node the detail names the port.
#[test]
fn host_port_table() {
    use Protocol::{Tcp, Udp};
    let big = node("big", "amd64", 8.0, 8000, 0);
    let small = node("small", "amd64", 2.0, 1000, 0);
    type Case = (&'static str, Microservice, Vec<NodeView>, Result<&'static str, (&'static str, &'static str)>);
    let cases: Vec<Case> = vec![
        ("port free everywhere: best node", mapping("8080"), vec![big.clone(), small.clone()], Ok("big")),
        (
            "port taken on the best node",
            mapping("8080"),
            vec![ports(big.clone(), &[(8080, Tcp)]), small.clone()],
            Ok("small"),
        ),
        (
            "same number, other protocol",
            mapping("8080"),
            vec![ports(big.clone(), &[(8080, Udp)]), small.clone()],
            Ok("big"),
        ),
        ("other port taken", mapping("8080"), vec![ports(big.clone(), &[(8081, Tcp)])], Ok("big")),
        ("no ports mapped", job(1, 100, 0), vec![ports(big.clone(), &[(8080, Tcp)])], Ok("big")),
        (
            "taken on every node",
            mapping("8080:80"),
            vec![ports(big.clone(), &[(8080, Tcp)]), ports(small.clone(), &[(8080, Tcp)])],
            Err((
                status::NO_WORKER_CAPACITY,
                "host port 8080/tcp is taken on every qualified worker with the requested free resources",
            )),
        ),
        (
            "one of two mapped ports taken",
            mapping("80;53/udp"),
            vec![ports(big.clone(), &[(53, Udp)])],
            Err((status::NO_WORKER_CAPACITY, "host port 53/udp is taken on every qualified worker")),
        ),
        (
            "different ports taken on different nodes",
            mapping("80;81"),
            vec![ports(big.clone(), &[(80, Tcp)]), ports(small.clone(), &[(81, Tcp)])],
            Err((status::NO_WORKER_CAPACITY, "host ports 80/tcp, 81/tcp are taken")),
        ),
        (
            "the node's tunnel port counts",
            mapping("40000/udp"),
            vec![ports(big.clone(), &[(40000, Udp)])],
            Err((status::NO_WORKER_CAPACITY, "host port 40000/udp is taken")),
        ),
        (
            "a node without the resources is not blamed on the port",
            with(mapping("8080"), |j| j.memory = 5000),
            vec![ports(big.clone(), &[(8080, Tcp)]), small.clone()],
            Err((status::NO_WORKER_CAPACITY, "host port 8080/tcp is taken")),
        ),
        (
            "no node has the resources: the plain explanation",
            with(mapping("8080"), |j| j.memory = 50_000),
            vec![ports(big.clone(), &[(8080, Tcp)])],
            Err((status::NO_WORKER_CAPACITY, "no worker with 50000 MB free in cluster edge-1")),
        ),
        (
            "unqualified nodes stay unqualified",
            with(mapping("8080"), |j| j.virtualization = "unikernel".into()),
            vec![ports(big.clone(), &[(8080, Tcp)])],
            Err((status::NO_QUALIFIED_WORKER_FOUND, "virtualization unikernel offered by no active worker")),
        ),
    ];
    for (name, job, nodes, want) in cases {
        let got = choose_node(&job, CLUSTER, &nodes);
        match (got, want) {
            (Ok(i), Ok(name_want)) => assert_eq!(nodes[i].name, name_want, "{name}"),
            (Err(u), Err((status_want, detail_want))) => {
                assert_eq!(u.status, status_want, "{name}");
                assert!(u.detail().contains(detail_want), "{name}: {}", u.detail());
            }
            (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
        }
    }
}

/// A descriptor without `memory` asks for [`DEFAULT_MEMORY_MB`]: a node with 300 MB free takes
/// one such instance, not two.
#[test]
fn memory_less_instances_count_the_default() {
    let no_memory = job(0, 0, 0);
    assert_eq!(Demand::of(&no_memory).memory_mb, oak_api::sla::DEFAULT_MEMORY_MB);
    let info = NodeInfo {
        id: "n".into(),
        host: "n".into(),
        vcpus: 4,
        memory: 300,
        memory_total: 300,
        virtualization: vec!["docker".into()],
        ..Default::default()
    };
    let empty = [NodeView::from_info(&info, true, [])];
    assert_eq!(choose_node(&no_memory, CLUSTER, &empty), Ok(0));
    let one_placed = [NodeView::from_info(&info, true, [Demand::of(&no_memory)])];
    assert_eq!(one_placed[0].free_memory_mb, 300 - 256);
    assert_eq!(choose_node(&no_memory, CLUSTER, &one_placed).map_err(|e| e.status), Err(status::NO_WORKER_CAPACITY));
}

/// The detail of a negative outcome names the first unmet requirement, and its status agrees
/// with the plain rules.
#[test]
fn reasons_name_the_unmet_requirement() {
    let a = node("a", "amd64", 4.0, 4000, 0);
    let b = node("b", "arm64", 2.0, 2000, 1);
    type Case = (&'static str, Microservice, Vec<NodeView>, &'static str, &'static str);
    let cases: Vec<Case> = vec![
        ("no nodes", job(1, 100, 0), vec![], status::NO_WORKER_CAPACITY, "no active worker in cluster edge-1"),
        (
            "only inactive nodes",
            job(1, 100, 0),
            vec![inactive(a.clone())],
            status::NO_WORKER_CAPACITY,
            "no active worker in cluster edge-1",
        ),
        (
            "missing add-on",
            constrained(vec![addons(&["gpu-magic"])]),
            vec![a.clone(), addon_node(inactive(b.clone()), &["gpu-magic"])],
            status::NO_QUALIFIED_WORKER_FOUND,
            "no active worker offers addon \"gpu-magic\"",
        ),
        (
            "second of two add-ons",
            constrained(vec![addons(&["x", "y"])]),
            vec![addon_node(a.clone(), &["x"])],
            status::NO_QUALIFIED_WORKER_FOUND,
            "no active worker offers addon \"y\"",
        ),
        (
            "virtualization",
            with(job(1, 100, 0), |j| j.virtualization = "unikernel".into()),
            vec![a.clone(), b.clone()],
            status::NO_QUALIFIED_WORKER_FOUND,
            "virtualization unikernel offered by no active worker",
        ),
        (
            "architecture",
            arch(&["riscv64", "s390x"]),
            vec![a.clone(), b.clone()],
            status::NO_QUALIFIED_WORKER_FOUND,
            "no active worker has architecture riscv64 or s390x",
        ),
        (
            "node names",
            constrained(vec![direct(Some("x; y"), None)]),
            vec![a.clone(), b.clone()],
            status::NO_QUALIFIED_WORKER_FOUND,
            "no active worker is named \"x\" or \"y\"",
        ),
        (
            "another cluster",
            constrained(vec![direct(Some("a"), Some("elsewhere"))]),
            vec![a.clone()],
            status::NO_QUALIFIED_WORKER_FOUND,
            "a direct constraint names cluster \"elsewhere\", not this cluster \"edge-1\"",
        ),
        (
            "each met somewhere, not together",
            with(constrained(vec![addons(&["gpu"])]), |j| j.arch = Some(vec!["amd64".into()])),
            vec![a.clone(), addon_node(b.clone(), &["gpu"])],
            status::NO_QUALIFIED_WORKER_FOUND,
            "no active worker has addon \"gpu\" together with architecture amd64",
        ),
        (
            "memory",
            job(1, 4096, 0),
            vec![a.clone(), b.clone()],
            status::NO_WORKER_CAPACITY,
            "no worker with 4096 MB free in cluster edge-1 (the most free on a qualified worker: 4000 MB)",
        ),
        (
            "memory only on an unqualified node",
            with(job(1, 3000, 0), |j| j.arch = Some(vec!["arm64".into()])),
            vec![a.clone(), b.clone()],
            status::NO_WORKER_CAPACITY,
            "no worker with 3000 MB free in cluster edge-1 (the most free on a qualified worker: 2000 MB)",
        ),
        (
            "vCPUs",
            job(8, 100, 0),
            vec![a.clone(), b.clone()],
            status::NO_WORKER_CAPACITY,
            "no worker with 8 vCPUs free",
        ),
        ("GPUs", job(1, 100, 2), vec![a.clone(), b.clone()], status::NO_WORKER_CAPACITY, "no worker with 2 GPUs free"),
        (
            "vCPUs on one node, memory on the other",
            job(3, 3000, 1),
            vec![node("m", "amd64", 1.0, 4000, 1), node("c", "amd64", 4.0, 1000, 1)],
            status::NO_WORKER_CAPACITY,
            "no worker with 3 vCPUs, 3000 MB and 1 GPU free at once in cluster edge-1",
        ),
    ];
    for (name, job, nodes, status_want, detail_want) in cases {
        let err = choose_node(&job, CLUSTER, &nodes).expect_err(name);
        assert_eq!(err.status, status_want, "{name}: {}", err.detail());
        assert!(err.detail().contains(detail_want), "{name}: {}", err.detail());
    }
}

/// Replicas of one service go to the node holding the fewest of them; ties (and `spread: false`)
/// fall back to the usual ranking.
#[test]
fn spreading_prefers_nodes_with_fewer_siblings() {
    let big = node("big", "amd64", 8.0, 8000, 0);
    let small = node("small", "amd64", 2.0, 1000, 0);
    let nodes = [big.clone(), small.clone()];
    let spread = job(1, 100, 0);
    let packed = with(job(1, 100, 0), |j| j.spread = false);
    assert_eq!(choose_node_spread(&spread, CLUSTER, &nodes, &[]), Ok(0), "no siblings: the usual ranking");
    assert_eq!(choose_node_spread(&spread, CLUSTER, &nodes, &[1, 0]), Ok(1), "fewest siblings wins");
    assert_eq!(choose_node_spread(&spread, CLUSTER, &nodes, &[1, 1]), Ok(0), "a tie: the usual ranking");
    assert_eq!(choose_node_spread(&spread, CLUSTER, &nodes, &[2, 1]), Ok(1));
    assert_eq!(choose_node_spread(&packed, CLUSTER, &nodes, &[3, 0]), Ok(0), "spread: false packs");
    // A node with fewer siblings that does not fit or qualify is not chosen.
    let full = node("full", "amd64", 0.0, 0, 0);
    assert_eq!(choose_node_spread(&spread, CLUSTER, &[big.clone(), full], &[2, 0]), Ok(0));
    assert_eq!(choose_node_spread(&spread, CLUSTER, &[big.clone(), inactive(small.clone())], &[5, 0]), Ok(0));

    // Placing a burst with the sibling counts updated as the cluster does: round robin over
    // three nodes, never more than one apart.
    let three = [big, small, node("mid", "amd64", 4.0, 4000, 0)];
    let mut siblings = [0u32; 3];
    for _ in 0..7 {
        let i = choose_node_spread(&spread, CLUSTER, &three, &siblings).unwrap();
        siblings[i] += 1;
    }
    assert_eq!(siblings, [3, 2, 2]);
    let mut packed_siblings = [0u32; 3];
    for _ in 0..3 {
        packed_siblings[choose_node_spread(&packed, CLUSTER, &three, &packed_siblings).unwrap()] += 1;
    }
    assert_eq!(packed_siblings, [3, 0, 0], "without spread, the same views give the same node");
}

#[test]
fn ranked_views_choose_what_names_would() {
    // Equal nodes in shuffled name order, some with more free memory: the winner must not depend
    // on whether ties are broken by rank or by name.
    let names = ["n-07", "n-02", "n-11", "n-02", "n-05", "n-10", "n-01", "n-09"];
    let views: Vec<NodeView> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            id(node(name, "amd64", 4.0, if i % 3 == 0 { 4000 } else { 2000 }, 0), &format!("id-{}", 9 - i))
        })
        .collect();
    let mut ranked = views.clone();
    rank_by_name(&mut ranked);
    let mut ranks: Vec<u32> = ranked.iter().map(|v| v.rank.unwrap()).collect();
    ranks.sort_unstable();
    assert_eq!(ranks, (0..names.len() as u32).collect::<Vec<_>>(), "one rank each");
    let same_name: Vec<&NodeView> = ranked.iter().filter(|v| v.name == "n-02").collect();
    assert!(same_name[0].id > same_name[1].id && same_name[0].rank > same_name[1].rank, "a name tie goes by id");
    for free in [0, 2000, 4000] {
        let mut plain = views.clone();
        let mut fast = ranked.clone();
        for v in plain.iter_mut().chain(fast.iter_mut()).filter(|v| v.free_memory_mb == free) {
            v.free_memory_mb = 1000;
        }
        let j = job(1, 100, 0);
        assert_eq!(choose_node(&j, CLUSTER, &plain), choose_node(&j, CLUSTER, &fast), "free {free}");
        let counts: Vec<u32> = (0..names.len() as u32).map(|i| i % 2).collect();
        assert_eq!(
            choose_node_spread(&j, CLUSTER, &plain, &counts),
            choose_node_spread(&j, CLUSTER, &fast, &counts),
            "free {free}, with siblings"
        );
    }
}

#[test]
fn runtimes_match_by_bit_or_by_name() {
    let info = |virt: &[&str]| NodeInfo {
        id: format!("id-{}", virt.join("-")),
        host: virt.join("-"),
        vcpus: 4,
        memory: 4000,
        virtualization: virt.iter().map(|v| v.to_string()).collect(),
        ..Default::default()
    };
    let nodes: Vec<NodeView> = [&["unikernel"][..], &["docker", "firecracker"], &["wasm"]]
        .iter()
        .map(|v| NodeView::from_info(&info(v), true, []))
        .collect();
    assert!(nodes.iter().all(|n| n.runtime_bits.is_some()));
    let asking = |runtime: &str| with(job(1, 100, 0), |j| j.virtualization = runtime.into());
    assert_eq!(choose_node(&asking("docker"), CLUSTER, &nodes), Ok(1));
    assert_eq!(choose_node(&asking("unikernel"), CLUSTER, &nodes), Ok(0));
    assert_eq!(choose_node(&asking("wasm"), CLUSTER, &nodes), Ok(2));
    assert_eq!(choose_node(&asking("firecracker"), CLUSTER, &nodes), Ok(1), "an uncommon runtime, by name");
    let none = choose_node(&asking("crosvm"), CLUSTER, &nodes).unwrap_err();
    assert_eq!(none.status, status::NO_QUALIFIED_WORKER_FOUND);
}
