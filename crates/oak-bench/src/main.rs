//! `oak-bench`: the project's benchmark commands that need more than a shell script.
//!
//! - `hollow` (targets P3, P4, P6): one root, N clusters and thousands of hollow workers as real
//!   processes; requests thousands of instances at once and measures how fast they reach
//!   `RUNNING` at the root, the placement decision times of both tiers and the control plane's
//!   memory.
//! - `deploy` (targets P1, P5): root, cluster and worker processes with real containerd; deploy
//!   latency of a warm image against `ctr run --rm` in the same run, and the worker's idle footprint.
//! - `placement` (target P3): the decision time of both schedulers on the sizes of `targets.md`,
//!   in a quiet process, against one pass over the same candidates.
//! - `overlay` (targets P7, P8): root, cluster and two workers in a lab of network namespaces
//!   with real containerd; TCP bulk throughput and request/response latency between instances
//!   on the two workers via the service IP (overlay) against the same pair routed natively.
//!   Its load generators are the hidden `tcp-sink` and `tcp-source`, run inside the instances'
//!   network namespaces.
//! - `unikernel` (target P11): root, cluster and a worker with `-u` (QEMU, TCG); deploy
//!   latency of the test unikernel with a cached kernel (→ RUNNING, → console marker, → first
//!   HTTP answer) against the worker's own QEMU command line started by hand in the same run,
//!   and the worker's and QEMU's memory with several VMs running.
//! - `recovery` (target P9): root, two clusters and four single-worker processes; `kill -9` of
//!   the worker, then of the cluster, running an instance, `--runs` times each; the time until
//!   the root shows the instance `RUNNING` elsewhere, next to the configured timeouts.
//! - `hollow-workers`: many workers in one process, each the real `oak_worker` code (HTTPS
//!   registration, MQTT, reporting, instance state machine) over an in-memory fake runtime.
//!   `hollow` starts these; they can also be run by hand against any cluster.

mod deploy;
mod hollow;
mod link_bytes;
mod machine;
mod overlay;
mod placement;
mod procs;
mod recovery;
mod report;
mod signals;
mod unikernel;
mod workers;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "oak-bench", about = "Oakestra benchmark commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Root + clusters + hollow workers as processes; 10,000 instances requested at once.
    Hollow(hollow::HollowArgs),
    /// 1-DOC with real containerd: deploy latency against `ctr run --rm`, worker footprint.
    Deploy(deploy::DeployArgs),
    /// Decision time of the cluster scheduler (1,000 workers) and the root scheduler (100 clusters).
    Placement(placement::PlacementArgs),
    /// Overlay throughput and latency between two workers' instances against native routing.
    Overlay(overlay::OverlayArgs),
    /// Overlay benchmark's server: bulk and echo connections (runs in an instance's namespace).
    #[command(hide = true)]
    TcpSink(overlay::SinkArgs),
    /// Overlay benchmark's client: one bulk transfer or series of round trips, JSON on stdout.
    #[command(hide = true)]
    TcpSource(overlay::SourceArgs),
    /// 1-DOC with QEMU (TCG): unikernel deploy latency against the same QEMU started by hand.
    Unikernel(unikernel::UnikernelArgs),
    /// Recovery after `kill -9` of a worker and of a whole cluster: time until RUNNING elsewhere.
    Recovery(recovery::RecoveryArgs),
    /// Run many hollow workers (fake runtime) against one cluster, in this process.
    HollowWorkers(workers::WorkersArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Hollow(args) => hollow::main(args),
        Command::Deploy(args) => deploy::main(args),
        Command::Placement(args) => placement::main(args),
        Command::HollowWorkers(args) => workers::main(args),
        Command::Overlay(args) => overlay::main(args),
        Command::Unikernel(args) => unikernel::main(args),
        Command::Recovery(args) => recovery::main(args),
        Command::TcpSink(args) => overlay::sink_main(args),
        Command::TcpSource(args) => overlay::source_main(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("oak-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
