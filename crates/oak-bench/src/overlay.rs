//! `oak-bench overlay`: targets P7 (overlay throughput) and P8 (overlay latency).
//!
//! A lab of network namespaces (`oak_e2e::Lab`: hosts `root`, `cluster`, `wa`, `wb`, `pa`, `pb`
//! on one bridge) runs `oakestra root`, `cluster` and four workers as real processes, with a
//! containerd of the benchmark's own and a registry on the bridge. `wa` and `wb` run the default,
//! encrypted tunnel; `pa` and `pb` run `--insecure-plaintext-overlay` (the tunnel as it was
//! before encryption, kept for this comparison). Service `server` is pinned to `wb`, `client` to
//! `wa`, `pserver` to `pb`, `pclient` to `pa`; their containers only provide network namespaces
//! (a sleeper image). The load runs in those namespaces: `oak-bench tcp-sink` (hidden
//! subcommand) in the servers', and `oak-bench tcp-source` in the clients', both entered with
//! `nsenter --net=/proc/<task pid>/ns/net`.
//!
//! Three paths, measured in the same run and interleaved:
//! - encrypted: client → the server's round-robin IP (TUN, the worker's user-space proxy, sealed
//!   UDP tunnel to `wb`, its proxy, its bridge);
//! - plaintext: pclient → pserver's round-robin IP, the same way with the tunnel in clear;
//! - native: client → the server's namespace IP, routed by the kernel through the lab (a route on
//!   each worker host to the other's /26 via its lab address; removed afterwards). The worker
//!   masquerades traffic from its subnet that leaves by another interface than its bridge, so
//!   the server sees `wa`'s lab address; conntrack maps the replies back. That is a plain kernel
//!   path (veth, bridge, forwarding, NAT), the reference the overlay is compared with.
//!
//! Bulk: `--runs` × `--seconds` of 128 KiB writes per path (median Mbit/s; P7 ratio = encrypted /
//! native, target ≥ 0.5). Request/response: `--round-trips` sequential 64-byte round trips over
//! one connection per path after 100 warm-up ones (P8 = overlay p50 − native p50, target
//! ≤ 0.15 ms encrypted, ≤ 0.1 ms plaintext).
//!
//! Wire protocol of `tcp-sink` (one connection, first byte the mode): `B` bulk, the client sends
//! bytes until it shuts down its write side, the sink answers the count of bytes after the mode
//! byte as a big-endian u64; `E` echo, a big-endian u32 message size follows, then the sink
//! echoes every message of that size until the client closes.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::{Args, ValueEnum};
use oak_e2e::containerd::Containerd;
use oak_e2e::{images, Host, Lab, Registry, Workdir};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::machine::{Commit, Machine};
use crate::procs::{self, Children, Kind};
use crate::report::{self, Summary, Table};

/// Lab prefix and subnet (10.99.78.0/24) of this benchmark (the e2e lab test uses 77).
const PREFIX: &str = "okbov";
const SUBNET: u8 = 78;
const CLUSTER: &str = "bench";
const APP: &str = "ovbench";
const NS: &str = "bench";
/// Port the sink listens on in the server's namespace.
pub const SINK_PORT: u16 = 5201;
/// Size of each write of a bulk transfer.
pub const BULK_WRITE: usize = 128 * 1024;
/// Size of each request and response.
pub const MESSAGE: usize = 64;
/// Round trips before the measured ones.
pub const WARMUP: usize = 100;
const MODE_BULK: u8 = b'B';
const MODE_ECHO: u8 = b'E';
const MAX_MESSAGE: usize = 1 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const IO_TIMEOUT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(200);
/// SIGTERM grace of the oakestra processes (undeploys take up to 10 s of grace).
const STOP_GRACE: Duration = Duration::from_secs(20);
const TARGET_P7_RATIO: f64 = 0.5;
const TARGET_P8_ADDED_MS: f64 = 0.15;
const TARGET_P8_PLAINTEXT_ADDED_MS: f64 = 0.1;
/// Lab hosts of the workers; those starting with `p` run the plaintext tunnel.
const WORKERS: [&str; 4] = ["wa", "wb", "pa", "pb"];
/// The flag that makes a worker's tunnel plaintext.
const PLAINTEXT_FLAG: &str = "--insecure-plaintext-overlay";

#[derive(Args, Debug, Clone)]
pub struct OverlayArgs {
    /// The `oakestra` binary to measure.
    #[arg(long)]
    pub oakestra: PathBuf,
    /// Seconds of each bulk transfer.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Bulk transfers per path (the median counts).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Measured request/response round trips per path.
    #[arg(long, default_value_t = 2000)]
    pub round_trips: usize,
    /// Where the JSON result goes.
    #[arg(long, default_value = "bench/results")]
    pub results: PathBuf,
}

/// `tcp-sink`: accepts bulk and echo connections (runs in the server's namespace).
#[derive(Args, Debug, Clone)]
pub struct SinkArgs {
    #[arg(long, default_value = "0.0.0.0:5201")]
    pub listen: SocketAddr,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Send for `--seconds`, report bytes and elapsed time.
    Bulk,
    /// `--count` sequential request/response round trips of `--size` bytes.
    Rr,
}

/// `tcp-source`: one bulk transfer or one series of round trips; the result as JSON on stdout.
#[derive(Args, Debug, Clone)]
pub struct SourceArgs {
    #[arg(long)]
    pub to: SocketAddr,
    #[arg(long, value_enum)]
    pub mode: Mode,
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    #[arg(long, default_value_t = 2000)]
    pub count: usize,
    #[arg(long, default_value_t = MESSAGE)]
    pub size: usize,
    #[arg(long, default_value_t = WARMUP)]
    pub warmup: usize,
}

// ------------------------------------------------------------------------- sink and source

/// What a bulk transfer reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BulkResult {
    pub bytes_sent: u64,
    /// What the sink counted.
    pub bytes_received: u64,
    /// From the first write to the sink's count having arrived back.
    pub seconds: f64,
}

impl BulkResult {
    pub fn mbit_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.bytes_received as f64 * 8.0 / self.seconds / 1e6
        } else {
            f64::NAN
        }
    }
}

