//! `/api/application/…`, `/api/applications/…`: applications and the services they are created with.

use std::collections::HashSet;

use axum::extract::{Path, State};
use axum::Json;
use oak_api::model::{Application, Service};
use oak_api::rest::MessageResponse;
use oak_api::sla::Sla;
use oak_api::ErrorBody;
use oak_core::authz::Action;
use oak_core::jobs::new_service;
use oak_core::quotas::Usage;
use oak_core::sla::{job_name, validate_application_update, validate_sla, Purpose};
use serde_json::Value;

use crate::auth::extract::Caller;
use crate::body::JsonBody;
use crate::error::{ApiError, ApiResult};
use crate::ids;
use crate::state::AppState;

/// Keys of an application document the system sets itself.
const RESERVED_APP_KEYS: &[&str] = &["_id", "applicationID", "userId", "microservices"];

/// Loads an application the caller may read (`modify = false`) or change.
pub fn owned_app(st: &AppState, caller: &Caller, id: &str, modify: bool) -> ApiResult<Application> {
    let what = format!("application {id}");
    let app = st.store.application(id)?.ok_or_else(|| ApiError::not_found(&what))?;
    caller.require_owner(&app.user_id, modify, &what)?;
    Ok(app)
}

/// Refuses round-robin IPs already taken by another service or asked for twice.
pub fn check_rr_ips(st: &AppState, new: &[Service]) -> ApiResult<()> {
    let ids: HashSet<&str> = new.iter().map(|s| s.id.as_str()).collect();
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for s in new {
        let Some(ip) = s.rr_ip.as_deref() else { continue };
        // One indexed lookup per address, not a read of every service.
        let holder = st.store.services_with_rr_ip(ip)?.into_iter().find(|(id, _)| !ids.contains(id.as_str()));
        let other = holder
            .as_ref()
            .map(|(_, job)| job.as_str())
            .or_else(|| seen.iter().find(|(taken, _)| *taken == ip).map(|(_, job)| *job));
        if let Some(other) = other {
            return Err(ApiError::Conflict(format!(
                "rr_ip {ip} of service {} is already used by service {other}",
                s.job_name
            )));
        }
        seen.push((ip, s.job_name.as_str()));
    }
    Ok(())
}

/// Gives new services their overlay addresses (the descriptor's, or a round-robin IP from the
/// pool), all or nothing.
pub fn assign_addresses<'a>(st: &AppState, services: impl IntoIterator<Item = &'a mut Service>) -> ApiResult<()> {
    let mut done: Vec<String> = Vec::new();
    for s in services {
        if let Err(e) = st.fleet.assign_addresses(s, None) {
            for id in &done {
                st.fleet.release_service(id);
            }
            return Err(e.into());
        }
        done.push(s.id.clone());
    }
    Ok(())
}

fn build(owner: &str, sla: Sla, existing: &[Application]) -> ApiResult<Vec<(Application, Vec<Service>)>> {
    let mut planned: Vec<(Application, Vec<Service>)> = Vec::new();
    for (i, a) in sla.applications.into_iter().enumerate() {
        let clash = |x: &Application| {
            x.application_name == a.application_name && x.application_namespace == a.application_namespace
        };
        if existing.iter().any(clash) || planned.iter().any(|(p, _)| clash(p)) {
            return Err(ApiError::Conflict(format!(
                "applications[{i}]: an application named {:?} in namespace {:?} already exists",
                a.application_name, a.application_namespace
            )));
        }
        let id = ids::new_id();
        let mut extra = a.extra;
        for key in RESERVED_APP_KEYS {
            extra.remove(*key);
        }
        let mut app = Application {
            id: id.clone(),
            application_id: id,
            application_name: a.application_name,
            application_namespace: a.application_namespace,
            application_desc: a.application_desc,
            microservices: Vec::new(),
            user_id: owner.to_string(),
            extra,
        };
        let services: Vec<Service> =
            a.microservices.into_iter().map(|ms| new_service(ids::new_id(), &app, ms)).collect();
        app.microservices = services.iter().map(|s| s.id.clone()).collect();
        planned.push((app, services));
    }
    Ok(planned)
}

/// Create applications (and their microservices) from an SLA v2.0 descriptor; answers all the
/// caller's applications. All or nothing: if one application cannot be created, none is.
#[utoipa::path(post, path = "/api/application", tag = "applications", security(("bearerAuth" = [])),
    request_body(content = Sla, description = "SLA v2.0 descriptor"),
    responses((status = 200, body = [Application]),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody)))]
