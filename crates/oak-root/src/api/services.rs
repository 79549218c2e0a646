//! `/api/service/…`, `/api/services/…`: services of applications and their instances.

use axum::extract::{Path, State};
use axum::Json;
use oak_api::model::{Application, Instance, Service};
use oak_api::rest::{CreateServicesResponse, DeployedService, InstanceRequested, MessageResponse};
use oak_api::sla::Sla;
use oak_api::{status, ErrorBody, FieldError};
use oak_core::authz::Action;
use oak_core::jobs::{apply_update, job_status, new_service};
use oak_core::placement::{choose_cluster, explain};
use oak_core::sla::{job_name, validate_service_update, validate_sla, Purpose};
use serde_json::Value;

use super::applications::{check_rr_ips, owned_app};
use super::clusters::clusters_now;
use crate::auth::extract::Caller;
use crate::body::JsonBody;
use crate::error::{ApiError, ApiResult};
use crate::ids;
use crate::state::AppState;

/// Loads a service with its application, if the caller may read (or change) it.
fn owned_service(st: &AppState, caller: &Caller, id: &str, modify: bool) -> ApiResult<(Service, Application)> {
    let what = format!("service {id}");
    let service = st.store.service(id)?.ok_or_else(|| ApiError::not_found(&what))?;
    let app = st.store.application(&service.application_id)?.ok_or_else(|| ApiError::not_found(&what))?;
    caller.require_owner(&app.user_id, modify, &what)?;
    Ok((service, app))
}

/// Add services to an existing application (`applications[0].applicationID`), all or nothing.
#[utoipa::path(post, path = "/api/service", tag = "services", security(("bearerAuth" = [])),
    request_body(content = Sla, description = "SLA v2.0 descriptor whose applications[0].applicationID names an existing application"),
    responses((status = 200, body = CreateServicesResponse), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create(
    State(st): State<AppState>,
    caller: Caller,
    JsonBody(doc): JsonBody<Value>,
) -> ApiResult<Json<CreateServicesResponse>> {
    caller.require(Action::CreateApplication, "")?;
    let sla = validate_sla(&doc, Purpose::NewServices).map_err(ApiError::Invalid)?;
    let Some(requested) = sla.applications.into_iter().next() else {
        return Err(ApiError::Invalid(vec![FieldError::new("applications", "one application is needed")]));
    };
    let app = owned_app(&st, &caller, &requested.application_id, true)?;
    let services: Vec<Service> =
        requested.microservices.into_iter().map(|ms| new_service(ids::new_id(), &app, ms)).collect();
    check_rr_ips(&st, &services)?;
    st.store.add_services(&app.id, &services)?;
    let deployed: Vec<DeployedService> = services
        .iter()
        .map(|s| DeployedService { service_name: s.service_name.clone(), job_id: s.id.clone(), status: 200 })
        .collect();
    Ok(Json(CreateServicesResponse {
        job_id: services.last().map(|s| s.id.clone()).unwrap_or_default(),
        deployed_services: deployed,
        failed_services: Vec::new(),
    }))
}

/// A service with its instances.
#[utoipa::path(get, path = "/api/service/{id}", tag = "services", security(("bearerAuth" = [])),
    responses((status = 200, body = Service), (status = 404, body = ErrorBody)))]
