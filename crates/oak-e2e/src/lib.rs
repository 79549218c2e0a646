//! Support for end-to-end tests that run real `oakestra` binaries: busybox OCI images
//! ([`images`]), a local registry to pull them from ([`registry`]), network namespaces playing
//! separate hosts ([`netns`]), per-test directories and waiting ([`procs`]).
//!
//! Tests needing root or system tools start with [`can_run`] (from `oak-testenv`), so they skip
//! on a developer machine but fail in CI (`CI=true`), where a skip would hide a broken setup.

pub mod containerd;
pub mod http;
pub mod images;
pub mod lab_proc;
pub mod netns;
pub mod procs;
pub mod registry;
pub mod relay;
pub mod unikernel;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

use anyhow::{bail, Result};

pub use images::{build_image, ImageSpec};
pub use netns::{Host, Lab};
pub use procs::{wait_until, Workdir};
pub use registry::Registry;

pub use oak_testenv::{can_run, debian_package, missing, which, Need};

/// `tool`'s path, or an error naming the Debian package to install.
pub fn require_tool(tool: &str) -> Result<PathBuf> {
    match which(tool) {
        Some(p) => Ok(p),
        None => bail!("`{tool}` not found on PATH (install it with `apt-get install -y {}`)", debian_package(tool)),
    }
}
