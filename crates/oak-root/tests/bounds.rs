//! Bounded input: request bodies over 64 KiB, the cluster channel's first frame from a peer not
//! yet authenticated, and the per-user quotas.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use oak_api::channel::{self, ClusterMsg, RootMsg, PROTOCOL_VERSION};
use oak_core::quotas::Quotas;
use oak_root::fleet::FleetConfig;
use oak_root::{Root, RootConfig};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

const CLIENTSRVR: &str = include_str!("../../../examples/sla/clientsrvr.json");

/// A root serving API and channel on loopback ports until dropped.
struct Served {
    api: std::net::SocketAddr,
    channel: std::net::SocketAddr,
    token: String,
    service: Box<dyn Fn(Request<Body>) -> Answer + Send + Sync>,
    _stop: tokio::sync::watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

type Answer = std::pin::Pin<Box<dyn std::future::Future<Output = axum::response::Response> + Send>>;

async fn serve(quotas: Quotas) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::open(RootConfig {
        api_addr: "127.0.0.1:0".parse().unwrap(),
        channel_addr: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        store_durability: Default::default(),
        admin_password: None,
        fleet: FleetConfig { quotas, ..Default::default() },
        privileged_roles: Vec::new(),
    })
    .await
    .unwrap();
    let svc = root.service();
    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let channel = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (api_addr, channel_addr) = (api.local_addr().unwrap(), channel.local_addr().unwrap());
    let (stop, mut rx) = tokio::sync::watch::channel(false);
    tokio::spawn(root.serve_on(api, channel, async move {
        let _ = rx.wait_for(|s| *s).await;
    }));
    Served {
        api: api_addr,
        channel: channel_addr,
        token: std::fs::read_to_string(dir.path().join("cluster-token")).unwrap().trim().to_string(),
        service: Box::new(move |req| {
            let svc = svc.clone();
            Box::pin(async move { svc.oneshot(req).await.unwrap() })
        }),
        _stop: stop,
        _dir: dir,
    }
}

impl Served {
    async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<String>) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = (self.service)(req.body(body.map(Body::from).unwrap_or_else(Body::empty)).unwrap()).await;
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    async fn text(&self, path: &str) -> (StatusCode, String) {
        let resp = (self.service)(Request::builder().uri(path).body(Body::empty()).unwrap()).await;
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20).await.unwrap();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    async fn login(&self, user: &str, password: &str) -> String {
        let body = json!({"username": user, "password": password}).to_string();
        let (s, v) = self.call(Method::POST, "/api/auth/login", None, Some(body)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["token"].as_str().unwrap().to_string()
    }

    async fn provider(&self, admin: &str, name: &str) -> String {
        let body = json!({"name": name, "password": "password-1", "email": "x@y", "roles": ["Application_Provider"]});
        let (s, v) = self.call(Method::POST, "/api/auth/register", Some(admin), Some(body.to_string())).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        self.login(name, "password-1").await
    }
}

/// clientsrvr.json (two services, no fixed addresses, the server on host port 8080: ports below
/// 1024 are for Admins) under application name `name`.
fn sla(name: &str) -> Value {
    let mut v: Value = serde_json::from_str(CLIENTSRVR).unwrap();
    v["applications"][0]["application_name"] = json!(name);
    v["applications"][0]["microservices"][1].as_object_mut().unwrap().remove("addresses");
    v["applications"][0]["microservices"][1]["port"] = json!("8080:80/tcp");
    v
}

/// `doc` serialized and padded with trailing spaces (still valid JSON) to exactly `len` bytes.
fn padded(doc: &Value, len: usize) -> String {
    let mut text = doc.to_string();
    assert!(text.len() <= len);
    text.extend(std::iter::repeat_n(' ', len - text.len()));
    text
}

fn assert_too_large(status: StatusCode, body: &Value) {
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["code"], 413, "{body}");
    assert!(body["message"].as_str().unwrap().contains("65536 bytes"), "{body}");
}

