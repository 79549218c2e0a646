//! The shipped monitoring (`deploy/monitoring/`) against what the tiers export: the Prometheus
//! configuration and alerting rules pass `promtool check config`/`check rules`; a root, a
//! cluster and a worker (fake runtime, in process) export text that passes `promtool check
//! metrics`, with per-instance series that go with the instance; every metric the Grafana
//! dashboards and the rules query is one the tiers export; the root's scrape-targets file names
//! all three tiers.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{admin_client, embedded, eventually, start_cluster, start_root, start_worker_configured, Machine};
use oak_runtime::FakeRuntime;
use serde_json::{json, Value};

fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/monitoring")
}

fn promtool(test: &str, args: &[&str], dir: &Path) -> Option<Result<String, String>> {
    if !oak_testenv::can_run(test, &[oak_testenv::Need::Tool("promtool")]) {
        return None;
    }
    let out = std::process::Command::new(oak_testenv::which("promtool").unwrap())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool runs");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Some(if out.status.success() { Ok(said) } else { Err(said) })
}

#[test]
fn the_shipped_prometheus_configuration_and_rules_pass_promtool() {
    let test = "the_shipped_prometheus_configuration_and_rules_pass_promtool";
    let dir = tempfile::tempdir().unwrap();
    for file in ["prometheus.yml", "oakestra-rules.yml"] {
        std::fs::copy(monitoring_dir().join(file), dir.path().join(file)).unwrap();
    }
    // It reads the targets where `oakestra up` (data dir /var/lib/oakestra) writes them.
    let config = std::fs::read_to_string(dir.path().join("prometheus.yml")).unwrap();
    let up_targets = format!("/var/lib/oakestra/{}", oak_root::PROMETHEUS_TARGETS_FILE);
    assert_eq!(config.matches(&format!("files: [{up_targets}]")).count(), 3, "{config}");
    // The token file the configuration names sits beside it (the operator writes it).
    std::fs::write(dir.path().join("oakestra-metrics-token"), "t").unwrap();
    let Some(config) = promtool(test, &["check", "config", "prometheus.yml"], dir.path()) else { return };
    let said = config.unwrap_or_else(|e| panic!("promtool check config failed:\n{e}"));
    assert!(said.contains("SUCCESS: 1 rule files found"), "the rules are loaded: {said}");
    let rules = promtool(test, &["check", "rules", "oakestra-rules.yml"], dir.path()).unwrap();
    let said = rules.unwrap_or_else(|e| panic!("promtool check rules failed:\n{e}"));
    assert!(said.contains("SUCCESS: 5 rules found"), "{said}");
    // It can fail: a broken expression is caught.
    let broken = std::fs::read_to_string(dir.path().join("oakestra-rules.yml")).unwrap().replace("[15m]", "[15m");
    std::fs::write(dir.path().join("oakestra-rules.yml"), broken).unwrap();
    assert!(promtool(test, &["check", "rules", "oakestra-rules.yml"], dir.path()).unwrap().is_err());
}

