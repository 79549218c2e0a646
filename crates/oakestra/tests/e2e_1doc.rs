//! End to end, 1-DOC: the real `oakestra up` (root, cluster and worker in one process) running
//! an HTTP-server image from a local registry through containerd. Asserts through the public API
//! and through `ctr`: RUNNING, the start line in the instance's logs, the server answering, and
//! nothing left in containerd after the undeploy.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use oak_e2e::{images, wait_until, Registry, Workdir};
use serde_json::{json, Value};

mod e2e;
#[path = "e2e/up.rs"]
mod up;

use e2e::http;
use up::{Ports, Up};

/// The public API of the deployment under test.
struct Api {
    base: String,
    token: String,
}

impl Api {
    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value> {
        e2e::api(&self.base, &self.token, method, path, body)
    }
}

fn ctr(socket: &Path, args: &[&str]) -> Result<String> {
    e2e::ctr(socket, "oakestra", args)
}

/// The socket the worker uses: its own containerd's if it started one, else the system's.
fn containerd_socket(data: &Path) -> PathBuf {
    let own = data.join("worker/containerd/containerd.sock");
    if own.exists() {
        own
    } else {
        PathBuf::from("/run/containerd/containerd.sock")
    }
}

#[test]
fn one_doc_runs_an_http_server_and_cleans_up() -> Result<()> {
    use oak_e2e::Need::{Root, Tool};
    let needs = [Root, Tool("containerd"), Tool("runc"), Tool("ctr"), Tool("docker-registry"), Tool("skopeo")];
    if !oak_e2e::can_run("one_doc_runs_an_http_server_and_cleans_up", &needs) {
        return Ok(());
    }
    let mut work = Workdir::new("e2e-1doc")?;
    let result = scenario(&work);
    if result.is_err() {
        // Keep the data dirs and show why.
        work.keep();
        let log = std::fs::read_to_string(work.join("up.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        eprintln!("--- up.log (last lines, newest first)\n{}", tail.join("\n"));
    }
    result
}

fn scenario(work: &Workdir) -> Result<()> {
    let registry = Registry::start_local()?;
    let port = oak_e2e::registry::free_port("127.0.0.1".parse()?)?;
    let layout = images::build_image(&work.join("images"), &images::http_server_on("hello from 1-DOC", port))?;
    let image = registry.push(&layout, "latest", "e2e/web")?;

    let data = work.join("data");
    let ports = Ports::free()?;
    let mut up = Up::start(&data, &work.join("up.log"), &ports, registry.addr())?;

    let base = format!("http://127.0.0.1:{}", ports.api);
    // `up` listens on every address: the first start generates Admin's password into a file.
    let password_file = data.join("root/admin-password");
    let token = wait_until("the root to log in", Duration::from_secs(30), Duration::from_millis(200), || {
        up.alive()?;
        let Ok(password) = std::fs::read_to_string(&password_file) else { return Ok(None) };
        Ok(e2e::try_login(&base, password.trim()))
    })?;
    // The banner shows the generated password once, so the dashboard needs no other tool.
    let banner = wait_until("the banner", Duration::from_secs(10), Duration::from_millis(100), || {
        Ok(std::fs::read_to_string(work.join("up.out")).ok().filter(|b| b.contains("Log in:")))
    })?;
    let password = std::fs::read_to_string(&password_file)?;
    ensure!(banner.contains(&format!("password {} (generated", password.trim())), "{banner}");
    let api = Api { base, token };
    wait_until("the worker to advertise docker", Duration::from_secs(60), Duration::from_millis(500), || {
        up.alive()?;
        let clusters = api.call(reqwest::Method::GET, "/api/clusters/active", None)?;
        Ok(clusters.as_array().and_then(|cs| {
            cs.iter()
                .find(|c| c["active_nodes"].as_u64() >= Some(1) && c["virtualization"].to_string().contains("docker"))
                .cloned()
        }))
    })?;

    let sla = json!({
        "sla_version": "v2.0", "customerID": "Admin",
        "applications": [{
            "applicationID": "", "application_name": "web", "application_namespace": "e2e", "application_desc": "",
            "microservices": [{
                "microserviceID": "", "microservice_name": "server", "microservice_namespace": "e2e",
                "virtualization": "container", "cmd": [], "memory": 64, "vcpus": 1, "vgpus": 0, "vtpus": 0,
                "bandwidth_in": 0, "bandwidth_out": 0, "storage": 0, "code": image, "state": "",
                // The overlay gives the container its own namespace: reach it through a mapping.
                "port": port.to_string(),
                "added_files": [], "constraints": []
            }]
        }]
    });
    api.call(reqwest::Method::POST, "/api/application/", Some(sla))?;
    let services = api.call(reqwest::Method::GET, "/api/services/", None)?;
    let service = services.as_array().and_then(|s| s.first()).context("no service")?.clone();
    let id = service["microserviceID"].as_str().or(service["_id"].as_str()).context("service id")?.to_string();
    let job_name = service["job_name"].as_str().context("job name")?.to_string();
    api.call(reqwest::Method::POST, &format!("/api/service/{id}/instance"), None)?;

    let instance =
        wait_until("the instance to be RUNNING", Duration::from_secs(90), Duration::from_millis(300), || {
            up.alive()?;
            let s = api.call(reqwest::Method::GET, &format!("/api/service/{id}"), None)?;
            let inst = s["instance_list"][0].clone();
            if inst["status"] == "FAILED" {
                bail!("instance FAILED: {}", inst["status_detail"]);
            }
            Ok((inst["status"] == "RUNNING").then_some(inst))
        })?;
    assert!(instance["worker_id"].as_str().is_some_and(|w| !w.is_empty()), "{instance}");
    let addr = format!("127.0.0.1:{port}");
    let body = wait_until("the server to answer", Duration::from_secs(20), Duration::from_millis(200), || {
        Ok(oak_e2e::http::get(&addr, "/").ok().filter(|r| r.status == 200).map(|r| r.body))
    })?;
    assert!(body.contains("hello from 1-DOC"), "{body}");
    let measured = wait_until(
        "the start line in the instance's logs",
        Duration::from_secs(20),
        Duration::from_millis(500),
        || {
            let s = api.call(reqwest::Method::GET, &format!("/api/service/{id}"), None)?;
            let inst = s["instance_list"][0].clone();
            Ok(inst["logs"].as_str().is_some_and(|l| l.contains("http server starting")).then_some(inst))
        },
    )?;
    // Usage from the container's cgroup comes with the same report.
    assert!(measured["memory_bytes"].as_u64().is_some_and(|b| b > 0), "{measured}");
    assert!(measured["memory_percent"].as_f64().is_some_and(|p| p > 0.0), "{measured}");
    assert!(measured["cpu_percent"].as_f64().is_some(), "{measured}");
    // The logs endpoint reads the worker's log file: the tail, then followed output.
    let logs_path = format!("{}/api/service/{id}/instance/0/logs", api.base);
    let tail = http().get(format!("{logs_path}?tail=1")).bearer_auth(&api.token).send()?.text()?;
    assert_eq!(tail.lines().count(), 1, "{tail:?}");
    let followed = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    {
        let followed = followed.clone();
        let mut stream = reqwest::blocking::Client::builder()
            .timeout(None)
            .build()?
            .get(format!("{logs_path}?follow=true"))
            .bearer_auth(&api.token)
            .send()?;
        assert!(stream.status().is_success(), "{}", stream.status());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut stream, &mut buf) {
                if n == 0 {
                    break;
                }
                followed.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
    }
    wait_until(
        "the followed logs to start with the start line",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || Ok(followed.lock().unwrap().contains("http server starting").then_some(())),
    )?;
    let before = followed.lock().unwrap().matches("response:200").count();
    oak_e2e::http::get(&addr, "/")?;
    wait_until("a new request line in the followed logs", Duration::from_secs(10), Duration::from_millis(100), || {
        Ok((followed.lock().unwrap().matches("response:200").count() > before).then_some(()))
    })?;

    let socket = containerd_socket(&data);
    let container = format!("{job_name}.instance.0");
    assert!(ctr(&socket, &["containers", "ls", "-q"])?.contains(&container));

    api.call(reqwest::Method::DELETE, &format!("/api/service/{id}/instance/0"), None)?;
    wait_until("the container to be removed", Duration::from_secs(30), Duration::from_millis(300), || {
        let left = ctr(&socket, &["containers", "ls", "-q"])? + &ctr(&socket, &["tasks", "ls", "-q"])?;
        Ok((!left.contains(&container)).then_some(()))
    })?;
    let snapshots = ctr(&socket, &["snapshots", "ls"])?;
    assert!(!snapshots.contains(&container), "snapshot left behind: {snapshots}");
    assert!(!data.join(format!("worker/logs/{container}.log")).exists(), "log file left behind");
    assert!(oak_e2e::http::get_timeout(&addr, "/", Duration::from_millis(500)).is_err(), "server still answers");
    api.call(reqwest::Method::DELETE, &format!("/api/service/{id}"), None)?;
    internal_images_are_refused(&api, &mut up, ports.api)
}

/// A tenant names the image, so its registry: one on the machine's loopback (here the root's
/// own API port) is not fetched from, and the instance says why.
fn internal_images_are_refused(api: &Api, up: &mut Up, api_port: u16) -> Result<()> {
    let image = format!("127.0.0.1:{api_port}/e2e/probe:1");
    let sla = json!({
        "sla_version": "v2.0", "customerID": "Admin",
        "applications": [{
            "applicationID": "", "application_name": "probe", "application_namespace": "e2e", "application_desc": "",
            "microservices": [{
                "microserviceID": "", "microservice_name": "probe", "microservice_namespace": "e2e",
                "virtualization": "container", "cmd": [], "memory": 16, "vcpus": 0, "code": image,
                "port": "", "added_files": [], "constraints": []
            }]
        }]
    });
    api.call(reqwest::Method::POST, "/api/application/", Some(sla))?;
    let services = api.call(reqwest::Method::GET, "/api/services/", None)?;
    let service = services
        .as_array()
        .and_then(|s| s.iter().find(|s| s["microservice_name"] == "probe"))
        .context("no probe service")?
        .clone();
    let id = service["microserviceID"].as_str().or(service["_id"].as_str()).context("service id")?.to_string();
    api.call(reqwest::Method::POST, &format!("/api/service/{id}/instance"), None)?;
    let inst = wait_until("the probe to FAIL", Duration::from_secs(60), Duration::from_millis(300), || {
        up.alive()?;
        let inst = api.call(reqwest::Method::GET, &format!("/api/service/{id}"), None)?["instance_list"][0].clone();
        ensure!(inst["status"] != "RUNNING", "an image from the node's loopback runs: {inst}");
        Ok((inst["status"] == "FAILED").then_some(inst))
    })?;
    let detail = inst["status_detail"].as_str().unwrap_or_default();
    ensure!(
        detail.contains(&format!("refused by this worker: 127.0.0.1:{api_port} is a loopback address")),
        "the refusal should name the address and why: {inst}"
    );
    api.call(reqwest::Method::DELETE, &format!("/api/service/{id}"), None)?;
    Ok(())
}
