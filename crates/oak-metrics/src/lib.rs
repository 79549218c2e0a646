//! Prometheus metrics shared by the tiers, on the `prometheus-client` crate.
//!
//! - [`Registry`] plus [`render`]: every tier keeps one registry and answers `/metrics` with its
//!   Prometheus text (format 0.0.4, what `promtool check metrics` and every Prometheus read).
//! - [`Scrape`] / [`live`]: values read from a tier's state when scraped (instances by status,
//!   workers by state, …), so no gauge can drift from the state it describes and a family
//!   shrinks when its subjects go.
//! - [`HttpMetrics`]: requests and latency of an axum router by matched route template (never
//!   the raw path: bounded cardinality) and status code, as a middleware layer.
//! - [`ScrapeAccess`]: who may read `/metrics` (anyone on a loopback-only listener, else the
//!   bearer of the scrape token).

mod access;
mod http;
mod scrape;

pub use access::{ScrapeAccess, TOKEN_HINT};
pub use http::HttpMetrics;
pub use prometheus_client;
pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::Histogram;
pub use prometheus_client::registry::Registry;
pub use scrape::{live, Scrape};

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Latency buckets in seconds for control-plane work (scheduling, API requests): 0.1 ms to ~13 s.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.5, 14)
}

/// Latency buckets in seconds for runtime operations (pulls may take minutes): 10 ms to ~10 min.
pub fn slow_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.01, 2.5, 13)
}

/// A histogram with [`latency_buckets`].
pub fn latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

/// A histogram with [`slow_buckets`].
pub fn slow_histogram() -> Histogram {
    Histogram::new(slow_buckets())
}

/// The registry's metrics as Prometheus text.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; an encoder error would only come from a metric's own
    // formatting, which ours never return.
    if prometheus_client::encoding::prometheus_text::encode(&mut out, registry).is_err() {
        out.push_str("# the metrics could not be encoded\n");
    }
    out
}

/// The response of a `/metrics` endpoint with `body`.
pub fn response(body: String) -> axum::response::Response {
    use axum::response::IntoResponse;
    ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
}

/// A label value from text the tier does not control (reasons, statuses from a peer): only
/// ASCII letters, digits, `_`, `-`, `.` and `/` are kept and at most 64 bytes, so a peer cannot
/// break the exposition or grow a series' key without bound.
pub fn label_value(raw: &str) -> String {
    raw.chars().filter(|c| c.is_ascii_alphanumeric() || "_-./".contains(*c)).take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_and_histograms_render_as_prometheus_text() {
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        registry.register("oakestra_things", "Things seen", counter.clone());
        let latency = latency_histogram();
        registry.register("oakestra_step_seconds", "Step time", latency.clone());
        counter.inc_by(3);
        latency.observe(0.002);
        let text = render(&registry);
        assert!(text.contains("# TYPE oakestra_things_total counter\noakestra_things_total 3\n"), "{text}");
        assert!(text.contains("# TYPE oakestra_step_seconds histogram\n"), "{text}");
        assert!(text.contains("oakestra_step_seconds_count 1\n"), "{text}");
        assert!(text.contains("oakestra_step_seconds_bucket{le=\"+Inf\"} 1\n"), "{text}");
        assert!(!text.contains("# EOF"), "Prometheus text, not OpenMetrics: {text}");
    }

    #[test]
    fn buckets_rise_and_cover_their_range() {
        let fast: Vec<f64> = latency_buckets().collect();
        assert!(fast.windows(2).all(|w| w[0] < w[1]));
        assert!(fast[0] <= 0.0001 && *fast.last().unwrap() >= 10.0, "{fast:?}");
        let slow: Vec<f64> = slow_buckets().collect();
        assert!(slow[0] <= 0.01 && *slow.last().unwrap() >= 300.0, "{slow:?}");
    }

    #[test]
    fn label_values_from_peers_are_tamed() {
        assert_eq!(label_value("bad_mac"), "bad_mac");
        assert_eq!(label_value("a\"b}\nc d"), "abcd");
        assert_eq!(label_value(&"x".repeat(500)).len(), 64);
    }
}