/// Metric names in a PromQL expression: `oakestra_…` and `up`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = expr.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while i < bytes.len() {
        if word(bytes[i]) && (i == 0 || !word(bytes[i - 1])) {
            let end = (i..bytes.len()).find(|&j| !word(bytes[j])).unwrap_or(bytes.len());
            let w = &expr[i..end];
            // A name, not a label (`{up="…"}`) or a function (`up(`… is not PromQL anyway).
            let next = bytes.get(end).copied();
            if (w.starts_with("oakestra_") || w == "up") && next != Some(b'=') && next != Some(b'~') {
                out.insert(w.to_string());
            }
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// Every `expr` of the dashboards' panels and every query of their variables.
fn dashboard_queries() -> Vec<(String, String)> {
    fn walk(v: &Value, file: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "definition", Value::String(q)) => out.push((file.to_string(), q.clone())),
                        _ => walk(v, file, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, file, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    let dir = monitoring_dir().join("grafana/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert_eq!(files.len(), 3, "fleet, cluster and service dashboards: {files:?}");
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let dash: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(dash["uid"].is_string() && dash["panels"].as_array().is_some_and(|p| !p.is_empty()), "{}", f.display());
        walk(&dash, &f.display().to_string(), &mut out);
    }
    out
}

/// The names a `/metrics` text defines (histograms with their series).
fn exported(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else { continue };
        out.insert(name.to_string());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                out.insert(format!("{name}{suffix}"));
            }
        }
    }
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_tier_exports_what_the_dashboards_and_rules_query() {
    let test = "every_tier_exports_what_the_dashboards_and_rules_query";
    let tmp = tempfile::tempdir().unwrap();
    let (url, channel, _root_stop) = start_root(&tmp.path().join("root")).await;
    let token = std::fs::read_to_string(tmp.path().join("root/cluster-token")).unwrap();
    let c1 = start_cluster("c1", &tmp.path().join("c1"), channel, token.trim(), embedded()).await;
    let metrics_port = free_port();
    let _w1 = start_worker_configured(
        Machine::new("w1"),
        Arc::new(FakeRuntime::new("docker")),
        &c1,
        &tmp.path().join("w1"),
        None,
        |c| c.metrics_addr = Some(std::net::SocketAddr::from(([127, 0, 0, 1], metrics_port))),
    );
    let client = admin_client(&url).await;
    common::one_cluster_with_one_worker(&client).await;
    let sla = json!({
        "sla_version": "v2.0", "customerID": "Admin",
        "applications": [{"application_name": "mon", "application_namespace": "test", "application_desc": "",
            "microservices": [{"microservice_name": "web", "microservice_namespace": "test",
                "virtualization": "container", "code": "docker.io/library/nginx:latest", "memory": 100}]}],
    });
    let apps = client.create_application(&sla).await.unwrap();
    let service = client.list_app_services(&apps[0].id).await.unwrap().remove(0);
    client.request_instance(&service.id).await.unwrap();

    let http = reqwest::Client::new();
    let worker_url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let series = format!("oakestra_instance_memory_bytes{{service_id=\"{}\",job_name=", service.id);
    let worker = eventually("the instance's memory at the worker's /metrics", async || {
        let text = http.get(&worker_url).send().await.ok()?.text().await.ok()?;
        (text.contains(&series) && text.contains("oakestra_node_cpu_cores 4")).then_some(text)
    })
    .await;
    // A refused handshake, so the TLS refusal counters exist.
    {
        use tokio::io::AsyncWriteExt;
        let mut plain = tokio::net::TcpStream::connect(c1.api).await.unwrap();
        plain.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.unwrap();
        let _ = tokio::io::AsyncReadExt::read(&mut plain, &mut [0u8; 16]).await;
    }
    let cluster_http = common::cluster_http(&c1);
    let cluster_url = format!("https://127.0.0.1:{}/metrics", c1.api.port());
    let cluster = eventually("the cluster's /metrics with a running instance and a TLS refusal", async || {
        let text = cluster_http.get(&cluster_url).send().await.ok()?.text().await.ok()?;
        (text.contains("oakestra_instances{status=\"RUNNING\"} 1") && text.contains("oakestra_tls_refused_total"))
            .then_some(text)
    })
    .await;
    let root = eventually("the root's /metrics with the running instance", async || {
        let text = http.get(format!("{url}/metrics")).send().await.ok()?.text().await.ok()?;
        text.contains("oakestra_instances{status=\"RUNNING\"} 1").then_some(text)
    })
    .await;

    for (tier, text) in [("root", &root), ("cluster", &cluster), ("worker", &worker)] {
        if let Some(verdict) = oak_testenv::promtool_check_metrics(test, text) {
            assert_eq!(verdict, Ok(()), "{tier}'s /metrics:\n{text}");
        }
    }

    let mut names: BTreeSet<String> = [&root, &cluster, &worker].iter().flat_map(|t| exported(t)).collect();
    names.insert("up".into());
    // Exported only by workers that run the overlay (these in-process workers do not).
    names.insert("oakestra_overlay_refused_total".into());
    let mut queries = dashboard_queries();
    let rules = std::fs::read_to_string(monitoring_dir().join("oakestra-rules.yml")).unwrap();
    queries
        .extend(rules.lines().filter_map(|l| l.trim().strip_prefix("expr:")).map(|q| ("rules".into(), q.to_string())));
    let mut asked = 0;
    for (file, query) in &queries {
        let used = metric_names(query);
        assert!(!used.is_empty(), "{file}: no metric in {query:?}");
        for name in used {
            asked += 1;
            assert!(names.contains(&name), "{file}: {query:?} names {name}, which no tier exports");
        }
    }
    assert!(asked > 30, "only {asked} metric uses found");

    // The root's scrape targets: itself, the cluster's node API, the worker's /metrics.
    let targets = eventually("the scrape targets of all three tiers", async || {
        let text = std::fs::read_to_string(tmp.path().join("root/prometheus-targets.json")).ok()?;
        let groups: Value = serde_json::from_str(&text).ok()?;
        (groups.as_array()?.len() == 3).then_some(groups)
    })
    .await;
    assert_eq!(
        targets[1],
        json!({"targets": [c1.api.to_string()], "labels": {"tier": "cluster", "cluster": "c1", "__scheme__": "https"}})
    );
    assert_eq!(targets[2]["targets"], json!([format!("127.0.0.1:{metrics_port}")]));
    assert_eq!(targets[2]["labels"]["tier"], "worker");
    assert_eq!(targets[2]["labels"]["node"], "w1");

    // Undeployed: the instance's series are gone from the worker.
    client.remove_instance(&service.id, 0).await.unwrap();
    eventually("the instance's series gone", async || {
        let text = http.get(&worker_url).send().await.ok()?.text().await.ok()?;
        (!text.contains(&service.id) && text.contains("oakestra_node_cpu_cores")).then_some(())
    })
    .await;
}

#[test]
fn metric_names_are_found_in_queries() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le) (rate(oakestra_placement_seconds_bucket{job="x", up="1"}[5m]))) or up == 0"#,
    );
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["oakestra_placement_seconds_bucket", "up"]);
    assert!(metric_names("sum(rate(foo[5m]))").is_empty());
}
