//! `/api/user/…`, `/api/users/…`, `/api/permission/…`: accounts and their roles.
//! Responses never contain password hashes.

use axum::extract::{Path, State};
use axum::Json;
use oak_api::model::{Member, Organization, User};
use oak_api::rest::{ChangePasswordRequest, MessageResponse, PermissionsResponse, UserUpdate};
use oak_api::ErrorBody;
use oak_core::authz::Action;
use oak_store::UserRecord;

use super::auth::check_grantable;
use crate::auth::extract::Caller;
use crate::auth::passwords;
use crate::body::JsonBody;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

pub fn roles_in(org: &Organization, user_id: &str) -> Vec<String> {
    org.member.iter().find(|m| m.user_id == user_id).map(|m| m.roles.clone()).unwrap_or_default()
}

pub fn user_view(st: &AppState, user: &UserRecord, org_id: &str) -> ApiResult<User> {
    let roles = st.store.organization_by_id(org_id)?.map(|o| roles_in(&o, &user.id)).unwrap_or_default();
    Ok(User {
        id: user.id.clone(),
        name: user.name.clone(),
        email: user.email.clone(),
        created_at: user.created_at.clone(),
        roles,
    })
}

/// Replaces the roles of `user_id` in organization `org_id` (membership removed when empty).
pub fn set_roles(st: &AppState, org_id: &str, user_id: &str, roles: Vec<String>) -> ApiResult<()> {
    let mut org =
        st.store.organization_by_id(org_id)?.ok_or_else(|| ApiError::not_found(format!("organization {org_id}")))?;
    org.member.retain(|m| m.user_id != user_id);
    if !roles.is_empty() {
        org.member.push(Member { user_id: user_id.to_string(), roles });
    }
    st.store.update_organization(&org)?;
    Ok(())
}

pub fn validate_username(name: &str) -> ApiResult<()> {
    let ok =
        !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::Unprocessable(format!(
            "user name {name:?} is invalid: use 1 to 64 letters, digits, '_', '.', '-' or '@'"
        )))
    }
}

fn existing(st: &AppState, name: &str) -> ApiResult<UserRecord> {
    st.store.user_by_name(name)?.ok_or_else(|| ApiError::not_found(format!("user {name:?}")))
}

/// A user's profile with roles in the caller's organization (self, Admin or Organization_Admin).
#[utoipa::path(get, path = "/api/user/{username}", tag = "users", security(("bearerAuth" = [])),
    responses((status = 200, body = User),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_user(State(st): State<AppState>, caller: Caller, Path(name): Path<String>) -> ApiResult<Json<User>> {
    caller.require(Action::ReadUser { name: &name }, format!("user {name:?}"))?;
    let user = existing(&st, &name)?;
    Ok(Json(user_view(&st, &user, &caller.org_id)?))
}

/// Change e-mail, reset the password or replace roles in the caller's organization.
#[utoipa::path(put, path = "/api/user/{username}", tag = "users", security(("bearerAuth" = [])), request_body = UserUpdate,
    responses((status = 200, body = User),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn update_user(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(update): JsonBody<UserUpdate>,
) -> ApiResult<Json<User>> {
    caller.require(Action::ManageUsers, "")?;
    let mut user = existing(&st, &name)?;
    if let Some(roles) = &update.roles {
        check_grantable(&caller, roles)?;
    }
    if let Some(password) = &update.password {
        passwords::check_strength(password).map_err(ApiError::Unprocessable)?;
        user.password_hash = passwords::hash(password);
    }
    if let Some(email) = update.email {
        user.email = email;
    }
    st.store.update_user(&user)?;
    if let Some(roles) = update.roles {
        set_roles(&st, &caller.org_id, &user.id, roles)?;
    }
    Ok(Json(user_view(&st, &user, &caller.org_id)?))
}

/// Delete a user and their memberships; answers the remaining users.
#[utoipa::path(delete, path = "/api/user/{username}", tag = "users", security(("bearerAuth" = [])),
    responses((status = 200, body = [User]),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn delete_user(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<User>>> {
    caller.require(Action::ManageUsers, "")?;
    if name == caller.principal.username {
        return Err(ApiError::Conflict("you cannot delete your own account".into()));
    }
    existing(&st, &name)?;
    if !st.store.list_applications(Some(&name))?.is_empty() {
        return Err(ApiError::Conflict(format!("user {name:?} still owns applications: delete them first")));
    }
    st.store.delete_user(&name)?;
    list(&st, &caller.org_id, None)
}

/// Change one's own password, knowing the old one.
#[utoipa::path(post, path = "/api/user/{username}", tag = "users", security(("bearerAuth" = [])), request_body = ChangePasswordRequest,
    responses((status = 200, body = MessageResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn change_password(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<ChangePasswordRequest>,
) -> ApiResult<Json<MessageResponse>> {
    caller.require(Action::ChangeOwnPassword { name: &name }, "")?;
    let mut user = existing(&st, &name)?;
    if !passwords::verify(&req.old_password, &user.password_hash) {
        return Err(ApiError::BadRequest("the old password is wrong".into()));
    }
    if req.old_password == req.new_password {
        return Err(ApiError::BadRequest("the new password is the same as the old one".into()));
    }
    passwords::check_strength(&req.new_password).map_err(ApiError::Unprocessable)?;
    user.password_hash = passwords::hash(&req.new_password);
    st.store.update_user(&user)?;
    Ok(Json(MessageResponse::new("password changed")))
}

/// The caller's (or, for user admins, anyone's) roles in the caller's organization.
#[utoipa::path(get, path = "/api/permission/{username}", tag = "users", security(("bearerAuth" = [])),
    responses((status = 200, body = PermissionsResponse),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn permissions(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<PermissionsResponse>> {
    caller.require(Action::ReadUser { name: &name }, format!("user {name:?}"))?;
    let user = existing(&st, &name)?;
    Ok(Json(PermissionsResponse { roles: user_view(&st, &user, &caller.org_id)?.roles }))
}

fn list(st: &AppState, roles_org: &str, only_org: Option<&Organization>) -> ApiResult<Json<Vec<User>>> {
    let users = st.store.list_users()?;
    let mut out = Vec::new();
    for u in users.iter().filter(|u| only_org.is_none_or(|o| o.member.iter().any(|m| m.user_id == u.id))) {
        out.push(user_view(st, u, roles_org)?);
    }
    Ok(Json(out))
}

/// All users, with their roles in the caller's organization.
#[utoipa::path(get, path = "/api/users", tag = "users", security(("bearerAuth" = [])),
    responses((status = 200, body = [User]),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_users(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<User>>> {
    caller.require(Action::ManageUsers, "")?;
    list(&st, &caller.org_id, None)
}

/// Members of one organization, with their roles there.
#[utoipa::path(get, path = "/api/users/{organization_id}", tag = "users", security(("bearerAuth" = [])),
    responses((status = 200, body = [User]),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_org_users(
    State(st): State<AppState>,
    caller: Caller,
    Path(org_id): Path<String>,
) -> ApiResult<Json<Vec<User>>> {
    caller.require(Action::ManageUsers, "")?;
    if !caller.is_admin() && org_id != caller.org_id {
        return Err(ApiError::Forbidden("an Organization_Admin can list only their own organization".into()));
    }
    let org =
        st.store.organization_by_id(&org_id)?.ok_or_else(|| ApiError::not_found(format!("organization {org_id}")))?;
    list(&st, &org.id, Some(&org))
}
