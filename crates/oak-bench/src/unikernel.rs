//! `oak-bench unikernel`: target P11 (unikernel deploy latency, cached kernel archive).
//!
//! Starts `oakestra root`, `oakestra cluster` and `oakestra worker -u --unikernel-accel tcg`
//! as separate processes on this machine (1-DOC, overlay on), serves the test unikernel
//! (`oak_e2e::unikernel`: Debian's cloud kernel with a busybox initramfs serving HTTP) from a
//! local HTTP server, deploys it once to warm the worker's kernel cache, and `--runs` times
//! measures request (`POST /api/service/<id>/instance`) → instance `RUNNING` at the root,
//! → the guest's console marker in the worker's log file and → the first HTTP answer of the
//! guest at the instance's namespace address (reachable from the host over the worker's
//! bridge), each followed by an undeploy.
//!
//! The floor, interleaved with the deploys in the same run: the QEMU command line the worker
//! ran for the warm-up instance (read from `/proc/<pid>/cmdline`), with only its paths, name and
//! addresses changed, started by hand in a namespace of the benchmark's own wired like the
//! worker's (veth `eth0` and tap `oaktap0` on a bridge `oakvmbr0`, the guest holding the address)
//! → QMP answers, → console marker, → first HTTP answer.
//!
//! Then the worker's RSS with no VM and with `--vms` VMs running, and those QEMU processes' RSS.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::deploy::{print_log_tails, start_tiers, Api};
use crate::machine::{Commit, Machine};
use crate::procs::{self, Children};
use crate::report::{self, Summary, Table};

#[derive(Args, Debug, Clone)]
pub struct UnikernelArgs {
    /// The `oakestra` binary to measure.
    #[arg(long)]
    pub oakestra: PathBuf,
    /// Measured deploy/undeploy cycles, and as many floor runs.
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// VMs running while the worker's and QEMU's memory is measured.
    #[arg(long, default_value_t = 5)]
    pub vms: usize,
    /// Memory of the VM in MB (`memory` of the descriptor, QEMU's `-m`).
    #[arg(long, default_value_t = 128)]
    pub memory: u64,
    /// Where the JSON result goes.
    #[arg(long, default_value = "bench/results")]
    pub results: PathBuf,
}

/// What the floor's namespace gives the guest (a /26 like the worker's subnets).
const FLOOR_HOST: &str = "10.251.0.1";
const FLOOR_GUEST: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 2);
const FLOOR_MASK: &str = "255.255.255.192";

pub fn main(args: UnikernelArgs) -> anyhow::Result<ExitCode> {
    use oak_e2e::Need::{Root, Tool};
    let mut missing = oak_e2e::missing(&[
        Root,
        Tool("qemu-system-x86_64"),
        Tool("apt-get"),
        Tool("dpkg-deb"),
        Tool("busybox"),
        Tool("containerd"),
        Tool("runc"),
        Tool("ip"),
    ]);
    if std::env::consts::ARCH != "x86_64" {
        missing.push("an amd64 host (the test kernel is Debian's amd64 cloud kernel)".into());
    }
    if !missing.is_empty() {
        bail!("the unikernel benchmark cannot run: {}", missing.join("; "));
    }
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(run(args))
}

