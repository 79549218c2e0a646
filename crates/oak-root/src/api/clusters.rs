//! `/api/clusters/…`: registered clusters with their aggregated resources.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::Json;
use oak_api::model::Cluster;
use oak_api::rest::{ClusterToken, ClusterTokenRequest, ClusterWorkers, MessageResponse, RevokeClusterToken};
use oak_api::ErrorBody;
use oak_core::authz::Action;

use crate::auth::extract::Caller;
use crate::body::JsonBody;
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
/// Single-use unless `reusable`; never expires unless `ttl_seconds` is given. The body is
/// optional.
#[utoipa::path(post, path = "/api/clusters/tokens", tag = "clusters", security(("bearerAuth" = [])),
    request_body(content = Option<ClusterTokenRequest>, description = "how the token may be used (optional)"),
    responses((status = 200, body = ClusterToken),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_token(State(st): State<AppState>, caller: Caller, body: Bytes) -> ApiResult<Json<ClusterToken>> {
    require_admin(&caller, "issue cluster join tokens")?;
    let request: ClusterTokenRequest =
        if body.iter().all(u8::is_ascii_whitespace) { Default::default() } else { crate::body::parse(&body)? };
    let ttl = match request.ttl_seconds {
        Some(0) => return Err(ApiError::Unprocessable("ttl_seconds must be at least 1".into())),
        Some(s) if s > MAX_TTL_SECONDS => {
            return Err(ApiError::Unprocessable(format!("ttl_seconds must be at most {MAX_TTL_SECONDS} (100 years)")))
        }
        s => s.map(std::time::Duration::from_secs),
    };
    let options = crate::cluster_tokens::TokenOptions { ttl, reusable: request.reusable };
    let issued = crate::cluster_tokens::create(&*st.store, st.fleet.trust().ca(), options)?;
    tracing::info!(id = %issued.id, reusable = request.reusable, expires_at = ?issued.expires_at, "cluster join token issued");
    Ok(Json(ClusterToken {
        token: issued.token.to_string(),
        id: issued.id,
        expires_at: issued.expires_at,
        reusable: request.reusable,
    }))
}

const MAX_TTL_SECONDS: u64 = 100 * 365 * 86_400;

/// Revoke a cluster join token, given whole or by its short id (Admin only). Clusters that
/// joined with it stay: they authenticate with their certificates.
#[utoipa::path(post, path = "/api/clusters/tokens/revoke", tag = "clusters", security(("bearerAuth" = [])),
    request_body = RevokeClusterToken,
    responses((status = 200, body = MessageResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn revoke_token(
    State(st): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<RevokeClusterToken>,
) -> ApiResult<Json<MessageResponse>> {
    require_admin(&caller, "revoke cluster join tokens")?;
    match crate::cluster_tokens::revoke(&*st.store, &body.token)? {
        0 => Err(ApiError::not_found("a cluster join token with that value or id")),
        _ => {
            tracing::warn!("cluster join token revoked");
            Ok(Json(MessageResponse { message: "the cluster join token is revoked".into() }))
        }
    }
}

/// Forget a cluster's certificate and disconnect it (Admin only), so that a cluster that lost
/// its data directory can join again under its name with a join token. Its id and instances stay.
#[utoipa::path(delete, path = "/api/clusters/{cluster_id}/certificate", tag = "clusters", security(("bearerAuth" = [])),
    params(("cluster_id" = String, Path, description = "the cluster's `_id`")),
    responses((status = 200, body = MessageResponse),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn reset_certificate(
    State(st): State<AppState>,
    caller: Caller,
    Path(cluster_id): Path<String>,
) -> ApiResult<Json<MessageResponse>> {
    require_admin(&caller, "reset cluster certificates")?;
    let cluster = st.store.cluster(&cluster_id)?.ok_or_else(|| ApiError::not_found(format!("cluster {cluster_id}")))?;
    let had = st.fleet.reset_certificate(&cluster.id)?;
    let name = &cluster.cluster_name;
    let message = if had {
        format!("cluster {name:?} is disconnected and its certificate forgotten: it may join again with a join token")
    } else {
        format!("cluster {name:?} had no certificate: it may join with a join token")
    };
    Ok(Json(MessageResponse { message }))
}

fn require_admin(caller: &Caller, what: &str) -> ApiResult<()> {
    if caller.is_admin() {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!("only an Admin can {what}")))
    }
}
