//! Support for end-to-end tests that run real `oakestra` binaries: busybox OCI images
//! ([`images`]), a local registry to pull them from ([`registry`]), network namespaces playing
//! separate hosts ([`netns`]), per-test directories and waiting ([`procs`]).
//!
//! Tests needing root or system tools start with [`require_root_and_tools`], so they skip on a
//! developer machine but fail in CI (`CI=true`), where a skip would hide a broken setup.

pub mod containerd;
pub mod http;
pub mod images;
pub mod netns;
pub mod procs;
pub mod registry;
pub mod relay;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

use anyhow::{bail, Result};

pub use images::{build_image, ImageSpec};
pub use netns::{Host, Lab};
pub use procs::{wait_until, Workdir};
pub use registry::Registry;

/// The Debian package providing `tool`, for error messages that say how to fix the machine.
pub fn debian_package(tool: &str) -> &str {
    match tool {
        "busybox" => "busybox-static",
        "ip" => "iproute2",
        "ctr" | "containerd" | "containerd-shim-runc-v2" => "containerd",
        "ping" => "iputils-ping",
        "nsenter" => "util-linux",
        "timeout" => "coreutils",
        other => other,
    }
}

/// `tool`'s path: as given if it contains `/`, else the first match on `PATH`.
pub fn which(tool: &str) -> Option<PathBuf> {
    if tool.contains('/') {
        let p = PathBuf::from(tool);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).map(|d| d.join(tool)).find(|p| is_executable(p))
}

fn is_executable(p: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `tool`'s path, or an error naming the Debian package to install.
pub fn require_tool(tool: &str) -> Result<PathBuf> {
    match which(tool) {
        Some(p) => Ok(p),
        None => bail!("`{tool}` not found on PATH (install it with `apt-get install -y {}`)", debian_package(tool)),
    }
}

/// Whether the test can run: root and every tool present → `Ok(true)`. Otherwise under
/// `CI=true` an error (the test fails: CI must have them), else prints `SKIPPED: <reason>` to
/// stderr and returns `Ok(false)` so the test returns early.
pub fn require_root_and_tools(tools: &[&str]) -> Result<bool> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    // SAFETY: geteuid has no preconditions.
    prerequisites(unsafe { libc::geteuid() } == 0, tools, ci)
}

fn prerequisites(root: bool, tools: &[&str], ci: bool) -> Result<bool> {
    let mut missing = Vec::new();
    if !root {
        missing.push("not running as root".to_string());
    }
    for tool in tools {
        if which(tool).is_none() {
            missing.push(format!("`{tool}` missing (apt-get install -y {})", debian_package(tool)));
        }
    }
    if missing.is_empty() {
        return Ok(true);
    }
    let reason = missing.join("; ");
    if ci {
        bail!("end-to-end prerequisites missing in CI: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
    Ok(false)
}