pub async fn create(
    State(st): State<AppState>,
    caller: Caller,
    JsonBody(doc): JsonBody<Value>,
) -> ApiResult<Json<Vec<Application>>> {
    caller.require(Action::CreateApplication, "")?;
    let sla = validate_sla(&doc, Purpose::NewApplications).map_err(ApiError::Invalid)?;
    super::policy::check_sla(&st, &caller, &sla)?;
    let owner = caller.principal.username.as_str();
    let mut planned = build(owner, sla, &st.store.list_applications(Some(owner))?)?;
    let _quota = crate::quotas::check(&st, &caller, owner, Usage::of_services(planned.iter().flat_map(|(_, s)| s)))?;
    let all_services: Vec<Service> = planned.iter().flat_map(|(_, s)| s.iter().cloned()).collect();
    check_rr_ips(&st, &all_services)?;
    assign_addresses(&st, planned.iter_mut().flat_map(|(_, s)| s.iter_mut()))?;
    let release_all = |planned: &[(Application, Vec<Service>)]| {
        for s in planned.iter().flat_map(|(_, s)| s) {
            st.fleet.release_service(&s.id);
        }
    };
    let mut created: Vec<&str> = Vec::new();
    for (app, services) in &planned {
        if let Err(e) = st.store.create_application(app, services) {
            for id in created {
                if let Err(undo) = st.store.delete_application(id) {
                    tracing::error!(app = id, error = %undo, "cannot roll back a partly created request");
                }
            }
            release_all(&planned);
            return Err(e.into());
        }
        created.push(&app.id);
    }
    // Clusters may already ask for these job names.
    st.fleet.routes_changed(planned.iter().flat_map(|(_, s)| s.iter().map(|s| s.id.as_str())));
    Ok(Json(st.store.list_applications(Some(owner))?))
}

/// The caller's applications (an Admin sees everyone's).
#[utoipa::path(get, path = "/api/applications", tag = "applications", security(("bearerAuth" = [])),
    responses((status = 200, body = [Application]),
        (status = 401, body = ErrorBody)))]
pub async fn list(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<Application>>> {
    let owner = (!caller.is_admin()).then_some(caller.principal.username.as_str());
    Ok(Json(st.store.list_applications(owner)?))
}

/// Applications of one user, named by user id or name (yourself, or anyone for an Admin).
#[utoipa::path(get, path = "/api/applications/{user}", tag = "applications", security(("bearerAuth" = [])),
    responses((status = 200, body = [Application]),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_of_user(
    State(st): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
) -> ApiResult<Json<Vec<Application>>> {
    let record = match st.store.user_by_id(&user)? {
        Some(u) => Some(u),
        None => st.store.user_by_name(&user)?,
    };
    let name = record.map(|u| u.name).ok_or_else(|| ApiError::not_found(format!("user {user:?}")))?;
    caller.require(Action::ReadOwned { owner: &name }, format!("user {user:?}"))?;
    Ok(Json(st.store.list_applications(Some(&name))?))
}

#[utoipa::path(get, path = "/api/application/{id}", tag = "applications", security(("bearerAuth" = [])),
    responses((status = 200, body = Application),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Application>> {
    Ok(Json(owned_app(&st, &caller, &id, false)?))
}

/// Rename or describe an application. Renaming renames its services' job names, so it is
/// refused while any of them has instances.
#[utoipa::path(put, path = "/api/application/{id}", tag = "applications", security(("bearerAuth" = [])),
    request_body(content = Object, description = "{application_name, application_namespace, application_desc?}"),
    responses((status = 200, body = Application),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn update(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(doc): JsonBody<Value>,
) -> ApiResult<Json<Application>> {
    let mut app = owned_app(&st, &caller, &id, true)?;
    let (name, namespace, desc) = validate_application_update(&doc).map_err(ApiError::Invalid)?;
    let renamed = name != app.application_name || namespace != app.application_namespace;
    app.application_name = name;
    app.application_namespace = namespace;
    if let Some(desc) = desc {
        app.application_desc = desc;
    }
    let mut services = Vec::new();
    let mut before = Vec::new();
    if renamed {
        services = st.store.list_services(Some(&id))?;
        if let Some(busy) = services.iter().find(|s| !s.instance_list.is_empty()) {
            return Err(ApiError::Conflict(format!(
                "cannot rename the application while service {} has instances: undeploy them first",
                busy.job_name
            )));
        }
        before = services.clone();
        for s in &mut services {
            s.app_name = app.application_name.clone();
            s.app_ns = app.application_namespace.clone();
            s.job_name = job_name(&s.app_name, &s.app_ns, &s.service_name, &s.service_ns);
        }
    }
    st.store.update_application_with_services(&app, &services)?;
    // Interested clusters drop the old names (and their claim on the addresses).
    for s in &before {
        st.fleet.routes_removed(s);
    }
    st.fleet.routes_changed(services.iter().map(|s| s.id.as_str()));
    Ok(Json(app))
}

/// Delete an application with its services and their instances.
#[utoipa::path(delete, path = "/api/application/{id}", tag = "applications", security(("bearerAuth" = [])),
    responses((status = 200, body = MessageResponse),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<MessageResponse>> {
    owned_app(&st, &caller, &id, true)?;
    let services = st.store.list_services(Some(&id))?;
    st.store.delete_application(&id)?;
    for s in &services {
        st.fleet.release_service(&s.id);
        st.fleet.undeploy(&s.id, &s.instance_list);
        st.fleet.routes_removed(s);
    }
    Ok(Json(MessageResponse::new("Application Deleted")))
}
