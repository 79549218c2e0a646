//! A JSON array response sent element by element.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// `Json<Vec<T>>` on the wire, but each element is serialized only when the connection takes
/// it: listing every service of a busy root (10,000 instances, about 8 MB of JSON) held the
/// whole text in one buffer next to the documents it came from, the largest allocation of a
/// root under a poll of its listing.
pub struct JsonArray<T>(pub Vec<T>);

impl<T: Serialize + Send + 'static> IntoResponse for JsonArray<T> {
    fn into_response(self) -> Response {
        let n = self.0.len();
        let elements = self.0.into_iter().enumerate().map(move |(i, item)| {
            let mut text = Vec::with_capacity(1024);
            text.push(if i == 0 { b'[' } else { b',' });
            // Writing a serializable document into a Vec fails only for maps with non-string
            // keys, which no API document has; such an element would read as `null`.
            if serde_json::to_writer(&mut text, &item).is_err() {
                text.truncate(1);
                text.extend_from_slice(b"null");
            }
            if i + 1 == n {
                text.push(b']');
            }
            Ok::<_, Infallible>(Bytes::from(text))
        });
        let body = if n == 0 { Body::from("[]") } else { Body::from_stream(tokio_stream::iter(elements)) };
        ([(CONTENT_TYPE, "application/json")], body).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;

    async fn text<T: Serialize + Send + 'static>(items: Vec<T>) -> (String, String) {
        let response = JsonArray(items).into_response();
        let kind = response.headers()[CONTENT_TYPE].to_str().unwrap().to_string();
        let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (kind, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn the_streamed_array_is_the_same_json() {
        let items = vec![serde_json::json!({"a": 1, "b": [1, 2]}), serde_json::json!("x\"y"), serde_json::json!(null)];
        let (kind, body) = text(items.clone()).await;
        assert_eq!(kind, "application/json");
        assert_eq!(body, serde_json::to_string(&items).unwrap());
        assert_eq!(text(Vec::<u32>::new()).await.1, "[]");
        assert_eq!(text(vec![7]).await.1, "[7]");
    }
}
