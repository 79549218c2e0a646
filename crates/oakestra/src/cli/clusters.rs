//! `oakestra clusters`: the clusters the root can schedule onto.

use anyhow::Result;
use clap::{Args, Subcommand};
use oak_api::model::Cluster;

use super::output::{emit, emit_json};
use super::session::Session;
use super::table::{number, Table};

#[derive(Args)]
pub struct ClustersArgs {
    /// Also list clusters that have not reported recently.
    #[arg(long)]
    pub all: bool,
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Issue a new join token and print it (give it to `oakestra cluster --token`).
    Create,
}

pub async fn run_token(session: &mut Session, json: bool, cmd: TokenCommand) -> Result<()> {
    match cmd {
        TokenCommand::Create => {
            let token = session.call(|c| async move { c.create_cluster_token().await }).await?;
            if json {
                return emit_json(&token);
            }
            emit(&format!("{}\n", token.token));
            Ok(())
        }
    }
}

pub async fn run(session: &mut Session, json: bool, args: ClustersArgs) -> Result<()> {
    let clusters = if args.all {
        session.call(|c| async move { c.list_clusters().await }).await?
    } else {
        session.call(|c| async move { c.list_active_clusters().await }).await?
    };
    if json {
        return emit_json(&clusters);
    }
    emit(&table(&clusters).render());
    Ok(())
}

fn table(clusters: &[Cluster]) -> Table {
    let mut t = Table::new(&["NAME", "LOCATION", "ACTIVE", "NODES", "CPU CORES", "MEMORY MB", "VIRTUALIZATION"]);
    for c in clusters {
        t.push(vec![
            c.cluster_name.clone(),
            c.cluster_location.clone(),
            if c.active { "yes" } else { "no" }.to_string(),
            c.active_nodes.to_string(),
            number(c.total_cpu_cores),
            c.memory_in_mb.to_string(),
            c.virtualization.join(","),
        ]);
    }
    t
}
