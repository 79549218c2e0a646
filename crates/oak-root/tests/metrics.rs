//! The root's `/metrics`: valid Prometheus text (promtool), API requests by route template,
//! and the scrape token on a listener beyond loopback.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use oak_root::fleet::FleetConfig;
use oak_root::{Root, RootConfig};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

async fn open(dir: &std::path::Path) -> Root {
    Root::open(RootConfig {
        api_addr: "127.0.0.1:0".parse().unwrap(),
        channel_addr: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        admin_password: None,
        fleet: FleetConfig::default(),
        privileged_roles: Vec::new(),
        store_durability: Default::default(),
    })
    .await
    .unwrap()
}

async fn call(
    root: &Root,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, String) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let body = body.map(|b| Body::from(b.to_string())).unwrap_or_else(Body::empty);
    let resp = root.service().oneshot(req.body(body).unwrap()).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20).await.unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

async fn admin_token(root: &Root) -> String {
    let (s, body) =
        call(root, Method::POST, "/api/auth/login", None, Some(json!({"username": "Admin", "password": "Admin"})))
            .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    serde_json::from_str::<Value>(&body).unwrap()["token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_and_pass_promtool() {
    let dir = tempfile::tempdir().unwrap();
    let root = open(dir.path()).await;
    let admin = admin_token(&root).await;
    for id in ["0123456789abcdef01234567", "76543210fedcba9876543210"] {
        let (s, _) = call(&root, Method::GET, &format!("/api/service/{id}"), Some(&admin), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }
    let (s, _) = call(&root, Method::GET, "/no/such/thing", None, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let (s, text) = call(&root, Method::GET, "/metrics", None, None).await;
    assert_eq!(s, StatusCode::OK, "{text}");
    for line in [
        "oakestra_http_requests_total{method=\"POST\",route=\"/api/auth/login\",status=\"200\"} 1",
        "oakestra_http_requests_total{method=\"GET\",route=\"/api/service/{id}\",status=\"404\"} 2",
        "oakestra_http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"} 1",
        "oakestra_http_request_duration_seconds_count{method=\"GET\",route=\"/api/service/{id}\"} 2",
        "# TYPE oakestra_placement_seconds histogram",
        "oakestra_clusters 0",
        "oakestra_clusters_by_state{state=\"lost\"} 0",
        "oakestra_placement_retry_queue 0",
        "oakestra_channel_refusals_total{reason=\"bad_hello\"} 0",
        "oakestra_placement_p99_seconds 0",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert!(!text.contains("0123456789abcdef"), "an id became a label: {text}");
    if let Some(verdict) = oak_testenv::promtool_check_metrics("root_metrics_pass_promtool", &text) {
        assert_eq!(verdict, Ok(()), "{text}");
    }
}

/// One plain HTTP/1.1 GET; the status code and body.
async fn get(addr: std::net::SocketAddr, path: &str, bearer: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let auth = bearer.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text)
}

/// Serves `root` on a listener bound to `bind`; the address to dial and the stop switch.
async fn serve(root: Root, bind: &str) -> (std::net::SocketAddr, tokio::sync::watch::Sender<bool>) {
    let api = TcpListener::bind(bind).await.unwrap();
    let channel = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dial = std::net::SocketAddr::from(([127, 0, 0, 1], api.local_addr().unwrap().port()));
    let (stop, mut rx) = tokio::sync::watch::channel(false);
    tokio::spawn(root.serve_on(api, channel, async move {
        let _ = rx.wait_for(|s| *s).await;
    }));
    (dial, stop)
}

#[tokio::test]
async fn beyond_loopback_metrics_need_the_scrape_token_or_an_admin() {
    let dir = tempfile::tempdir().unwrap();
    let mut root = open(dir.path()).await;
    root.set_metrics_token(Some("scrape-s3cret".into()));
    let admin = admin_token(&root).await;
    let (addr, _stop) = serve(root, "0.0.0.0:0").await;
    let (s, body) = get(addr, "/metrics", None).await;
    assert_eq!(s, 401, "{body}");
    assert!(body.contains("--metrics-token"), "{body}");
    assert_eq!(get(addr, "/metrics", Some("wrong")).await.0, 401);
    let (s, body) = get(addr, "/metrics", Some("scrape-s3cret")).await;
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("oakestra_clusters 0"), "{body}");
    assert_eq!(get(addr, "/metrics", Some(&admin)).await.0, 200, "an Admin's access token reads them too");
}

#[tokio::test]
async fn on_loopback_metrics_are_open() {
    let dir = tempfile::tempdir().unwrap();
    let root = open(dir.path()).await;
    let (addr, _stop) = serve(root, "127.0.0.1:0").await;
    let (s, body) = get(addr, "/metrics", None).await;
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("text/plain; version=0.0.4"), "{body}");
}

#[tokio::test]
async fn the_scrape_targets_file_names_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let mut root = open(dir.path()).await;
    let file = dir.path().join("sd/targets.json");
    root.set_prometheus_sd_file(Some(file.clone()));
    let (addr, _stop) = serve(root, "127.0.0.1:0").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !file.exists() {
        assert!(std::time::Instant::now() < deadline, "no targets file");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let groups: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(
        groups,
        json!([{"targets": [addr.to_string()], "labels": {"tier": "root", "__scheme__": "http"}}]),
        "no cluster has joined yet"
    );
}
