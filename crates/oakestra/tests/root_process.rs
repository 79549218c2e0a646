//! A real `oakestra root` process over HTTP: the acceptance flow of the root, then a restart on
//! the same data directory that must find everything again.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Kills the root process when dropped, also when an assertion fails.
struct RootProcess {
    child: Child,
    url: String,
}

impl RootProcess {
    fn start(data_dir: &Path, port: u16) -> Self {
        let log = std::fs::File::create(data_dir.with_extension("log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_oakestra"))
            .args(["root", "--api-addr", "127.0.0.1", "--api-port", &port.to_string(), "--data-dir"])
            .arg(data_dir)
            .args(["--admin-password", "admin-secret", "--cluster-port", &free_port().to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("oakestra binary runs");
        let root = RootProcess { child, url: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "root did not listen on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        root
    }

    fn stop(mut self) {
        // SIGTERM for a graceful shutdown, as systemd would send
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "root did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RootProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn call(
    url: &str,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = client.request(method, format!("{url}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("root answers");
    let status = resp.status().as_u16();
    let ctype = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let value: Value = resp.json().await.unwrap_or(Value::Null);
    assert!(ctype.starts_with("application/json"), "{path} answers JSON, got {ctype}");
    (status, value)
}

#[tokio::test]
async fn root_process_end_to_end_and_restart() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("root");
    let port = free_port();
    let root = RootProcess::start(&data, port);
    let url = root.url.clone();
    let sla: Value = serde_json::from_str(include_str!("../../../examples/sla/clientsrvr.json")).unwrap();

    let (s, v) =
        call(&url, Method::POST, "/api/auth/login", None, Some(json!({"username": "Admin", "password": "Admin"})))
            .await;
    assert_eq!(s, 401, "--admin-password replaced the default: {v}");
    let (s, v) = call(
        &url,
        Method::POST,
        "/api/auth/login",
        None,
        Some(json!({"username": "Admin", "password": "admin-secret"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let token = v["token"].as_str().unwrap().to_string();
    let t = Some(token.as_str());
    let (s, _) = call(&url, Method::GET, "/api/applications/", None, None).await;
    assert_eq!(s, 401);

    let (s, v) = call(&url, Method::POST, "/api/application/", t, Some(sla.clone())).await;
    assert_eq!(s, 200, "{v}");
    let app_id = v[0]["_id"].as_str().unwrap().to_string();
    let (s, _) = call(&url, Method::POST, "/api/application/", t, Some(sla.clone())).await;
    assert_eq!(s, 409);
    let mut bad = sla.clone();
    bad["applications"][0]["microservices"][1]["addresses"]["rr_ip"] = json!("192.168.1.1");
    let (s, v) = call(&url, Method::POST, "/api/application/", t, Some(bad)).await;
    assert_eq!(s, 422);
    assert_eq!(v["field"], "applications[0].microservices[1].addresses.rr_ip");

    let (s, v) = call(&url, Method::GET, "/api/applications/", t, None).await;
    assert_eq!((s, v.as_array().unwrap().len()), (200, 1));
    let (s, v) = call(&url, Method::GET, &format!("/api/application/{app_id}"), t, None).await;
    assert_eq!((s, v["application_name"].as_str()), (200, Some("clientsrvr")));
    let (s, _) = call(
        &url,
        Method::PUT,
        &format!("/api/application/{app_id}"),
        t,
        Some(json!({"application_name": "clientsrvr", "application_namespace": "test", "application_desc": "updated"})),
    )
    .await;
    assert_eq!(s, 200);
    let (_, v) = call(&url, Method::GET, &format!("/api/services/{app_id}"), t, None).await;
    let curl_id = v[0]["_id"].as_str().unwrap().to_string();
    let nginx_id = v[1]["_id"].as_str().unwrap().to_string();
    let (s, v) = call(&url, Method::POST, &format!("/api/service/{nginx_id}/instance"), t, None).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("TargetClusterNotActive")));
    let (s, _) = call(&url, Method::DELETE, &format!("/api/service/{curl_id}"), t, None).await;
    assert_eq!(s, 200);

    root.stop();
    let root = RootProcess::start(&data, port);
    let (s, v) = call(
        &url,
        Method::POST,
        "/api/auth/login",
        None,
        Some(json!({"username": "Admin", "password": "admin-secret"})),
    )
    .await;
    assert_eq!(s, 200);
    let token = v["token"].as_str().unwrap().to_string();
    let t = Some(token.as_str());
    let (_, v) = call(&url, Method::GET, &format!("/api/application/{app_id}"), t, None).await;
    assert_eq!(v["application_desc"], "updated");
    assert_eq!(v["microservices"], json!([nginx_id]));
    let (_, v) = call(&url, Method::GET, &format!("/api/service/{nginx_id}"), t, None).await;
    assert_eq!(v["instance_list"][0]["status"], "TargetClusterNotActive");
    let (s, _) = call(&url, Method::GET, &format!("/api/service/{curl_id}"), t, None).await;
    assert_eq!(s, 404);

    let (s, _) = call(&url, Method::DELETE, &format!("/api/application/{app_id}"), t, None).await;
    assert_eq!(s, 200);
    let (_, v) = call(&url, Method::GET, "/api/services/", t, None).await;
    assert_eq!(v, json!([]));
    root.stop();
}

#[test]
fn invalid_configuration_exits_64_before_serving() {
    let file = tempfile::NamedTempFile::new().unwrap();
    // a data directory below a regular file cannot be created
    let status = Command::new(env!("CARGO_BIN_EXE_oakestra"))
        .args([
            "root",
            "--api-port",
            &free_port().to_string(),
            "--cluster-port",
            &free_port().to_string(),
            "--data-dir",
        ])
        .arg(file.path().join("sub"))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(status.status.code(), Some(64));
    let err = String::from_utf8_lossy(&status.stderr);
    assert!(err.contains("cannot create data directory"), "{err}");
}

#[test]
fn up_stops_before_starting_anything_when_a_port_is_taken() {
    let dir = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_oakestra"))
        .args(["up", "--api-port", &free_port().to_string(), "--cluster-port", &port.to_string(), "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("oakestra up kept running without its cluster channel");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen for clusters on 0.0.0.0:{port}")), "{err}");
    assert!(!dir.path().join("cluster").exists(), "the cluster started although the root could not");
    assert!(!dir.path().join("worker").exists(), "the worker started although the root could not");
}

/// `oakestra root` with `--dashboard-port <p>`.
fn root_with_dashboard(data_dir: &Path, dashboard: u16) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_oakestra"));
    cmd.args(["root", "--api-addr", "127.0.0.1", "--api-port", &free_port().to_string(), "--data-dir"])
        .arg(data_dir)
        .args(["--cluster-port", &free_port().to_string(), "--dashboard-port", &dashboard.to_string()]);
    cmd
}

#[test]
fn the_dashboard_port_serves_the_page_and_the_api_and_a_taken_one_stops_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = root_with_dashboard(&dir.path().join("root"), port)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("oakestra binary runs");
    let root = RootProcess { child, url: format!("http://127.0.0.1:{port}") };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the dashboard port {port} is not served");
        std::thread::sleep(Duration::from_millis(50));
    }
    let http = reqwest::blocking::Client::new();
    let page = http.get(format!("{}/", root.url)).send().unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let csp = page.headers().get("content-security-policy").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    assert!(page.text().unwrap().contains("/dashboard/js/app.js"));
    // The page calls the API on its own origin.
    let health = http.get(format!("{}/api/health", root.url)).send().unwrap();
    assert_eq!(health.status().as_u16(), 200);
    root.stop();

    // A dashboard port that is taken is a start-up error naming it.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().port();
    let out = root_with_dashboard(&dir.path().join("root"), taken).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot listen for the dashboard") && err.contains(&taken.to_string()), "{err}");
}
