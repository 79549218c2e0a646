//! The cluster's `/metrics` (on the node API): node-API requests by route template, placement
//! decision times, root channel connections, and at each scrape the live state: nodes,
//! instances by status, the placement queue, the embedded broker's counters, refusals.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use oak_metrics::{Counter, HttpMetrics, Registry, Scrape, ScrapeAccess};

use crate::Ctx;

pub struct ClusterMetrics {
    registry: Registry,
    pub http: HttpMetrics,
    /// Connections to the root that reached the resync (first and re-connections).
    pub root_connections: Counter,
    pub access: ScrapeAccess,
}

impl ClusterMetrics {
    pub fn new(placement: oak_metrics::Histogram, token: Option<String>) -> Self {
        let mut registry = Registry::default();
        let http = HttpMetrics::register(&mut registry);
        registry.register(
            "oakestra_placement_seconds",
            "Cluster placement decision time (choosing a node for an instance)",
            placement,
        );
        let root_connections = Counter::default();
        registry.register(
            "oakestra_root_channel_connections",
            "Connections to the root that completed the hello (first and re-connections)",
            root_connections.clone(),
        );
        ClusterMetrics { registry, http, root_connections, access: ScrapeAccess::new(token) }
    }
}

/// `GET /metrics`.
pub async fn serve(State(ctx): State<Arc<Ctx>>, headers: HeaderMap) -> Response {
    if !ctx.metrics.access.allows(&headers) {
        let body =
            oak_api::ErrorBody { code: 401, message: oak_metrics::TOKEN_HINT.into(), field: None, errors: Vec::new() };
        return (axum::http::StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    }
    oak_metrics::response(render(&ctx))
}

/// The whole text: the registry's metrics, then the live ones.
pub fn render(ctx: &Arc<Ctx>) -> String {
    let mut live = Registry::default();
    let observed = ctx.clone();
    live.register_collector(oak_metrics::live(move |s| observe(&observed, s)));
    oak_metrics::render(&ctx.metrics.registry) + &oak_metrics::render(&live)
}

fn observe(ctx: &Ctx, s: &mut Scrape) {
    let now = Instant::now();
    {
        let st = ctx.state();
        let active = st.active_nodes(now);
        s.gauge("oakestra_nodes", "Workers registered with this cluster", st.nodes.len() as f64);
        s.gauge("oakestra_nodes_active", "Workers that reported within --worker-timeout", active as f64);
        s.gauges(
            "oakestra_workers",
            "Workers by state (active: reported within --worker-timeout)",
            vec![
                (vec![("state", "active".to_string())], active as f64),
                (vec![("state", "inactive".to_string())], (st.nodes.len() - active) as f64),
            ],
        );
        let mut by_status: std::collections::BTreeMap<String, f64> = Default::default();
        let mut unplaced = 0usize;
        for i in st.instances.values() {
            *by_status.entry(oak_metrics::label_value(&i.status)).or_default() += 1.0;
            if i.worker_id.is_none() {
                unplaced += 1;
            }
        }
        let rows = by_status.into_iter().map(|(k, n)| (vec![("status", k)], n)).collect();
        s.gauges("oakestra_instances", "Instances held by this cluster, by status", rows);
        s.gauge("oakestra_placement_queue", "Instances of this cluster not placed on a worker", unplaced as f64);
        s.gauge(
            "oakestra_placement_p50_seconds",
            "Median cluster placement decision time (last 100,000 decisions)",
            st.placement.quantile(0.5) / 1e6,
        );
        s.gauge(
            "oakestra_placement_p99_seconds",
            "99th percentile of cluster placement decision time (last 100,000)",
            st.placement.quantile(0.99) / 1e6,
        );
        // Tunnel datagrams each worker refused (forged, replayed, from unknown keys, …), as it
        // last reported them.
        let mut refused = Vec::new();
        for (id, node) in &st.nodes {
            for (reason, n) in node.record.info.overlay.iter().flat_map(|o| o.refused.iter()) {
                refused.push((vec![("node", id.clone()), ("reason", oak_metrics::label_value(reason))], *n));
            }
        }
        s.counters("oakestra_overlay_refused", "Overlay datagrams each worker refused, by reason", refused);
        let ages = st.report_ages(now).map(|(id, age)| (vec![("node", id.to_string())], age.as_secs_f64())).collect();
        s.gauges("oakestra_worker_report_age_seconds", "Seconds since each worker's last report", ages);
    }
    let queued = ctx.root_queue();
    s.gauge(
        "oakestra_root_channel_connected",
        "1 while the channel to the root is open",
        queued.is_some() as u8 as f64,
    );
    s.gauge("oakestra_root_channel_queue", "Messages queued for the root", queued.unwrap_or(0) as f64);
    if let Some(b) = ctx.bus.stats() {
        s.gauge("oakestra_mqtt_connections", "MQTT connections open at the embedded broker", b.connections as f64);
        s.counter("oakestra_mqtt_connections_accepted", "MQTT connections accepted", b.connections_total);
        s.counter("oakestra_mqtt_messages_received", "MQTT messages published to the broker", b.messages_in);
        s.counter("oakestra_mqtt_messages_delivered", "MQTT deliveries queued to subscribers", b.messages_out);
        s.counter("oakestra_mqtt_messages_dropped", "MQTT deliveries dropped (subscriber queue full)", b.dropped);
        s.counter("oakestra_mqtt_auth_failures", "MQTT CONNECTs refused for bad credentials", b.auth_failures);
        s.counter(
            "oakestra_mqtt_acl_denials",
            "MQTT publishes or subscribes outside the client's topics",
            b.acl_denials,
        );
    }
    s.counters(
        "oakestra_tls_refused",
        "Connections refused during the TLS handshake, by listener and reason",
        ctx.tls_refusals.counts(),
    );
}