pub async fn get(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Service>> {
    Ok(Json(owned_service(&st, &caller, &id, false)?.0))
}

/// Replace a service's descriptor (a bare microservice object or an SLA holding exactly one).
/// Renaming is refused while the service has instances, since its job name identifies them.
#[utoipa::path(put, path = "/api/service/{id}", tag = "services", security(("bearerAuth" = [])),
    request_body(content = Object, description = "microservice object, or SLA v2.0 with one application and one microservice"),
    responses((status = 200, body = Service), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn update(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(doc): JsonBody<Value>,
) -> ApiResult<Json<Service>> {
    let (mut service, app) = owned_service(&st, &caller, &id, true)?;
    let ms = validate_service_update(&doc).map_err(ApiError::Invalid)?;
    if !ms.microservice_id.is_empty() && ms.microservice_id != id {
        return Err(ApiError::Invalid(vec![FieldError::new(
            "microserviceID",
            format!("{:?} does not match the service being updated ({id})", ms.microservice_id),
        )]));
    }
    let new_name =
        job_name(&app.application_name, &app.application_namespace, &ms.microservice_name, &ms.microservice_namespace);
    if new_name != service.job_name && !service.instance_list.is_empty() {
        return Err(ApiError::Conflict(format!(
            "cannot rename service {} to {new_name} while it has instances: undeploy them first",
            service.job_name
        )));
    }
    apply_update(&mut service, &app, ms);
    check_rr_ips(&st, std::slice::from_ref(&service))?;
    st.store.update_service(&service)?;
    Ok(Json(service))
}

/// Delete a service with all its instances.
#[utoipa::path(delete, path = "/api/service/{id}", tag = "services", security(("bearerAuth" = [])),
    responses((status = 200, body = MessageResponse), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<MessageResponse>> {
    owned_service(&st, &caller, &id, true)?;
    st.store.delete_service(&id)?;
    Ok(Json(MessageResponse::new("Job deleted")))
}

/// Services of one application.
#[utoipa::path(get, path = "/api/services/{app_id}", tag = "services", security(("bearerAuth" = [])),
    responses((status = 200, body = [Service]), (status = 404, body = ErrorBody)))]
pub async fn list_of_app(
    State(st): State<AppState>,
    caller: Caller,
    Path(app_id): Path<String>,
) -> ApiResult<Json<Vec<Service>>> {
    owned_app(&st, &caller, &app_id, false)?;
    Ok(Json(st.store.list_services(Some(&app_id))?))
}

/// The caller's services (an Admin sees everyone's).
#[utoipa::path(get, path = "/api/services", tag = "services", security(("bearerAuth" = [])),
    responses((status = 200, body = [Service])))]
pub async fn list(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<Service>>> {
    if caller.is_admin() {
        return Ok(Json(st.store.list_services(None)?));
    }
    let mut out = Vec::new();
    for app in st.store.list_applications(Some(&caller.principal.username))? {
        out.extend(st.store.list_services(Some(&app.id))?);
    }
    Ok(Json(out))
}

/// Request one more instance. The root scheduler picks a cluster at once; when none fits the
/// instance is kept with the negative scheduling status (e.g. `TargetClusterNotActive`).
#[utoipa::path(post, path = "/api/service/{id}/instance", tag = "instances", security(("bearerAuth" = [])),
    responses((status = 200, body = InstanceRequested), (status = 404, body = ErrorBody)))]
pub async fn request_instance(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<InstanceRequested>> {
    let (mut service, _) = owned_service(&st, &caller, &id, true)?;
    let number = service.next_instance_progressive_number;
    service.next_instance_progressive_number += 1;
    let clusters = clusters_now(&st)?;
    let now = ids::now();
    let instance = match choose_cluster(&service, &clusters) {
        Ok(cluster) => {
            let mut i = Instance::new(number, status::CLUSTER_SCHEDULED, "cluster chosen", now);
            i.cluster_id = Some(cluster.id.clone());
            i.cluster_location = Some(cluster.cluster_location.clone());
            i
        }
        Err(negative) => Instance::new(number, negative, explain(negative), now),
    };
    service.instance_list.push(instance.clone());
    if let Some((s, detail)) = job_status(&service.instance_list) {
        service.status = Some(s);
        service.status_detail = Some(detail);
    }
    st.store.put_service_and_instance(&service, &instance)?;
    Ok(Json(InstanceRequested { message: "ok".into(), instance_number: number, status: instance.status }))
}

/// Remove one instance of a service.
#[utoipa::path(delete, path = "/api/service/{id}/instance/{number}", tag = "instances", security(("bearerAuth" = [])),
    responses((status = 200, body = MessageResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_instance(
    State(st): State<AppState>,
    caller: Caller,
    Path((id, number)): Path<(String, String)>,
) -> ApiResult<Json<MessageResponse>> {
    let number: u32 = number
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("instance number {number:?} is not a non-negative integer")))?;
    let (mut service, _) = owned_service(&st, &caller, &id, true)?;
    let before = service.instance_list.len();
    service.instance_list.retain(|i| i.instance_number != number);
    if service.instance_list.len() == before {
        return Err(ApiError::not_found(format!("instance {number} of service {id}")));
    }
    match job_status(&service.instance_list) {
        Some((s, detail)) => {
            service.status = Some(s);
            service.status_detail = Some(detail);
        }
        None => {
            service.status = None;
            service.status_detail = Some("no instances".into());
        }
    }
    st.store.update_service(&service)?;
    st.store.delete_instance(&id, number)?;
    Ok(Json(MessageResponse::new(format!("instance {number} undeployed"))))
}
