//! `/api/service/…`, `/api/services/…`: services of applications and their instances.

use axum::extract::{Path, State};
use axum::Json;
use oak_api::model::{Application, Service};
use oak_api::rest::{CreateServicesResponse, DeployedService, InstanceRequested, MessageResponse, RequestedInstance};
use oak_api::sla::Sla;
use oak_api::{ErrorBody, FieldError};
use oak_core::authz::Action;
use oak_core::jobs::{apply_update, job_status, new_service};
use oak_core::quotas::Usage;
use oak_core::sla::{job_name, validate_service_update, validate_sla, Purpose};
use oak_store::SpecWithApplication;
use serde_json::Value;

use super::applications::{assign_addresses, check_rr_ips, owned_app};
use super::json_array::JsonArray;
use crate::auth::extract::Caller;
use crate::body::{JsonBody, QueryParams};
use crate::committed::committed;
use crate::error::{ApiError, ApiResult};
use crate::ids;
use crate::state::AppState;

/// Loads a service with its application, if the caller may read (or change) it.
pub(super) fn owned_service(
    st: &AppState,
    caller: &Caller,
    id: &str,
    modify: bool,
) -> ApiResult<(Service, Application)> {
    let what = format!("service {id}");
    let service = st.store.service(id)?.ok_or_else(|| ApiError::not_found(&what))?;
    let app = st.store.application(&service.application_id)?.ok_or_else(|| ApiError::not_found(&what))?;
    caller.require_owner(&app.user_id, modify, &what)?;
    Ok((service, app))
}

/// Like [`owned_service`] without the instance list (cheap for big services), shared with the
/// store's cache rather than copied: the check every instance request starts with.
fn owned_spec(st: &AppState, caller: &Caller, id: &str, modify: bool) -> ApiResult<SpecWithApplication> {
    let what = format!("service {id}");
    let found = st.store.service_spec_with_application(id)?.ok_or_else(|| ApiError::not_found(&what))?;
    let app = found.1.as_ref().ok_or_else(|| ApiError::not_found(&what))?;
    caller.require_owner(&app.user_id, modify, &what)?;
    Ok(found)
}

