//! A lab of network namespaces on one Linux bridge, so one machine can play several hosts
//! (root, cluster, workers each with their own address) in multi-host tests. Needs root.
//!
//! Everything is named `<prefix>-…`, so a crashed run's leftovers are found by prefix
//! ([`cleanup_stale`]). Uses the `ip` command (iproute2) rather than netlink crates: the commands
//! are the ones a human would type to inspect or repair the setup.

use std::fs::OpenOptions;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::procs::terminate_pids;

/// How long spawned processes get to exit on SIGTERM when the lab is dropped.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Longest prefix: `<prefix>-v<n>` (n ≤ 254) must fit Linux's 15-byte interface names.
pub const MAX_PREFIX: usize = 10;

/// A bridge `<prefix>-br` with address `10.99.<subnet>.1/24` in the root namespace, and the
/// hosts attached to it. Drop kills the processes spawned in the hosts and removes namespaces,
/// veths and the bridge.
pub struct Lab {
    prefix: String,
    subnet: u8,
    bridge: String,
    hosts: Vec<Host>,
    pids: Arc<Mutex<Vec<i32>>>,
}

/// One network namespace `<prefix>-<name>` with `eth0` at `10.99.<subnet>.<n>/24` and a default
/// route via the bridge. Cheap to clone; processes it spawns are stopped when the [`Lab`] drops.
#[derive(Clone, Debug)]
pub struct Host {
    name: String,
    netns: String,
    ip: Ipv4Addr,
    gateway: Ipv4Addr,
    pids: Arc<Mutex<Vec<i32>>>,
}

impl Lab {
    /// Creates the bridge for subnet `10.99.<subnet>.0/24`, after removing leftovers of an
    /// earlier run with the same prefix. Tests running in parallel need distinct prefixes and
    /// subnets; a subnet already on an interface is refused rather than silently shared.
    pub fn new(prefix: &str, subnet: u8) -> Result<Lab> {
        if prefix.is_empty()
            || prefix.len() > MAX_PREFIX
            || !prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            bail!("lab prefix {prefix:?} must be 1..={MAX_PREFIX} characters [a-z0-9]");
        }
        cleanup_stale(prefix)?;
        let cidr = format!("10.99.{subnet}.0/24");
        let used = ip(&["-o", "addr", "show", "to", &cidr])?;
        if !used.trim().is_empty() {
            bail!("subnet {cidr} is already in use: {}", used.trim());
        }
        let lab = Lab {
            prefix: prefix.to_string(),
            subnet,
            bridge: format!("{prefix}-br"),
            hosts: Vec::new(),
            pids: Arc::default(),
        };
        // From here on a failure drops `lab`, which removes what was created.
        ip(&["link", "add", &lab.bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}/24", lab.gateway()), "dev", &lab.bridge])?;
        ip(&["link", "set", &lab.bridge, "up"])?;
        Ok(lab)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The bridge's name in the root namespace.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The bridge's address, `10.99.<subnet>.1`: the hosts' default gateway, and where services
    /// in the root namespace (e.g. a registry) are reachable from every host.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 99, self.subnet, 1)
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Creates netns `<prefix>-<name>` attached to the bridge with the next free address
    /// (`.2`, `.3`, …).
    pub fn add_host(&mut self, name: &str) -> Result<Host> {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            bail!("host name {name:?} must be non-empty [A-Za-z0-9-]");
        }
        let n = self.hosts.len() + 2;
        if n > 254 {
            bail!("lab {} is full (253 hosts)", self.prefix);
        }
        let netns = format!("{}-{name}", self.prefix);
        if self.hosts.iter().any(|h| h.netns == netns) {
            bail!("lab {} already has a host {name}", self.prefix);
        }
        let host = Host {
            name: name.to_string(),
            netns: netns.clone(),
            ip: Ipv4Addr::new(10, 99, self.subnet, n as u8),
            gateway: self.gateway(),
            pids: self.pids.clone(),
        };
        ip(&["netns", "add", &netns])?;
        // Recorded before configuring, so a failure below is still cleaned up on drop.
        self.hosts.push(host.clone());
        let veth = self.veth_name(n);
        ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns])?;
        ip(&["link", "set", &veth, "master", &self.bridge])?;
        ip(&["link", "set", &veth, "up"])?;
        ip(&["-n", &netns, "addr", "add", &format!("{}/24", host.ip), "dev", "eth0"])?;
        ip(&["-n", &netns, "link", "set", "lo", "up"])?;
        ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &netns, "route", "add", "default", "via", &host.gateway.to_string()])?;
        Ok(host)
    }

    fn veth_name(&self, n: usize) -> String {
        format!("{}-v{n}", self.prefix)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let pids = std::mem::take(&mut *self.pids.lock().unwrap_or_else(|e| e.into_inner()));
        terminate_pids(&pids, STOP_GRACE);
        for (i, host) in self.hosts.iter().enumerate() {
            remove_netns(&host.netns);
            // Normally gone with its peer in the namespace; only left if the move failed.
            let _ = ip(&["link", "del", &self.veth_name(i + 2)]);
        }
        if let Err(e) = ip(&["link", "del", &self.bridge]) {
            eprintln!("oak-e2e: removing bridge {}: {e:#}", self.bridge);
        }
    }
}

