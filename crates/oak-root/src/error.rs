//! The API's error type: every failure becomes one JSON [`ErrorBody`] with the right status.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use oak_api::{ErrorBody, FieldError};
use oak_core::authz::Denied;
use oak_store::StoreError;

#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    Unauthorized(String),
    Forbidden(String),
    /// 403 naming the fields the caller may not set (e.g. `privileged`).
    ForbiddenFields(Vec<FieldError>),
    NotFound(String),
    Conflict(String),
    /// 422 with every field error at once.
    Invalid(Vec<FieldError>),
    /// 422 for a well-formed body of the wrong shape.
    Unprocessable(String),
    /// 413: the request body is over the limit the message names.
    PayloadTooLarge(String),
    /// 429 without `Retry-After`: a per-user quota (named in the message) is used up.
    QuotaExceeded(String),
    TooManyRequests {
        message: String,
        retry_after_secs: u64,
    },
    /// 503: something the request needs is not reachable now (a cluster away); retry later.
    Unavailable(String),
    /// A fault of the server itself (database broken); never used for bad input.
    Internal(String),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn not_found(what: impl std::fmt::Display) -> Self {
        ApiError::NotFound(format!("{what} not found"))
    }

    /// Maps an authorization refusal; `what` names the object for the not-visible case.
    pub fn denied(d: Denied, what: impl std::fmt::Display) -> Self {
        match d {
            Denied::NotVisible => ApiError::not_found(what),
            Denied::MissingRole(&[]) => ApiError::Forbidden("you can only do this for your own account".into()),
            Denied::MissingRole(_) => ApiError::Forbidden(format!("not enough permissions: {d}")),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) | ApiError::ForbiddenFields(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Invalid(_) | ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::QuotaExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => ApiError::Conflict(m),
            StoreError::NotFound(what) => ApiError::not_found(what),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<crate::fleet::AddressRefusal> for ApiError {
    fn from(e: crate::fleet::AddressRefusal) -> Self {
        use crate::fleet::AddressRefusal as R;
        match e {
            R::Taken(m) | R::Exhausted(m) => ApiError::Conflict(m),
            R::Invalid(field, m) => ApiError::Invalid(vec![FieldError::new(format!("addresses.{field}"), m)]),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.status();
        let mut retry = None;
        let body = match self {
            ApiError::Invalid(errors) | ApiError::ForbiddenFields(errors) => {
                let message = match errors.as_slice() {
                    [one] => one.to_string(),
                    many => format!("{} errors in the request: {}", many.len(), join(many)),
                };
                ErrorBody { code: code.as_u16(), message, field: errors.first().map(|e| e.field.clone()), errors }
            }
            ApiError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                ErrorBody { code: code.as_u16(), message: format!("internal error: {m}"), field: None, errors: vec![] }
            }
            ApiError::TooManyRequests { message, retry_after_secs } => {
                retry = Some(retry_after_secs);
                ErrorBody { code: code.as_u16(), message, field: None, errors: vec![] }
            }
            ApiError::BadRequest(m)
            | ApiError::Unauthorized(m)
            | ApiError::Forbidden(m)
            | ApiError::NotFound(m)
            | ApiError::Conflict(m)
            | ApiError::Unavailable(m)
            | ApiError::PayloadTooLarge(m)
            | ApiError::QuotaExceeded(m)
            | ApiError::Unprocessable(m) => ErrorBody { code: code.as_u16(), message: m, field: None, errors: vec![] },
        };
        let mut response = (code, Json(body)).into_response();
        if let Some(secs) = retry {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

fn join(errors: &[FieldError]) -> String {
    errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")
}
