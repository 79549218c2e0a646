//! A throwaway OCI registry (Debian's `docker-registry`) that tests push their images to, so the
//! worker's runtime pulls over the network exactly as in production, without Docker Hub.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::procs::wait_until;
use crate::{http, require_tool};

pub const REGISTRY_BIN: &str = "docker-registry";

/// A running `docker-registry serve` with storage in a temporary directory; killed on drop.
pub struct Registry {
    addr: String,
    child: Child,
    dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry on `127.0.0.1` with a free port.
    pub fn start_local() -> Result<Registry> {
        let port = free_port(IpAddr::V4(Ipv4Addr::LOCALHOST))?;
        Registry::start(&format!("127.0.0.1:{port}"))
    }

    /// Starts a registry listening on `addr` (`ip:port`, e.g. a lab bridge address so network
    /// namespaces reach it) and waits until `GET /v2/` answers.
    pub fn start(addr: &str) -> Result<Registry> {
        let bin = require_tool(REGISTRY_BIN)?;
        let dir = tempfile::Builder::new().prefix("oak-e2e-registry-").tempdir()?;
        let storage = dir.path().join("storage");
        fs::create_dir(&storage)?;
        let config = dir.path().join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {addr}\n",
                storage.display()
            ),
        )?;
        let log = fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new(&bin)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} serve", bin.display()))?;
        let mut registry = Registry { addr: addr.to_string(), child, dir };
        let ready = wait_until(
            &format!("the registry on {addr} to answer GET /v2/"),
            Duration::from_secs(15),
            Duration::from_millis(50),
            || {
                if let Some(status) = registry.child.try_wait()? {
                    bail!("docker-registry exited with {status}: {}", registry.log());
                }
                Ok(http::get(addr, "/v2/").ok().filter(|r| r.status == 200))
            },
        );
        if let Err(e) = ready {
            return Err(e.context(format!("registry log: {}", registry.log())));
        }
        Ok(registry)
    }

    /// `ip:port` the registry listens on, the host part of references.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// What the registry logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Copies `tag` of the OCI layout at `layout` to `<addr>/<repo_ref>` with skopeo and returns
    /// the full reference `<addr>/<repo>:<tag>`. `repo_ref` may carry its own `:tag`.
    pub fn push(&self, layout: &Path, tag: &str, repo_ref: &str) -> Result<String> {
        let skopeo = require_tool("skopeo")?;
        let last = repo_ref.rsplit('/').next().unwrap_or(repo_ref);
        let reference = if last.contains(':') {
            format!("{}/{repo_ref}", self.addr)
        } else {
            format!("{}/{repo_ref}:{tag}", self.addr)
        };
        let out = Command::new(&skopeo)
            .args(["--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{reference}"))
            .output()
            .context("running skopeo")?;
        if !out.status.success() {
            bail!(
                "skopeo copy of {}:{tag} to {reference} failed ({}): {}",
                layout.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(reference)
    }

    /// Tags the registry lists for `repo` (`GET /v2/<repo>/tags/list`).
    pub fn tags(&self, repo: &str) -> Result<Vec<String>> {
        let path = format!("/v2/{repo}/tags/list");
        let r = http::get(&self.addr, &path)?;
        if r.status != 200 {
            bail!("GET {path} on {} answered {}: {}", self.addr, r.status, r.body);
        }
        let v: Value =
            serde_json::from_str(&r.body).with_context(|| format!("parsing GET {path} answer {:?}", r.body))?;
        Ok(v["tags"]
            .as_array()
            .map(|a| a.iter().filter_map(|t| t.as_str().map(String::from)).collect())
            .unwrap_or_default())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP port on `ip` that was free a moment ago (bound to port 0, then released).
pub fn free_port(ip: IpAddr) -> Result<u16> {
    let l = TcpListener::bind((ip, 0)).with_context(|| format!("binding a free port on {ip}"))?;
    Ok(l.local_addr()?.port())
}
