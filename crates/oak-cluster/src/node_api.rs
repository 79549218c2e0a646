//! The node API on port 10100 (HTTPS with the cluster's certificate, whose CA the node token
//! pins): workers register here (`POST /api/node/register`, spec §5.2) and get their id and MQTT
//! credentials. Also `/api/health` and Prometheus `/metrics` (`metrics.rs`).

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
        .route("/metrics", get(crate::metrics::serve))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint".into()) })
        .layer(axum::middleware::from_fn_with_state(ctx.metrics.http.clone(), oak_metrics::HttpMetrics::track))
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
    if !credentials::matches(credentials::presented_secret(&req.token).as_bytes(), &ctx.node_token_hash) {
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
    let broker = ctx.bus.workers();
    Json(RegisterNodeResponse {
        id: id.clone(),
        mqtt_broker_port: broker.port.to_string(),
        mqtt_scheme: broker.scheme.to_string(),
        mqtt_ca: broker.ca_pem.clone(),
        mqtt_host: ctx.config.mqtt_advertise.clone().unwrap_or_default(),
        mqtt_username: id,
        mqtt_password: secret,
        subnet,
        features: if ctx.quiet_reports() {
            vec![oak_api::node::features::QUIET_REPORTS.to_string()]
        } else {
            Vec::new()
        },
    })
    .into_response()
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
        // The worker sends the secret only; the whole token is accepted too.
        let file = std::fs::read_to_string(ctx.config.data_dir.join(credentials::NODE_TOKEN_FILE)).unwrap();
        let token = oak_tls::JoinToken::parse(&file, oak_tls::TokenKind::Node).unwrap().secret;
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

    /// One HTTP/1.1 request over `stream`; the whole answer (the server closes).
    async fn http<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(stream: S, path: &str) -> String {
        http_with(stream, path, "").await
    }

    /// A GET with `headers` (each ending in CRLF).
    async fn http_with<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        mut stream: S,
        path: &str,
        headers: &str,
    ) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let request = format!("GET {path} HTTP/1.1\r\nHost: cluster\r\n{headers}Connection: close\r\n\r\n");
        if stream.write_all(request.as_bytes()).await.is_err() {
            return String::new();
        }
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test]
    async fn the_node_api_is_https_only_and_garbage_does_not_stall_it() {
        use oak_tls::tokio_rustls::TlsConnector;
        use oak_tls::{pinned_client_config, Authority, CLUSTER_SERVER_NAME};
        use tokio::net::TcpStream;

        let dir = tempfile::tempdir().unwrap();
        let cluster = crate::Cluster::open(crate::test_config(dir.path())).await.unwrap();
        let (api, ctx) = (cluster.api_addr(), cluster.ctx.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(cluster.run(async move {
            let _ = stopped.await;
        }));
        let file = std::fs::read_to_string(dir.path().join(credentials::NODE_TOKEN_FILE)).unwrap();
        let token = oak_tls::JoinToken::parse(&file, oak_tls::TokenKind::Node).unwrap();
        let ca = std::fs::read_to_string(dir.path().join(crate::TLS_DIR).join("ca.pem")).unwrap();
        assert_eq!(oak_tls::Fingerprint::of(&pem_der(&ca)), token.ca, "the token pins the cluster's CA");

        let mut silent = Vec::new();
        for _ in 0..20 {
            silent.push(TcpStream::connect(api).await.unwrap());
        }
        let plain = http(TcpStream::connect(api).await.unwrap(), "/api/health").await;
        assert!(!plain.contains("HTTP/1.1"), "plaintext HTTP was answered: {plain}");
        // The broker's port is TLS only as well: a plaintext MQTT CONNECT gets no CONNACK.
        let mqtt = std::net::SocketAddr::from(([127, 0, 0, 1], ctx.bus.worker_port()));
        let connect = [0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 0];
        let mut plain_mqtt = TcpStream::connect(mqtt).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut plain_mqtt, &connect).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut plain_mqtt, &mut answer).await;
        assert_ne!(answer.first(), Some(&0x20), "plaintext MQTT got a CONNACK");

        let dial = |pin| async move {
            let config = pinned_client_config(pin, CLUSTER_SERVER_NAME, None).unwrap();
            let tcp = TcpStream::connect(api).await.unwrap();
            TlsConnector::from(config).connect("192.0.2.9".try_into().unwrap(), tcp).await
        };
        let stranger = dial(Authority::generate("other").unwrap().fingerprint()).await;
        assert!(stranger.is_err(), "a client pinning another CA completed the handshake");

        let health = http(dial(token.ca).await.unwrap(), "/api/health").await;
        assert!(health.starts_with("HTTP/1.1 200") && health.contains("ok"), "{health}");
        let metrics = http(dial(token.ca).await.unwrap(), "/metrics").await;
        for (listener, reason) in [("node_api", "not_tls"), ("node_api", "client_alert"), ("mqtt", "not_tls")] {
            let line = format!("oakestra_tls_refused_total{{listener=\"{listener}\",reason=\"{reason}\"}} 1");
            assert!(metrics.contains(&line), "{line} missing in\n{metrics}");
        }
        for line in [
            "oakestra_http_requests_total{method=\"GET\",route=\"/api/health\",status=\"200\"} 1",
            "oakestra_root_channel_connected 0",
            "oakestra_nodes 0\n",
            "oakestra_placement_queue 0",
            "oakestra_mqtt_connections_accepted_total 0",
            "# TYPE oakestra_placement_seconds histogram",
        ] {
            assert!(metrics.contains(line), "{line} missing in\n{metrics}");
        }
        let body = metrics.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        if let Some(verdict) = oak_testenv::promtool_check_metrics("cluster_metrics_pass_promtool", body) {
            assert_eq!(verdict, Ok(()), "{body}");
        }
        let _ = stop.send(());
        running.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn beyond_loopback_metrics_need_the_scrape_token() {
        use oak_tls::tokio_rustls::TlsConnector;
        use oak_tls::{pinned_client_config, CLUSTER_SERVER_NAME};
        use tokio::net::TcpStream;

        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::test_config(dir.path());
        config.api_addr = "0.0.0.0:0".parse().unwrap();
        config.metrics_token = Some("scrape-s3cret".into());
        let cluster = crate::Cluster::open(config).await.unwrap();
        let api = std::net::SocketAddr::from(([127, 0, 0, 1], cluster.api_addr().port()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(cluster.run(async move {
            let _ = stopped.await;
        }));
        let file = std::fs::read_to_string(dir.path().join(credentials::NODE_TOKEN_FILE)).unwrap();
        let token = oak_tls::JoinToken::parse(&file, oak_tls::TokenKind::Node).unwrap();
        let get = |headers: &'static str| async move {
            let config = pinned_client_config(token.ca, CLUSTER_SERVER_NAME, None).unwrap();
            let tcp = TcpStream::connect(api).await.unwrap();
            let tls = TlsConnector::from(config).connect("127.0.0.1".try_into().unwrap(), tcp).await.unwrap();
            http_with(tls, "/metrics", headers).await
        };
        let refused = get("").await;
        assert!(refused.starts_with("HTTP/1.1 401") && refused.contains("--metrics-token"), "{refused}");
        assert!(get("Authorization: Bearer wrong\r\n").await.starts_with("HTTP/1.1 401"));
        let allowed = get("Authorization: Bearer scrape-s3cret\r\n").await;
        assert!(allowed.starts_with("HTTP/1.1 200") && allowed.contains("oakestra_nodes 0"), "{allowed}");
        let _ = stop.send(());
        running.await.unwrap().unwrap();
    }

    fn pem_der(pem: &str) -> Vec<u8> {
        use oak_tls::rustls::pki_types::{pem::PemObject, CertificateDer};
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
    }
}
