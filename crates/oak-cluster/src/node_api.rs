//! The node API on port 10100: workers register here (`POST /api/node/register`, spec §5.2) and
//! get their id and MQTT credentials. Also `/api/health` and Prometheus `/metrics`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use oak_api::node::{RegisterNodeRequest, RegisterNodeResponse};
use oak_api::ErrorBody;

use crate::credentials;
use crate::store::NodeRecord;
use crate::Ctx;

pub fn router(ctx: Arc<Ctx>) -> Router {
    Router::new()
        .route("/api/node/register", post(register))
        .route("/api/health", get(|| async { Json(serde_json::json!({"status": "ok"})) }))
        .route("/metrics", get(metrics))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint".into()) })
        .with_state(ctx)
}

fn error(code: StatusCode, message: String) -> Response {
    let body = ErrorBody { code: code.as_u16(), message, field: None, errors: Vec::new() };
    (code, Json(body)).into_response()
}

async fn register(State(ctx): State<Arc<Ctx>>, body: Bytes) -> Response {
    let req: RegisterNodeRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("malformed node registration: {e}")),
    };
    if !credentials::matches(req.token.as_bytes(), &ctx.node_token_hash) {
        return error(
            StatusCode::UNAUTHORIZED,
            format!(
                "the worker join token is not valid for cluster {:?}: use the token in {}/{}",
                ctx.config.name,
                ctx.config.data_dir.display(),
                credentials::NODE_TOKEN_FILE
            ),
        );
    }
    let mut info = req.node;
    if info.host.trim().is_empty() {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "host: the node name must not be empty".into());
    }
    let id = match info.id.as_str() {
        "" => credentials::new_node_id(),
        claimed if !credentials::valid_node_id(claimed) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("id: {claimed:?} is not a node id (letters, digits, '-' and '_', at most 64)"),
            );
        }
        claimed => {
            let known = ctx.state().node_secret_hash(claimed).map(str::to_string);
            match known {
                Some(hash) if !credentials::matches(req.node_secret.as_bytes(), &hash) => {
                    return error(
                        StatusCode::CONFLICT,
                        format!("node id {claimed} belongs to another worker (its node_secret does not match)"),
                    );
                }
                _ => claimed.to_string(),
            }
        }
    };
    let secret = credentials::new_secret("");
    info.id = id.clone();
    let record = NodeRecord { id: id.clone(), secret_hash: credentials::hash(secret.as_bytes()), info };
    if let Err(e) = ctx.store.put_node(&record) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot store the node: {e}"));
    }
    tracing::info!(node = %id, name = %record.info.host, "worker registered");
    ctx.state().register_node(record);
    // A reconnecting worker's old broker session used the old password: end it.
    ctx.bus.kick(&id);
    Json(RegisterNodeResponse {
        id: id.clone(),
        mqtt_broker_port: ctx.bus.worker_port().to_string(),
        mqtt_host: ctx.config.mqtt_advertise.clone().unwrap_or_default(),
        mqtt_username: id,
        mqtt_password: secret,
    })
    .into_response()
}

async fn metrics(State(ctx): State<Arc<Ctx>>) -> String {
    let now = Instant::now();
    let st = ctx.state();
    let mut by_status: std::collections::BTreeMap<&str, u64> = Default::default();
    for i in st.instances.values() {
        *by_status.entry(i.status.as_str()).or_default() += 1;
    }
    let mut out = format!(
        "# TYPE oakestra_nodes gauge\noakestra_nodes {}\n# TYPE oakestra_nodes_active gauge\noakestra_nodes_active {}\n",
        st.nodes.len(),
        st.active_nodes(now)
    );
    out.push_str("# TYPE oakestra_instances gauge\n");
    for (s, n) in by_status {
        out.push_str(&format!("oakestra_instances{{status=\"{s}\"}} {n}\n"));
    }
    out.push_str(&format!(
        "# TYPE oakestra_placement_seconds summary\n\
         oakestra_placement_seconds{{quantile=\"0.5\"}} {}\n\
         oakestra_placement_seconds{{quantile=\"0.99\"}} {}\n\
         oakestra_placement_seconds_count {}\n",
        st.placement.quantile(0.5) / 1e6,
        st.placement.quantile(0.99) / 1e6,
        st.placement.len()
    ));
    out
}
