//! Client subcommands of `oakestra`: talk to a root orchestrator's REST API.
//!
//! `login` saves tokens; every other command reuses them through a [`session::Session`], which
//! renews the access token when it expires. Results print as aligned tables, or as the root's
//! JSON with `--json`; failures print one `error: …` line and exit with 1.

mod apps;
mod clusters;
mod credentials;
mod login;
mod logs;
mod output;
mod services;
mod session;
mod table;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};

use session::Session;

/// The root `login` talks to when neither `--url` nor `OAKESTRA_URL` names one: a 1-DOC's.
pub const DEFAULT_URL: &str = "http://localhost:10000";

#[derive(Args)]
pub struct ClientOpts {
    /// URL of the root orchestrator's REST API [default: the saved login's, else
    /// http://localhost:10000].
    #[arg(long, global = true, env = "OAKESTRA_URL")]
    pub url: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum ClientCommand {
    /// Log in to a root orchestrator and save the tokens for the other commands.
    Login(login::LoginArgs),
    /// Create, list, show and delete applications.
    #[command(subcommand, alias = "apps")]
    App(apps::AppCommand),
    /// List and inspect services, scale them up and undeploy them.
    #[command(subcommand, alias = "services")]
    Service(services::ServiceCommand),
    /// Print an instance's output (stdout and stderr); `-f` keeps following it.
    Logs(logs::LogsArgs),
    /// List the clusters (by default only the active ones).
    Clusters(clusters::ClustersArgs),
    /// Issue and revoke cluster join tokens (Admin only).
    #[command(name = "cluster-token")]
    ClusterToken(clusters::TokenArgs),
    /// Forget a cluster's certificate and disconnect it, so that a cluster that lost its data
    /// directory can join again under its name with a join token (Admin only).
    #[command(name = "cluster-reset")]
    ClusterReset(clusters::ResetArgs),
}

/// Runs one client command on a single-threaded runtime (one request at a time needs no more)
/// and turns any failure into a one-line message on stderr.
pub fn run(opts: &ClientOpts, cmd: ClientCommand) -> ExitCode {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(dispatch(opts, cmd)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let message = format!("{e:#}");
            eprintln!("error: {}", message.split_whitespace().collect::<Vec<_>>().join(" "));
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(opts: &ClientOpts, cmd: ClientCommand) -> Result<()> {
    match cmd {
        ClientCommand::Login(args) => login::run(opts, args).await,
        ClientCommand::App(cmd) => apps::run(&mut Session::open(opts)?, opts.json, cmd).await,
        ClientCommand::Service(cmd) => services::run(&mut Session::open(opts)?, opts.json, cmd).await,
        ClientCommand::Logs(args) => logs::run(&mut Session::open(opts)?, args).await,
        ClientCommand::Clusters(args) => clusters::run(&mut Session::open(opts)?, opts.json, args).await,
        ClientCommand::ClusterToken(args) => clusters::run_token(&mut Session::open(opts)?, opts.json, args).await,
        ClientCommand::ClusterReset(args) => clusters::run_reset(&mut Session::open(opts)?, opts.json, args).await,
    }
}
