//! `oakestra`: one binary for every tier of the orchestrator and its command-line client.
//!
//! This file only parses flags, sets up logging and hands over to the tier libraries; the client
//! commands live in [`cli`].

mod cli;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Exit code for invalid configuration (sysexits EX_USAGE), reported before any socket is bound.
const EXIT_CONFIG: u8 = 64;

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
    /// Run the root orchestrator (public REST API on port 10000).
    Root(RootArgs),
    #[command(flatten)]
    Client(cli::ClientCommand),
}

#[derive(Args)]
struct RootArgs {
    /// Port of the public REST API.
    #[arg(long, default_value_t = 10000, env = "OAKESTRA_API_PORT")]
    api_port: u16,
    /// Address the REST API listens on.
    #[arg(long, default_value = "0.0.0.0", env = "OAKESTRA_API_ADDR")]
    api_addr: std::net::IpAddr,
    /// Directory of the root's database and key material.
    #[arg(long, default_value = "/var/lib/oakestra/root", env = "OAKESTRA_DATA_DIR")]
    data_dir: PathBuf,
    /// Password of the `Admin` user created at first start (default `Admin`, with a warning).
    #[arg(long, env = "OAKESTRA_ADMIN_PASSWORD", hide_env_values = true)]
    admin_password: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Root(args) => run_root(args),
        Command::Client(cmd) => cli::run(&cli.client, cmd),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn run_root(args: RootArgs) -> ExitCode {
    init_logging();
    let config = oak_root::RootConfig {
        api_addr: SocketAddr::new(args.api_addr, args.api_port),
        data_dir: args.data_dir,
        admin_password: args.admin_password,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("oakestra root: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let root = match oak_root::Root::open(config).await {
            Ok(root) => root,
            Err(e) => {
                eprintln!("oakestra root: {e:#}");
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        match root.serve(shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("oakestra root: {e:#}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Resolves on SIGINT or SIGTERM, so every tier shuts down cleanly under systemd and Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
