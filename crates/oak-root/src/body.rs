//! JSON request bodies with errors in the API's own format (axum's default rejections are plain
//! text), accepting a missing `Content-Type` as curl users often send. Bodies are capped at
//! [`MAX_BODY`] (the router's `DefaultBodyLimit`), also when sent chunked without a length.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Largest request body accepted: a descriptor with many services fits many times over, and a
/// peer cannot make the root buffer megabytes per request.
pub const MAX_BODY: usize = 64 * 1024;

pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large()
            } else {
                ApiError::BadRequest(format!("cannot read the request body: {e}"))
            }
        })?;
        parse(&bytes).map(JsonBody)
    }
}

/// The 413 for a body over [`MAX_BODY`], naming the limit.
pub fn too_large() -> ApiError {
    ApiError::PayloadTooLarge(format!("the request body is larger than the limit of {MAX_BODY} bytes (64 KiB)"))
}

pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest("the request body is empty: a JSON document is expected".into()));
    }
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::Unprocessable(format!("the request body does not fit: {e}")),
        _ => ApiError::BadRequest(format!("the request body is not valid JSON: {e}")),
    })
}

/// A query string in the API's error format (axum's `Query` answers plain text): a repeated or
/// malformed parameter is a 400 with a JSON body naming it.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> axum::extract::FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| QueryParams(q.0))
            .map_err(|e| ApiError::BadRequest(format!("the query string does not fit: {}", e.body_text())))
    }
}
