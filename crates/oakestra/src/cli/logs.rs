//! `oakestra logs <service> [instance] [-f] [--tail N]`: an instance's output, as the root reads
//! it from the instance's worker.

use std::io::Write;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::session::Session;

#[derive(Args)]
pub struct LogsArgs {
    /// Service id.
    pub service: String,
    /// Instance number; defaults to the service's first instance.
    pub instance: Option<u32>,
    /// Keep printing new output until the instance goes away (Ctrl-C to stop).
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines.
    #[arg(long, value_name = "N")]
    pub tail: Option<usize>,
}

pub async fn run(session: &mut Session, args: LogsArgs) -> Result<()> {
    let id = args.service.as_str();
    let number = match args.instance {
        Some(n) => n,
        None => {
            let service = session.call(|c| async move { c.get_service(id).await }).await?;
            match service.instance_list.iter().map(|i| i.instance_number).min() {
                Some(n) => n,
                None => bail!("service {id} has no instances: scale it with \"oakestra service scale {id}\""),
            }
        }
    };
    let (tail, follow) = (args.tail, args.follow);
    let mut response = session.call(|c| async move { c.instance_logs(id, number, tail, follow).await }).await?;
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = response.chunk().await.context("the root closed the log stream")? {
        out.write_all(&chunk)?;
        out.flush()?;
    }
    Ok(())
}
