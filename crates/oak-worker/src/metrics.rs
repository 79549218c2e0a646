//! The worker's `/metrics` (`--metrics-port`, 10190): the node (CPU, memory, disk, GPU) as last
//! sampled for the cluster, every instance this worker runs (labels `service_id`, `job_name`,
//! `instance_number`, not `job`/`instance`, which Prometheus gives every target: CPU seconds, memory and its limit, OOM kills, exits, state) as last observed,
//! the runtimes' deploy and undeploy times, and the overlay's refusals by reason.
//!
//! Instance series follow each observation: an instance no runtime lists any more is gone from
//! the next scrape, so the number of series is bounded by what the node runs.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use oak_api::node::{NodeInfo, ServiceResources};
use oak_metrics::{Family, Histogram, Registry, Scrape, ScrapeAccess};

/// Default port of the worker's `/metrics`.
pub const DEFAULT_METRICS_PORT: u16 = 10190;

/// Exit counts of instances not seen for this long are forgotten.
const FORGET_EXITS_AFTER: Duration = Duration::from_secs(3600);

type Key = (String, u32);

/// `runtime`, `operation`.
type OpLabels = [(&'static str, String); 2];

type OpFamily = Family<OpLabels, Histogram, fn() -> Histogram>;

/// One instance as an observation found it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct InstanceRow {
    pub service_id: String,
    /// `creating`, `running` or `exited`.
    pub state: &'static str,
    pub usage: Option<ServiceResources>,
}

#[derive(Default)]
struct Observed {
    node: Option<NodeInfo>,
    instances: BTreeMap<Key, InstanceRow>,
    /// Exits per instance (each is followed by a restart somewhere), with when the instance was
    /// last seen; kept across the instance's removal so a crash loop shows as a rising counter.
    exits: HashMap<Key, (u64, Instant)>,
}

pub struct WorkerMetrics {
    registry: Registry,
    ops: OpFamily,
    observed: Mutex<Observed>,
    pub(crate) access: ScrapeAccess,
    /// The overlay, when the worker runs it: its counters are read at each scrape.
    overlay: std::sync::OnceLock<Arc<crate::net::NetManager>>,
}

impl WorkerMetrics {
    pub(crate) fn new(token: Option<String>) -> Self {
        let mut registry = Registry::default();
        let ops = OpFamily::new_with_constructor(oak_metrics::slow_histogram);
        registry.register(
            "oakestra_runtime_operation_seconds",
            "Runtime work by runtime and operation: deploy and undeploy as the worker calls them, and their steps pull, create, start, stop where the runtime reports them",
            ops.clone(),
        );
        WorkerMetrics {
            registry,
            ops,
            observed: Mutex::default(),
            access: ScrapeAccess::new(token),
            overlay: std::sync::OnceLock::new(),
        }
    }

    /// The overlay whose data-path counters `/metrics` shows.
    pub(crate) fn set_overlay(&self, net: Arc<crate::net::NetManager>) {
        let _ = self.overlay.set(net);
    }

    fn observed(&self) -> std::sync::MutexGuard<'_, Observed> {
        self.observed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records how long one runtime call took.
    pub(crate) fn operation(&self, runtime: &str, operation: &'static str, took: Duration) {
        let labels: OpLabels = [("runtime", oak_metrics::label_value(runtime)), ("operation", operation.to_string())];
        self.ops.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// The node as last sampled.
    pub(crate) fn node(&self, info: NodeInfo) {
        self.observed().node = Some(info);
    }

    /// What the runtimes list now: replaces the instances of the last observation.
    pub(crate) fn instances(&self, rows: BTreeMap<Key, InstanceRow>) {
        let now = Instant::now();
        let mut observed = self.observed();
        for key in rows.keys() {
            if let Some((_, seen)) = observed.exits.get_mut(key) {
                *seen = now;
            }
        }
        observed.exits.retain(|_, (_, seen)| now.duration_since(*seen) < FORGET_EXITS_AFTER);
        observed.instances = rows;
    }

    /// An instance stopped by itself.
    pub(crate) fn exited(&self, key: &Key) {
        let mut observed = self.observed();
        let entry = observed.exits.entry(key.clone()).or_insert((0, Instant::now()));
        entry.0 += 1;
        entry.1 = Instant::now();
    }

    /// The orchestrator deleted the instance: its exit count goes too.
    pub(crate) fn deleted(&self, key: &Key) {
        self.observed().exits.remove(key);
    }

    pub fn render(self: &Arc<Self>) -> String {
        let mut live = Registry::default();
        let this = self.clone();
        live.register_collector(oak_metrics::live(move |s| this.observe(s)));
        oak_metrics::render(&self.registry) + &oak_metrics::render(&live)
    }

    fn observe(&self, s: &mut Scrape) {
        if let Some(o) = self.overlay.get().and_then(|net| net.observe()) {
            overlay_families(s, &o.stats, &o.rtts);
            peer_traffic_families(s, &o.traffic);
        }
        let observed = self.observed();
        if let Some(n) = &observed.node {
            s.gauge("oakestra_node_cpu_percent", "CPU utilisation of the whole node, 0-100", n.cpu_percent);
            s.gauge("oakestra_node_cpu_cores", "Logical cores of the node", n.vcpus as f64);
            s.gauge("oakestra_node_memory_total_bytes", "Memory of the node", mb(n.memory_total));
            s.gauge("oakestra_node_memory_available_bytes", "Memory available on the node", mb(n.memory));
            s.gauge("oakestra_node_disk_free_bytes", "Free disk on the data directory's file system", mb(n.disk_free));
            s.gauge("oakestra_node_gpus", "GPUs of the node", n.vgpus as f64);
            s.gauge("oakestra_node_gpu_utilisation_percent", "GPU utilisation, 0-100", n.gpu_usage);
            s.gauge("oakestra_node_gpu_memory_bytes", "GPU memory summed over GPUs", n.vram as f64 * 1024.0 * 1024.0);
            let refused = (n.overlay.iter().flat_map(|o| o.refused.iter()))
                .map(|(reason, count)| (vec![("reason", oak_metrics::label_value(reason))], *count))
                .collect();
            s.counters("oakestra_overlay_refused", "Overlay datagrams this worker refused, by reason", refused);
        }
        let labels = |key: &Key, row: &InstanceRow| {
            vec![
                ("service_id", oak_metrics::label_value(&row.service_id)),
                ("job_name", oak_metrics::label_value(&key.0)),
                ("instance_number", key.1.to_string()),
            ]
        };
        let mut cpu = Vec::new();
        let mut memory = Vec::new();
        let mut limit = Vec::new();
        let mut ooms = Vec::new();
        let mut state = Vec::new();
        let mut exits = Vec::new();
        for (key, row) in &observed.instances {
            let l = labels(key, row);
            let mut with_state = l.clone();
            with_state.push(("state", row.state.to_string()));
            state.push((with_state, 1.0));
            exits.push((l.clone(), observed.exits.get(key).map_or(0, |(n, _)| *n)));
            let Some(u) = &row.usage else { continue };
            if let Some(seconds) = u.cpu_seconds {
                cpu.push((l.clone(), seconds));
            }
            if let Ok(bytes) = u.memory_bytes.parse::<f64>() {
                memory.push((l.clone(), bytes));
            }
            if let Some(bytes) = u.memory_limit_bytes {
                limit.push((l.clone(), bytes as f64));
            }
            if let Some(n) = u.oom_kills {
                ooms.push((l, n));
            }
        }
        s.gauges("oakestra_instance_state", "1 for each instance on this worker, in its state", state);
        s.float_counters("oakestra_instance_cpu_seconds", "CPU time the instance used since it started", cpu);
        s.gauges("oakestra_instance_memory_bytes", "Memory the instance uses (without reclaimable cache)", memory);
        s.gauges("oakestra_instance_memory_limit_bytes", "The instance's memory limit", limit);
        s.counters("oakestra_instance_oom_kills", "Processes of the instance killed by the OOM killer", ooms);
        s.counters(
            "oakestra_instance_restarts",
            "Times the instance stopped by itself on this worker (each exit is re-deployed)",
            exits,
        );
    }
}

/// The overlay's data path: packets by direction and fate, drops by reason, the probed
/// round-trip time to each peer worker (one series per peer the tables name).
fn overlay_families(s: &mut Scrape, stats: &oak_net::ProxyStats, rtts: &[(std::net::SocketAddrV4, Duration)]) {
    let dir = |d: &str, n: u64| (vec![("direction", d.to_string())], n);
    s.counters(
        "oakestra_overlay_packets",
        "Overlay packets through the proxy: out (from local instances) and in (from the tunnel)",
        vec![dir("out", stats.packets_out), dir("in", stats.packets_in)],
    );
    let fate = |f: &str, n: u64| (vec![("fate", f.to_string())], n);
    s.counters(
        "oakestra_overlay_forwarded_packets",
        "Overlay packets by where they went: tunneled to a peer, local to an instance here, delivered from the tunnel",
        vec![fate("tunneled", stats.tunneled), fate("local", stats.local), fate("delivered", stats.delivered)],
    );
    let drops = oak_net::DropReason::ALL
        .iter()
        .map(|r| (vec![("reason", r.as_str().to_string())], stats.drops.get(*r)))
        .collect();
    s.counters("oakestra_overlay_drops", "Overlay packets the proxy dropped, by reason", drops);
    s.gauge("oakestra_overlay_flows", "Overlay connections (5-tuple flows) tracked", stats.flows as f64);
    s.gauge("oakestra_overlay_queued_packets", "Overlay packets waiting for a route table", stats.queued as f64);
    let mut rtts: Vec<_> =
        rtts.iter().map(|(peer, rtt)| (vec![("peer", peer.to_string())], rtt.as_secs_f64())).collect();
    rtts.sort_by(|a, b| a.0.cmp(&b.0));
    s.gauges(
        "oakestra_overlay_peer_rtt_seconds",
        "Probed round-trip time through the tunnel to each peer worker",
        rtts,
    );
}

/// Packets and bytes through the secure tunnel per peer worker and direction (one pair of
/// series per peer this worker has keys for).
fn peer_traffic_families(s: &mut Scrape, traffic: &[(std::net::SocketAddrV4, oak_net::Traffic)]) {
    let mut traffic = traffic.to_vec();
    traffic.sort_by_key(|(peer, _)| *peer);
    let series = |pick: fn(&oak_net::Traffic) -> (u64, u64)| {
        let mut out = Vec::new();
        for (peer, t) in &traffic {
            let (sent, received) = pick(t);
            out.push((vec![("peer", peer.to_string()), ("direction", "out".to_string())], sent));
            out.push((vec![("peer", peer.to_string()), ("direction", "in".to_string())], received));
        }
        out
    };
    s.counters(
        "oakestra_overlay_peer_packets",
        "Packets through the encrypted tunnel per peer worker: out (sent to it) and in (from it)",
        series(|t| (t.sent_packets, t.received_packets)),
    );
    s.counters(
        "oakestra_overlay_peer_bytes",
        "Bytes of the packets through the encrypted tunnel per peer worker (without the tunnel's overhead)",
        series(|t| (t.sent_bytes, t.received_bytes)),
    );
}

fn mb(v: u64) -> f64 {
    v as f64 * 1024.0 * 1024.0
}

/// `GET /metrics`.
async fn serve(State(metrics): State<Arc<WorkerMetrics>>, headers: HeaderMap) -> Response {
    if !metrics.access.allows(&headers) {
        return (axum::http::StatusCode::UNAUTHORIZED, oak_metrics::TOKEN_HINT).into_response();
    }
    oak_metrics::response(metrics.render())
}

/// Binds `addr` for `/metrics` (fails at once, e.g. when the port is taken).
pub(crate) async fn listen(metrics: &WorkerMetrics, addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    metrics.access.listening_on(local);
    if metrics.access.exposed() && !metrics.access.has_token() {
        tracing::warn!(%local, "/metrics listens beyond loopback and no --metrics-token is set: it refuses every scrape");
    }
    tracing::info!(%local, "metrics listening");
    Ok(listener)
}

/// Serves `/metrics` on `listener` until `shutdown` completes.
pub(crate) async fn run(
    metrics: Arc<WorkerMetrics>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(serve))
        .fallback(|| async { (axum::http::StatusCode::NOT_FOUND, "only /metrics here") })
        .with_state(metrics);
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
        tracing::warn!(error = %e, "the metrics server failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(job: &str, n: u32) -> ServiceResources {
        ServiceResources {
            job_name: job.into(),
            instance: n,
            memory_bytes: "1048576".into(),
            cpu_seconds: Some(1.5),
            memory_limit_bytes: Some(256 << 20),
            oom_kills: Some(2),
            ..Default::default()
        }
    }

    fn row(service: &str, state: &'static str, usage: Option<ServiceResources>) -> InstanceRow {
        InstanceRow { service_id: service.into(), state, usage }
    }

    #[test]
    fn instance_series_follow_the_observations() {
        let metrics = Arc::new(WorkerMetrics::new(None));
        let key = ("app.ns.web.ns".to_string(), 3);
        metrics.instances(BTreeMap::from([(key.clone(), row("svc1", "running", Some(usage(&key.0, 3))))]));
        metrics.exited(&key);
        metrics.operation("docker", "deploy", Duration::from_millis(1200));
        let text = metrics.render();
        let l = "service_id=\"svc1\",job_name=\"app.ns.web.ns\",instance_number=\"3\"";
        for line in [
            format!("oakestra_instance_memory_bytes{{{l}}} 1048576\n"),
            format!("oakestra_instance_memory_limit_bytes{{{l}}} 268435456\n"),
            format!("oakestra_instance_cpu_seconds_total{{{l}}} 1.5\n"),
            format!("oakestra_instance_oom_kills_total{{{l}}} 2\n"),
            format!("oakestra_instance_restarts_total{{{l}}} 1\n"),
            format!("oakestra_instance_state{{{l},state=\"running\"}} 1\n"),
            "oakestra_runtime_operation_seconds_count{runtime=\"docker\",operation=\"deploy\"} 1\n".to_string(),
        ] {
            assert!(text.contains(&line), "missing {line:?} in\n{text}");
        }
        if let Some(verdict) = oak_testenv::promtool_check_metrics("worker_metrics_pass_promtool", &text) {
            assert_eq!(verdict, Ok(()), "{text}");
        }
        // Gone from the runtime: gone from the metrics.
        metrics.instances(BTreeMap::new());
        let text = metrics.render();
        assert!(!text.contains("app.ns.web.ns"), "{text}");
    }

    #[test]
    fn exits_are_counted_across_a_redeploy_and_dropped_on_delete() {
        let metrics = Arc::new(WorkerMetrics::new(None));
        let key = ("j".to_string(), 0);
        for _ in 0..3 {
            metrics.instances(BTreeMap::from([(key.clone(), row("s", "running", None))]));
            metrics.exited(&key);
            metrics.instances(BTreeMap::new());
        }
        metrics.instances(BTreeMap::from([(key.clone(), row("s", "creating", None))]));
        let text = metrics.render();
        assert!(
            text.contains("oakestra_instance_restarts_total{service_id=\"s\",job_name=\"j\",instance_number=\"0\"} 3"),
            "{text}"
        );
        assert!(text.contains("state=\"creating\"} 1"), "{text}");
        metrics.deleted(&key);
        let text = metrics.render();
        assert!(
            text.contains("oakestra_instance_restarts_total{service_id=\"s\",job_name=\"j\",instance_number=\"0\"} 0"),
            "{text}"
        );
    }

    /// One plain HTTP/1.1 GET of `/metrics` at `port` on loopback: the whole answer.
    async fn get(port: u16, bearer: Option<&str>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let auth = bearer.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let req = format!("GET /metrics HTTP/1.1\r\nHost: w\r\n{auth}Connection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn beyond_loopback_the_scrape_token_is_needed_on_loopback_not() {
        let metrics = Arc::new(WorkerMetrics::new(Some("w-s3cret".into())));
        metrics.node(NodeInfo { vcpus: 2, ..Default::default() });
        let listener = listen(&metrics, "0.0.0.0:0".parse().unwrap()).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(run(metrics, listener, std::future::pending()));
        let refused = get(port, None).await;
        assert!(refused.starts_with("HTTP/1.1 401") && refused.contains("--metrics-token"), "{refused}");
        assert!(get(port, Some("nope")).await.starts_with("HTTP/1.1 401"));
        let allowed = get(port, Some("w-s3cret")).await;
        assert!(allowed.starts_with("HTTP/1.1 200") && allowed.contains("oakestra_node_cpu_cores 2"), "{allowed}");
        server.abort();

        let open = Arc::new(WorkerMetrics::new(None));
        let listener = listen(&open, "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(run(open, listener, std::future::pending()));
        assert!(get(port, None).await.starts_with("HTTP/1.1 200"));
        server.abort();
    }

    #[test]
    fn overlay_counters_and_peer_rtts_are_exported() {
        let mut stats =
            oak_net::ProxyStats { packets_out: 10, packets_in: 7, tunneled: 9, flows: 3, ..Default::default() };
        stats.drops.add(oak_net::DropReason::ALL[0], 2);
        let peer: std::net::SocketAddrV4 = "10.0.0.2:50103".parse().unwrap();
        let mut registry = Registry::default();
        registry.register_collector(oak_metrics::live(move |s| {
            overlay_families(s, &stats, &[(peer, Duration::from_micros(1500))])
        }));
        let text = oak_metrics::render(&registry);
        let reason = oak_net::DropReason::ALL[0].as_str();
        for line in [
            "oakestra_overlay_packets_total{direction=\"out\"} 10\n".to_string(),
            "oakestra_overlay_packets_total{direction=\"in\"} 7\n".to_string(),
            "oakestra_overlay_forwarded_packets_total{fate=\"tunneled\"} 9\n".to_string(),
            format!("oakestra_overlay_drops_total{{reason=\"{reason}\"}} 2\n"),
            "oakestra_overlay_flows 3\n".to_string(),
            "oakestra_overlay_peer_rtt_seconds{peer=\"10.0.0.2:50103\"} 0.0015\n".to_string(),
        ] {
            assert!(text.contains(&line), "missing {line:?} in\n{text}");
        }
        if let Some(verdict) = oak_testenv::promtool_check_metrics("overlay_metrics_pass_promtool", &text) {
            assert_eq!(verdict, Ok(()), "{text}");
        }
    }

    #[test]
    fn traffic_per_peer_is_exported_by_direction() {
        let peer: std::net::SocketAddrV4 = "10.0.0.2:50103".parse().unwrap();
        let t = oak_net::Traffic { sent_packets: 4, sent_bytes: 4000, received_packets: 2, received_bytes: 120 };
        let mut registry = Registry::default();
        registry.register_collector(oak_metrics::live(move |s| peer_traffic_families(s, &[(peer, t)])));
        let text = oak_metrics::render(&registry);
        for line in [
            "oakestra_overlay_peer_packets_total{peer=\"10.0.0.2:50103\",direction=\"out\"} 4\n",
            "oakestra_overlay_peer_packets_total{peer=\"10.0.0.2:50103\",direction=\"in\"} 2\n",
            "oakestra_overlay_peer_bytes_total{peer=\"10.0.0.2:50103\",direction=\"out\"} 4000\n",
            "oakestra_overlay_peer_bytes_total{peer=\"10.0.0.2:50103\",direction=\"in\"} 120\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        if let Some(verdict) = oak_testenv::promtool_check_metrics("peer_traffic_passes_promtool", &text) {
            assert_eq!(verdict, Ok(()), "{text}");
        }
    }

    #[test]
    fn node_figures_are_in_bytes() {
        let metrics = Arc::new(WorkerMetrics::new(None));
        let info = NodeInfo {
            memory_total: 2048,
            memory: 1024,
            disk_free: 10,
            vcpus: 4,
            cpu_percent: 12.5,
            ..Default::default()
        };
        metrics.node(info);
        let text = metrics.render();
        for line in [
            "oakestra_node_memory_total_bytes 2147483648\n",
            "oakestra_node_memory_available_bytes 1073741824\n",
            "oakestra_node_disk_free_bytes 10485760\n",
            "oakestra_node_cpu_cores 4\n",
            "oakestra_node_cpu_percent 12.5\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
