//! Request extractors: the authenticated caller (from an access token), the holder of a refresh
//! token, and the client's address.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::{header, request::Parts};
use oak_core::authz::{authorize, authorize_user_op, Action, Principal, UserOp};
use oak_store::UserRecord;

use super::tokens::{Claims, TokenKind};
use crate::error::ApiError;
use crate::state::AppState;

/// The user a request acts for. Extracting it fails with 401 unless the request carries a valid
/// access token of an account that still exists and has not revoked it since; its roles are
/// read from the store, not taken from the token.
pub struct Caller {
    pub principal: Principal,
    /// Organization the token's roles belong to.
    pub org_id: String,
}

impl Caller {
    /// 403/404 unless the caller may perform `action`; `what` names the object for a 404.
    pub fn require(&self, action: Action<'_>, what: impl std::fmt::Display) -> Result<(), ApiError> {
        authorize(&self.principal, action).map_err(|d| ApiError::denied(d, what))
    }

    /// 403/404 unless the caller may perform the user operation `op`; `what` names the
    /// account (or organization) for a 404.
    pub fn require_user_op(&self, op: UserOp<'_>, what: impl std::fmt::Display) -> Result<(), ApiError> {
        authorize_user_op(&self.principal, op).map_err(|d| ApiError::denied(d, what))
    }

    /// 404 unless the caller may read (or, with `modify`, change) an object owned by `owner`.
    pub fn require_owner(&self, owner: &str, modify: bool, what: impl std::fmt::Display) -> Result<(), ApiError> {
        let action = if modify { Action::ModifyOwned { owner } } else { Action::ReadOwned { owner } };
        self.require(action, what)
    }

    pub fn is_admin(&self) -> bool {
        self.principal.is_admin()
    }
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
        ApiError::Unauthorized("missing authentication token: send \"Authorization: Bearer <token>\"".into())
    })?;
    let value = value.to_str().map_err(|_| ApiError::Unauthorized("the Authorization header is not text".into()))?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::Unauthorized("the Authorization header must be \"Bearer <token>\"".into()))
}

/// The token's claims and its account, found by id (a new account of the same name is another
/// account) at the token's generation (a password change or lost role revokes older tokens).
fn verified(parts: &Parts, state: &AppState, kind: TokenKind) -> Result<(Claims, UserRecord), ApiError> {
    let claims = state.tokens.verify(bearer(parts)?, kind).map_err(ApiError::Unauthorized)?;
    let user = state
        .store
        .user_by_id(&claims.uid)?
        .ok_or_else(|| ApiError::Unauthorized(format!("the user {:?} of this token no longer exists", claims.sub)))?;
    if user.token_generation != claims.generation {
        return Err(ApiError::Unauthorized(
            "this token was revoked (password changed or roles removed): log in again".into(),
        ));
    }
    Ok((claims, user))
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let (claims, user) = verified(parts, state, TokenKind::Access)?;
        let roles = super::accounts::current_roles(state.store.as_ref(), &claims.organization, &user.id)?;
        let principal = Principal { user_id: user.id, username: user.name, roles, org_id: claims.organization.clone() };
        Ok(Caller { principal, org_id: claims.organization })
    }
}

/// The holder of a valid refresh token.
pub struct RefreshCaller {
    pub claims: Claims,
    pub user: UserRecord,
}

impl FromRequestParts<AppState> for RefreshCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let (claims, user) = verified(parts, state, TokenKind::Refresh)?;
        Ok(RefreshCaller { claims, user })
    }
}

/// The peer address, or `unknown` when the server runs without connection info (router tests).
pub struct ClientAddr(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let addr = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string());
        Ok(ClientAddr(addr.unwrap_or_else(|| "unknown".into())))
    }
}