#[tokio::test]
async fn bodies_over_64_kib_are_refused_with_413() {
    let root = serve(Quotas::default()).await;
    let admin = root.login("Admin", "Admin").await;
    let limit = 64 * 1024;

    let (s, v) = root.call(Method::POST, "/api/application", Some(&admin), Some(padded(&sla("big"), limit + 1))).await;
    assert_too_large(s, &v);
    // Every endpoint with a body, also before it is authenticated.
    let login = json!({"username": "Admin", "password": "Admin"});
    let (s, v) = root.call(Method::POST, "/api/auth/login", None, Some(padded(&login, limit + 1))).await;
    assert_too_large(s, &v);

    // At the limit a descriptor is fine.
    let (s, v) = root.call(Method::POST, "/api/application", Some(&admin), Some(padded(&sla("fits"), limit))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

#[tokio::test]
async fn a_chunked_body_without_length_is_cut_off_at_64_kib() {
    let root = serve(Quotas::default()).await;
    let admin = root.login("Admin", "Admin").await;
    let mut tcp = TcpStream::connect(root.api).await.unwrap();
    let head = format!(
        "POST /api/application HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {admin}\r\n\
         content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    // 64 chunks of 1 KiB and one byte more, without the terminating chunk: the root answers once
    // the limit is crossed, and has nothing unread left that would reset the connection.
    let chunk = format!("400\r\n{}\r\n", " ".repeat(1024));
    for _ in 0..64 {
        tcp.write_all(chunk.as_bytes()).await.unwrap();
    }
    tcp.write_all(b"1\r\n \r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    let body: Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap_or_default()).unwrap();
    assert_too_large(StatusCode::PAYLOAD_TOO_LARGE, &body);
}

/// True when the root closes the connection within 2 s (the hello timeout is 10 s).
async fn closed_soon(tcp: &mut (impl AsyncRead + Unpin)) -> bool {
    // A TLS peer may get an alert before the end of the stream.
    let mut buf = [0u8; 64];
    let until_closed = async {
        loop {
            if let Ok(0) | Err(_) = tcp.read(&mut buf).await {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(2), until_closed).await.is_ok()
}

/// Dials the root's channel over TLS, trusting only the CA `token` pins.
async fn dial_tls(addr: std::net::SocketAddr, token: &str) -> oak_tls::tokio_rustls::client::TlsStream<TcpStream> {
    let pin = oak_tls::JoinToken::parse(token, oak_tls::TokenKind::Cluster).unwrap().ca;
    let config = oak_tls::pinned_client_config(pin, oak_tls::ROOT_SERVER_NAME, None).unwrap();
    let name = oak_tls::rustls::pki_types::ServerName::try_from(oak_tls::ROOT_SERVER_NAME).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    oak_tls::tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.unwrap()
}

/// A certificate request, as a cluster's first hello carries.
fn csr() -> String {
    oak_tls::ClientKey::generate().unwrap().request("test cluster").unwrap()
}

#[tokio::test]
async fn a_stranger_cannot_send_a_big_first_frame() {
    let root = serve(Quotas::default()).await;

    // A first frame announced over 4 KiB is refused at its header, without waiting for (or
    // allocating) its body: in the TLS session, before any token was checked.
    let mut tls = dial_tls(root.channel, &root.token).await;
    tls.write_all(&5000u32.to_be_bytes()).await.unwrap();
    assert!(closed_soon(&mut tls).await, "the root waited for a 5000-byte hello");

    let mut tls = dial_tls(root.channel, &root.token).await;
    tls.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    assert!(closed_soon(&mut tls).await);

    // Not TLS at all: refused in the handshake.
    let mut tcp = TcpStream::connect(root.channel).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    assert!(closed_soon(&mut tcp).await);

    // A real hello still joins, and after it frames may be big again.
    let mut tls = dial_tls(root.channel, &root.token).await;
    let hello = ClusterMsg::Hello {
        protocol: PROTOCOL_VERSION,
        token: root.token.clone(),
        csr: csr(),
        cluster_id: String::new(),
        cluster_name: "c1".into(),
        cluster_location: String::new(),
        metrics_port: 0,
    };
    tls.write_all(&channel::encode(&hello)).await.unwrap();
    let mut header = [0u8; 4];
    tls.read_exact(&mut header).await.unwrap();
    let mut body = vec![0u8; channel::frame_len(header).unwrap()];
    tls.read_exact(&mut body).await.unwrap();
    let welcome: RootMsg = serde_json::from_slice(&body).unwrap();
    assert!(
        matches!(&welcome, RootMsg::Welcome { certificate, .. } if certificate.contains("CERTIFICATE")),
        "{welcome:?}"
    );
    let nodes: Vec<String> = (0..400).map(|i| format!("node-with-a-long-identifier-{i:04}")).collect();
    tls.write_all(&channel::encode(&ClusterMsg::Nodes { node_ids: nodes })).await.unwrap();
    assert!(!closed_soon(&mut tls).await, "a joined cluster's 14 KB frame was refused");

    // Every refusal was counted by reason.
    let (s, metrics) = root.text("/metrics").await;
    assert_eq!(s, StatusCode::OK);
    assert!(metrics.contains("oakestra_channel_refusals_total{reason=\"bad_hello\"} 2"), "{metrics}");
    assert!(metrics.contains("oakestra_channel_refusals_total{reason=\"tls_handshake\"} 1"), "{metrics}");
}

#[tokio::test]
async fn quotas_refuse_what_would_exceed_them_and_admins_are_exempt() {
    let root = serve(Quotas { services: 3, instances: 2, service_ips: 3 }).await;
    let admin = root.login("Admin", "Admin").await;
    let alice = root.provider(&admin, "alice").await;

    let (s, v) = root.call(Method::POST, "/api/application", Some(&alice), Some(sla("one").to_string())).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let app_id = v[0]["applicationID"].as_str().unwrap().to_string();
    // Two more services would make four.
    let (s, v) = root.call(Method::POST, "/api/application", Some(&alice), Some(sla("two").to_string())).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    let message = v["message"].as_str().unwrap();
    assert!(message.contains("at most 3 services per user") && message.contains("--quota-services"), "{v}");

    // One more fits; a closest IP on top would be the fourth service IP.
    let mut more = sla("one");
    more["applications"][0]["applicationID"] = json!(app_id);
    more["applications"][0]["microservices"].as_array_mut().unwrap().truncate(1);
    more["applications"][0]["microservices"][0]["microservice_name"] = json!("third");
    more["applications"][0]["microservices"][0]["addresses"] = json!({"closest_ip": "10.30.99.1"});
    let (s, v) = root.call(Method::POST, "/api/service", Some(&alice), Some(more.to_string())).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert!(v["message"].as_str().unwrap().contains("--quota-service-ips"), "{v}");
    more["applications"][0]["microservices"][0].as_object_mut().unwrap().remove("addresses");
    let (s, v) = root.call(Method::POST, "/api/service", Some(&alice), Some(more.to_string())).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let service = v["job_id"].as_str().unwrap().to_string();

    let path = format!("/api/service/{service}/instance");
    for _ in 0..2 {
        let (s, v) = root.call(Method::POST, &path, Some(&alice), None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let (s, v) = root.call(Method::POST, &path, Some(&alice), None).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert!(v["message"].as_str().unwrap().contains("at most 2 instances per user"), "{v}");
    // Deleting makes room again.
    let (s, v) = root.call(Method::DELETE, &format!("{path}/0"), Some(&alice), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = root.call(Method::POST, &path, Some(&alice), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // Admins run the system: no quota.
    for name in ["a1", "a2"] {
        let (s, v) = root.call(Method::POST, "/api/application", Some(&admin), Some(sla(name).to_string())).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
}

#[tokio::test]
async fn the_openapi_document_lists_the_error_statuses() {
    let root = serve(Quotas::default()).await;
    let (s, doc) = root.call(Method::GET, "/api/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            let responses = op["responses"].as_object().unwrap();
            let has = |code: &str| responses.contains_key(code);
            let name = format!("{method} {path}");
            if op.get("security").is_some() {
                assert!(has("401"), "{name} does not list 401");
            }
            if op.get("requestBody").is_some() {
                for code in ["400", "413", "422"] {
                    assert!(has(code), "{name} takes a body but does not list {code}");
                }
            }
            if path.contains('{') {
                assert!(has("404"), "{name} names an object but does not list 404");
            }
            for (code, response) in responses {
                if !code.starts_with('2') {
                    let schema = &response["content"]["application/json"]["schema"]["$ref"];
                    assert_eq!(schema, "#/components/schemas/ErrorBody", "{name} {code}");
                }
            }
        }
    }
    assert!(operations >= 33, "{operations} operations");
    for path in ["/api/application", "/api/service", "/api/service/{id}/instance"] {
        assert!(doc["paths"][path]["post"]["responses"].get("429").is_some(), "{path} does not list the quota's 429");
    }
}

/// Concurrent requests of one user are counted one after the other: a burst of `?count=` requests
/// cannot take a user beyond the instance quota (each used to pass on the same count).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_concurrent_requests_stays_within_the_quota() {
    let root = std::sync::Arc::new(serve(Quotas { services: 10, instances: 10, service_ips: 10 }).await);
    let admin = root.login("Admin", "Admin").await;
    let alice = root.provider(&admin, "alice").await;
    let mut one = sla("one");
    one["applications"][0]["microservices"].as_array_mut().unwrap().truncate(1);
    let (s, v) = root.call(Method::POST, "/api/application", Some(&alice), Some(one.to_string())).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, services) = root.call(Method::GET, "/api/services", Some(&alice), None).await;
    assert_eq!(s, StatusCode::OK, "{services}");
    let service = services[0]["microserviceID"].as_str().unwrap().to_string();

    let path = format!("/api/service/{service}/instance?count=4");
    let requests: Vec<_> = (0..16)
        .map(|_| {
            let (root, alice, path) = (root.clone(), alice.clone(), path.clone());
            tokio::spawn(async move { root.call(Method::POST, &path, Some(&alice), None).await })
        })
        .collect();
    let mut granted = 0;
    for r in requests {
        let (s, v) = r.await.unwrap();
        match s {
            StatusCode::OK => granted += v["instances"].as_array().unwrap().len(),
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("{other}: {v}"),
        }
    }
    let (_, doc) = root.call(Method::GET, &format!("/api/service/{service}"), Some(&alice), None).await;
    let held = doc["instance_list"].as_array().unwrap().len();
    assert_eq!(held, granted, "every granted instance exists");
    assert!(held <= 10, "{held} instances with a quota of 10");
    assert_eq!(held, 8, "two requests of four fit, a third would pass ten");
}
