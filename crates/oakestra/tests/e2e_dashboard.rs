//! End to end, the dashboard in a real browser: headless Chromium driven through chromedriver
//! against the real `oakestra up` (root, cluster and worker, containerd, a local registry with
//! an HTTP-server image), on the dashboard's own port. The seeds' getting-started flow: a wrong
//! password shows the API's message; log in; create an application and a service from the
//! form (an invalid field first shows the API's message next to it); deploy; the instance
//! table turns RUNNING with a node IP by itself; its logs show the start line and follow new
//! output; undeploy; the instance is gone. Screenshots of each page go to the test's work dir;
//! the browser's console must stay free of errors.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use oak_e2e::{images, wait_until, Registry, Workdir};
use serde_json::{json, Value};

mod e2e;
#[path = "e2e/up.rs"]
mod up;
#[path = "e2e_dashboard/webdriver.rs"]
mod webdriver;

use up::{Ports, Up};
use webdriver::{Driver, Session};

const WAIT: Duration = Duration::from_secs(20);
/// The job name of the service the test creates (application, its namespace, service, its namespace).
const JOB: &str = "web.e2e.server.e2e";

#[test]
fn dashboard_getting_started_in_chromium() -> Result<()> {
    use oak_e2e::Need::{Root, Tool};
    let needs = [
        Root,
        Tool("containerd"),
        Tool("runc"),
        Tool("docker-registry"),
        Tool("skopeo"),
        Tool("chromium"),
        Tool("chromedriver"),
    ];
    if !oak_e2e::can_run("dashboard_getting_started_in_chromium", &needs) {
        return Ok(());
    }
    let mut work = Workdir::new("e2e-dashboard")?;
    // The screenshots are the point of looking afterwards: the directory stays, its data goes.
    work.keep();
    let result = scenario(&work);
    if result.is_err() {
        let log = std::fs::read_to_string(work.join("up.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        eprintln!("--- up.log (last lines, newest first)\n{}", tail.join("\n"));
    } else {
        let _ = std::fs::remove_dir_all(work.join("data"));
        let _ = std::fs::remove_dir_all(work.join("chromium-profile"));
    }
    eprintln!("screenshots in {}", work.path().display());
    result
}

fn scenario(work: &Workdir) -> Result<()> {
    let registry = Registry::start_local()?;
    let port = oak_e2e::registry::free_port("127.0.0.1".parse()?)?;
    let layout = images::build_image(&work.join("images"), &images::http_server_on("hello from the dashboard", port))?;
    let image = registry.push(&layout, "latest", "e2e/dashboard-web")?;

    let data = work.join("data");
    let ports = Ports::free()?;
    let mut up = Up::start(&data, &work.join("up.log"), &ports, registry.addr())?;
    let api_base = format!("http://127.0.0.1:{}", ports.api);
    let password_file = data.join("root/admin-password");
    let (token, password) =
        wait_until("the root to log in", Duration::from_secs(30), Duration::from_millis(200), || {
            up.alive()?;
            let Ok(password) = std::fs::read_to_string(&password_file) else { return Ok(None) };
            Ok(e2e::try_login(&api_base, password.trim()).map(|t| (t, password.trim().to_string())))
        })?;
    let cluster =
        wait_until("the worker to advertise docker", Duration::from_secs(60), Duration::from_millis(500), || {
            up.alive()?;
            let clusters = e2e::api(&api_base, &token, reqwest::Method::GET, "/api/clusters/active", None)?;
            Ok(clusters.as_array().and_then(|cs| {
                cs.iter()
                    .find(|c| {
                        c["active_nodes"].as_u64() >= Some(1) && c["virtualization"].to_string().contains("docker")
                    })
                    .cloned()
            }))
        })?;
    // The worker as the root knows it (its node name), to find on the pages.
    let workers_path = format!("/api/clusters/{}/workers", cluster["_id"].as_str().context("a cluster without _id")?);
    let worker =
        wait_until("the worker listed at the root", Duration::from_secs(30), Duration::from_millis(500), || {
            let listed = e2e::api(&api_base, &token, reqwest::Method::GET, &workers_path, None)?;
            Ok(listed["workers"].as_array().and_then(|ws| ws.iter().find(|w| w["active"] == json!(true)).cloned()))
        })?;
    let worker_name = worker["name"].as_str().context("a worker without a name")?.to_string();
    assert!(!worker_name.is_empty(), "{worker}");

    let driver = Driver::start(&work.join("chromedriver.log"))?;
    let browser = driver.session(&work.join("chromium-profile"))?;
    let target = Target {
        dashboard_port: ports.dashboard,
        data: &data,
        password: &password,
        image: &image,
        port,
        worker_name: &worker_name,
    };
    let result = flow(&browser, work, &target);
    // Nothing of the instance is left in containerd (the worker's own, or the system's).
    let result = result.and_then(|()| {
        let services = e2e::api(&api_base, &token, reqwest::Method::GET, "/api/services", None)?;
        assert_eq!(services, json!([]), "the deleted application's service is left");
        let own = data.join("worker/containerd/containerd.sock");
        let socket = if own.exists() { own } else { "/run/containerd/containerd.sock".into() };
        let left = e2e::ctr(&socket, "oakestra", &["containers", "ls", "-q"])?;
        if left.contains(&format!("{JOB}.instance.0")) {
            bail!("the undeployed container is still there: {left}");
        }
        Ok(())
    });
    // A screenshot of wherever a failure left the page.
    if result.is_err() {
        let _ = browser.screenshot(&work.join("failure.png"));
    }
    let _ = browser.close();
    result
}

fn shot(browser: &Session, work: &Workdir, name: &str) -> Result<()> {
    browser.screenshot(&work.join(format!("{name}.png")))
}

struct Target<'a> {
    dashboard_port: u16,
    data: &'a Path,
    password: &'a str,
    image: &'a str,
    port: u16,
    worker_name: &'a str,
}

fn flow(b: &Session, work: &Workdir, target: &Target) -> Result<()> {
    let Target { dashboard_port, data, password, image, port, worker_name } = *target;
    let base = format!("http://127.0.0.1:{dashboard_port}");
    b.goto(&format!("{base}/"))?;

    // Logged out, every page leads to the login form.
    b.wait_for("the login form", "#login-form", WAIT)?;
    shot(b, work, "01-login")?;
    let focused = b.execute("return document.activeElement && document.activeElement.name;", json!([]))?;
    assert_eq!(focused, json!("username"), "the login form does not start at the user name");
    b.find("#login-form input[name=username]")?.fill("Admin")?;
    b.find("#login-form input[name=password]")?.fill("not the password")?;
    b.find("#login-submit")?.click()?;
    let shown =
        b.wait_text("the API's message for a wrong password", "#login-status .error-box", WAIT, |t| !t.is_empty())?;
    assert!(shown.contains("invalid username or password"), "{shown}");
    shot(b, work, "02-login-wrong-password")?;
    // With the keyboard: Enter in the password field submits.
    b.find("#login-form input[name=password]")?.fill(&format!("{password}\u{E007}"))?;

    // Applications: create one from the form.
    b.wait_text("the applications page", "#apps-list", WAIT, |t| t.contains("No applications yet"))?;
    b.find("#app-form input[name=application_name]")?.fill("web")?;
    b.find("#app-form input[name=application_namespace]")?.fill("e2e")?;
    b.find("#app-form input[name=application_desc]")?.fill("getting started <b>in a browser</b>")?;
    b.find("#app-form button[type=submit]")?.click()?;
    let row = b.wait_text("the new application in the list", "#apps-table tbody", WAIT, |t| t.contains("web"))?;
    // What the user typed is text, never markup.
    assert!(row.contains("getting started <b>in a browser</b>"), "{row}");
    assert!(b.find_all("#apps-table b")?.is_empty(), "the description became markup");
    shot(b, work, "03-applications")?;
    // Edit: the form fills with the application, saves with PUT and comes back to creating.
    b.find("#apps-table button[aria-label='Edit application web']")?.click()?;
    let filled = b.execute("return document.querySelector('#app-form [name=application_name]').value;", json!([]))?;
    assert_eq!(filled, json!("web"), "the edit form is not filled with the application");
    b.find("#app-form input[name=application_desc]")?.fill("edited in a browser")?;
    b.find("#app-form button[type=submit]")?.click()?;
    b.wait_text("the edited description", "#apps-table tbody", WAIT, |t| t.contains("edited in a browser"))?;
    let label = b.find("#app-form button[type=submit]")?.text()?;
    assert_eq!(label, "Create application", "the form stays in edit mode after saving");
    b.find("#apps-table a")?.click()?;

    // A service from the form; an invalid field first shows the API's message next to it.
    b.wait_text("the application page", "#services-list", WAIT, |t| t.contains("No services yet"))?;
    b.find("#service-form input[name=microservice_name]")?.fill("server")?;
    b.find("#service-form input[name=microservice_namespace]")?.fill("e2e")?;
    b.find("#service-form input[name=code]")?.fill(image)?;
    b.find("#service-form input[name=memory]")?.fill("lots")?;
    b.find("#service-form input[name=port]")?.fill("0")?;
    b.find("#service-form button[type=submit]")?.click()?;
    let summary = b.wait_text("the API's errors", "#service-status .error-box", WAIT, |t| !t.is_empty())?;
    let memory_error = b.find("#service-form [data-field=memory] .field-error")?.text()?;
    let port_error = b.find("#service-form [data-field=port] .field-error")?.text()?;
    assert!(!memory_error.is_empty() && summary.contains(&memory_error), "memory: {memory_error:?} in {summary:?}");
    assert!(!port_error.is_empty() && summary.contains(&port_error), "port: {port_error:?} in {summary:?}");
    assert!(memory_error.contains("lots"), "{memory_error}");
    let invalid = b.find("#service-form input[name=memory]")?.attr("aria-invalid")?;
    assert_eq!(invalid.as_deref(), Some("true"));
    shot(b, work, "04-service-form-errors")?;
    // Constraints that are not JSON are named at their field before anything is sent.
    b.find("#service-form textarea[name=constraints]")?.fill("[oops")?;
    b.find("#service-form button[type=submit]")?.click()?;
    b.wait_text("the constraints' error", "#service-form [data-field=constraints] .field-error", WAIT, |t| {
        t.contains("not JSON")
    })?;
    b.find("#service-form textarea[name=constraints]")?.fill("")?;
    b.find("#service-form input[name=memory]")?.fill("64")?;
    b.find("#service-form input[name=port]")?.fill(&port.to_string())?;
    b.find("#service-form button[type=submit]")?.click()?;
    b.wait_for("the created service's link", "#new-service-link", WAIT)?;
    let fields_left = b.find_all("#service-form [aria-invalid]")?;
    assert!(fields_left.is_empty(), "errors stay marked after a success");
    b.wait_text("the service in the list", "#services-table tbody", WAIT, |t| t.contains("server"))?;
    shot(b, work, "05-application-services")?;
    // The alternative: pasted JSON, answered with the API's list of what is wrong.
    let link = b.find("#new-service-link")?.attr("href")?.context("the new service's link")?;
    b.find("#tab-json")?.click()?;
    b.find("#paste-form textarea")?.fill("{not json")?;
    b.find("#paste-form button[type=submit]")?.click()?;
    b.wait_text("the page's message for text that is not JSON", "#service-status .error-box", WAIT, |t| {
        t.contains("not JSON")
    })?;
    b.find("#paste-form textarea")?.fill(r#"{"microservice_name": "pasted", "virtualization": "container"}"#)?;
    b.find("#paste-form button[type=submit]")?.click()?;
    let listed =
        b.wait_text("the API's errors for the pasted service", "#service-status .error-box li", WAIT, |t| {
            !t.is_empty()
        })?;
    assert!(listed.contains("applications[0].microservices[0]."), "{listed}");
    shot(b, work, "05b-paste-json-errors")?;
    // Or from a file: it fills the text to check before adding.
    let file = work.join("uploaded-service.json");
    std::fs::write(&file, r#"{"microservice_name": "uploaded", "virtualization": "container"}"#)?;
    b.find("#sla-file")?.upload(&file)?;
    wait_until("the file in the text", WAIT, Duration::from_millis(100), || {
        let text = b.execute("return document.querySelector('#paste-form textarea').value;", json!([]))?;
        Ok(text.as_str().is_some_and(|t| t.contains("uploaded")).then_some(()))
    })?;
    // Edit the service: the form fills with its descriptor and PUT replaces it.
    b.find("#services-table button[aria-label='Edit service server']")?.click()?;
    let memory = b.execute("return document.querySelector('#service-form [name=memory]').value;", json!([]))?;
    assert_eq!(memory, json!("64"), "the edit form is not filled with the service");
    b.find("#service-form input[name=memory]")?.fill("lots")?;
    b.find("#service-form button[type=submit]")?.click()?;
    let error =
        b.wait_text("the API's message for the edit", "#service-form [data-field=memory] .field-error", WAIT, |t| {
            !t.is_empty()
        })?;
    assert!(error.contains("lots"), "{error}");
    b.find("#service-form input[name=memory]")?.fill("48")?;
    b.find("#service-form button[type=submit]")?.click()?;
    wait_until("the edited memory in the service", WAIT, Duration::from_millis(200), || {
        let memory = b.execute("return document.querySelector('#service-form [name=memory]').value;", json!([]))?;
        Ok((memory == json!("100")).then_some(()))
    })?;
    shot(b, work, "05c-service-edited")?;
    b.goto(&format!("{base}/{link}"))?;
    b.wait_text("the edited descriptor", "#service-details", WAIT, |t| t.contains("48 MB"))?;

    // Deploy: the table turns RUNNING with a node IP without a reload.
    b.wait_text("the service page", "#instances", WAIT, |t| t.contains("No instances"))?;
    b.wait_text("the service's details", "#service-details", WAIT, |t| t.contains(JOB))?;
    b.find("#deploy")?.click()?;
    let row = b.wait_text("the instance to be RUNNING", "#instances-table tbody tr", Duration::from_secs(90), |t| {
        t.contains("RUNNING")
    })?;
    let node_ip = b.find("#instances-table tbody td.node-ip")?.text()?;
    assert!(node_ip.parse::<std::net::IpAddr>().is_ok(), "node IP {node_ip:?} in {row:?}");
    let ip = b.find("#instances-table tbody tr td:nth-child(8)")?.text()?;
    assert!(ip.starts_with("10.30."), "instance IP {ip:?}");
    // Cluster and worker by name, not by id.
    b.wait_text("the worker's name in the instance table", "#instances-table tbody td.worker", WAIT, |t| {
        t == worker_name
    })?;
    let cluster = b.find("#instances-table tbody td.cluster")?.text()?;
    assert!(cluster.starts_with("local"), "cluster {cluster:?}");
    // The worker's usage reports reach the table by themselves too.
    b.wait_text("the instance's memory use", "#instances-table tbody td.memory", WAIT, |t| t.ends_with("MiB"))?;
    shot(b, work, "06-service-running")?;

    // Logs: the start line, then output that comes while following.
    b.find("[data-logs='0']")?.click()?;
    b.wait_text("the start line in the logs", "#logs", WAIT, |t| t.contains("http server starting"))?;
    let server = format!("127.0.0.1:{port}");
    let before = b.find("#logs")?.text()?.matches("response:200").count();
    wait_until("the server to answer", WAIT, Duration::from_millis(200), || {
        Ok(oak_e2e::http::get(&server, "/").ok().filter(|r| r.status == 200).map(|_| ()))
    })?;
    b.wait_text("a request line followed into the logs", "#logs", WAIT, |t| {
        t.matches("response:200").count() > before
    })?;
    shot(b, work, "07-logs")?;

    // A phone-sized screen: one column, nothing wider than the screen but the scrollable tables.
    b.set_window(390, 844)?;
    std::thread::sleep(Duration::from_millis(300));
    let overflow =
        b.execute("return document.documentElement.scrollWidth - document.documentElement.clientWidth;", json!([]))?;
    assert!(overflow.as_f64().is_some_and(|o| o <= 1.0), "the page is {overflow} px wider than a phone");
    shot(b, work, "08-phone")?;
    b.set_window(1280, 1000)?;

    // Undeploy: the instance leaves the table by itself.
    b.find("[data-undeploy='0']")?.click()?;
    b.wait_text("the instance to be gone", "#instances", Duration::from_secs(60), |t| t.contains("No instances"))?;
    shot(b, work, "09-undeployed")?;

    // An access token that has expired: the page gets a new one with the refresh token and
    // goes on (the root's key signs a copy of the current token with its expiry passed).
    let key = std::fs::read_to_string(data.join("root/jwt.key"))?;
    let current = b.execute("return JSON.parse(sessionStorage.getItem('oakestra.session')).token;", json!([]))?;
    let expired = expired_copy(current.as_str().context("no token in the session")?, key.trim())?;
    b.execute(
        "const s = JSON.parse(sessionStorage.getItem('oakestra.session'));
         s.token = arguments[0]; sessionStorage.setItem('oakestra.session', JSON.stringify(s));",
        json!([expired]),
    )?;

    // Infrastructure: the 1-DOC's cluster, active, with its worker; Admin issues a join token.
    b.find("#nav a[data-page=clusters]")?.click()?;
    let clusters = b.wait_text("the cluster table", "#clusters-table tbody", WAIT, |t| t.contains("active"))?;
    assert!(clusters.contains("local"), "{clusters}");
    // The cluster's workers, open by default with one cluster: name, address, state, capacity.
    let workers =
        b.wait_text("the worker on the Infrastructure page", "#workers-list .workers-table tbody", WAIT, |t| {
            t.contains(worker_name)
        })?;
    assert!(workers.contains("active") && workers.contains("docker") && workers.contains("MB free"), "{workers}");
    let now = b.execute("return JSON.parse(sessionStorage.getItem('oakestra.session')).token;", json!([]))?;
    assert!(now.as_str().is_some_and(|t| t != expired && t != current), "the token was not refreshed");
    b.find("#issue-token")?.click()?;
    let token = b.wait_text("a join token", "#cluster-token", WAIT, |t| !t.is_empty())?;
    assert!(token.len() >= 16, "{token}");
    shot(b, work, "10-infrastructure")?;

    // Users and the account page.
    b.find("#nav a[data-page=users]")?.click()?;
    b.wait_text("the users table", "#users-table tbody", WAIT, |t| t.contains("Admin"))?;
    b.find("#user-form input[name=name]")?.fill("alice")?;
    b.find("#user-form input[name=password]")?.fill("alice-password-1")?;
    b.find("#user-form button[type=submit]")?.click()?;
    let users = b.wait_text("the registered user", "#users-table tbody", WAIT, |t| t.contains("alice"))?;
    assert!(users.contains("Application_Provider"), "{users}");
    let default_role = b.execute(
        "return document.querySelector('#user-form input[name=\"role-Application_Provider\"]').checked;",
        json!([]),
    )?;
    assert_eq!(default_role, json!(true), "the form did not come back to its default role");
    shot(b, work, "11-users")?;
    // Admin's organizations: create one, then delete it after confirming.
    b.wait_text("the organizations table", "#orgs-table tbody", WAIT, |t| t.contains("root"))?;
    b.find("#org-form input[name=name]")?.fill("lab-a")?;
    b.find("#org-form button[type=submit]")?.click()?;
    b.wait_text("the new organization", "#orgs-table tbody", WAIT, |t| t.contains("lab-a"))?;
    shot(b, work, "11b-organizations")?;
    b.find("#orgs-table button[aria-label='Delete organization lab-a']")?.click()?;
    b.wait_for("the confirmation", "dialog[open] [data-confirm=yes]", WAIT)?.click()?;
    b.wait_text("the organization to be gone", "#orgs-table tbody", WAIT, |t| !t.contains("lab-a"))?;
    // Deleting a user asks first too.
    b.find("#users-table button[aria-label='Delete user alice']")?.click()?;
    b.wait_for("the confirmation", "dialog[open] [data-confirm=yes]", WAIT)?.click()?;
    b.wait_text("the user to be gone", "#users-table tbody", WAIT, |t| !t.contains("alice"))?;
    b.find("#nav a[data-page=account]")?.click()?;
    b.wait_for("the password form", "#password-form", WAIT)?;
    shot(b, work, "12-account")?;

    // Deleting the application asks first; confirmed, it is gone.
    b.find("#nav a[data-page=apps]")?.click()?;
    b.wait_text("the applications table", "#apps-table tbody", WAIT, |t| t.contains("web"))?;
    b.find("#apps-table button.danger")?.click()?;
    b.wait_for("the confirmation", "dialog[open] [data-confirm=yes]", WAIT)?.click()?;
    b.wait_text("the application to be gone", "#apps-list", WAIT, |t| t.contains("No applications yet"))?;

    // Log out: back to the login form, the token gone from the session.
    b.find("#logout")?.click()?;
    b.wait_for("the login form after logging out", "#login-form", WAIT)?;
    let kept = b.execute("return sessionStorage.getItem('oakestra.session');", json!([]))?;
    assert_eq!(kept, Value::Null, "the session outlived the logout");

    // Too many wrong passwords: the API's 429 with the time to wait (Retry-After).
    let limited = wait_until("the login limit", WAIT, Duration::from_millis(10), || {
        b.find("#login-form input[name=username]")?.fill("mallory")?;
        b.find("#login-form input[name=password]")?.fill("guess")?;
        b.find("#login-submit")?.click()?;
        let shown = b.wait_text("an answer to the login", "#login-status .error-box", WAIT, |t| !t.is_empty())?;
        b.execute("document.getElementById('login-status').replaceChildren();", json!([]))?;
        Ok(shown.contains("too many").then_some(shown))
    })?;
    assert!(limited.contains("Try again in"), "{limited}");

    no_console_errors(b)
}

/// Nothing in the browser's console at error level but the failed calls the test provoked (the
/// wrong passwords' 401 and 429, the invalid forms' and the invalid edit's 422, the expired
/// token's 401), and no
/// uncaught error in the page.
fn no_console_errors(b: &Session) -> Result<()> {
    let caught = b.execute("return window.oakErrors;", json!([]))?;
    if caught.as_array().is_none_or(|a| !a.is_empty()) {
        bail!("uncaught errors in the page: {caught}");
    }
    let log = b.browser_log().context("reading the browser's console")?;
    // The console is really read: the wrong password's failed call is there.
    assert!(log.iter().any(|(_, m)| m.contains("/api/auth/login") && m.contains("401")), "{log:?}");
    let errors: Vec<&(String, String)> = log
        .iter()
        .filter(|(level, _)| level == "SEVERE")
        .filter(|(_, message)| {
            let expected = message.contains("/api/auth/login")
                && (message.contains("status of 401") || message.contains("status of 429"))
                || message.contains("/api/clusters ") && message.contains("status of 401")
                || message.contains("/api/service ") && message.contains("status of 422")
                || message.contains("/api/service/") && message.contains("status of 422");
            !expected
        })
        .collect();
    if !errors.is_empty() {
        bail!("errors in the browser's console: {errors:?}");
    }
    Ok(())
}

/// `token` signed again with `hex_key` (the root's `jwt.key`) with its expiry ten minutes past.
fn expired_copy(token: &str, hex_key: &str) -> Result<String> {
    use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
    let key: Vec<u8> = (0..hex_key.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex_key[i..i + 2], 16))
        .collect::<Result<_, _>>()
        .context("jwt.key is not hex")?;
    let mut claims: Value =
        jsonwebtoken::decode(token, &DecodingKey::from_secret(&key), &Validation::new(Algorithm::HS256))?.claims;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    claims["iat"] = json!(now - 1200);
    claims["nbf"] = json!(now - 1200);
    claims["exp"] = json!(now - 600);
    Ok(jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(&key))?)
}
