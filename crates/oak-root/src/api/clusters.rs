//! `/api/clusters/…`: registered clusters with their aggregated resources.

use axum::extract::{Path, State};
use axum::Json;
use oak_api::model::Cluster;
use oak_api::rest::{ClusterToken, ClusterWorkers};
use oak_api::ErrorBody;
use oak_core::authz::Action;

use crate::auth::extract::Caller;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Every registered cluster; `active` = connected now and reported recently.
pub fn clusters_now(st: &AppState) -> ApiResult<Vec<Cluster>> {
    Ok(st.fleet.clusters_now()?)
}

#[utoipa::path(get, path = "/api/clusters", tag = "clusters", security(("bearerAuth" = [])),
    responses((status = 200, body = [Cluster]),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn all(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<Cluster>>> {
    caller.require(Action::ViewClusters, "")?;
    Ok(Json(clusters_now(&st)?))
}

#[utoipa::path(get, path = "/api/clusters/active", tag = "clusters", security(("bearerAuth" = [])),
    responses((status = 200, body = [Cluster]),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn active(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<Cluster>>> {
    caller.require(Action::ViewClusters, "")?;
    Ok(Json(clusters_now(&st)?.into_iter().filter(|c| c.active).collect()))
}

/// A cluster's workers as it last reported them: name, address, architecture, virtualizations,
/// capacity, usage, and whether each reported within the cluster's node timeout.
#[utoipa::path(get, path = "/api/clusters/{cluster_id}/workers", tag = "clusters", security(("bearerAuth" = [])),
    params(("cluster_id" = String, Path, description = "the cluster's `_id`")),
    responses((status = 200, body = ClusterWorkers),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn workers(
    State(st): State<AppState>,
    caller: Caller,
    Path(cluster_id): Path<String>,
) -> ApiResult<Json<ClusterWorkers>> {
    caller.require(Action::ViewClusters, "")?;
    let cluster = st.store.cluster(&cluster_id)?.ok_or_else(|| ApiError::not_found(format!("cluster {cluster_id}")))?;
    Ok(Json(st.fleet.cluster_workers(&cluster.id, &cluster.cluster_name)))
}

/// Issue another cluster join token (Admin only); hand it to `oakestra cluster --token`.
#[utoipa::path(post, path = "/api/clusters/tokens", tag = "clusters", security(("bearerAuth" = [])),
    responses((status = 200, body = ClusterToken),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create_token(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<ClusterToken>> {
    if !caller.is_admin() {
        return Err(ApiError::Forbidden("only an Admin can issue cluster join tokens".into()));
    }
    Ok(Json(ClusterToken { token: crate::cluster_tokens::create(&*st.store)? }))
}

/// Prometheus metrics of the root: clusters, placement decision times.
pub async fn metrics(State(st): State<AppState>) -> ApiResult<String> {
    let clusters = st.fleet.clusters_now()?;
    let active = clusters.iter().filter(|c| c.active).count();
    let (p50, p99, count) = st.fleet.placement_stats();
    Ok(format!(
        "# TYPE oakestra_clusters gauge\noakestra_clusters {}\n\
         # TYPE oakestra_clusters_active gauge\noakestra_clusters_active {active}\n\
         # TYPE oakestra_placement_seconds summary\n\
         oakestra_placement_seconds{{quantile=\"0.5\"}} {}\n\
         oakestra_placement_seconds{{quantile=\"0.99\"}} {}\n\
         oakestra_placement_seconds_count {count}\n",
        clusters.len(),
        p50 / 1e6,
        p99 / 1e6,
    ))
}
