//! `oakestra service …`: list and inspect services, add instances and undeploy them.

use anyhow::Result;
use clap::Subcommand;
use oak_api::model::Service;

use super::output::{emit, emit_json};
use super::session::Session;
use super::table::{render_fields, Table};

#[derive(Subcommand)]
pub enum ServiceCommand {
    /// List your services, or those of one application.
    #[command(alias = "ls")]
    List {
        /// Only the services of this application.
        app_id: Option<String>,
    },
    /// Show a service and its instances.
    Show {
        /// Service id.
        id: String,
    },
    /// Request one more instance of a service.
    Scale {
        /// Service id.
        id: String,
    },
    /// Undeploy a whole service, or only its instance number N.
    Undeploy {
        /// Service id.
        id: String,
        /// Instance number to remove; without it the service is deleted.
        #[arg(value_name = "N")]
        instance: Option<u32>,
    },
}

pub async fn run(session: &mut Session, json: bool, cmd: ServiceCommand) -> Result<()> {
    match cmd {
        ServiceCommand::List { app_id } => {
            let services = match app_id.as_deref() {
                Some(app) => session.call(|c| async move { c.list_app_services(app).await }).await?,
                None => session.call(|c| async move { c.list_services().await }).await?,
            };
            if json {
                return emit_json(&services);
            }
            emit(&table(&services).render());
        }
        ServiceCommand::Show { id } => {
            let id = id.as_str();
            let service = session.call(|c| async move { c.get_service(id).await }).await?;
            if json {
                return emit_json(&service);
            }
            emit(&format!("{}\n{}", render_fields(&fields(&service)), instances(&service).render()));
        }
        ServiceCommand::Scale { id } => {
            let id = id.as_str();
            let answer = session.call(|c| async move { c.request_instance(id).await }).await?;
            if json {
                return emit_json(&answer);
            }
            emit(&format!("requested instance {} of service {id}: {}\n", answer.instance_number, answer.status));
        }
        ServiceCommand::Undeploy { id, instance } => {
            let id = id.as_str();
            let (answer, done) = match instance {
                Some(n) => (
                    session.call(|c| async move { c.remove_instance(id, n).await }).await?,
                    format!("removed instance {n} of service {id}"),
                ),
                None => (
                    session.call(|c| async move { c.delete_service(id).await }).await?,
                    format!("undeployed service {id}"),
                ),
            };
            if json {
                return emit_json(&answer);
            }
            emit(&format!("{done}\n"));
        }
    }
    Ok(())
}

fn table(services: &[Service]) -> Table {
    let mut t = Table::new(&["ID", "JOB NAME", "IMAGE", "STATUS", "INSTANCES"]);
    for s in services {
        t.push(vec![
            s.id.clone(),
            s.job_name.clone(),
            s.image.clone(),
            s.status.clone().unwrap_or_default(),
            s.instance_list.len().to_string(),
        ]);
    }
    t
}

fn fields(s: &Service) -> Vec<(&'static str, String)> {
    vec![
        ("ID", s.id.clone()),
        ("Job name", s.job_name.clone()),
        ("Application", format!("{}.{} ({})", s.app_name, s.app_ns, s.application_id)),
        ("Image", s.image.clone()),
        ("Virtualization", s.spec.virtualization.clone()),
        ("Command", s.spec.cmd.join(" ")),
        ("Memory MB", s.spec.memory.to_string()),
        ("vCPUs", s.spec.vcpus.to_string()),
        ("Ports", s.spec.port.clone()),
        ("Round-robin IP", s.rr_ip.clone().unwrap_or_default()),
        ("Status", s.status.clone().unwrap_or_default()),
        ("Status detail", s.status_detail.clone().unwrap_or_default()),
    ]
}

fn instances(s: &Service) -> Table {
    let mut t = Table::new(&["NUMBER", "STATUS", "STATUS DETAIL", "CLUSTER", "WORKER"]);
    for i in &s.instance_list {
        t.push(vec![
            i.instance_number.to_string(),
            i.status.clone(),
            i.status_detail.clone(),
            // Names where the root knows them, else ids (`--json` has both).
            i.cluster_name.clone().or_else(|| i.cluster_id.clone()).unwrap_or_default(),
            i.worker_name.clone().or_else(|| i.worker_id.clone()).unwrap_or_default(),
        ]);
    }
    t
}
