//! `oakestra up` as a child process on free ports, for the 1-DOC end-to-end tests (included
//! with `#[path]` by those that use it, so other tests do not compile it).

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::Result;

pub struct Up {
    child: Child,
}

impl Up {
    /// Starts `oakestra up` with its data under `data`, its log in `log` and what it prints for
    /// the user (the banner) in `log` with the extension `out`; the worker may fetch from
    /// `fetch_allow` (the test's registry on loopback) besides public addresses.
    pub fn start(data: &Path, log: &Path, ports: &Ports, fetch_allow: &str) -> Result<Up> {
        let out = std::fs::File::create(log.with_extension("out"))?;
        let log = std::fs::File::create(log)?;
        let child = Command::new(env!("CARGO_BIN_EXE_oakestra"))
            .arg("up")
            .arg("--data-dir")
            .arg(data)
            .args(ports.args())
            .args(["--fetch-allow", fetch_allow])
            .env("RUST_LOG", "info")
            .stdout(out)
            .stderr(log)
            .spawn()?;
        Ok(Up { child })
    }

    /// Fails the wait it is called in at once if `oakestra up` has exited.
    pub fn alive(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            Some(status) => Err(oak_e2e::procs::Hopeless(format!("oakestra up exited ({status})")).into()),
            None => Ok(()),
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = oak_e2e::procs::terminate(&mut self.child, Duration::from_secs(15));
    }
}

/// Ports of every listener of the deployment, free ones so that the test does not depend on
/// what else runs on the machine (the defaults are `oakestra up`'s own concern, in its tests).
pub struct Ports {
    pub api: u16,
    pub cluster: u16,
    pub cluster_api: u16,
    pub mqtt: u16,
    pub tunnel: u16,
    /// The dashboard's own port (`up` would take 80 otherwise).
    pub dashboard: u16,
    /// The worker's `/metrics`.
    pub metrics: u16,
}

impl Ports {
    pub fn free() -> Result<Self> {
        let mut taken = Vec::new();
        let mut next = || -> Result<u16> {
            // Held until all are chosen, so no two are the same.
            let l = std::net::TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, 0))?;
            let port = l.local_addr()?.port();
            taken.push(l);
            Ok(port)
        };
        let ports = Self {
            api: next()?,
            cluster: next()?,
            cluster_api: next()?,
            mqtt: next()?,
            tunnel: next()?,
            dashboard: next()?,
            metrics: next()?,
        };
        Ok(ports)
    }

    fn args(&self) -> Vec<String> {
        [
            ("--api-port", self.api),
            ("--cluster-port", self.cluster),
            ("--cluster-api-port", self.cluster_api),
            ("--mqtt-port", self.mqtt),
            ("--tunnel-port", self.tunnel),
            ("--dashboard-port", self.dashboard),
            ("--metrics-port", self.metrics),
        ]
        .iter()
        .flat_map(|(flag, port)| [flag.to_string(), port.to_string()])
        .collect()
    }
}
