//! Requests of an axum router by route template, method and status, with their latency.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;

use crate::{latency_histogram, Counter, Family, Histogram, Registry};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: String,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// `oakestra_http_requests_total{method, route, status}` and
/// `oakestra_http_request_duration_seconds{method, route}`. `route` is the router's template
/// (`/api/service/{id}`), `unmatched` for paths no route matched, so neither ids nor probing
/// for paths can grow the number of series.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily,
}

impl HttpMetrics {
    /// Registers both families in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = HistogramFamily::new_with_constructor(latency_histogram);
        registry.register(
            "oakestra_http_requests",
            "API requests answered, by route template and status",
            requests.clone(),
        );
        registry.register(
            "oakestra_http_request_duration_seconds",
            "Time to answer API requests (until the response head), by route template",
            latency.clone(),
        );
        HttpMetrics { requests, latency }
    }

    /// The middleware: `router.layer(axum::middleware::from_fn_with_state(metrics, HttpMetrics::track))`.
    pub async fn track(State(metrics): State<HttpMetrics>, request: Request, next: Next) -> Response {
        let started = Instant::now();
        let method = method_label(request.method());
        let route = match request.extensions().get::<MatchedPath>() {
            Some(path) => path.as_str().to_string(),
            None => "unmatched".to_string(),
        };
        let response = next.run(request).await;
        let status = response.status().as_u16();
        metrics
            .latency
            .get_or_create(&RouteLabels { method, route: route.clone() })
            .observe(started.elapsed().as_secs_f64());
        metrics.requests.get_or_create(&RequestLabels { method, route, status }).inc();
        response
    }
}

fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    use super::*;
    use crate::render;

    #[tokio::test]
    async fn requests_are_counted_by_route_template_never_by_raw_path() {
        let mut registry = Registry::default();
        let metrics = HttpMetrics::register(&mut registry);
        let app = Router::new()
            .route("/api/service/{id}", get(|| async { "ok" }))
            .layer(axum::middleware::from_fn_with_state(metrics, HttpMetrics::track));
        for uri in ["/api/service/a1", "/api/service/b2", "/nope/1", "/nope/2"] {
            let req = axum::http::Request::get(uri).body(Body::empty()).unwrap();
            app.clone().oneshot(req).await.unwrap();
        }
        let text = render(&registry);
        assert!(
            text.contains("oakestra_http_requests_total{method=\"GET\",route=\"/api/service/{id}\",status=\"200\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("oakestra_http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("oakestra_http_request_duration_seconds_count{method=\"GET\",route=\"/api/service/{id}\"} 2"),
            "{text}"
        );
        assert!(!text.contains("a1") && !text.contains("/nope"), "no raw path in a label: {text}");
    }
}
