//! What can go wrong talking to a root, each variant worded so a CLI can print it as one line.

use std::fmt;

use oak_api::ErrorBody;

/// Error of a [`Client`](crate::Client) call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The root answered with an error status; `body` is its `ErrorBody` (or one synthesized from
    /// the status and the text when the answer was not one, e.g. from a proxy in between).
    #[error("{}", ApiErrorLine { status: *status, body })]
    Api { status: u16, body: ErrorBody },
    /// No answer: connection refused, DNS failure, timeout…
    #[error("{0}")]
    Transport(String),
    /// The root answered 2xx with a body that is not the expected document.
    #[error("{0}")]
    Decode(String),
    /// The base URL cannot be used for HTTP requests.
    #[error("{0}")]
    InvalidUrl(String),
    /// HTTPS cannot be set up (an unusable CA certificate).
    #[error("{0}")]
    Tls(String),
}

impl ClientError {
    /// HTTP status of an API error, so callers can react to e.g. 401 or 404.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// `422: field: message` for one field error, `422: message: a: x; b: y` for several,
/// `404: message` otherwise: every detail on one line.
struct ApiErrorLine<'a> {
    status: u16,
    body: &'a ErrorBody,
}

impl fmt::Display for ApiErrorLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let body = self.body;
        write!(f, "{}: ", self.status)?;
        match body.errors.as_slice() {
            [] => match &body.field {
                Some(field) if !field.is_empty() && !body.message.contains(field.as_str()) => {
                    write!(f, "{field}: {}", body.message)
                }
                _ => f.write_str(&body.message),
            },
            [only] => write!(f, "{only}"),
            several => {
                write!(f, "{}: ", body.message)?;
                for (i, e) in several.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{e}")?;
                }
                Ok(())
            }
        }
    }
}

/// Builds an `ErrorBody` from an error answer: the body itself when it is one, else a message
/// taken from a `{"message"}`/`{"msg"}` object, the text, or the status' reason phrase.
pub(crate) fn error_body(status: u16, reason: Option<&str>, text: &str) -> ErrorBody {
    if let Ok(body) = serde_json::from_str::<ErrorBody>(text) {
        return body;
    }
    let from_json = serde_json::from_str::<serde_json::Value>(text).ok().and_then(|v| {
        ["message", "msg", "error"].iter().find_map(|k| v.get(k).and_then(|m| m.as_str()).map(str::to_string))
    });
    let message = from_json.unwrap_or_else(|| one_line(text, 200));
    let message = if message.is_empty() { reason.unwrap_or("HTTP error").to_lowercase() } else { message };
    ErrorBody { code: status, message, field: None, errors: Vec::new() }
}

/// Collapses whitespace (an HTML error page must not break the one-line contract) and truncates.
fn one_line(text: &str, max_chars: usize) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.chars().count() <= max_chars {
        return joined;
    }
    let mut cut: String = joined.chars().take(max_chars).collect();
    cut.push('…');
    cut
}

/// Why a request got no answer, in words: the innermost I/O error when there is one
/// (`connection refused`), rather than reqwest's generic `error sending request for url (…)`.
pub(crate) fn transport_reason(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        return format!("no answer within {} s", crate::REQUEST_TIMEOUT.as_secs());
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut innermost = err.to_string();
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
                std::io::ErrorKind::ConnectionReset => "connection reset".to_string(),
                std::io::ErrorKind::TimedOut => "connection timed out".to_string(),
                _ => strip_os_error(&io.to_string()),
            };
        }
        innermost = e.to_string();
        source = e.source();
    }
    strip_os_error(&innermost)
}

/// `Connection refused (os error 111)` → `Connection refused`: the errno adds nothing for users.
fn strip_os_error(text: &str) -> String {
    match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => text[..i].to_string(),
        _ => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use oak_api::FieldError;

    use super::*;

    fn api(body: ErrorBody) -> String {
        ClientError::Api { status: body.code, body }.to_string()
    }

    #[test]
    fn single_field_error_is_shown_alone() {
        let body = ErrorBody {
            code: 422,
            message: "invalid deployment descriptor".into(),
            field: None,
            errors: vec![FieldError::new("applications[0].microservices[0].port", "\"80:x\" is not a port mapping")],
        };
        assert_eq!(api(body), "422: applications[0].microservices[0].port: \"80:x\" is not a port mapping");
    }

    #[test]
    fn several_field_errors_follow_the_message() {
        let body = ErrorBody {
            code: 422,
            message: "invalid deployment descriptor".into(),
            field: None,
            errors: vec![FieldError::new("a", "x"), FieldError::new("b", "y")],
        };
        assert_eq!(api(body), "422: invalid deployment descriptor: a: x; b: y");
    }

    #[test]
    fn plain_message() {
        let body = ErrorBody { code: 404, message: "application 1234 not found".into(), field: None, errors: vec![] };
        assert_eq!(api(body), "404: application 1234 not found");
    }

    #[test]
    fn non_error_body_answers_are_synthesized() {
        let b = error_body(502, Some("Bad Gateway"), "<html>\n<body>bad   gateway</body>\n</html>");
        assert_eq!(b.code, 502);
        assert_eq!(b.message, "<html> <body>bad gateway</body> </html>");
        assert_eq!(error_body(401, None, r#"{"msg": "Token has expired"}"#).message, "Token has expired");
        assert_eq!(error_body(503, Some("Service Unavailable"), "").message, "service unavailable");
        let real = error_body(409, None, r#"{"code": 409, "message": "exists"}"#);
        assert_eq!(real.message, "exists");
    }

    #[test]
    fn os_error_suffix_is_dropped() {
        assert_eq!(strip_os_error("Connection refused (os error 111)"), "Connection refused");
        assert_eq!(strip_os_error("plain"), "plain");
    }
}