async fn run(args: UnikernelArgs) -> anyhow::Result<ExitCode> {
    let machine = Machine::read(procs::raise_nofile());
    let work = tempfile::Builder::new().prefix("oak-bench-unikernel-").tempdir_in("/var/tmp")?;
    let dir = work.path();
    let kernel = oak_e2e::unikernel::debian_kernel()?;
    let web = oak_e2e::http::serve_files(HashMap::from([(
        "/bench.tar.gz".to_string(),
        oak_e2e::unikernel::archive(&kernel, true)?,
    )]))?;

    let namespace = format!("oak-bench-{}", std::process::id());
    // The kernel server is on loopback, which a worker fetches from only when allowed.
    let web_host = web.trim_start_matches("http://").to_string();
    let (mut children, url, worker_pid) =
        start_tiers(&args.oakestra, dir, &namespace, &["-u", "--unikernel-accel", "tcg", "--fetch-allow", &web_host])?;

    let floor_ns = FloorNet::create(std::process::id())?;
    let result = measure(&args, &url, &web, worker_pid, &mut children, dir, &floor_ns).await;
    children.shutdown(Duration::from_secs(15));
    // QEMUs outlive a worker by design; whatever this run left goes now.
    kill_qemus(&format!("bench.uk{}.", std::process::id()));
    drop(floor_ns);
    let m = match result {
        Ok(r) => r,
        Err(e) => {
            print_log_tails(dir);
            return Err(e);
        }
    };

    let col = |v: &[Sample], f: fn(&Sample) -> f64| v.iter().map(f).collect::<Vec<f64>>();
    let running = Summary::of(&col(&m.deploys, |s| s.running));
    let marker = Summary::of(&col(&m.deploys, |s| s.marker));
    let http = Summary::of(&col(&m.deploys, |s| s.http));
    let f_qmp = Summary::of(&col(&m.floor, |s| s.running));
    let f_marker = Summary::of(&col(&m.floor, |s| s.marker));
    let f_http = Summary::of(&col(&m.floor, |s| s.http));
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    let secs = |s: &Summary| format!("{:.3} / {:.3} / {:.3} / {:.3} s", s.p50, s.p99, s.min, s.max);
    let mut table = Table::default();
    table.section(&format!("P11 unikernel, cached kernel, TCG, {} runs", m.deploys.len()));
    table.row("request → RUNNING at the root", secs(&running), "p50 / p99 / min / max");
    table.row("request → console marker", secs(&marker), "");
    table.row("request → first HTTP answer", secs(&http), "");
    table.row("floor: QEMU by hand → QMP answers", secs(&f_qmp), "");
    table.row("floor: QEMU by hand → console marker", secs(&f_marker), "");
    table.row("floor: QEMU by hand → first HTTP answer", secs(&f_http), "");
    table.row(
        "HTTP p50 / p99 ÷ floor HTTP p50",
        format!("{:.2}× / {:.2}×", ratio(http.p50, f_http.p50), ratio(http.p99, f_http.p50)),
        format!("p50 ≤ 2×: {}", if ratio(http.p50, f_http.p50) <= 2.0 { "PASS" } else { "FAIL" }),
    );
    table.row(
        "marker p50 ÷ floor marker p50",
        format!("{:.2}×", ratio(marker.p50, f_marker.p50)),
        format!("≤ 2×: {}", if ratio(marker.p50, f_marker.p50) <= 2.0 { "PASS" } else { "FAIL" }),
    );
    table.row(
        "RUNNING p50 ÷ floor QMP p50",
        format!("{:.2}×", ratio(running.p50, f_qmp.p50)),
        format!("added {:.0} ms", (running.p50 - f_qmp.p50) * 1000.0),
    );
    table.section("memory (RSS)");
    table.row("worker, no VM", format!("{:.1} MB", m.worker_idle_kb as f64 / 1024.0), "");
    table.row(
        format!("worker, {} VMs running", m.qemu_kb.len()),
        format!("{:.1} MB", m.worker_vms_kb as f64 / 1024.0),
        "",
    );
    let qemu_total: u64 = m.qemu_kb.iter().sum();
    let qemu_each = m.qemu_kb.iter().map(|k| format!("{:.0}", *k as f64 / 1024.0)).collect::<Vec<_>>().join(", ");
    table.row(
        format!("QEMU processes ({} × -m {})", m.qemu_kb.len(), args.memory),
        format!("{:.1} MB", qemu_total as f64 / 1024.0),
        format!("each: {qemu_each} MB"),
    );
    print!("{}", table.render());
    let samples = |v: &[Sample]| {
        v.iter().map(|s| json!({"running": s.running, "marker": s.marker, "http": s.http})).collect::<Vec<_>>()
    };
    let out = json!({
        "benchmark": "unikernel",
        "machine": machine,
        "commit": Commit::read(),
        "runs": args.runs,
        "accel": "tcg",
        "memory_mb": args.memory,
        "qemu_command_floor": m.floor_command,
        "deploy_seconds": samples(&m.deploys),
        "deploy_running_summary": running,
        "deploy_marker_summary": marker,
        "deploy_http_summary": http,
        "floor_seconds": samples(&m.floor),
        "floor_qmp_summary": f_qmp,
        "floor_marker_summary": f_marker,
        "floor_http_summary": f_http,
        "ratio_http_p50": ratio(http.p50, f_http.p50),
        "ratio_http_p99": ratio(http.p99, f_http.p50),
        "ratio_marker_p50": ratio(marker.p50, f_marker.p50),
        "ratio_running_to_qmp_p50": ratio(running.p50, f_qmp.p50),
        "worker_rss_kb_no_vm": m.worker_idle_kb,
        "worker_rss_kb_with_vms": m.worker_vms_kb,
        "qemu_rss_kb": m.qemu_kb,
    });
    let path = report::write_json(&args.results, "unikernel", &out)?;
    println!("results: {}", path.display());
    Ok(ExitCode::SUCCESS)
}

