//! `/api/user/…`, `/api/users/…`, `/api/permission/…`: accounts and their roles.
//! Who may do what to which account is decided by `oak_core::authz::authorize_user_op` alone.
//! Responses never contain password hashes.

use axum::extract::{Path, State};
use axum::Json;
use oak_api::model::{Member, User};
use oak_api::rest::{ChangePasswordRequest, MessageResponse, PermissionsResponse, UserUpdate};
use oak_api::status::role;
use oak_api::ErrorBody;
use oak_core::authz::{unknown_roles, UserOp, UserTarget};
use oak_store::UserRecord;

use crate::auth::accounts::{roles_in, Memberships};
use crate::auth::extract::{Caller, ClientAddr};
use crate::auth::passwords;
use crate::body::JsonBody;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

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
/// Roles lost revoke the user's tokens (the store does that).
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

/// 422 naming the roles that do not exist.
pub fn check_known_roles(roles: &[String]) -> ApiResult<()> {
    let unknown = unknown_roles(roles);
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Unprocessable(format!(
            "unknown role(s) {}: roles are {}",
            unknown.join(", "),
            role::ALL.join(", ")
        )))
    }
}

/// Whether `roles` include Admin.
pub fn grants_admin(roles: &[String]) -> bool {
    roles.iter().any(|r| r == role::ADMIN)
}

/// The account `name` if the caller may do `op` to it. A missing account is decided like one
/// in no organization first, so callers without a user-admin role get 403 whether it exists
/// or not, and the others 404.
fn account(
    st: &AppState,
    caller: &Caller,
    name: &str,
    op: impl Fn(UserTarget<'_>) -> UserOp<'_>,
) -> ApiResult<UserRecord> {
    let what = format!("user {name:?}");
    let Some(user) = st.store.user_by_name(name)? else {
        caller.require_user_op(op(Memberships::default().target()), &what)?;
        return Err(ApiError::not_found(what));
    };
    let memberships = Memberships::load(st.store.as_ref(), &user.id)?;
    caller.require_user_op(op(memberships.target()), &what)?;
    Ok(user)
}

/// A user's profile with roles in the caller's organization (self, Admin, or the
/// Organization_Admin of an organization the user belongs to).
#[utoipa::path(get, path = "/api/user/{username}", tag = "users", security(("bearerAuth" = [])),
    responses((status = 200, body = User),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_user(State(st): State<AppState>, caller: Caller, Path(name): Path<String>) -> ApiResult<Json<User>> {
    #[allow(clippy::redundant_closure)] // the variant alone cannot borrow a local target
    let user = account(&st, &caller, &name, |t| UserOp::Read(t))?;
    Ok(Json(user_view(&st, &user, &caller.org_id)?))
}

/// Change e-mail, reset the password or replace roles in the caller's organization. An
/// Organization_Admin manages only accounts of their organization alone that hold no Admin
/// role; a reset password or removed role revokes the user's tokens.
#[utoipa::path(put, path = "/api/user/{username}", tag = "users", security(("bearerAuth" = [])), request_body = UserUpdate,
    responses((status = 200, body = User),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody, description = "too many password checks at once; see Retry-After")))]
pub async fn update_user(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(update): JsonBody<UserUpdate>,
) -> ApiResult<Json<User>> {
    let admin_granted = update.roles.as_deref().is_some_and(grants_admin);
    let mut user = account(&st, &caller, &name, |target| UserOp::Update { target, grants_admin: admin_granted })?;
    if let Some(roles) = &update.roles {
        check_known_roles(roles)?;
    }
    if let Some(password) = &update.password {
        passwords::check_strength(password).map_err(ApiError::Unprocessable)?;
        user.password_hash = st.passwords.hash(password).await?;
    }
    if let Some(email) = update.email {
        user.email = email;
    }
    st.store.update_user(&user)?;
    if update.password.is_some() {
        st.password_changed(&user.name);
    }
    if let Some(roles) = update.roles {
        set_roles(&st, &caller.org_id, &user.id, roles)?;
    }
    Ok(Json(user_view(&st, &user, &caller.org_id)?))
}

