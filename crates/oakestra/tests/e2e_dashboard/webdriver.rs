//! A small W3C WebDriver client over blocking HTTP (chromedriver speaks JSON over HTTP): a
//! session of headless Chromium, finding elements by CSS selector, clicking, typing, reading
//! text, running a script, screenshots and the browser's console log.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// The key W3C WebDriver names element references with.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process on a free port; stopped on drop.
pub struct Driver {
    child: Child,
    base: String,
}

impl Driver {
    pub fn start(log: &Path) -> Result<Driver> {
        let port = oak_e2e::registry::free_port("127.0.0.1".parse()?)?;
        let log = std::fs::File::create(log)?;
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("starting chromedriver")?;
        let mut driver = Driver { child, base: format!("http://127.0.0.1:{port}") };
        oak_e2e::wait_until("chromedriver to answer", Duration::from_secs(20), Duration::from_millis(100), || {
            if let Some(status) = driver.child.try_wait()? {
                return Err(oak_e2e::procs::Hopeless(format!("chromedriver exited ({status})")).into());
            }
            let ready = http().get(format!("{}/status", driver.base)).send()?.json::<Value>()?;
            Ok((ready["value"]["ready"] == true).then_some(()))
        })?;
        Ok(driver)
    }

    /// A new headless Chromium session with its profile in `profile`.
    pub fn session(&self, profile: &Path) -> Result<Session> {
        let mut args = vec![
            "--headless=new".to_string(),
            "--disable-gpu".to_string(),
            "--disable-dev-shm-usage".to_string(),
            "--window-size=1280,1000".to_string(),
            format!("--user-data-dir={}", profile.display()),
        ];
        // Chromium's sandbox refuses to run as root.
        if unsafe { libc::geteuid() } == 0 {
            args.push("--no-sandbox".to_string());
        }
        let mut options = json!({ "args": args });
        if Path::new("/usr/bin/chromium").exists() {
            options["binary"] = json!("/usr/bin/chromium");
        }
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": options,
            "goog:loggingPrefs": { "browser": "ALL" },
        }}});
        let answer = send(reqwest::Method::POST, &format!("{}/session", self.base), Some(caps))?;
        let id = answer["sessionId"].as_str().context("no session id")?;
        Ok(Session { base: format!("{}/session/{id}", self.base) })
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = oak_e2e::procs::terminate(&mut self.child, Duration::from_secs(5));
    }
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().unwrap()
}

/// One WebDriver command: its `value`, or the driver's error.
fn send(method: reqwest::Method, url: &str, body: Option<Value>) -> Result<Value> {
    let mut req = http().request(method.clone(), url);
    // POST commands need a JSON body, if only `{}`.
    if method == reqwest::Method::POST {
        req = req.json(&body.unwrap_or_else(|| json!({})));
    }
    let resp = req.send().with_context(|| format!("{method} {url}"))?;
    let status = resp.status();
    let value: Value = resp.json().with_context(|| format!("{method} {url}: not JSON"))?;
    if !status.is_success() {
        bail!("{method} {url}: {status}: {} {}", value["value"]["error"], value["value"]["message"]);
    }
    Ok(value["value"].clone())
}

pub struct Session {
    base: String,
}

#[derive(Clone)]
pub struct Element {
    url: String,
}

impl Session {
    fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value> {
        send(method, &format!("{}{path}", self.base), body)
    }

    pub fn goto(&self, url: &str) -> Result<()> {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({ "url": url })))?;
        Ok(())
    }

    pub fn find(&self, css: &str) -> Result<Element> {
        let v = self.cmd(reqwest::Method::POST, "/element", Some(json!({"using": "css selector", "value": css})))?;
        let id = v[ELEMENT].as_str().with_context(|| format!("no element {css}"))?;
        Ok(Element { url: format!("{}/element/{id}", self.base) })
    }

    pub fn find_all(&self, css: &str) -> Result<Vec<Element>> {
        let v = self.cmd(reqwest::Method::POST, "/elements", Some(json!({"using": "css selector", "value": css})))?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e[ELEMENT].as_str())
            .map(|id| Element { url: format!("{}/element/{id}", self.base) })
            .collect())
    }

    /// Waits until the element `css` exists and its text satisfies `ok`; its text.
    pub fn wait_text(&self, what: &str, css: &str, timeout: Duration, ok: impl Fn(&str) -> bool) -> Result<String> {
        oak_e2e::wait_until(what, timeout, Duration::from_millis(200), || {
            let text = self.find(css)?.text()?;
            if ok(&text) {
                Ok(Some(text))
            } else {
                bail!("{css} shows {text:?}")
            }
        })
    }

    pub fn wait_for(&self, what: &str, css: &str, timeout: Duration) -> Result<Element> {
        oak_e2e::wait_until(what, timeout, Duration::from_millis(200), || self.find(css).map(Some))
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page; its return value.
    pub fn execute(&self, script: &str, args: Value) -> Result<Value> {
        self.cmd(reqwest::Method::POST, "/execute/sync", Some(json!({"script": script, "args": args})))
    }

    pub fn screenshot(&self, to: &Path) -> Result<()> {
        let v = self.cmd(reqwest::Method::GET, "/screenshot", None)?;
        let png = base64_decode(v.as_str().context("screenshot")?)?;
        std::fs::write(to, png)?;
        Ok(())
    }

    pub fn set_window(&self, width: u32, height: u32) -> Result<()> {
        self.cmd(reqwest::Method::POST, "/window/rect", Some(json!({"width": width, "height": height})))?;
        Ok(())
    }

    /// The browser's console entries since the last call (chromedriver's log extension), as
    /// (level, message).
    pub fn browser_log(&self) -> Result<Vec<(String, String)>> {
        let v = self.cmd(reqwest::Method::POST, "/se/log", Some(json!({"type": "browser"})))?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .map(|e| (e["level"].as_str().unwrap_or("").to_string(), e["message"].as_str().unwrap_or("").to_string()))
            .collect())
    }

    pub fn close(&self) -> Result<()> {
        self.cmd(reqwest::Method::DELETE, "", None)?;
        Ok(())
    }
}

impl Element {
    pub fn click(&self) -> Result<()> {
        send(reqwest::Method::POST, &format!("{}/click", self.url), None)?;
        Ok(())
    }

    /// Replaces the field's content with `text`.
    pub fn fill(&self, text: &str) -> Result<()> {
        send(reqwest::Method::POST, &format!("{}/clear", self.url), None)?;
        send(reqwest::Method::POST, &format!("{}/value", self.url), Some(json!({ "text": text })))?;
        Ok(())
    }

    /// Chooses `path` in a file input (typing a path is how WebDriver uploads).
    pub fn upload(&self, path: &std::path::Path) -> Result<()> {
        let path = path.to_str().context("the file's path is not UTF-8")?;
        send(reqwest::Method::POST, &format!("{}/value", self.url), Some(json!({ "text": path })))?;
        Ok(())
    }

    pub fn text(&self) -> Result<String> {
        Ok(send(reqwest::Method::GET, &format!("{}/text", self.url), None)?.as_str().unwrap_or("").to_string())
    }

    pub fn attr(&self, name: &str) -> Result<Option<String>> {
        Ok(send(reqwest::Method::GET, &format!("{}/attribute/{name}", self.url), None)?.as_str().map(str::to_string))
    }
}

/// Standard base64 (what WebDriver screenshots are), padding and whitespace ignored.
fn base64_decode(text: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => bail!("not base64: {:?}", c as char),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}
