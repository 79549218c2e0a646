//! The container runtime of a worker: containerd over its gRPC socket (`docker` virtualization).
//!
//! A crate of its own rather than part of `oak-runtime`: the gRPC stack (tonic, prost,
//! generated containerd API) is only compiled into what runs containers, not into every crate
//! and test that only needs the runtime trait.
//!
//! - [`reference`], [`image`], [`spec`] and [`seccomp`] are pure: reference parsing, manifest
//!   choice and chain ids, the OCI runtime spec of an instance and its seccomp profile;
//! - [`registry`] pulls from OCI registries, [`pull`] feeds containerd's content store and
//!   snapshots, [`runtime`] runs the instances, [`logs`] and [`cgroup`] observe them;
//! - [`supervise`] starts a containerd of the worker's own when the node has none running.

pub mod cgroup;
mod client;
pub mod egress;
pub mod image;
pub mod logs;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod runtime;
pub mod seccomp;
pub mod spec;
pub mod supervise;

pub use runtime::{ContainerdConfig, ContainerdRuntime, DEFAULT_PIDS_LIMIT};
