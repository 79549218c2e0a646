//! `oakestra clusters`: the clusters the root can schedule onto.

use anyhow::Result;
use clap::{Args, Subcommand};
use oak_api::model::Cluster;
use oak_api::rest::ClusterTokenRequest;

use super::output::{emit, emit_json};
use super::session::Session;
use super::table::{number, Table};

#[derive(Args)]
pub struct ClustersArgs {
    /// Also list clusters that have not reported recently.
    #[arg(long)]
    pub all: bool,
}

/// `oakestra cluster-token`: a subcommand, or `--revoke <token or id>`.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, arg_required_else_help = true)]
pub struct TokenArgs {
    /// Revoke a join token, given whole or by its id (the same as `revoke`).
    #[arg(long, value_name = "TOKEN_OR_ID")]
    pub revoke: Option<String>,
    #[command(subcommand)]
    pub command: Option<TokenCommand>,
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Issue a new join token and print it (give it to `oakestra cluster --token`). It is
    /// single-use and never expires unless told otherwise.
    Create {
        /// Refuse the token after this long: `90s`, `30m`, `12h`, `7d` (or plain seconds).
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<std::time::Duration>,
        /// Let several clusters join with the token (until it expires or is revoked).
        #[arg(long)]
        reusable: bool,
    },
    /// Revoke a join token, given whole or by its id. Clusters that joined with it stay: they
    /// authenticate with their own certificates.
    Revoke {
        #[arg(value_name = "TOKEN_OR_ID")]
        token: String,
    },
}

/// `oakestra cluster-reset`.
#[derive(Args)]
pub struct ResetArgs {
    /// The cluster's name or id.
    pub cluster: String,
}

/// `90s`, `30m`, `12h`, `7d`, or a number of seconds.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: expected a number with s, m, h or d (e.g. 12h)")),
    };
    match number.parse::<u64>() {
        Ok(n) if n > 0 => {
            n.checked_mul(scale).map(std::time::Duration::from_secs).ok_or_else(|| format!("{text:?} is too long"))
        }
        _ => Err(format!("{text:?}: expected a positive number with s, m, h or d (e.g. 12h)")),
    }
}

pub async fn run_token(session: &mut Session, json: bool, args: TokenArgs) -> Result<()> {
    let command = match (args.revoke, args.command) {
        (Some(token), _) => TokenCommand::Revoke { token },
        (None, Some(c)) => c,
        (None, None) => anyhow::bail!("give a subcommand (create, revoke) or --revoke"),
    };
    match command {
        TokenCommand::Create { ttl, reusable } => {
            let request = ClusterTokenRequest { ttl_seconds: ttl.map(|t| t.as_secs()), reusable };
            let token = session
                .call(|c| {
                    let request = request.clone();
                    async move { c.create_cluster_token_with(&request).await }
                })
                .await?;
            if json {
                return emit_json(&token);
            }
            emit(&format!("{}\n", token.token));
            let uses = if token.reusable { "reusable" } else { "single-use" };
            let expiry = match token.expires_at {
                Some(at) => format!("expires at Unix time {at}"),
                None => "never expires".into(),
            };
            eprintln!(
                "token id {} ({uses}, {expiry}); revoke it with `oakestra cluster-token --revoke {}`",
                token.id, token.id
            );
            Ok(())
        }
        TokenCommand::Revoke { token } => {
            let answer = session
                .call(|c| {
                    let token = token.clone();
                    async move { c.revoke_cluster_token(&token).await }
                })
                .await?;
            if json {
                return emit_json(&answer);
            }
            emit(&format!("{}\n", answer.message));
            Ok(())
        }
    }
}

/// Forgets a cluster's certificate so that it can join again with a join token.
pub async fn run_reset(session: &mut Session, json: bool, args: ResetArgs) -> Result<()> {
    let clusters = session.call(|c| async move { c.list_clusters().await }).await?;
    let Some(cluster) = clusters.iter().find(|c| c.id == args.cluster || c.cluster_name == args.cluster) else {
        anyhow::bail!("no cluster named {:?} (see `oakestra clusters --all`)", args.cluster);
    };
    let id = cluster.id.clone();
    let answer = session
        .call(|c| {
            let id = id.clone();
            async move { c.reset_cluster_certificate(&id).await }
        })
        .await?;
    if json {
        return emit_json(&answer);
    }
    emit(&format!("{}\n", answer.message));
    Ok(())
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
    let mut t =
        Table::new(&["NAME", "LOCATION", "ACTIVE", "STATUS", "NODES", "CPU CORES", "MEMORY MB", "VIRTUALIZATION"]);
    for c in clusters {
        t.push(vec![
            c.cluster_name.clone(),
            c.cluster_location.clone(),
            if c.active { "yes" } else { "no" }.to_string(),
            if c.status.is_empty() { "-".to_string() } else { c.status.clone() },
            c.active_nodes.to_string(),
            number(c.total_cpu_cores),
            c.memory_in_mb.to_string(),
            c.virtualization.join(","),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::parse_duration;

    #[test]
    fn durations_take_a_unit_or_plain_seconds() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        for bad in ["", "0", "1w", "h", "-5m", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
