//! The worker tier (NodeEngine) as a library.
//!
//! A worker registers with its cluster over HTTPS (`POST /api/node/register`, trusting only the
//! CA its join token pins), then talks MQTT (over TLS) only: it receives `control/deploy` and
//! `control/delete` commands, runs instances through its [`oak_runtime::Runtime`]s, reports
//! state changes on `job` and, every report interval, its instances' usage on `jobs/resources`
//! and its own description on `information` (spec §5, §7).
//!
//! Module map: `agent` (run, task wiring), `register` (HTTPS join), `identity` and `desired`
//! (state files), `session` (MQTT), `engine` (instance state machine), `commands` (payload
//! decoding), `reporter` (periodic reports), `reports` (messages), `host_info` (the machine),
//! `net` (the overlay network: plumbing, data path, the runtime decorator).

mod agent;
mod backoff;
mod commands;
mod config;
mod desired;
mod engine;
mod error;
mod files;
mod host_info;
mod identity;
mod metrics;
mod net;
mod quiet;
mod register;
mod reporter;
mod reports;
mod session;

pub use agent::{run, WorkerDeps};
pub use config::{default_node_name, WorkerConfig, DEFAULT_CLUSTER_PORT, DEFAULT_REPORT_INTERVAL};
pub use error::WorkerError;
pub use host_info::{HostInfo, NodeInfoSource};
pub use metrics::DEFAULT_METRICS_PORT;
pub use net::{OverlayConfig, DEFAULT_ADDRESS_CHECK, DEFAULT_TUNNEL_PORT};
pub use register::cluster_client_builder;
