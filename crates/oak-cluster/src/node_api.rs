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
                None if ctx.store.is_forgotten(claimed).unwrap_or(false) => {
                    return error(
                        StatusCode::CONFLICT,
                        format!(
                            "node id {claimed} was forgotten after {} s of silence: register without an id to join as a new node",
                            ctx.config.timing.node_forget_after.as_secs()
                        ),
                    );
                }
                _ => claimed.to_string(),
            }
        }
    };
    // The overlay's subnet: the node keeps the one it has; a new one comes from the root.
    let stored_subnet = ctx.state().node_subnet(&id).map(str::to_string);
    let mut _waiting = None;
    let subnet = match (&info.overlay, stored_subnet.clone()) {
        (None, _) => String::new(),
        (Some(_), Some(subnet)) => subnet,
        (Some(_), None) => {
            let (request, answer) = ctx.request_subnet(&id).await;
            _waiting = Some(request);
            match answer {
                Ok(subnet) => subnet,
                Err(message) => {
                    tracing::warn!(node = %id, %message, "worker registration postponed");
                    return error(StatusCode::SERVICE_UNAVAILABLE, message);
                }
            }
        }
    };
    if let Some(overlay) = info.overlay.as_mut() {
        overlay.subnet = subnet.clone();
    }
    let secret = credentials::new_secret("");
    info.id = id.clone();
    let record = NodeRecord {
        id: id.clone(),
        secret_hash: credentials::hash(secret.as_bytes()),
        info,
        subnet: if subnet.is_empty() { stored_subnet.unwrap_or_default() } else { subnet.clone() },
    };
    if let Err(e) = ctx.store.put_node(&record) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot store the node: {e}"));
    }
    tracing::info!(node = %id, name = %record.info.host, subnet = %record.subnet, "worker registered");
    ctx.state().register_node(record, Instant::now());
    // A reconnecting worker's old broker session used the old password: end it.
    ctx.bus.kick(&id);
    Json(RegisterNodeResponse {
        id: id.clone(),
        mqtt_broker_port: ctx.bus.worker_port().to_string(),
        mqtt_host: ctx.config.mqtt_advertise.clone().unwrap_or_default(),
        mqtt_username: id,
        mqtt_password: secret,
        subnet,
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
    // Tunnel datagrams each worker refused (forged, replayed, from unknown keys, …), as it
    // last reported them.
    out.push_str("# TYPE oakestra_overlay_refused_total counter\n");
    for (id, node) in &st.nodes {
        for (reason, n) in node.record.info.overlay.iter().flat_map(|o| o.refused.iter()) {
            let reason: String = reason.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            out.push_str(&format!("oakestra_overlay_refused_total{{node=\"{id}\",reason=\"{reason}\"}} {n}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::body::Body;
    use axum::http::Request;
    use oak_api::channel::{ClusterMsg, RootMsg};
    use oak_api::net::OverlayInfo;
    use oak_api::node::NodeInfo;
    use tower::ServiceExt;

    use super::*;
    use crate::test_ctx as open;

    /// Stands in for the root: answers subnet requests with `answer` and counts them.
    fn fake_root(ctx: &Arc<Ctx>, answer: Result<&'static str, &'static str>) -> Arc<AtomicUsize> {
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        ctx.set_root(Some(tx));
        let asked = Arc::new(AtomicUsize::new(0));
        let (ctx, count) = (ctx.clone(), asked.clone());
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                if let ClusterMsg::SubnetRequest { request_id, node_id } = msg {
                    count.fetch_add(1, Ordering::SeqCst);
                    let (subnet, error) = match answer {
                        Ok(s) => (s.to_string(), String::new()),
                        Err(e) => (String::new(), e.to_string()),
                    };
                    ctx.on_root_message(RootMsg::Subnet { request_id, node_id, subnet, error });
                }
            }
        });
        asked
    }

    async fn register(ctx: &Arc<Ctx>, id: &str, secret: &str, overlay: bool) -> (StatusCode, serde_json::Value) {
        let token = credentials::node_token(&ctx.config.data_dir).unwrap();
        let node = NodeInfo {
            id: id.into(),
            host: "w1".into(),
            ip: "192.0.2.1".into(),
            overlay: overlay.then(|| OverlayInfo {
                public_addr: "192.0.2.1".into(),
                tunnel_port: 50103,
                ..Default::default()
            }),
            ..Default::default()
        };
        let body = RegisterNodeRequest { node, token, node_secret: secret.into() };
        let req = Request::post("/api/node/register")
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap();
        let resp = router(ctx.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn overlay_workers_get_a_subnet_from_the_root_and_keep_it() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = open(dir.path()).await;
        let asked = fake_root(&ctx, Ok("10.18.0.64/26"));
        let (s, v) = register(&ctx, "", "", true).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["subnet"], "10.18.0.64/26");
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        let (id, secret) = (v["id"].as_str().unwrap().to_string(), v["mqtt_password"].as_str().unwrap().to_string());

        // Registering again (same id, proven): the same subnet, the root is not asked.
        let (s, v) = register(&ctx, &id, &secret, true).await;
        assert_eq!((s, v["subnet"].as_str()), (StatusCode::OK, Some("10.18.0.64/26")));
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        // Without the overlay: no subnet in the answer, but the node keeps it.
        let secret = v["mqtt_password"].as_str().unwrap().to_string();
        let (s, v) = register(&ctx, &id, &secret, false).await;
        assert_eq!((s, v["subnet"].as_str()), (StatusCode::OK, Some("")));
        let secret = v["mqtt_password"].as_str().unwrap().to_string();

        // A restarted cluster still knows it, also with the root away.
        drop(ctx);
        let ctx = open(dir.path()).await;
        let (s, v) = register(&ctx, &id, &secret, true).await;
        assert_eq!((s, v["subnet"].as_str()), (StatusCode::OK, Some("10.18.0.64/26")), "{v}");
        assert_eq!(ctx.store.nodes().unwrap()[0].subnet, "10.18.0.64/26");
    }

    #[tokio::test]
    async fn without_the_root_overlay_workers_are_told_to_retry() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = open(dir.path()).await;
        let (s, v) = register(&ctx, "", "", true).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        let message = v["message"].as_str().unwrap();
        assert!(message.contains("needs a subnet from the root, which is not reachable"), "{message}");
        assert!(ctx.store.nodes().unwrap().is_empty(), "not registered");
        // Workers without the overlay do not need the root.
        let (s, v) = register(&ctx, "", "", false).await;
        assert_eq!((s, v["subnet"].as_str()), (StatusCode::OK, Some("")));

        // The root refusing (pool exhausted) is passed on, also as retry-later.
        let asked = fake_root(&ctx, Err("no worker subnet is free"));
        let (s, v) = register(&ctx, "", "", true).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert!(v["message"].as_str().unwrap().contains("no worker subnet is free"), "{v}");
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        // A malformed answer is not handed to the worker.
        fake_root(&ctx, Ok("10.18.0.64"));
        let (s, v) = register(&ctx, "", "", true).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert!(v["message"].as_str().unwrap().contains("not a /26"), "{v}");
        assert_eq!(ctx.subnets.lock().unwrap().nodes().count(), 0, "no request left open");
    }

    #[tokio::test]
    async fn forgotten_nodes_must_register_as_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = open(dir.path()).await;
        ctx.store.write(crate::store::Batch { forgotten: vec!["old-node".into()], ..Default::default() }).unwrap();
        let (s, v) = register(&ctx, "old-node", "secret", false).await;
        assert_eq!(s, StatusCode::CONFLICT, "{v}");
        assert!(v["message"].as_str().unwrap().contains("forgotten"), "{v}");
        let (s, v) = register(&ctx, "", "", false).await;
        assert_eq!(s, StatusCode::OK);
        assert_ne!(v["id"], "old-node");
        // Unknown ids that were never forgotten are still accepted (a cluster that lost its data).
        let (s, v) = register(&ctx, "other-node", "secret", false).await;
        assert_eq!((s, v["id"].as_str()), (StatusCode::OK, Some("other-node")));
    }
}