/// Delete a user and their memberships (their tokens die with the account); answers the
/// remaining users the caller may see.
#[utoipa::path(delete, path = "/api/user/{username}", tag = "users", security(("bearerAuth" = [])),
    responses((status = 200, body = [User]),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn delete_user(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<User>>> {
    #[allow(clippy::redundant_closure)] // the variant alone cannot borrow a local target
    let user = account(&st, &caller, &name, |t| UserOp::Delete(t))?;
    if user.id == caller.principal.user_id {
        return Err(ApiError::Conflict("you cannot delete your own account".into()));
    }
    if !st.store.list_applications(Some(&name))?.is_empty() {
        return Err(ApiError::Conflict(format!("user {name:?} still owns applications: delete them first")));
    }
    st.store.delete_user(&name)?;
    visible_users(&st, &caller)
}

/// Change one's own password, knowing the old one; revokes the account's tokens (log in again).
/// A wrong old password counts as a failed login (same limiter), so a stolen token cannot be
/// used to guess the password.
#[utoipa::path(post, path = "/api/user/{username}", tag = "users", security(("bearerAuth" = [])), request_body = ChangePasswordRequest,
    responses((status = 200, body = MessageResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody, description = "too many wrong passwords, or too many password checks at once; see Retry-After")))]
pub async fn change_password(
    State(st): State<AppState>,
    ClientAddr(addr): ClientAddr,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<ChangePasswordRequest>,
) -> ApiResult<Json<MessageResponse>> {
    #[allow(clippy::redundant_closure)] // the variant alone cannot borrow a local target
    let mut user = account(&st, &caller, &name, |t| UserOp::ChangeOwnPassword(t))?;
    let slot =
        st.limiter.acquire(&user.name, &addr, std::time::Instant::now()).map_err(|wait| ApiError::TooManyRequests {
            message: format!("too many wrong passwords; try again in {wait} s"),
            retry_after_secs: wait,
        })?;
    let matches = match st.passwords.verify(&req.old_password, Some(&user.password_hash)).await {
        Ok(matches) => matches,
        Err(busy) => {
            st.limiter.release(slot);
            return Err(busy);
        }
    };
    if !matches {
        return Err(ApiError::BadRequest("the old password is wrong".into()));
    }
    st.limiter.release(slot);
    if req.old_password == req.new_password {
        return Err(ApiError::BadRequest("the new password is the same as the old one".into()));
    }
    passwords::check_strength(&req.new_password).map_err(ApiError::Unprocessable)?;
    user.password_hash = st.passwords.hash(&req.new_password).await?;
    st.store.update_user(&user)?;
    st.password_changed(&user.name);
    Ok(Json(MessageResponse::new("password changed; log in again")))
}

/// The roles of a user (self, or one the caller may read) in the caller's organization.
#[utoipa::path(get, path = "/api/permission/{username}", tag = "users", security(("bearerAuth" = [])),
    responses((status = 200, body = PermissionsResponse),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn permissions(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<PermissionsResponse>> {
    #[allow(clippy::redundant_closure)] // the variant alone cannot borrow a local target
    let user = account(&st, &caller, &name, |t| UserOp::Read(t))?;
    Ok(Json(PermissionsResponse { roles: user_view(&st, &user, &caller.org_id)?.roles }))
}

/// Every account the caller may read, with roles in the caller's organization.
fn visible_users(st: &AppState, caller: &Caller) -> ApiResult<Json<Vec<User>>> {
    let orgs = st.store.list_organizations()?;
    let mut out = Vec::new();
    for user in st.store.list_users()? {
        let memberships = Memberships::of(&user.id, &orgs);
        if caller.require_user_op(UserOp::Read(memberships.target()), "").is_ok() {
            out.push(user_view(st, &user, &caller.org_id)?);
        }
    }
    Ok(Json(out))
}

/// All users (Admin), or the members of the caller's organization (Organization_Admin), with
/// their roles in the caller's organization.
#[utoipa::path(get, path = "/api/users", tag = "users", security(("bearerAuth" = [])),
    responses((status = 200, body = [User]),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_users(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<User>>> {
    caller.require_user_op(UserOp::List { org_id: None }, "")?;
    visible_users(&st, &caller)
}

/// Members of one organization (any for Admin, their own for an Organization_Admin), with
/// their roles there.
#[utoipa::path(get, path = "/api/users/{organization_id}", tag = "users", security(("bearerAuth" = [])),
    responses((status = 200, body = [User]),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_org_users(
    State(st): State<AppState>,
    caller: Caller,
    Path(org_id): Path<String>,
) -> ApiResult<Json<Vec<User>>> {
    let what = format!("organization {org_id}");
    caller.require_user_op(UserOp::List { org_id: Some(&org_id) }, &what)?;
    let org = st.store.organization_by_id(&org_id)?.ok_or_else(|| ApiError::not_found(&what))?;
    let mut out = Vec::new();
    for user in st.store.list_users()?.iter().filter(|u| org.member.iter().any(|m| m.user_id == u.id)) {
        out.push(user_view(&st, user, &org.id)?);
    }
    Ok(Json(out))
}
