//! `GET /api/service/<id>/instance/<n>/logs`: an instance's output, read on its worker through
//! its cluster; `tail=N` keeps the last N lines, `follow=true` keeps the response open and
//! streams new output (polled every 500 ms with a cursor, so nothing is sent twice).

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use oak_api::model::Instance;
use oak_api::node::LogCursor;
use oak_api::ErrorBody;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::auth::extract::Caller;
use crate::body::QueryParams;
use crate::error::{ApiError, ApiResult};
use crate::fleet::LogsError;
use crate::state::AppState;

/// The most output one read returns (one channel frame, one MQTT message).
const READ_BYTES: u64 = 256 * 1024;
const FOLLOW_POLL: Duration = Duration::from_millis(500);

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsParams {
    /// Only the last N lines.
    tail: Option<String>,
    /// Keep the response open and stream new output (`true`/`false`).
    follow: Option<String>,
}

/// An instance's stdout and stderr (the last 256 KiB at most), as plain text.
#[utoipa::path(get, path = "/api/service/{id}/instance/{number}/logs", tag = "instances", security(("bearerAuth" = [])),
    params(LogsParams),
    responses((status = 200, content_type = "text/plain", body = String),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "the instance's cluster is not connected now")))]
pub async fn logs(
    State(st): State<AppState>,
    caller: Caller,
    Path((id, number)): Path<(String, String)>,
    QueryParams(params): QueryParams<LogsParams>,
) -> ApiResult<Response> {
    let number: u32 = number
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("instance number {number:?} is not a non-negative integer")))?;
    let tail = match params.tail.as_deref() {
        None => None,
        Some(t) => {
            Some(t.parse::<usize>().map_err(|_| ApiError::BadRequest(format!("tail {t:?} is not a number of lines")))?)
        }
    };
    let follow = match params.follow.as_deref() {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") | Some("") => true,
        Some(f) => return Err(ApiError::BadRequest(format!("follow {f:?} is not true or false"))),
    };
    let (service, _) = super::services::owned_service(&st, &caller, &id, false)?;
    let instance = service
        .instance_list
        .iter()
        .find(|i| i.instance_number == number)
        .ok_or_else(|| ApiError::not_found(format!("instance {number} of service {id}")))?;
    let cluster = placed_on(instance, &id)?;
    let (data, cursor) = st.fleet.read_logs(&cluster, &id, number, READ_BYTES, None).await.map_err(to_api)?;
    let first = match tail {
        Some(n) => last_lines(&data, n).to_string(),
        None => data,
    };
    if !follow {
        return Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], first).into_response());
    }

    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let place = (cluster, instance.worker_id.clone());
    tokio::spawn(follow_output(st, id, number, place, cursor, first, tx));
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}

/// Streams new output until the instance is gone or the client hung up. A re-placed instance
/// (another cluster or worker) has a new log file: reading starts over there.
async fn follow_output(
    st: AppState,
    id: String,
    number: u32,
    mut place: (String, Option<String>),
    mut cursor: LogCursor,
    first: String,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    if !first.is_empty() && tx.send(Ok(Bytes::from(first))).await.is_err() {
        return;
    }
    let mut from = Some(cursor);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
            _ = tx.closed() => return,
        }
        let Ok(Some(service)) = st.store.service(&id) else { return };
        let Some(instance) = service.instance_list.iter().find(|i| i.instance_number == number) else { return };
        let Ok(cluster) = placed_on(instance, &id) else { continue };
        let now = (cluster, instance.worker_id.clone());
        if now != place {
            place = now;
            from = None;
        }
        match st.fleet.read_logs(&place.0, &id, number, READ_BYTES, from).await {
            Ok((data, next)) => {
                cursor = next;
                from = Some(cursor);
                if !data.is_empty() && tx.send(Ok(Bytes::from(data))).await.is_err() {
                    return;
                }
            }
            // Not running right now (being re-placed, worker away): keep waiting.
            Err(e) => tracing::debug!(service = %id, instance = number, error = %e, "cannot read logs now"),
        }
    }
}

fn placed_on(instance: &Instance, id: &str) -> ApiResult<String> {
    match instance.cluster_id.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => Ok(c.to_string()),
        None => Err(ApiError::Conflict(format!(
            "instance {} of service {id} is not placed on a cluster (status {})",
            instance.instance_number, instance.status
        ))),
    }
}

fn to_api(e: LogsError) -> ApiError {
    match e {
        LogsError::ClusterGone(_) | LogsError::Timeout(_) => ApiError::Unavailable(e.to_string()),
        LogsError::Refused(m) => ApiError::Conflict(m),
    }
}

/// The last `n` lines of `text` (a trailing newline does not count as a line of its own).
pub fn last_lines(text: &str, n: usize) -> &str {
    if n == 0 {
        return "";
    }
    let body = text.strip_suffix('\n').unwrap_or(text);
    match body.rmatch_indices('\n').nth(n - 1) {
        Some((i, _)) => &text[i + 1..],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::last_lines;

    #[test]
    fn keeps_the_last_lines() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(last_lines("a\nb\nc", 2), "b\nc");
        assert_eq!(last_lines("a\nb\nc\n", 3), "a\nb\nc\n");
        assert_eq!(last_lines("a\nb\nc\n", 10), "a\nb\nc\n");
        assert_eq!(last_lines("a\nb\n", 0), "");
        assert_eq!(last_lines("", 5), "");
        assert_eq!(last_lines("only", 1), "only");
        assert_eq!(last_lines("x\n\n\n", 2), "\n\n");
    }
}