/// Seconds from the start of one run: `running` is RUNNING at the root (deploys) or QMP's
/// first answer (floor).
#[derive(Debug, Clone, Copy)]
struct Sample {
    running: f64,
    marker: f64,
    http: f64,
}

struct Measured {
    deploys: Vec<Sample>,
    floor: Vec<Sample>,
    floor_command: Vec<String>,
    worker_idle_kb: u64,
    worker_vms_kb: u64,
    qemu_kb: Vec<u64>,
}

async fn measure(
    args: &UnikernelArgs,
    url: &str,
    web: &str,
    worker_pid: u32,
    children: &mut Children,
    dir: &Path,
    floor_ns: &FloorNet,
) -> anyhow::Result<Measured> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let start = Instant::now();
    let token = loop {
        let resp = http
            .post(format!("{url}/api/auth/login"))
            .json(&json!({"username": "Admin", "password": "Admin"}))
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
        if clusters
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["virtualization"].to_string().contains("unikernel")))
        {
            break;
        }
        children.check_alive()?;
        if start.elapsed() > Duration::from_secs(60) {
            bail!("the worker did not become active with unikernel within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let namespace = format!("uk{}", std::process::id());
    let sla = json!({
        "sla_version": "v2.0", "customerID": "Admin",
        "applications": [{"applicationID": "", "application_name": "bench", "application_namespace": namespace, "application_desc": "",
            "microservices": [{"microserviceID": "", "microservice_name": "vm", "microservice_namespace": "uk",
                "virtualization": "unikernel", "cmd": [], "memory": args.memory, "vcpus": 0,
                "code": format!("{web}/bench.tar.gz"), "arch": ["amd64"], "port": "", "constraints": []}]}]
    });
    api.call(reqwest::Method::POST, "/api/application/", Some(sla)).await?;
    let services = api.call(reqwest::Method::GET, "/api/services/", None).await?;
    let service =
        services[0]["microserviceID"].as_str().or(services[0]["_id"].as_str()).context("no service id")?.to_string();
    let job = services[0]["job_name"].as_str().context("no job name")?.to_string();
    let worker_data = dir.join("worker");
    let task = |n: u64| format!("{job}.instance.{n}");
    let log_of = |n: u64| worker_data.join(format!("logs/{}.log", task(n)));

    // Warm-up: downloads the archive into the worker's cache; its QEMU command line is the floor's.
    let mut number = 0u64;
    deploy_and_probe(&api, &service, number, &log_of(number)).await.context("warm-up deploy")?;
    let floor_dir = dir.join("floor");
    let floor_command = floor_command(&worker_data, &task(number), &floor_dir)?;
    undeploy(&api, &service, number, &task(number)).await?;
    number += 1;

    let mut deploys = Vec::with_capacity(args.runs);
    let mut floor = Vec::with_capacity(args.runs);
    for i in 0..args.runs {
        children.check_alive()?;
        let d =
            deploy_and_probe(&api, &service, number, &log_of(number)).await.with_context(|| format!("deploy {i}"))?;
        undeploy(&api, &service, number, &task(number)).await?;
        number += 1;
        let f = floor_run(&floor_command, &floor_dir, floor_ns).await.with_context(|| format!("floor run {i}"))?;
        eprintln!(
            "run {i}: deploy RUNNING {:.3} s, marker {:.3} s, HTTP {:.3} s; floor QMP {:.3} s, marker {:.3} s, HTTP {:.3} s",
            d.running, d.marker, d.http, f.running, f.marker, f.http
        );
        deploys.push(d);
        floor.push(f);
    }

    // Memory: the worker with no VM, then with `--vms` VMs answering HTTP.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let worker_idle_kb = procs::usage(worker_pid).context("worker gone")?.rss_kb;
    let first = number;
    for _ in 0..args.vms {
        deploy_and_probe(&api, &service, number, &log_of(number)).await?;
        number += 1;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let worker_vms_kb = procs::usage(worker_pid).context("worker gone")?.rss_kb;
    let mut qemu_kb = Vec::new();
    for n in first..number {
        for pid in oak_e2e::unikernel::qemu_pids(&task(n)) {
            qemu_kb.push(procs::usage(pid).map_or(0, |u| u.rss_kb));
        }
    }
    for n in first..number {
        undeploy(&api, &service, n, &task(n)).await?;
    }
    Ok(Measured { deploys, floor, floor_command, worker_idle_kb, worker_vms_kb, qemu_kb })
}

/// Requests instance `number` and measures RUNNING at the root, the marker in its log and the
/// first HTTP answer at its namespace address, all from the request.
async fn deploy_and_probe(api: &Api, service: &str, number: u64, log: &Path) -> anyhow::Result<Sample> {
    let start = Instant::now();
    api.call(reqwest::Method::POST, &format!("/api/service/{service}/instance"), None).await?;
    let (ip_tx, ip_rx) = tokio::sync::watch::channel(None);
    let probe = tokio::spawn(probe(start, log.to_path_buf(), ip_rx));
    let mut running = None;
    loop {
        let list = api.instances(service).await?;
        if let Some(inst) = list.iter().find(|i| i["instance_number"].as_u64() == Some(number)) {
            if running.is_none() && inst["status"] == "RUNNING" {
                running = Some(start.elapsed().as_secs_f64());
            }
            if matches!(inst["status"].as_str(), Some("FAILED" | "DEAD")) {
                probe.abort();
                bail!("instance {number} {}: {}", inst["status"], inst["status_detail"]);
            }
            if ip_tx.borrow().is_none() {
                if let Some(ip) = inst["namespace_ip"].as_str().and_then(|ip| ip.parse::<Ipv4Addr>().ok()) {
                    let _ = ip_tx.send(Some(ip));
                }
            }
        }
        if running.is_some() && ip_tx.borrow().is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(120) {
            probe.abort();
            bail!("instance {number} not RUNNING with an address within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (marker, http) = probe.await??;
    Ok(Sample { running: running.unwrap_or(f64::NAN), marker, http })
}

async fn undeploy(api: &Api, service: &str, number: u64, task: &str) -> anyhow::Result<()> {
    api.undeploy_one(service, number).await?;
    let start = Instant::now();
    while !oak_e2e::unikernel::qemu_pids(task).is_empty() {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("QEMU of {task} still runs 30 s after its undeploy");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Seconds from `start` until the console file `log` shows the marker and until the guest's
/// HTTP server (at the address `ip` gets) answers with the test body.
async fn probe(
    start: Instant,
    log: PathBuf,
    mut ip: tokio::sync::watch::Receiver<Option<Ipv4Addr>>,
) -> anyhow::Result<(f64, f64)> {
    let deadline = Duration::from_secs(180);
    let mut marker = None;
    loop {
        if marker.is_none()
            && std::fs::read(&log).is_ok_and(|b| String::from_utf8_lossy(&b).contains(oak_e2e::unikernel::MARKER))
        {
            marker = Some(start.elapsed().as_secs_f64());
        }
        let addr = *ip.borrow_and_update();
        if let (Some(m), Some(addr)) = (marker, addr) {
            if http_answers(addr).await {
                return Ok((m, start.elapsed().as_secs_f64()));
            }
        }
        if start.elapsed() > deadline {
            bail!("no console marker and HTTP answer within {deadline:?} (log {})", log.display());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One `GET /` to `addr:80` answered with the test unikernel's body (short timeouts).
async fn http_answers(addr: Ipv4Addr) -> bool {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect((addr, 80)).await.ok()?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.ok()?;
        let mut body = Vec::new();
        s.read_to_end(&mut body).await.ok()?;
        String::from_utf8_lossy(&body).contains(oak_e2e::unikernel::HTTP_BODY).then_some(())
    };
    matches!(tokio::time::timeout(Duration::from_millis(100), attempt).await, Ok(Some(())))
}

/// The worker's QEMU command line of `task`, rewritten for the floor: its files copied to
/// `floor_dir`, name, console, QMP socket and pid file there, the floor namespace's addresses.
fn floor_command(worker_data: &Path, task: &str, floor_dir: &Path) -> anyhow::Result<Vec<String>> {
    let pid = *oak_e2e::unikernel::qemu_pids(task).first().context("the warm-up instance's QEMU")?;
    let raw = std::fs::read(format!("/proc/{pid}/cmdline"))?;
    let args: Vec<String> =
        raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let instance_dir = worker_data.join(format!("unikernel/instances/{task}"));
    std::fs::create_dir_all(floor_dir.join("root"))?;
    for entry in std::fs::read_dir(instance_dir.join("root"))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), floor_dir.join("root").join(entry.file_name()))?;
        }
    }
    let log = worker_data.join(format!("logs/{task}.log")).display().to_string();
    let (inst, floor) = (instance_dir.display().to_string(), floor_dir.display().to_string());
    let mut out = Vec::with_capacity(args.len());
    for (i, a) in args.iter().enumerate() {
        let prev = if i > 0 { args[i - 1].as_str() } else { "" };
        let a = match prev {
            "-qmp" => format!("unix:{floor}/qmp.sock,server=on,wait=off"),
            "-append" => a
                .split(' ')
                .map(|w| match w.split_once('=') {
                    Some(("netdev.ipv4_addr", _)) => format!("netdev.ipv4_addr={FLOOR_GUEST}"),
                    Some(("netdev.ipv4_gw_addr", _)) => format!("netdev.ipv4_gw_addr={FLOOR_HOST}"),
                    Some(("netdev.ipv4_subnet_mask", _)) => format!("netdev.ipv4_subnet_mask={FLOOR_MASK}"),
                    _ => w.to_string(),
                })
                .collect::<Vec<_>>()
                .join(" "),
            _ => a.replace(&log, &format!("{floor}/console.log")).replace(&inst, &floor).replace(task, "ubench-floor"),
        };
        out.push(a);
    }
    if !out.iter().any(|a| a.contains("netdev.ipv4_addr=")) {
        bail!("the worker's QEMU command line has no network: {args:?}");
    }
    Ok(out)
}

/// One start of the floor's QEMU in the floor namespace, measured, then killed.
async fn floor_run(command: &[String], floor_dir: &Path, ns: &FloorNet) -> anyhow::Result<Sample> {
    let console = floor_dir.join("console.log");
    let qmp = floor_dir.join("qmp.sock");
    let _ = std::fs::remove_file(&console);
    let _ = std::fs::remove_file(&qmp);
    // The host learns the guest's MAC afresh each run, as it does for each deploy's new VM
    // (else the floor would skip an ARP resolution the deploys pay).
    let _ = Command::new("ip").args(["neigh", "flush", "dev", &ns.host_if]).output();
    let netns = std::fs::File::open(format!("/run/netns/{}", ns.name))?;
    let mut cmd = Command::new(&command[0]);
    cmd.args(&command[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(floor_dir.join("qemu.err"))?);
    {
        use std::os::fd::AsRawFd;
        let fd = netns.as_raw_fd();
        // SAFETY: setns(2) and prctl(2) are async-signal-safe; `netns` is open until the spawn.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
    }
    let start = Instant::now();
    let mut child = cmd.spawn().context("cannot start the floor's QEMU")?;
    drop(netns);
    let (ip_tx, ip_rx) = tokio::sync::watch::channel(Some(FLOOR_GUEST));
    let probe = tokio::spawn(probe(start, console.clone(), ip_rx));
    let result = async {
        let qmp_at = loop {
            if let Some(status) = child.try_wait()? {
                bail!("the floor's QEMU exited ({status}): {}", procs::log_tail(&floor_dir.join("qemu.err"), 2000));
            }
            if qmp_answers(&qmp).await {
                break start.elapsed().as_secs_f64();
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!("the floor's QEMU did not answer on QMP within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let (marker, http) = probe.await??;
        Ok(Sample { running: qmp_at, marker, http })
    }
    .await;
    drop(ip_tx);
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// QMP's greeting arrives on the socket.
async fn qmp_answers(path: &Path) -> bool {
    let attempt = async {
        let mut s = tokio::net::UnixStream::connect(path).await.ok()?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.ok()?;
        (n > 0 && buf[..n].starts_with(b"{")).then_some(())
    };
    matches!(tokio::time::timeout(Duration::from_millis(500), attempt).await, Ok(Some(())))
}

/// The floor's network namespace: veth `eth0` inside, bridged with the tap `oaktap0` on
/// `oakvmbr0` as the worker wires a VM's namespace; the host end holds the gateway address.
struct FloorNet {
    name: String,
    host_if: String,
}

impl FloorNet {
    fn create(id: u32) -> anyhow::Result<FloorNet> {
        let net = FloorNet { name: format!("ubench-floor-{id}"), host_if: format!("ubf{}", id % 100_000_000) };
        let ip = |args: &[&str]| -> anyhow::Result<()> {
            let out = Command::new("ip").args(args).output()?;
            if !out.status.success() {
                bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
            }
            Ok(())
        };
        let (ns, host) = (net.name.as_str(), net.host_if.as_str());
        ip(&["netns", "add", ns])?;
        let inside = |args: &[&str]| -> anyhow::Result<()> {
            let mut all = vec!["-n", ns];
            all.extend_from_slice(args);
            ip(&all)
        };
        ip(&["link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns])?;
        ip(&["addr", "add", &format!("{FLOOR_HOST}/26"), "dev", host])?;
        ip(&["link", "set", host, "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        inside(&["tuntap", "add", "dev", "oaktap0", "mode", "tap"])?;
        inside(&["link", "add", "oakvmbr0", "type", "bridge"])?;
        inside(&["link", "set", "eth0", "master", "oakvmbr0", "up"])?;
        inside(&["link", "set", "oaktap0", "master", "oakvmbr0", "up"])?;
        inside(&["link", "set", "oakvmbr0", "up"])?;
        Ok(net)
    }
}

impl Drop for FloorNet {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// SIGKILL to every QEMU whose name starts with `prefix` (this run's job names).
fn kill_qemus(prefix: &str) {
    let Ok(dir) = std::fs::read_dir("/proc") else { return };
    for pid in dir.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()) {
        let Ok(c) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        if c.split(|b| *b == 0).any(|a| a.starts_with(prefix.as_bytes()) && a.ends_with(b",debug-threads=on")) {
            // SAFETY: kill(2) of a QEMU of this benchmark run.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}