/// Add services to an existing application (`applications[0].applicationID`), all or nothing.
#[utoipa::path(post, path = "/api/service", tag = "services", security(("bearerAuth" = [])),
    request_body(content = Sla, description = "SLA v2.0 descriptor whose applications[0].applicationID names an existing application"),
    responses((status = 200, body = CreateServicesResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn create(
    State(st): State<AppState>,
    caller: Caller,
    JsonBody(doc): JsonBody<Value>,
) -> ApiResult<Json<CreateServicesResponse>> {
    caller.require(Action::CreateApplication, "")?;
    let sla = validate_sla(&doc, Purpose::NewServices).map_err(ApiError::Invalid)?;
    super::policy::check_sla(&st, &caller, &sla)?;
    let Some(requested) = sla.applications.into_iter().next() else {
        return Err(ApiError::Invalid(vec![FieldError::new("applications", "one application is needed")]));
    };
    let app = owned_app(&st, &caller, &requested.application_id, true)?;
    let mut services: Vec<Service> =
        requested.microservices.into_iter().map(|ms| new_service(ids::new_id(), &app, ms)).collect();
    let _quota = crate::quotas::check(&st, &caller, &app.user_id, Usage::of_services(&services))?;
    check_rr_ips(&st, &services)?;
    assign_addresses(&st, services.iter_mut())?;
    if let Err(e) = st.store.add_services(&app.id, &services) {
        for s in &services {
            st.fleet.release_service(&s.id);
        }
        return Err(e.into());
    }
    st.fleet.routes_changed(services.iter().map(|s| s.id.as_str()));
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
    responses((status = 200, body = Service),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Service>> {
    let mut service = [with_job_status(owned_service(&st, &caller, &id, false)?.0)];
    st.fleet.name_places(&mut service)?;
    let [service] = service;
    Ok(Json(service))
}

/// Replace a service's descriptor (a bare microservice object or an SLA holding exactly one).
/// Renaming is refused while the service has instances, since its job name identifies them.
#[utoipa::path(put, path = "/api/service/{id}", tag = "services", security(("bearerAuth" = [])),
    request_body(content = Object, description = "microservice object, or SLA v2.0 with one application and one microservice"),
    responses((status = 200, body = Service),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn update(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(doc): JsonBody<Value>,
) -> ApiResult<Json<Service>> {
    let (mut service, app) = owned_service(&st, &caller, &id, true)?;
    let ms = validate_service_update(&doc).map_err(ApiError::Invalid)?;
    super::policy::check_service_update(&st, &caller, &doc, &ms)?;
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
    let previous = service.clone();
    apply_update(&mut service, &app, ms);
    let _quota = crate::quotas::check(
        &st,
        &caller,
        &app.user_id,
        Usage::of_service(&service).beyond(Usage::of_service(&previous)),
    )?;
    check_rr_ips(&st, std::slice::from_ref(&service))?;
    st.fleet.assign_addresses(&mut service, Some(&previous))?;
    if let Err(e) = st.store.update_service(&service) {
        let mut back = previous.clone();
        if let Err(undo) = st.fleet.assign_addresses(&mut back, Some(&service)) {
            tracing::error!(service = %id, error = ?undo, "cannot take back the addresses of a failed update");
        }
        return Err(e.into());
    }
    if previous.job_name != service.job_name {
        st.fleet.routes_removed(&previous);
    }
    st.fleet.routes_changed([id.as_str()]);
    Ok(Json(service))
}

/// Delete a service with all its instances.
#[utoipa::path(delete, path = "/api/service/{id}", tag = "services", security(("bearerAuth" = [])),
    responses((status = 200, body = MessageResponse),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<MessageResponse>> {
    let (service, _) = owned_service(&st, &caller, &id, true)?;
    st.store.delete_service(&id)?;
    st.fleet.release_service(&id);
    st.fleet.undeploy(&id, &service.instance_list);
    st.fleet.routes_removed(&service);
    Ok(Json(MessageResponse::new("Job deleted")))
}

/// Services of one application.
#[utoipa::path(get, path = "/api/services/{app_id}", tag = "services", security(("bearerAuth" = [])),
    responses((status = 200, body = [Service]),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_of_app(
    State(st): State<AppState>,
    caller: Caller,
    Path(app_id): Path<String>,
) -> ApiResult<JsonArray<Service>> {
    owned_app(&st, &caller, &app_id, false)?;
    named(&st, st.store.list_services(Some(&app_id))?)
}

/// The caller's services (an Admin sees everyone's).
#[utoipa::path(get, path = "/api/services", tag = "services", security(("bearerAuth" = [])),
    responses((status = 200, body = [Service]),
        (status = 401, body = ErrorBody)))]
pub async fn list(State(st): State<AppState>, caller: Caller) -> ApiResult<JsonArray<Service>> {
    if caller.is_admin() {
        return named(&st, st.store.list_services(None)?);
    }
    let mut out = Vec::new();
    for app in st.store.list_applications(Some(&caller.principal.username))? {
        out.extend(st.store.list_services(Some(&app.id))?);
    }
    named(&st, out)
}

/// Services with their job status and the names of the clusters and workers of their instances.
fn named(st: &AppState, services: Vec<Service>) -> ApiResult<JsonArray<Service>> {
    let mut services: Vec<Service> = services.into_iter().map(with_job_status).collect();
    st.fleet.name_places(&mut services)?;
    Ok(JsonArray(services))
}

/// A job's status follows its instances (spec §4.5, computed when read so that every instance
/// report is reflected without rewriting the service).
pub fn with_job_status(mut service: Service) -> Service {
    if let Some((s, detail)) = job_status(&service.instance_list) {
        service.status = Some(s);
        service.status_detail = Some(detail);
    }
    service
}

/// Most instances one request may ask for (`?count=N`).
pub const MAX_COUNT: u32 = 100;

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InstanceParams {
    /// How many instances to request at once: 1 to 100 (default 1). They are placed in one
    /// pass, stored in one transaction and sent to each cluster in one message.
    count: Option<String>,
}

/// `count` as given: an integer from 1 to [`MAX_COUNT`].
fn parse_count(count: Option<&str>) -> ApiResult<u32> {
    let Some(text) = count else { return Ok(1) };
    match text.trim().parse::<u32>() {
        Ok(n) if (1..=MAX_COUNT).contains(&n) => Ok(n),
        _ => Err(ApiError::BadRequest(format!("count {text:?} is not an integer from 1 to {MAX_COUNT}"))),
    }
}

/// Request one more instance (or `count` more). The root scheduler picks a cluster at once and
/// sends the instance there; when none fits the instance keeps the negative scheduling status
/// (e.g. `TargetClusterNotActive`) and is placed as soon as a cluster can take it. The answer
/// comes once the instances are stored.
#[utoipa::path(post, path = "/api/service/{id}/instance", tag = "instances", security(("bearerAuth" = [])),
    params(InstanceParams),
    responses((status = 200, body = InstanceRequested),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn request_instance(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    QueryParams(params): QueryParams<InstanceParams>,
) -> ApiResult<Json<InstanceRequested>> {
    let count = parse_count(params.count.as_deref())?;
    let list = params.count.is_some();
    // A task of its own runs to the end also if the client goes away: stored instances are
    // always dispatched (or their addresses released).
    tokio::spawn(async move { request_instances(&st, &caller, &id, count, list).await })
        .await
        .map_err(|e| ApiError::Internal(format!("request handler failed: {e}")))?
        .map(Json)
}

/// The checks, numbers, addresses and clusters of the request take no time worth a thread of
/// the blocking pool (the service descriptor is cached); only the commit is waited for.
async fn request_instances(
    st: &AppState,
    caller: &Caller,
    id: &str,
    count: u32,
    list: bool,
) -> ApiResult<InstanceRequested> {
    // The descriptor suffices here: loading every instance would make scaling a big service slow.
    let found = owned_spec(st, caller, id, true)?;
    let (service, Some(app)) = (&found.0, found.1.as_ref()) else {
        return Err(ApiError::not_found(format!("service {id}")));
    };
    let _quota =
        crate::quotas::check(st, caller, &app.user_id, Usage { instances: count as usize, ..Usage::default() })?;
    // Their overlay addresses, kept for the instances' life (also when they move).
    let mut ips = Vec::with_capacity(count as usize);
    for _ in 0..count {
        match st.fleet.allocate_instance_ip(id) {
            Ok(ip) => ips.push(ip),
            Err(e) => {
                st.fleet.release_addresses(id, &ips);
                return Err(e.into());
            }
        }
    }
    let numbers = match st.store.allocate_instance_numbers(id, count) {
        Ok(n) => n,
        Err(e) => {
            st.fleet.release_addresses(id, &ips);
            return Err(e.into());
        }
    };
    let instances: Vec<_> = numbers
        .zip(ips)
        .map(|(number, ip)| {
            let mut instance = st.fleet.place(service, number, None);
            instance.instance_ip = Some(ip);
            instance
        })
        .collect();
    if let Err(e) = committed(|done| st.store.put_instances_then(id, &instances, done)).await {
        st.fleet.undeploy(id, &instances);
        st.fleet.release_addresses(id, instances.iter().filter_map(|i| i.instance_ip.as_ref()));
        return Err(e.into());
    }
    st.fleet.dispatch_all(service, &instances);
    st.fleet.routes_changed([id]);
    let first = &instances[0];
    Ok(InstanceRequested {
        message: "ok".into(),
        instance_number: first.instance_number,
        status: first.status.clone(),
        instances: if list {
            instances
                .iter()
                .map(|i| RequestedInstance { instance_number: i.instance_number, status: i.status.clone() })
                .collect()
        } else {
            Vec::new()
        },
    })
}

/// Remove one instance of a service.
#[utoipa::path(delete, path = "/api/service/{id}/instance/{number}", tag = "instances", security(("bearerAuth" = [])),
    responses((status = 200, body = MessageResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn delete_instance(
    State(st): State<AppState>,
    caller: Caller,
    Path((id, number)): Path<(String, String)>,
) -> ApiResult<Json<MessageResponse>> {
    let number: u32 = number
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("instance number {number:?} is not a non-negative integer")))?;
    let (service, _) = owned_service(&st, &caller, &id, true)?;
    let Some(instance) = service.instance_list.iter().find(|i| i.instance_number == number) else {
        return Err(ApiError::not_found(format!("instance {number} of service {id}")));
    };
    st.store.delete_instance(&id, number)?;
    st.fleet.release_addresses(&id, instance.instance_ip.iter());
    st.fleet.undeploy(&id, std::slice::from_ref(instance));
    st.fleet.routes_changed([id.as_str()]);
    Ok(Json(MessageResponse::new(format!("instance {number} undeployed"))))
}
