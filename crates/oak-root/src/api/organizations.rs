//! `/api/organization/…`: organizations and their members (Admin only).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use oak_api::model::Organization;
use oak_api::rest::{MessageResponse, OrganizationRequest};
use oak_api::ErrorBody;
use oak_core::authz::{unknown_roles, Action};

use crate::auth::extract::Caller;
use crate::body::JsonBody;
use crate::bootstrap::ROOT_ORGANIZATION;
use crate::error::{ApiError, ApiResult};
use crate::ids;
use crate::state::AppState;

fn validate(st: &AppState, req: &OrganizationRequest) -> ApiResult<()> {
    let name_ok = !req.name.is_empty()
        && req.name.len() <= 64
        && req.name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    if !name_ok {
        return Err(ApiError::Unprocessable(format!(
            "organization name {:?} is invalid: use 1 to 64 letters, digits, '_', '-' or '.'",
            req.name
        )));
    }
    for (i, m) in req.member.iter().enumerate() {
        if st.store.user_by_id(&m.user_id)?.is_none() {
            return Err(ApiError::Unprocessable(format!("member[{i}].user_id: no user has id {:?}", m.user_id)));
        }
        let unknown = unknown_roles(&m.roles);
        if !unknown.is_empty() {
            return Err(ApiError::Unprocessable(format!("member[{i}].roles: unknown role(s) {}", unknown.join(", "))));
        }
    }
    Ok(())
}

fn existing(st: &AppState, id: &str) -> ApiResult<Organization> {
    st.store.organization_by_id(id)?.ok_or_else(|| ApiError::not_found(format!("organization {id}")))
}

#[utoipa::path(get, path = "/api/organization", tag = "organizations", security(("bearerAuth" = [])),
    responses((status = 200, body = [Organization]),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<Organization>>> {
    caller.require(Action::ManageOrganizations, "")?;
    Ok(Json(st.store.list_organizations()?))
}

#[utoipa::path(post, path = "/api/organization", tag = "organizations", security(("bearerAuth" = [])), request_body = OrganizationRequest,
    responses((status = 201, body = Organization),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create(
    State(st): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<OrganizationRequest>,
) -> ApiResult<(StatusCode, Json<Organization>)> {
    caller.require(Action::ManageOrganizations, "")?;
    validate(&st, &req)?;
    let org = Organization { id: ids::new_id(), name: req.name, member: req.member };
    st.store.insert_organization(&org)?;
    Ok((StatusCode::CREATED, Json(org)))
}

#[utoipa::path(get, path = "/api/organization/{id}", tag = "organizations", security(("bearerAuth" = [])),
    responses((status = 200, body = Organization),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Organization>> {
    caller.require(Action::ManageOrganizations, "")?;
    Ok(Json(existing(&st, &id)?))
}

#[utoipa::path(put, path = "/api/organization/{id}", tag = "organizations", security(("bearerAuth" = [])), request_body = OrganizationRequest,
    responses((status = 200, body = Organization),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn update(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<OrganizationRequest>,
) -> ApiResult<Json<Organization>> {
    caller.require(Action::ManageOrganizations, "")?;
    let old = existing(&st, &id)?;
    validate(&st, &req)?;
    if old.name == ROOT_ORGANIZATION && req.name != ROOT_ORGANIZATION {
        return Err(ApiError::Conflict("the root organization cannot be renamed".into()));
    }
    let org = Organization { id, name: req.name, member: req.member };
    st.store.update_organization(&org)?;
    Ok(Json(org))
}

#[utoipa::path(delete, path = "/api/organization/{id}", tag = "organizations", security(("bearerAuth" = [])),
    responses((status = 200, body = MessageResponse),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn delete(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<MessageResponse>> {
    caller.require(Action::ManageOrganizations, "")?;
    if existing(&st, &id)?.name == ROOT_ORGANIZATION {
        return Err(ApiError::Conflict("the root organization cannot be deleted".into()));
    }
    st.store.delete_organization(&id)?;
    Ok(Json(MessageResponse::new("Organization deleted")))
}