/// What a series of round trips reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RrResult {
    pub size: usize,
    pub warmup: usize,
    /// Every measured round trip, µs, in order.
    pub rtt_us: Vec<f64>,
}

pub fn sink_main(args: SinkArgs) -> Result<ExitCode> {
    let listener = TcpListener::bind(args.listen).with_context(|| format!("binding {}", args.listen))?;
    println!("tcp-sink listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    serve(listener);
    Ok(ExitCode::SUCCESS)
}

/// Accepts connections forever, each served on a thread of its own.
pub fn serve(listener: TcpListener) {
    for conn in listener.incoming() {
        match conn {
            Ok(conn) => {
                std::thread::spawn(move || {
                    let peer = conn.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                    if let Err(e) = handle(conn) {
                        eprintln!("tcp-sink: connection from {peer}: {e}");
                    }
                });
            }
            Err(e) => {
                eprintln!("tcp-sink: accept: {e}");
                sleep(Duration::from_millis(10));
            }
        }
    }
}

fn handle(mut conn: TcpStream) -> std::io::Result<()> {
    // A client that vanished without closing must not keep a thread forever.
    conn.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut mode = [0u8; 1];
    conn.read_exact(&mut mode)?;
    match mode[0] {
        MODE_BULK => {
            let mut buf = vec![0u8; 256 * 1024];
            let mut total = 0u64;
            loop {
                match conn.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => total += n as u64,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            conn.write_all(&total.to_be_bytes())
        }
        MODE_ECHO => {
            conn.set_nodelay(true)?;
            let mut size = [0u8; 4];
            conn.read_exact(&mut size)?;
            let size = u32::from_be_bytes(size) as usize;
            if size == 0 || size > MAX_MESSAGE {
                return Err(std::io::Error::new(ErrorKind::InvalidData, format!("message size {size}")));
            }
            let mut msg = vec![0u8; size];
            while read_message(&mut conn, &mut msg)? {
                conn.write_all(&msg)?;
            }
            Ok(())
        }
        other => Err(std::io::Error::new(ErrorKind::InvalidData, format!("unknown mode byte {other:#04x}"))),
    }
}

/// Fills `buf`; `false` on a clean end of stream before its first byte.
fn read_message(conn: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match conn.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "end of stream inside a message")),
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

pub fn source_main(args: SourceArgs) -> Result<ExitCode> {
    let out = match args.mode {
        Mode::Bulk => {
            ensure!(args.seconds.is_finite() && args.seconds > 0.0, "--seconds must be positive");
            serde_json::to_string(&bulk(args.to, Duration::from_secs_f64(args.seconds))?)?
        }
        Mode::Rr => serde_json::to_string(&round_trips(args.to, args.count, args.size, args.warmup)?)?,
    };
    println!("{out}");
    Ok(ExitCode::SUCCESS)
}

fn connect(to: SocketAddr) -> Result<TcpStream> {
    let s = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT).with_context(|| format!("connecting to {to}"))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

/// Sends [`BULK_WRITE`]-byte writes for `duration`, then waits for the sink's count.
pub fn bulk(to: SocketAddr, duration: Duration) -> Result<BulkResult> {
    let mut s = connect(to)?;
    s.write_all(&[MODE_BULK])?;
    let buf = vec![0xa5u8; BULK_WRITE];
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < duration {
        s.write_all(&buf).with_context(|| format!("sending to {to} after {sent} bytes"))?;
        sent += buf.len() as u64;
    }
    s.shutdown(Shutdown::Write)?;
    let mut count = [0u8; 8];
    s.read_exact(&mut count).with_context(|| format!("reading the byte count from {to}"))?;
    let seconds = start.elapsed().as_secs_f64();
    let received = u64::from_be_bytes(count);
    ensure!(received == sent, "the sink at {to} counted {received} bytes of {sent} sent");
    Ok(BulkResult { bytes_sent: sent, bytes_received: received, seconds })
}

/// `warmup + count` sequential round trips of `size` bytes over one connection.
pub fn round_trips(to: SocketAddr, count: usize, size: usize, warmup: usize) -> Result<RrResult> {
    ensure!(size > 0 && size <= MAX_MESSAGE, "--size must be 1..={MAX_MESSAGE}");
    let mut s = connect(to)?;
    s.set_nodelay(true)?;
    let mut header = vec![MODE_ECHO];
    header.extend_from_slice(&(size as u32).to_be_bytes());
    s.write_all(&header)?;
    let msg: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let mut back = vec![0u8; size];
    let mut rtt_us = Vec::with_capacity(count);
    for i in 0..warmup + count {
        let t = Instant::now();
        s.write_all(&msg).with_context(|| format!("round trip {i} to {to}"))?;
        s.read_exact(&mut back).with_context(|| format!("round trip {i} to {to}"))?;
        let us = t.elapsed().as_secs_f64() * 1e6;
        ensure!(back == msg, "round trip {i} to {to} came back altered");
        if i >= warmup {
            rtt_us.push(us);
        }
    }
    s.shutdown(Shutdown::Write)?;
    Ok(RrResult { size, warmup, rtt_us })
}

// ------------------------------------------------------------------------------ interrupts

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT and SIGTERM only set a flag: the benchmark stops at its next check and cleans up.
fn catch_signals() {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

// ------------------------------------------------------------------------------ benchmark

pub fn main(args: OverlayArgs) -> Result<ExitCode> {
    ensure!(args.seconds.is_finite() && args.seconds > 0.0, "--seconds must be positive");
    ensure!(args.runs >= 1, "--runs must be at least 1");
    ensure!(args.round_trips >= 1, "--round-trips must be at least 1");
    let tools = ["containerd", "runc", "ctr", "docker-registry", "skopeo", "ip", "nsenter", "iptables"];
    let needs: Vec<_> = std::iter::once(oak_e2e::Need::Root).chain(tools.map(oak_e2e::Need::Tool)).collect();
    let missing = oak_e2e::missing(&needs);
    if !missing.is_empty() {
        bail!("the overlay benchmark cannot run: {}", missing.join("; "));
    }
    let oakestra = std::fs::canonicalize(&args.oakestra)
        .with_context(|| format!("the oakestra binary {}", args.oakestra.display()))?;
    let oakestra = oakestra.to_str().context("the oakestra binary's path is not UTF-8")?.to_string();
    catch_signals();
    let machine = Machine::read(procs::raise_nofile());
    let commit = Commit::read();
    let mut work = Workdir::new_in(Path::new("/var/tmp/oak-bench"), "overlay")?;
    eprintln!("overlay: work directory {}", work.path().display());
    // Declared before the lab, so dropped after it.
    let containerd = Containerd::start()?;
    let mut lab = Lab::new(PREFIX, SUBNET)?;
    let result = run(&args, &oakestra, &mut lab, &work, containerd.socket());
    drop(lab);
    let measured = match result {
        Ok(m) => m,
        Err(e) => {
            work.keep();
            let _ = std::fs::copy(containerd.log_path(), work.join("containerd.log"));
            return Err(e);
        }
    };
    drop(containerd);
    let out = summarize(&args, &measured, machine, commit);
    let path = report::write_json(&args.results, "overlay", &out)?;
    println!("results: {}", path.display());
    Ok(ExitCode::SUCCESS)
}

/// Addresses of the pair measured.
#[derive(Debug, Clone, Serialize)]
struct Topology {
    client_worker_ip: Ipv4Addr,
    server_worker_ip: Ipv4Addr,
    client_namespace_ip: Ipv4Addr,
    server_namespace_ip: Ipv4Addr,
    client_subnet: String,
    server_subnet: String,
    server_rr_ip: Ipv4Addr,
    /// pclient (pa) → pserver (pb), the plaintext tunnel.
    plaintext_client_namespace_ip: Ipv4Addr,
    plaintext_server_rr_ip: Ipv4Addr,
}

#[derive(Debug, Default, Clone, Serialize)]
struct PathSamples {
    bulk: Vec<BulkResult>,
    rr: Option<RrResult>,
}

impl PathSamples {
    fn mbit_s(&self) -> Vec<f64> {
        self.bulk.iter().map(BulkResult::mbit_s).collect()
    }

    fn rtt_us(&self) -> &[f64] {
        self.rr.as_ref().map_or(&[], |r| &r.rtt_us)
    }
}

struct Measured {
    topology: Topology,
    native: PathSamples,
    /// The encrypted tunnel.
    overlay: PathSamples,
    plaintext: PathSamples,
    /// (run, path) in the order measured.
    order: Vec<(usize, &'static str)>,
    cleanup_problems: Vec<String>,
}

fn run(args: &OverlayArgs, bin: &str, lab: &mut Lab, work: &Workdir, socket: &Path) -> Result<Measured> {
    let mut bench = Bench::setup(bin, lab, work, socket).inspect_err(|_| print_tails(work))?;
    let result = bench.measure(args);
    if result.is_err() {
        bench.print_tails();
    }
    let problems = bench.cleanup();
    for p in &problems {
        eprintln!("overlay: cleanup: {p}");
    }
    let mut measured = result?;
    measured.cleanup_problems = problems;
    Ok(measured)
}

fn print_tails(work: &Workdir) {
    for name in ["root", "cluster", "worker-wa", "worker-wb", "worker-pa", "worker-pb"] {
        let log = work.join(format!("{name}.log"));
        if log.exists() {
            eprintln!("--- {name}.log (tail)\n{}", procs::log_tail(&log, 4000));
        }
    }
}

/// One `oakestra` process of the lab.
struct Proc {
    name: String,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn start(name: &str, host: &Host, bin: &str, args: &[String], work: &Workdir) -> Result<Proc> {
        let log = work.join(format!("{name}.log"));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // The benchmark's own RUST_LOG, if set, reaches the processes (e.g. `debug` to see why a
        // deploy stalls).
        let level = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
        let child = host.spawn(bin, &args, &[("RUST_LOG", level.as_str()), ("NO_COLOR", "1")], &log)?;
        Ok(Proc { name: name.to_string(), log, child: Some(child) })
    }

    fn ensure_alive(&mut self) -> Result<()> {
        if let Some(c) = &mut self.child {
            if let Some(status) = c.try_wait()? {
                self.child = None;
                bail!(
                    "{} exited with {status}; end of {}:\n{}",
                    self.name,
                    self.log.display(),
                    procs::log_tail(&self.log, 3000)
                );
            }
        }
        Ok(())
    }

    fn stop(&mut self) -> Option<String> {
        let mut child = self.child.take()?;
        match oak_e2e::procs::terminate(&mut child, STOP_GRACE) {
            Ok(s) if s.success() => None,
            Ok(s) => Some(format!("{} exited with {s} on SIGTERM", self.name)),
            Err(e) => Some(format!("stopping {}: {e:#}", self.name)),
        }
    }
}

struct WorkerHost {
    name: String,
    host: Host,
    /// containerd namespace of its containers.
    ns: String,
    data: PathBuf,
    id: String,
}

/// A service deployed for the benchmark.
struct Service {
    id: String,
    job: String,
}

/// A route added on a worker host for the native path.
struct Route {
    host: Host,
    dest: String,
    via: Ipv4Addr,
}

/// Everything the benchmark started or changed; [`Bench::cleanup`] undoes it (also on drop).
struct Bench {
    dir: PathBuf,
    socket: PathBuf,
    _registry: Registry,
    api: Api,
    /// root, cluster, then the workers.
    procs: Vec<Proc>,
    workers: Vec<WorkerHost>,
    services: Vec<Service>,
    sinks: Children,
    routes: Vec<Route>,
    /// Network namespaces of the instances (`ip netns identify`), removed if the workers left them.
    instance_netns: Vec<String>,
    cleaned: bool,
}

impl Bench {
    fn setup(bin: &str, lab: &mut Lab, work: &Workdir, socket: &Path) -> Result<Bench> {
        let gateway = lab.gateway();
        let root_host = lab.add_host("root")?;
        let cluster_host = lab.add_host("cluster")?;
        let mut worker_hosts = Vec::new();
        for name in WORKERS {
            worker_hosts.push(lab.add_host(name)?);
        }

        let port = oak_e2e::registry::free_port(gateway.into())?;
        let registry = Registry::start(&format!("{gateway}:{port}"))?;
        let layout = images::build_image(&work.join("images"), &images::sleeper())?;
        let image = registry.push(&layout, "latest", "bench/sleeper")?;

        let root_ip = root_host.ip();
        let url = format!("http://{root_ip}:10000");
        let root_data = work.join("data/root");
        let mut procs = vec![Proc::start("root", &root_host, bin, &oak_e2e::procs::root_args(&root_data), work)?];
        let api = Api::new(&url)?;
        let mut bench = Bench {
            dir: work.path().to_path_buf(),
            socket: socket.to_path_buf(),
            _registry: registry,
            api,
            procs: Vec::new(),
            workers: Vec::new(),
            services: Vec::new(),
            sinks: Children::default(),
            routes: Vec::new(),
            instance_netns: Vec::new(),
            cleaned: false,
        };
        bench.procs.append(&mut procs);
        bench.wait("the root to log Admin in", Duration::from_secs(30), |b| b.api.login())?;
        let cluster_token = root_data.join("cluster-token");
        bench.wait("the root's cluster-token file", Duration::from_secs(10), |_| {
            Ok(cluster_token.exists().then_some(()))
        })?;

        let cluster_data = work.join("data/cluster");
        let cluster = Proc::start(
            "cluster",
            &cluster_host,
            bin,
            &oak_e2e::procs::ClusterFlags {
                name: CLUSTER,
                location: None,
                root: root_ip,
                data_dir: &cluster_data,
                token_file: &cluster_token,
            }
            .args(),
            work,
        )?;
        bench.procs.push(cluster);
        let node_token = cluster_data.join("node-token");
        bench.wait("the cluster's node-token file", Duration::from_secs(30), |_| {
            Ok(node_token.exists().then_some(()))
        })?;

        for host in worker_hosts {
            let name = host.name().to_string();
            let data = work.join(format!("data/worker-{name}"));
            let ns = format!("{PREFIX}-{name}");
            let mut args = oak_e2e::procs::WorkerFlags {
                cluster: cluster_host.ip(),
                data_dir: &data,
                token_file: &node_token,
                node_name: &name,
                containerd_socket: socket,
                containerd_namespace: &ns,
                registry: &format!("{gateway}:{port}"),
            }
            .args();
            if name.starts_with('p') {
                args.push(PLAINTEXT_FLAG.into());
            }
            let p = Proc::start(&format!("worker-{name}"), &host, bin, &args, work)?;
            bench.procs.push(p);
            bench.workers.push(WorkerHost { name, host, ns, data, id: String::new() });
        }
        for i in 0..bench.workers.len() {
            let file = bench.workers[i].data.join("node.json");
            let what = format!("worker {} to register (node.json)", bench.workers[i].name);
            let id = bench.wait(&what, Duration::from_secs(60), |_| {
                let v: Value = serde_json::from_slice(&std::fs::read(&file)?)?;
                Ok(v["id"].as_str().filter(|s| !s.is_empty()).map(str::to_string))
            })?;
            bench.workers[i].id = id;
        }
        bench.wait("the cluster to be active with all workers", Duration::from_secs(60), |b| {
            let cs = b.api.call(reqwest::Method::GET, "/api/clusters/active", None)?;
            Ok(cs
                .as_array()
                .is_some_and(|cs| {
                    cs.iter().any(|c| {
                        c["cluster_name"] == CLUSTER
                            && c["active_nodes"].as_u64() == Some(WORKERS.len() as u64)
                            && c["virtualization"].to_string().contains("docker")
                    })
                })
                .then_some(()))
        })?;
        bench.deploy(&image)?;
        Ok(bench)
    }

    /// Polls `f` every [`POLL`] until it yields `Some`, checking the processes and interrupts.
    fn wait<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&mut Bench) -> Result<Option<T>>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        let mut last: Option<anyhow::Error> = None;
        loop {
            check_interrupted()?;
            for p in &mut self.procs {
                p.ensure_alive()?;
            }
            match f(self) {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(e) => last = Some(e),
            }
            if Instant::now() >= deadline {
                match last {
                    Some(e) => bail!("timed out after {timeout:?} waiting for {what}; last error: {e:#}"),
                    None => bail!("timed out after {timeout:?} waiting for {what}"),
                }
            }
            sleep(POLL);
        }
    }

    fn worker(&self, name: &str) -> &WorkerHost {
        self.workers.iter().find(|w| w.name == name).expect("a worker of the lab")
    }

    /// Application `ovbench` with `server` pinned to wb, `client` to wa, `pserver` to pb and
    /// `pclient` to pa.
    fn deploy(&mut self, image: &str) -> Result<()> {
        let ms = |name: &str, node: &str| {
            json!({
                "microserviceID": "", "microservice_name": name, "microservice_namespace": NS,
                "virtualization": "container", "cmd": [], "memory": 32, "vcpus": 0, "code": image,
                "port": "", "one_shot": false,
                "constraints": [{"type": "direct", "node": node, "cluster": CLUSTER}]
            })
        };
        let sla = json!({
            "sla_version": "v2.0", "customerID": "Admin",
            "applications": [{
                "applicationID": "", "application_name": APP, "application_namespace": NS,
                "application_desc": "overlay benchmark",
                "microservices": [ms("server", "wb"), ms("client", "wa"), ms("pserver", "pb"), ms("pclient", "pa")]
            }]
        });
        self.api.call(reqwest::Method::POST, "/api/application/", Some(sla))?;
        let services = self.api.call(reqwest::Method::GET, "/api/services/", None)?;
        for name in ["server", "client", "pserver", "pclient"] {
            let s = services
                .as_array()
                .and_then(|a| a.iter().find(|s| s["microservice_name"] == name))
                .with_context(|| format!("service {name} not in GET /api/services/: {services}"))?;
            let id = s["microserviceID"].as_str().or(s["_id"].as_str()).context("service id")?.to_string();
            let job = s["job_name"].as_str().context("job_name")?.to_string();
            self.services.push(Service { id, job });
        }
        for i in 0..self.services.len() {
            let id = self.services[i].id.clone();
            self.api.call(reqwest::Method::POST, &format!("/api/service/{id}/instance"), None)?;
        }
        Ok(())
    }

    /// Instance 0 of service `index` RUNNING with its namespace IP, on `worker`.
    fn wait_instance(&mut self, index: usize, worker: &str) -> Result<Value> {
        let id = self.services[index].id.clone();
        let what = format!("instance 0 of {} to be RUNNING with a namespace IP", self.services[index].job);
        let inst = self.wait(&what, Duration::from_secs(120), |b| {
            let s = b.api.call(reqwest::Method::GET, &format!("/api/service/{id}"), None)?;
            let inst = s["instance_list"]
                .as_array()
                .and_then(|l| l.iter().find(|i| i["instance_number"].as_u64() == Some(0)))
                .cloned();
            let Some(inst) = inst else { return Ok(None) };
            match inst["status"].as_str() {
                Some("FAILED") | Some("DEAD") => bail!("instance ended: {inst}"),
                Some("RUNNING") if inst["namespace_ip"].as_str().is_some_and(|s| !s.is_empty()) => Ok(Some(inst)),
                _ => Ok(None),
            }
        })?;
        let want = &self.worker(worker).id;
        ensure!(inst["worker_id"].as_str() == Some(want.as_str()), "instance not on {worker} ({want}): {inst}");
        Ok(inst)
    }

    fn ctr(&self, ns: &str, args: &[&str]) -> Result<String> {
        let out = Command::new("ctr").arg("-a").arg(&self.socket).args(["-n", ns]).args(args).output()?;
        if !out.status.success() {
            bail!("ctr -n {ns} {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Pid of the running task `<job>.instance.0` on `worker`.
    fn task_pid(&self, worker: &str, job: &str) -> Result<u32> {
        let ns = &self.worker(worker).ns;
        let id = format!("{job}.instance.0");
        let out = self.ctr(ns, &["tasks", "ls"])?;
        out.lines()
            .skip(1)
            .find_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
                [task, pid, "RUNNING", ..] if task == id => pid.parse().ok(),
                _ => None,
            })
            .with_context(|| format!("no running task {id} in {ns}: {out}"))
    }

    fn measure(&mut self, args: &OverlayArgs) -> Result<Measured> {
        let server = self.wait_instance(0, "wb")?;
        let client = self.wait_instance(1, "wa")?;
        self.wait_instance(2, "pb")?;
        let pclient = self.wait_instance(3, "pa")?;
        let ip = |v: &Value, key: &str| -> Result<Ipv4Addr> {
            v[key].as_str().and_then(|s| s.parse().ok()).with_context(|| format!("no IPv4 {key}: {v}"))
        };
        let server_ns_ip = ip(&server, "namespace_ip")?;
        let client_ns_ip = ip(&client, "namespace_ip")?;
        let svc = self.api.call(reqwest::Method::GET, &format!("/api/service/{}", self.services[0].id), None)?;
        let rr_ip = ip(&svc, "RR_ip")?;
        ensure!(rr_ip.octets()[..2] == [10, 30], "RR_ip {rr_ip} is not in 10.30.0.0/16");
        let psvc = self.api.call(reqwest::Method::GET, &format!("/api/service/{}", self.services[2].id), None)?;
        let plain_rr_ip = ip(&psvc, "RR_ip")?;
        let subnet = |a: Ipv4Addr| format!("{}/26", Ipv4Addr::from(u32::from(a) & !63));
        let topology = Topology {
            client_worker_ip: self.worker("wa").host.ip(),
            server_worker_ip: self.worker("wb").host.ip(),
            client_namespace_ip: client_ns_ip,
            server_namespace_ip: server_ns_ip,
            client_subnet: subnet(client_ns_ip),
            server_subnet: subnet(server_ns_ip),
            server_rr_ip: rr_ip,
            plaintext_client_namespace_ip: ip(&pclient, "namespace_ip")?,
            plaintext_server_rr_ip: plain_rr_ip,
        };
        eprintln!("overlay: {topology:?}");

        let server_pid = self.task_pid("wb", &self.services[0].job)?;
        let client_pid = self.task_pid("wa", &self.services[1].job)?;
        let pserver_pid = self.task_pid("pb", &self.services[2].job)?;
        let pclient_pid = self.task_pid("pa", &self.services[3].job)?;
        for pid in [server_pid, client_pid, pserver_pid, pclient_pid] {
            if let Ok(out) = Command::new("ip").args(["netns", "identify", &pid.to_string()]).output() {
                let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if !name.is_empty() {
                    self.instance_netns.push(name);
                }
            }
        }

        // The sinks, for the whole run.
        let exe = std::env::current_exe()?;
        for (pid, name) in [(server_pid, "sink"), (pserver_pid, "sink-plaintext")] {
            let log = self.dir.join(format!("{name}.log"));
            self.sinks.spawn(
                "tcp-sink",
                Kind::Workers,
                Path::new("nsenter"),
                &[
                    format!("--net=/proc/{pid}/ns/net"),
                    "--".into(),
                    exe.display().to_string(),
                    "tcp-sink".into(),
                    "--listen".into(),
                    format!("0.0.0.0:{SINK_PORT}"),
                ],
                &log,
            )?;
            self.wait("the sink to listen", Duration::from_secs(10), |b| {
                b.sinks.check_alive()?;
                Ok(std::fs::read_to_string(&log)?.contains("listening").then_some(()))
            })?;
        }

        // Native path: each worker host routes the other's instance subnet through the lab.
        let (wa, wb) = (self.worker("wa").host.clone(), self.worker("wb").host.clone());
        self.add_route(&wa, &topology.server_subnet, wb.ip())?;
        self.add_route(&wb, &topology.client_subnet, wa.ip())?;

        let source = Source { exe: exe.clone(), pid: client_pid };
        let plain_source = Source { exe: exe.clone(), pid: pclient_pid };
        let paths: [(&'static str, SocketAddrV4, &Source); 3] = [
            ("native", SocketAddrV4::new(server_ns_ip, SINK_PORT), &source),
            ("encrypted", SocketAddrV4::new(rr_ip, SINK_PORT), &source),
            ("plaintext", SocketAddrV4::new(plain_rr_ip, SINK_PORT), &plain_source),
        ];
        for (path, to, source) in paths {
            let what = format!("the sink to answer on the {path} path ({to})");
            self.wait(&what, Duration::from_secs(30), |_| source.rr(to, 5, 0).map(|_| Some(())))?;
        }

        let mut samples: [PathSamples; 3] = Default::default();
        let mut order = Vec::new();
        let seconds = args.seconds;
        for run in 0..args.runs {
            // Rotate which path goes first, so a drift of the machine hits all alike.
            for k in 0..paths.len() {
                let i = (run + k) % paths.len();
                let (path, to, source) = paths[i];
                check_interrupted()?;
                self.ensure_alive()?;
                let r = source.bulk(to, seconds).with_context(|| format!("bulk run {run} on the {path} path"))?;
                eprintln!("overlay: bulk run {run} {path}: {:.1} Mbit/s", r.mbit_s());
                samples[i].bulk.push(r);
                order.push((run, path));
            }
        }
        for (i, (path, to, source)) in paths.into_iter().enumerate() {
            check_interrupted()?;
            self.ensure_alive()?;
            let r =
                source.rr(to, args.round_trips, WARMUP).with_context(|| format!("round trips on the {path} path"))?;
            let s = Summary::of(&r.rtt_us);
            eprintln!("overlay: round trips {path}: p50 {:.1} µs, p99 {:.1} µs", s.p50, s.p99);
            samples[i].rr = Some(r);
        }
        let [native, overlay, plaintext] = samples;
        Ok(Measured { topology, native, overlay, plaintext, order, cleanup_problems: Vec::new() })
    }

    fn ensure_alive(&mut self) -> Result<()> {
        for p in &mut self.procs {
            p.ensure_alive()?;
        }
        self.sinks.check_alive()
    }

    fn add_route(&mut self, host: &Host, dest: &str, via: Ipv4Addr) -> Result<()> {
        host.run_ok("ip", &["route", "add", dest, "via", &via.to_string()])?;
        self.routes.push(Route { host: host.clone(), dest: dest.to_string(), via });
        Ok(())
    }

    fn print_tails(&self) {
        for p in &self.procs {
            eprintln!("--- {} (tail)\n{}", p.log.display(), procs::log_tail(&p.log, 4000));
        }
        for name in ["sink.log", "sink-plaintext.log"] {
            let sink = self.dir.join(name);
            if sink.exists() {
                eprintln!("--- {} (tail)\n{}", sink.display(), procs::log_tail(&sink, 2000));
            }
        }
    }

    /// Undoes everything: sink, routes, services (waiting for their containers to go), the
    /// processes (workers, cluster, root, by SIGTERM), then whatever containerd, the namespaces
    /// and the cgroup tree still hold. Returns what did not go cleanly.
    fn cleanup(&mut self) -> Vec<String> {
        if std::mem::replace(&mut self.cleaned, true) {
            return Vec::new();
        }
        let mut problems = Vec::new();
        self.sinks.shutdown(Duration::from_secs(3));
        for r in std::mem::take(&mut self.routes) {
            if let Err(e) = r.host.run_ok("ip", &["route", "del", &r.dest, "via", &r.via.to_string()]) {
                problems.push(format!("removing route {} on {}: {e:#}", r.dest, r.host.name()));
            }
        }
        let workers_alive = self.procs.iter_mut().all(|p| p.ensure_alive().is_ok());
        let mut undeployed = true;
        if self.api.token.is_some() {
            for s in std::mem::take(&mut self.services) {
                if let Err(e) = self.api.call(reqwest::Method::DELETE, &format!("/api/service/{}", s.id), None) {
                    problems.push(format!("undeploying {}: {e:#}", s.job));
                    undeployed = false;
                }
            }
        }
        if workers_alive && undeployed {
            let deadline = Instant::now() + Duration::from_secs(40);
            loop {
                let left: Vec<String> = self
                    .workers
                    .iter()
                    .flat_map(|w| {
                        self.ctr(&w.ns, &["containers", "ls", "-q"])
                            .unwrap_or_default()
                            .lines()
                            .map(str::to_string)
                            .collect::<Vec<_>>()
                    })
                    .filter(|l| !l.trim().is_empty())
                    .collect();
                if left.is_empty() {
                    break;
                }
                if Instant::now() >= deadline {
                    problems.push(format!("containers still there 40 s after the undeploy: {left:?}"));
                    break;
                }
                sleep(POLL);
            }
        }
        // Workers first, then the cluster, then the root.
        for p in self.procs.iter_mut().rev() {
            if let Some(problem) = p.stop() {
                problems.push(problem);
            }
        }
        // What the workers did not remove (after an error): tasks, containers, namespaces.
        for w in &self.workers {
            for line in self.ctr(&w.ns, &["tasks", "ls", "-q"]).unwrap_or_default().lines().filter(|l| !l.is_empty()) {
                problems.push(format!("task {line} left in {}", w.ns));
                let _ = self.ctr(&w.ns, &["tasks", "rm", "-f", line]);
            }
            for line in
                self.ctr(&w.ns, &["containers", "ls", "-q"]).unwrap_or_default().lines().filter(|l| !l.is_empty())
            {
                problems.push(format!("container {line} left in {}", w.ns));
                let _ = self.ctr(&w.ns, &["containers", "rm", line]);
            }
        }
        for ns in std::mem::take(&mut self.instance_netns) {
            if Path::new("/run/netns").join(&ns).exists() {
                problems.push(format!("instance network namespace {ns} left"));
                let _ = Command::new("ip").args(["netns", "del", &ns]).stdin(Stdio::null()).output();
            }
        }
        // runc leaves the empty parent cgroups `/oakestra/<namespace>` and the shim its empty
        // state directory (shared by every containerd of the machine).
        let hierarchies: Vec<PathBuf> =
            std::fs::read_dir("/sys/fs/cgroup").map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        for w in &self.workers {
            for h in hierarchies.iter().chain([&PathBuf::from("/sys/fs/cgroup")]) {
                let _ = std::fs::remove_dir(h.join("oakestra").join(&w.ns));
            }
            let _ = std::fs::remove_dir(Path::new("/run/containerd/runc").join(&w.ns));
        }
        problems
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        for p in self.cleanup() {
            eprintln!("overlay: cleanup: {p}");
        }
    }
}

/// `oak-bench tcp-source` in the client's network namespace.
struct Source {
    exe: PathBuf,
    pid: u32,
}

impl Source {
    fn run<T: for<'de> Deserialize<'de>>(&self, args: &[String]) -> Result<T> {
        let out = Command::new("nsenter")
            .arg(format!("--net=/proc/{}/ns/net", self.pid))
            .arg("--")
            .arg(&self.exe)
            .arg("tcp-source")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running tcp-source through nsenter")?;
        if !out.status.success() {
            bail!("tcp-source {args:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
        }
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(text.trim()).with_context(|| format!("tcp-source's answer {text:?}"))
    }

    fn bulk(&self, to: SocketAddrV4, seconds: f64) -> Result<BulkResult> {
        self.run(&[
            "--to".into(),
            to.to_string(),
            "--mode".into(),
            "bulk".into(),
            "--seconds".into(),
            seconds.to_string(),
        ])
    }

    fn rr(&self, to: SocketAddrV4, count: usize, warmup: usize) -> Result<RrResult> {
        self.run(&[
            "--to".into(),
            to.to_string(),
            "--mode".into(),
            "rr".into(),
            "--count".into(),
            count.to_string(),
            "--size".into(),
            MESSAGE.to_string(),
            "--warmup".into(),
            warmup.to_string(),
        ])
    }
}

/// The root's API, called synchronously (a current-thread runtime of its own).
struct Api {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    url: String,
    token: Option<String>,
}

impl Api {
    fn new(url: &str) -> Result<Api> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let http = {
            let _guard = rt.enter();
            reqwest::Client::builder().timeout(Duration::from_secs(15)).build()?
        };
        Ok(Api { rt, http, url: url.to_string(), token: None })
    }

    /// Logs in as the lab's Admin; `None` while the root does not answer yet.
    fn login(&mut self) -> Result<Option<()>> {
        let req = self
            .http
            .post(format!("{}/api/auth/login", self.url))
            .json(&json!({"username": "Admin", "password": oak_e2e::procs::LAB_ADMIN_PASSWORD}));
        let v: Value = self.rt.block_on(async { req.send().await?.error_for_status()?.json().await })?;
        self.token = v["token"].as_str().map(str::to_string);
        Ok(self.token.as_ref().map(|_| ()))
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value> {
        let mut req = self.http.request(method.clone(), format!("{}{path}", self.url));
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let (status, text) = self
            .rt
            .block_on(async {
                let resp = req.send().await?;
                let status = resp.status();
                Ok::<_, reqwest::Error>((status, resp.text().await?))
            })
            .with_context(|| format!("{method} {path}"))?;
        if !status.is_success() {
            bail!("{method} {path}: {status}: {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }
}

// ------------------------------------------------------------------------------- report

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "MISS"
    }
}

fn median(samples: &[f64]) -> f64 {
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn summarize(args: &OverlayArgs, m: &Measured, machine: Machine, commit: Commit) -> Value {
    let (nat_tp, ovl_tp, pla_tp) = (m.native.mbit_s(), m.overlay.mbit_s(), m.plaintext.mbit_s());
    let (nat_med, ovl_med, pla_med) = (median(&nat_tp), median(&ovl_tp), median(&pla_tp));
    let tp = |v: &[f64]| Summary::of(v);
    let (nat_s, ovl_s, pla_s) = (tp(&nat_tp), tp(&ovl_tp), tp(&pla_tp));
    let share = |x: f64| if nat_med > 0.0 { x / nat_med } else { f64::NAN };
    let (ratio, plain_ratio) = (share(ovl_med), share(pla_med));
    let p7_ok = ratio >= TARGET_P7_RATIO;
    let (nat_rtt, ovl_rtt, pla_rtt) =
        (Summary::of(m.native.rtt_us()), Summary::of(m.overlay.rtt_us()), Summary::of(m.plaintext.rtt_us()));
    let added_p50_ms = (ovl_rtt.p50 - nat_rtt.p50) / 1000.0;
    let added_p99_ms = (ovl_rtt.p99 - nat_rtt.p99) / 1000.0;
    let plain_added_p50_ms = (pla_rtt.p50 - nat_rtt.p50) / 1000.0;
    let plain_added_p99_ms = (pla_rtt.p99 - nat_rtt.p99) / 1000.0;
    let p8_ok = added_p50_ms <= TARGET_P8_ADDED_MS;
    let p8_plain_ok = plain_added_p50_ms <= TARGET_P8_PLAINTEXT_ADDED_MS;
    let t = &m.topology;
    let runs = |v: &[f64]| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ");

    let mut table = Table::default();
    table.section("setup (lab namespaces, one machine)");
    table.row(
        "client (wa) → server (wb)",
        "namespaces",
        format!("{} → {}, server RR_ip {}", t.client_namespace_ip, t.server_namespace_ip, t.server_rr_ip),
    );
    table.row(
        "pclient (pa) → pserver (pb)",
        "plaintext",
        format!("{} → RR_ip {} ({PLAINTEXT_FLAG})", t.plaintext_client_namespace_ip, t.plaintext_server_rr_ip),
    );
    table.row(
        "native path",
        "kernel",
        format!("route {} via {} (wb), masqueraded by wa", t.server_subnet, t.server_worker_ip),
    );
    table.row("bulk", format!("{} × {} s", args.runs, args.seconds), format!("{} KiB writes", BULK_WRITE / 1024));
    table.section("P7 overlay throughput (TCP bulk, median of runs)");
    for (name, med, s, v) in [
        ("native", nat_med, &nat_s, &nat_tp),
        ("encrypted overlay (RR_ip)", ovl_med, &ovl_s, &ovl_tp),
        ("plaintext overlay (RR_ip)", pla_med, &pla_s, &pla_tp),
    ] {
        table.row(name, format!("{med:.1} Mbit/s"), format!("min {:.1}, max {:.1} ({})", s.min, s.max, runs(v)));
    }
    table.row("ratio encrypted / native", format!("{ratio:.3}"), format!(">= {TARGET_P7_RATIO} {}", verdict(p7_ok)));
    table.row("ratio plaintext / native", format!("{plain_ratio:.3}"), "");
    table.section(&format!("P8 overlay latency ({MESSAGE}-byte request/response, {} round trips)", args.round_trips));
    let ms = |us: f64| us / 1000.0;
    for (name, s) in
        [("native", &nat_rtt), ("encrypted overlay (RR_ip)", &ovl_rtt), ("plaintext overlay (RR_ip)", &pla_rtt)]
    {
        table.row(
            format!("{name} p50 / p99"),
            format!("{:.3} / {:.3} ms", ms(s.p50), ms(s.p99)),
            format!("min {:.3}, max {:.3} ms", ms(s.min), ms(s.max)),
        );
    }
    table.row(
        "added p50 encrypted",
        format!("{added_p50_ms:.3} ms"),
        format!("<= {TARGET_P8_ADDED_MS} ms {}", verdict(p8_ok)),
    );
    table.row("added p99 encrypted", format!("{added_p99_ms:.3} ms"), "");
    table.row(
        "added p50 plaintext",
        format!("{plain_added_p50_ms:.3} ms"),
        format!("<= {TARGET_P8_PLAINTEXT_ADDED_MS} ms {}", verdict(p8_plain_ok)),
    );
    table.row("added p99 plaintext", format!("{plain_added_p99_ms:.3} ms"), "");
    print!("{}", table.render());
    if !m.cleanup_problems.is_empty() {
        println!("cleanup problems: {:?}", m.cleanup_problems);
    }

    let path = |p: &PathSamples, tp: &[f64], med: f64, s: &Summary, rtt: &Summary| {
        json!({
            "bulk": p.bulk, "bulk_mbit_s": tp, "bulk_median_mbit_s": med, "bulk_summary": s,
            "rtt_us": p.rtt_us(), "rtt_summary_us": rtt,
        })
    };
    json!({
        "benchmark": "overlay",
        "machine": machine,
        "commit": commit,
        "params": {
            "seconds": args.seconds, "runs": args.runs, "round_trips": args.round_trips,
            "warmup_round_trips": WARMUP, "message_bytes": MESSAGE, "bulk_write_bytes": BULK_WRITE,
        },
        "topology": t,
        "notes": [
            "native path: the same two instance namespaces as the encrypted path, kernel-routed through the lab (route on each worker host to the other's /26 via its lab address); the client's worker masquerades it (its rule for traffic leaving by another interface than oakbr0), conntrack maps replies back",
            "encrypted path (`overlay`): client → the server's RR_ip (TUN oaktun0, user-space proxy, Noise IK / ChaCha20-Poly1305 UDP tunnel on port 50103)",
            "plaintext path: pclient → pserver's RR_ip between two workers started with --insecure-plaintext-overlay",
            "everything runs on one machine: sources, sinks, all workers' proxies share its cores",
        ],
        "order": m.order.iter().map(|(run, path)| json!({"run": run, "path": path})).collect::<Vec<_>>(),
        "native": path(&m.native, &nat_tp, nat_med, &nat_s, &nat_rtt),
        "overlay": path(&m.overlay, &ovl_tp, ovl_med, &ovl_s, &ovl_rtt),
        "plaintext": path(&m.plaintext, &pla_tp, pla_med, &pla_s, &pla_rtt),
        "p7": {"ratio": ratio, "plaintext_ratio": plain_ratio, "target_min": TARGET_P7_RATIO, "met": p7_ok},
        "p8": {
            "added_p50_ms": added_p50_ms, "added_p99_ms": added_p99_ms, "target_max_ms": TARGET_P8_ADDED_MS, "met": p8_ok,
            "plaintext_added_p50_ms": plain_added_p50_ms, "plaintext_added_p99_ms": plain_added_p99_ms,
            "plaintext_target_max_ms": TARGET_P8_PLAINTEXT_ADDED_MS, "plaintext_met": p8_plain_ok,
        },
        "cleanup_problems": m.cleanup_problems,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || serve(listener));
        addr
    }

    #[test]
    fn bulk_counts_every_byte() {
        let addr = sink();
        let r = bulk(addr, Duration::from_millis(200)).unwrap();
        assert!(r.bytes_sent >= BULK_WRITE as u64 && r.bytes_sent.is_multiple_of(BULK_WRITE as u64), "{r:?}");
        assert_eq!(r.bytes_received, r.bytes_sent);
        assert!(r.seconds >= 0.2 && r.mbit_s() > 0.0, "{r:?}");
        // The JSON the benchmark parses.
        let back: BulkResult = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back.bytes_received, r.bytes_received);
    }

    #[test]
    fn round_trips_echo_and_time_each() {
        let addr = sink();
        let r = round_trips(addr, 50, MESSAGE, 10).unwrap();
        assert_eq!((r.size, r.warmup, r.rtt_us.len()), (MESSAGE, 10, 50));
        assert!(r.rtt_us.iter().all(|us| us.is_finite() && *us > 0.0), "{r:?}");
        // Sizes other than 64, and several connections at once.
        let threads: Vec<_> = [1usize, 1000, 70_000]
            .into_iter()
            .map(|size| std::thread::spawn(move || round_trips(addr, 5, size, 1)))
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap().unwrap().rtt_us.len(), 5);
        }
        assert!(round_trips(addr, 1, 0, 0).is_err());
    }

    #[test]
    fn sink_rejects_unknown_modes_and_sizes() {
        let addr = sink();
        for header in [&b"X"[..], &[MODE_ECHO, 0, 0, 0, 0][..], &[MODE_ECHO, 0xff, 0xff, 0xff, 0xff][..]] {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(header).unwrap();
            let mut buf = [0u8; 1];
            // The sink closes the connection without answering.
            assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
        }
        // Still serving.
        assert_eq!(round_trips(addr, 2, 8, 0).unwrap().rtt_us.len(), 2);
    }

    #[test]
    fn unreachable_sink_is_an_error() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        // Nothing listens any more on that port.
        assert!(bulk(port, Duration::from_millis(10)).is_err());
        assert!(round_trips(port, 1, 8, 0).is_err());
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}
