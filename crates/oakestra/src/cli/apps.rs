//! `oakestra app …`: create applications from SLA descriptors, list, show and delete them.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use oak_api::model::Application;
use serde_json::Value;

use super::output::{emit, emit_json};
use super::session::Session;
use super::table::{render_fields, Table};

#[derive(Subcommand)]
pub enum AppCommand {
    /// Create the applications (and their services) of an SLA v2.0 descriptor.
    Create {
        /// The descriptor (JSON); `-` reads standard input.
        #[arg(short, long, value_name = "FILE")]
        file: PathBuf,
    },
    /// List your applications.
    #[command(alias = "ls")]
    List,
    /// Show one application.
    Show {
        /// Application id.
        id: String,
    },
    /// Delete an application and undeploy all of its services.
    #[command(alias = "rm")]
    Delete {
        /// Application id.
        id: String,
    },
}

pub async fn run(session: &mut Session, json: bool, cmd: AppCommand) -> Result<()> {
    match cmd {
        AppCommand::Create { file } => {
            let sla = read_descriptor(&file)?;
            let sla = &sla;
            let apps = session.call(|c| async move { c.create_application(sla).await }).await?;
            if json {
                return emit_json(&apps);
            }
            emit(&table(&created(&apps, sla)).render());
        }
        AppCommand::List => {
            let apps = session.call(|c| async move { c.list_applications().await }).await?;
            if json {
                return emit_json(&apps);
            }
            emit(&table(&apps).render());
        }
        AppCommand::Show { id } => {
            let id = id.as_str();
            let app = session.call(|c| async move { c.get_application(id).await }).await?;
            if json {
                return emit_json(&app);
            }
            emit(&render_fields(&[
                ("ID", app.id.clone()),
                ("Name", app.application_name.clone()),
                ("Namespace", app.application_namespace.clone()),
                ("Description", app.application_desc.clone()),
                ("Owner", app.user_id.clone()),
                ("Services", app.microservices.join(", ")),
            ]));
        }
        AppCommand::Delete { id } => {
            let id = id.as_str();
            let answer = session.call(|c| async move { c.delete_application(id).await }).await?;
            if json {
                return emit_json(&answer);
            }
            emit(&format!("deleted application {id}\n"));
        }
    }
    Ok(())
}

/// The descriptor as JSON; the root validates its content and names every bad field.
fn read_descriptor(file: &Path) -> Result<Value> {
    let (name, text) = if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("cannot read the descriptor from standard input")?;
        ("standard input".to_string(), text)
    } else {
        let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
        (file.display().to_string(), text)
    };
    serde_json::from_str(&text).with_context(|| format!("{name} is not valid JSON"))
}

/// The root answers with all of the caller's applications; the user wants to see the new ones,
/// i.e. those named in the descriptor (all of them if the names do not match for some reason).
fn created(apps: &[Application], sla: &Value) -> Vec<Application> {
    let named = |a: &Application| {
        sla.get("applications").and_then(Value::as_array).is_some_and(|list| {
            list.iter().any(|d| {
                d.get("application_name").and_then(Value::as_str) == Some(a.application_name.as_str())
                    && d.get("application_namespace").and_then(Value::as_str) == Some(a.application_namespace.as_str())
            })
        })
    };
    let new: Vec<Application> = apps.iter().filter(|a| named(a)).cloned().collect();
    if new.is_empty() {
        apps.to_vec()
    } else {
        new
    }
}

fn table(apps: &[Application]) -> Table {
    let mut t = Table::new(&["ID", "NAME", "NAMESPACE", "SERVICES", "DESCRIPTION"]);
    for a in apps {
        t.push(vec![
            a.id.clone(),
            a.application_name.clone(),
            a.application_namespace.clone(),
            a.microservices.len().to_string(),
            a.application_desc.clone(),
        ]);
    }
    t
}
