//! The dashboard's assets as the root serves them (in-process, no browser): the page and every
//! module it loads answer with the security headers, unknown assets are 404, the page has no
//! inline code, and the one API call shape the dashboard relies on beyond the CLI's (an
//! application created without services) is accepted.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use oak_root::{Root, RootConfig, CONTENT_SECURITY_POLICY};
use serde_json::{json, Value};
use tower::ServiceExt;

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

async fn open(dir: &std::path::Path) -> Root {
    Root::open(RootConfig {
        api_addr: "127.0.0.1:0".parse().unwrap(),
        channel_addr: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        store_durability: Default::default(),
        admin_password: None,
        fleet: Default::default(),
        privileged_roles: Vec::new(),
    })
    .await
    .unwrap()
}

async fn send(root: &Root, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Answer {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req.body(body.map(|b| Body::from(b.to_string())).unwrap_or_else(Body::empty)).unwrap();
    let resp = root.service().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    Answer { status, headers, body: String::from_utf8_lossy(&bytes).into_owned() }
}

async fn get(root: &Root, path: &str) -> Answer {
    send(root, Method::GET, path, None, None).await
}

fn assert_secure(a: &Answer, path: &str) {
    let h = |name: header::HeaderName| a.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert_eq!(h(header::CONTENT_SECURITY_POLICY), CONTENT_SECURITY_POLICY, "{path}");
    assert!(CONTENT_SECURITY_POLICY.starts_with("default-src 'self'"), "{CONTENT_SECURITY_POLICY}");
    assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"), "{CONTENT_SECURITY_POLICY}");
    assert_eq!(h(header::X_CONTENT_TYPE_OPTIONS), "nosniff", "{path}");
    assert_eq!(h(header::X_FRAME_OPTIONS), "DENY", "{path}");
}

fn content_type(a: &Answer) -> &str {
    a.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// `"/dashboard/…"` references of the page, and `from "./x.js"` imports of a module (resolved
/// against the module's own path).
fn references(path: &str, text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for piece in text.split('"').skip(1).step_by(2) {
        if piece.starts_with("/dashboard/") {
            found.push(piece.to_string());
        } else if path.ends_with(".js") && (piece.starts_with("./") || piece.starts_with("../")) {
            let mut dir: Vec<&str> = path.split('/').collect();
            dir.pop();
            for part in piece.split('/') {
                match part {
                    "." => {}
                    ".." => {
                        dir.pop();
                    }
                    p => dir.push(p),
                }
            }
            found.push(dir.join("/"));
        }
    }
    found
}

#[tokio::test]
async fn the_page_and_all_it_loads_are_served_with_security_headers() {
    let dir = tempfile::tempdir().unwrap();
    let root = open(dir.path()).await;

    for path in ["/", "/dashboard", "/dashboard/", "/dashboard/index.html"] {
        let page = get(&root, path).await;
        assert_eq!(page.status, StatusCode::OK, "{path}");
        assert_secure(&page, path);
        assert!(content_type(&page).starts_with("text/html"), "{path}: {}", content_type(&page));
        assert!(page.body.contains(r#"<script type="module" src="/dashboard/js/app.js"></script>"#), "{}", page.body);
    }

    // Everything the page loads, transitively, is there with the right type and the headers.
    let mut queue = vec!["/dashboard/index.html".to_string()];
    let mut seen = std::collections::BTreeSet::new();
    while let Some(path) = queue.pop() {
        if !seen.insert(path.clone()) {
            continue;
        }
        let a = get(&root, &path).await;
        assert_eq!(a.status, StatusCode::OK, "{path} is referenced but not served");
        assert_secure(&a, &path);
        let want = match path.rsplit('.').next() {
            Some("js") => "text/javascript",
            Some("css") => "text/css",
            Some("svg") => "image/svg+xml",
            _ => "text/html",
        };
        assert!(content_type(&a).starts_with(want), "{path}: {}", content_type(&a));
        // The XSS rule: no markup is ever built from strings.
        assert!(!a.body.contains("innerHTML") && !a.body.contains("outerHTML"), "{path} builds HTML from strings");
        assert!(!a.body.contains("insertAdjacentHTML") && !a.body.contains("document.write"), "{path}");
        queue.extend(references(&path, &a.body));
    }
    assert!(seen.len() >= 12, "the page, its stylesheet, icon and modules: {seen:?}");

    // No inline code or style that the policy would have to allow.
    let page = get(&root, "/").await.body;
    for script in page.split("<script").skip(1) {
        assert!(script.split('>').next().unwrap().contains("src="), "inline script in the page");
    }
    assert!(!page.contains("<style") && !page.contains(" style=") && !page.contains(" onclick="), "{page}");
}

#[tokio::test]
async fn unknown_assets_are_404_and_the_api_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let root = open(dir.path()).await;
    for path in ["/dashboard/nope.js", "/dashboard/js/pages/nope.js", "/dashboard/../Cargo.toml", "/dashboard/js"] {
        let a = get(&root, path).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}: {}", a.body);
        assert_secure(&a, path);
        assert!(content_type(&a).starts_with("text/plain"), "{path}");
    }
    let a = get(&root, "/index.html").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = get(&root, "/api/nope").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(serde_json::from_str::<Value>(&a.body).unwrap()["message"].as_str().unwrap().contains("/api/nope"));
    assert_eq!(get(&root, "/api/health").await.status, StatusCode::OK);
}

#[tokio::test]
async fn an_application_without_services_can_be_created_as_the_dashboard_does() {
    let dir = tempfile::tempdir().unwrap();
    let root = open(dir.path()).await;
    let login =
        send(&root, Method::POST, "/api/auth/login", None, Some(json!({"username": "Admin", "password": "Admin"})))
            .await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.body);
    let token = serde_json::from_str::<Value>(&login.body).unwrap()["token"].as_str().unwrap().to_string();
    let sla = json!({"sla_version": "v2.0", "customerID": "Admin", "applications": [{
        "applicationID": "", "application_name": "web", "application_namespace": "test",
        "application_desc": "from the dashboard", "microservices": []}]});
    let a = send(&root, Method::POST, "/api/application", Some(&token), Some(sla)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let apps: Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(apps[0]["application_name"], "web", "{apps}");
    assert_eq!(apps[0]["microservices"], json!([]), "{apps}");
}