impl Host {
    /// The name given to [`Lab::add_host`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's name, `<prefix>-<name>`.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The bridge address (see [`Lab::gateway`]).
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// `nsenter --net=/run/netns/<netns> -- <program>`, to add arguments and run as needed.
    ///
    /// Only the network namespace changes: the program sees the machine's mounts, as on a real
    /// host. (`ip netns exec` would also remount `/sys` for the namespace, which hides
    /// `/sys/fs/cgroup`, so a worker could neither read its containers' usage nor tell an OOM
    /// kill.) The flip side: `/sys/class/net` shows the root namespace's interfaces; ask netlink
    /// (`ip`) about the host's own.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.netns)).arg("--").arg(program);
        c
    }

    /// Starts `program args` in the namespace with stdout and stderr appended to `log`.
    ///
    /// The child leads its own process group (so stopping it also stops what it forked) and is
    /// stopped when the lab drops unless the caller waited for it first. `nsenter` execs
    /// the program, so the child's pid is the program's.
    pub fn spawn(&self, program: &str, args: &[&str], env: &[(&str, &str)], log: &Path) -> Result<Child> {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening log {}", log.display()))?;
        let mut pids = self.pids.lock().unwrap_or_else(|e| e.into_inner());
        let child = self
            .command(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .with_context(|| format!("spawning {program} in netns {}", self.netns))?;
        pids.push(child.id() as i32);
        Ok(child)
    }

    /// Runs `program args` in the namespace to completion; the caller judges the status.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<Output> {
        self.command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {program} in netns {}", self.netns))
    }

    /// [`Host::run`] that fails unless the exit status is 0, returning stdout.
    pub fn run_ok(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = self.run(program, args)?;
        if !out.status.success() {
            bail!(
                "{program} {args:?} in netns {} failed ({}): {}{}",
                self.netns,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Removes namespaces and interfaces named `<prefix>-…` (left by a crashed run), killing the
/// processes still inside those namespaces. Returns how many objects were removed.
pub fn cleanup_stale(prefix: &str) -> Result<usize> {
    let start = format!("{prefix}-");
    let mut removed = 0;
    for line in ip(&["netns", "list"])?.lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if name.starts_with(&start) {
            remove_netns(name);
            removed += 1;
        }
    }
    for line in ip(&["-o", "link", "show"])?.lines() {
        // "7: oakx-v2@if2: <BROADCAST,…" — the name is the second field, up to '@' or ':'.
        let Some(field) = line.split_whitespace().nth(1) else { continue };
        let name = field.trim_end_matches(':').split('@').next().unwrap_or_default();
        if name.starts_with(&start) {
            // A veth may already have vanished with its peer or bridge: ignore errors.
            if ip(&["link", "del", name]).is_ok() {
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// Kills what still runs in `netns`, then deletes it (a namespace with processes would survive
/// its mount's removal and keep its interfaces alive).
fn remove_netns(netns: &str) {
    if let Ok(pids) = ip(&["netns", "pids", netns]) {
        for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            // SAFETY: plain kill(2) of a process inside the namespace we are tearing down.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    if let Err(e) = ip(&["netns", "del", netns]) {
        eprintln!("oak-e2e: removing netns {netns}: {e:#}");
    }
}

/// Runs `ip args`, returning stdout or an error with the command and its stderr.
fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running `ip` (install it with `apt-get install -y iproute2`)")?;
    if !out.status.success() {
        bail!("`ip {}` failed ({}): {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
