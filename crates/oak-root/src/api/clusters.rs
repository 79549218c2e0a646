//! `/api/clusters/…`: registered clusters with their aggregated resources.

use axum::extract::State;
use axum::Json;
use oak_api::model::Cluster;
use oak_api::ErrorBody;
use oak_core::authz::Action;

use crate::auth::extract::Caller;
use crate::error::ApiResult;
use crate::state::AppState;

/// A cluster that has not reported for this long is inactive (not listed as active, not scheduled).
pub const CLUSTER_FRESHNESS_SECS: f64 = 30.0;

/// Every stored cluster with `active` computed from its last report.
pub fn clusters_now(st: &AppState) -> ApiResult<Vec<Cluster>> {
    let now = crate::ids::now();
    let mut clusters = st.store.list_clusters()?;
    for c in &mut clusters {
        c.active = now - c.last_modified_timestamp <= CLUSTER_FRESHNESS_SECS;
    }
    Ok(clusters)
}

#[utoipa::path(get, path = "/api/clusters", tag = "clusters", security(("bearerAuth" = [])),
    responses((status = 200, body = [Cluster]), (status = 401, body = ErrorBody)))]
pub async fn all(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<Cluster>>> {
    caller.require(Action::ViewClusters, "")?;
    Ok(Json(clusters_now(&st)?))
}

#[utoipa::path(get, path = "/api/clusters/active", tag = "clusters", security(("bearerAuth" = [])),
    responses((status = 200, body = [Cluster]), (status = 401, body = ErrorBody)))]
pub async fn active(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<Cluster>>> {
    caller.require(Action::ViewClusters, "")?;
    Ok(Json(clusters_now(&st)?.into_iter().filter(|c| c.active).collect()))
}
