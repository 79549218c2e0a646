//! What the end-to-end tests share: calls of the public API with a bearer token, and `ctr`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

pub fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap()
}

/// `method path` on the API at `base` as the holder of `token`; the JSON answer (or its text),
/// or an error naming the call, the status and the body.
pub fn api(base: &str, token: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value> {
    let mut req = http().request(method.clone(), format!("{base}{path}")).bearer_auth(token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().with_context(|| format!("{method} {path}"))?;
    let status = resp.status();
    let text = resp.text()?;
    if !status.is_success() {
        bail!("{method} {path}: {status}: {text}");
    }
    Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Admin's access token from the root at `base`, or `None` while it does not answer yet.
pub fn try_login(base: &str, password: &str) -> Option<String> {
    let resp = http()
        .post(format!("{base}/api/auth/login"))
        .json(&serde_json::json!({"username": "Admin", "password": password}))
        .send();
    resp.ok()
        .filter(|r| r.status().is_success())
        .and_then(|r| r.json::<Value>().ok())
        .and_then(|v| v["token"].as_str().map(str::to_string))
}

/// `ctr -a socket -n ns args…`, its standard output.
pub fn ctr(socket: &Path, ns: &str, args: &[&str]) -> Result<String> {
    let out = Command::new("ctr").arg("-a").arg(socket).args(["-n", ns]).args(args).output()?;
    if !out.status.success() {
        bail!("ctr -n {ns} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
