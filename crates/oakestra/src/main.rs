//! `oakestra`: one binary for every tier of the orchestrator and its command-line client.
//!
//! This file only parses flags, sets up logging and hands over to the tier libraries; the client
//! commands live in [`cli`].

mod cli;
mod tiers;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "oakestra", version, about = "Lightweight hierarchical orchestrator for edge computing")]
struct Cli {
    #[command(flatten)]
    client: cli::ClientOpts,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the root orchestrator (public REST API on port 10000, cluster channel on 50052).
    Root(tiers::root::RootArgs),
    /// Run a cluster orchestrator (node API on 10100, MQTT on 10003), joined to a root.
    Cluster(tiers::cluster::ClusterArgs),
    /// Run a worker (NodeEngine) joined to a cluster.
    Worker(tiers::worker::WorkerArgs),
    /// Run root, cluster and worker on this machine (1-DOC) with default ports.
    Up(tiers::up::UpArgs),
    #[command(flatten)]
    Client(cli::ClientCommand),
}

fn main() -> ExitCode {
    fewer_malloc_arenas();
    let cli = Cli::parse();
    match cli.command {
        Command::Root(args) => tiers::root::run(args),
        Command::Cluster(args) => tiers::cluster::run(args),
        Command::Worker(args) => tiers::worker::run(args),
        Command::Up(args) => tiers::up::run(args),
        Command::Client(cmd) => cli::run(&cli.client, cmd),
    }
}

/// glibc gives threads that contend for the heap arenas of their own, up to eight per core, and
/// memory freed into one is not reused by the others; one per core serves a runtime of one
/// worker thread per core and holds less (hollow, 10,000 instances: the root 64 → 54 MB). An
/// operator's `MALLOC_ARENA_MAX` still wins.
fn fewer_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get()).max(2);
        // SAFETY: mallopt only changes a malloc parameter; no other thread exists yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, cores as libc::c_int);
        }
    }
}
