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
    let cli = Cli::parse();
    match cli.command {
        Command::Root(args) => tiers::root::run(args),
        Command::Cluster(args) => tiers::cluster::run(args),
        Command::Worker(args) => tiers::worker::run(args),
        Command::Up(args) => tiers::up::run(args),
        Command::Client(cmd) => cli::run(&cli.client, cmd),
    }
}
