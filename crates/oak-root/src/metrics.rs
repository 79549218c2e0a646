//! The root's `/metrics`: API requests by route template (a middleware layer over the whole
//! router), placement decision times, and the fleet's live state read at each scrape
//! (`fleet/observe.rs`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use oak_metrics::{HttpMetrics, Registry, ScrapeAccess};

use crate::auth::extract::Caller;
use crate::error::ApiError;
use crate::fleet::Fleet;
use crate::state::AppState;

pub struct RootMetrics {
    registry: Registry,
    pub http: HttpMetrics,
    /// Who may scrape: anyone while the API listens on loopback only, else the bearer of
    /// `--metrics-token` or of an Admin's access token.
    pub access: ScrapeAccess,
}

impl RootMetrics {
    pub fn new(fleet: &Arc<Fleet>, token: Option<String>) -> Self {
        let mut registry = Registry::default();
        let http = HttpMetrics::register(&mut registry);
        registry.register(
            "oakestra_placement_seconds",
            "Root placement decision time (choosing a cluster for an instance)",
            fleet.placement_histogram(),
        );
        let observed = fleet.clone();
        registry.register_collector(oak_metrics::live(move |s| observed.observe(s)));
        RootMetrics { registry, http, access: ScrapeAccess::new(token) }
    }

    pub fn render(&self) -> String {
        oak_metrics::render(&self.registry)
    }
}

/// `GET /metrics`.
pub async fn serve(State(st): State<AppState>, headers: HeaderMap, caller: Result<Caller, ApiError>) -> Response {
    let allowed = st.metrics.access.allows(&headers) || caller.as_ref().is_ok_and(|c| c.is_admin());
    if !allowed {
        return ApiError::Unauthorized(oak_metrics::TOKEN_HINT.into()).into_response();
    }
    let metrics = st.metrics.clone();
    match tokio::task::spawn_blocking(move || metrics.render()).await {
        Ok(body) => oak_metrics::response(body),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "the metrics could not be collected").into_response(),
    }
}
