//! `/api/auth/…`: login, token refresh, user registration.

use std::time::Instant;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use oak_api::model::User;
use oak_api::rest::{LoginRequest, LoginResponse, RefreshResponse, RegisterRequest};
use oak_api::ErrorBody;
use oak_core::authz::UserOp;
use oak_store::UserRecord;

use super::users::{check_known_roles, grants_admin, set_roles, user_view, validate_username};
use crate::auth::accounts::{current_roles, roles_in};
use crate::auth::extract::{Caller, ClientAddr, RefreshCaller};
use crate::auth::passwords;
use crate::auth::tokens::TokenKind;
use crate::body::JsonBody;
use crate::bootstrap::ROOT_ORGANIZATION;
use crate::error::{ApiError, ApiResult};
use crate::ids;
use crate::state::AppState;

/// Log in with user name and password; roles come from the organization named (default `root`).
///
/// An attempt is counted against the rate limit before the password is checked (a success
/// gives it back), and unknown users cost one argon2 verification like known ones.
#[utoipa::path(post, path = "/api/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = LoginResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody, description = "too many failed attempts, or too many logins at once; see Retry-After")))]
pub async fn login(
    State(st): State<AppState>,
    ClientAddr(addr): ClientAddr,
    JsonBody(req): JsonBody<serde_json::Value>,
) -> ApiResult<Json<LoginResponse>> {
    // The original's schema called the organization field `organization`; accept both names.
    let org_alias = req.get("organization").and_then(|v| v.as_str()).map(str::to_string);
    let req: LoginRequest = serde_json::from_value(req)
        .map_err(|e| ApiError::Unprocessable(format!("login needs username and password: {e}")))?;
    let slot = st.limiter.acquire(&req.username, &addr, Instant::now()).map_err(|wait| ApiError::TooManyRequests {
        message: format!("too many failed logins; try again in {wait} s"),
        retry_after_secs: wait,
    })?;
    let user = st.store.user_by_name(&req.username)?;
    let matches = match st.passwords.verify(&req.password, user.as_ref().map(|u| u.password_hash.as_str())).await {
        Ok(matches) => matches,
        Err(busy) => {
            // Not an attempt: the password was never checked.
            st.limiter.release(slot);
            return Err(busy);
        }
    };
    let Some(user) = user.filter(|_| matches) else {
        return Err(ApiError::Unauthorized("invalid username or password".into()));
    };
    st.limiter.release(slot);
    let org_name = req.organization_name.or(org_alias).unwrap_or_else(|| ROOT_ORGANIZATION.to_string());
    let org = st
        .store
        .organization_by_name(&org_name)?
        .ok_or_else(|| ApiError::not_found(format!("organization {org_name:?}")))?;
    let roles = roles_in(&org, &user.id);
    Ok(Json(LoginResponse {
        token: st.tokens.issue(TokenKind::Access, &user, &roles, &org.id, true),
        refresh_token: st.tokens.issue(TokenKind::Refresh, &user, &roles, &org.id, false),
    }))
}

/// New access token from a refresh token (sent as `Authorization: Bearer <refresh_token>`).
/// Roles are read again, so revoked roles do not survive a refresh.
#[utoipa::path(post, path = "/api/auth/refresh", tag = "auth", security(("bearerAuth" = [])),
    responses((status = 200, body = RefreshResponse),
        (status = 401, body = ErrorBody)))]
pub async fn refresh(State(st): State<AppState>, holder: RefreshCaller) -> ApiResult<Json<RefreshResponse>> {
    let roles = current_roles(st.store.as_ref(), &holder.claims.organization, &holder.user.id)?;
    let token = st.tokens.issue(TokenKind::Access, &holder.user, &roles, &holder.claims.organization, false);
    Ok(Json(RefreshResponse { token }))
}

/// Register a user in the caller's organization (Admin, or Organization_Admin for roles other
/// than Admin).
#[utoipa::path(post, path = "/api/auth/register", tag = "users", security(("bearerAuth" = [])), request_body = RegisterRequest,
    responses((status = 201, body = User),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody, description = "too many password checks at once; see Retry-After"),
    ))]
pub async fn register(
    State(st): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<RegisterRequest>,
) -> ApiResult<(StatusCode, Json<User>)> {
    caller.require_user_op(UserOp::Register { grants_admin: grants_admin(&req.roles) }, "")?;
    validate_username(&req.name)?;
    passwords::check_strength(&req.password).map_err(ApiError::Unprocessable)?;
    check_known_roles(&req.roles)?;
    let user = UserRecord {
        id: ids::new_id(),
        name: req.name,
        email: req.email,
        created_at: req.created_at.unwrap_or_else(ids::created_at_now),
        password_hash: st.passwords.hash(&req.password).await?,
        token_generation: 0,
    };
    st.store.insert_user(&user)?;
    set_roles(&st, &caller.org_id, &user.id, req.roles)?;
    Ok((StatusCode::CREATED, Json(user_view(&st, &user, &caller.org_id)?)))
}
