//! Joining the cluster: `POST /api/node/register` (spec §5.2) with the join token and, when the
//! worker has been here before, its old id and secret, so it keeps its identity.

use std::time::Duration;

use oak_api::node::{NodeInfo, RegisterNodeRequest, RegisterNodeResponse};
use oak_api::ErrorBody;

use crate::backoff::Backoff;
use crate::identity::NodeIdentity;
use crate::{WorkerConfig, WorkerError};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and as whom to connect to the cluster's broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MqttEndpoint {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Registration {
    pub identity: NodeIdentity,
    pub mqtt: MqttEndpoint,
    /// The IP the worker registered with (used as `publicip` until the next sample).
    pub node_ip: String,
    /// The overlay subnet the cluster gave this node ("" without the overlay).
    pub subnet: String,
}

/// One failed attempt: worth retrying, or not.
#[derive(Debug)]
pub(crate) enum AttemptError {
    Transient(String),
    /// 409: the cluster does not accept the stored id and secret (e.g. the worker crashed before
    /// persisting a new secret, or its data directory was copied to another machine).
    IdRefused(String),
    Fatal(WorkerError),
}

/// Registers, retrying transport errors and 5xx answers with back-off (1 s doubling to 30 s);
/// returns only on success or on an answer that retrying cannot change. If the cluster refuses
/// the stored identity, registers as a new node instead of giving up. `info` is called before
/// every attempt so the cluster gets a current description.
pub(crate) async fn register_with_retry<F, Fut>(
    http: &reqwest::Client,
    config: &WorkerConfig,
    previous: Option<&NodeIdentity>,
    mut info: F,
) -> Result<Registration, WorkerError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = NodeInfo>,
{
    let mut backoff = Backoff::reconnect();
    let mut previous = previous;
    loop {
        match register_once(http, config, previous, info().await).await {
            Ok(registration) => return Ok(registration),
            Err(AttemptError::Fatal(e)) => return Err(e),
            Err(AttemptError::IdRefused(reason)) => {
                tracing::warn!(%reason, "the cluster refused the stored node id; registering as a new node");
                previous = None;
            }
            Err(AttemptError::Transient(reason)) => {
                let delay = backoff.next_delay();
                tracing::warn!(%reason, retry_in_s = delay.as_secs(), "registration with the cluster failed");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

pub(crate) async fn register_once(
    http: &reqwest::Client,
    config: &WorkerConfig,
    previous: Option<&NodeIdentity>,
    mut node: NodeInfo,
) -> Result<Registration, AttemptError> {
    node.id = previous.map(|p| p.id.clone()).unwrap_or_default();
    let node_ip = node.ip.clone();
    let body = RegisterNodeRequest {
        node,
        token: config.join_token.clone(),
        node_secret: previous.map(|p| p.node_secret.clone()).unwrap_or_default(),
    };
    let url = format!("http://{}:{}/api/node/register", url_host(&config.cluster_address), config.cluster_port);
    let response = http
        .post(&url)
        .timeout(REQUEST_TIMEOUT)
        .json(&body)
        .send()
        .await
        .map_err(|e| AttemptError::Transient(format!("cannot reach {url}: {}", error_chain(&e))))?;
    let status = response.status();
    let text = response.text().await.map_err(|e| AttemptError::Transient(format!("reading the answer: {e}")))?;
    if !status.is_success() {
        let message = server_message(&text, status);
        return Err(match status.as_u16() {
            401 | 403 => AttemptError::Fatal(WorkerError::TokenRefused(message)),
            409 if previous.is_some() => AttemptError::IdRefused(message),
            408 | 429 => AttemptError::Transient(format!("cluster answered {status}: {message}")),
            code @ 400..=499 => AttemptError::Fatal(WorkerError::RegistrationRejected { status: code, message }),
            _ => AttemptError::Transient(format!("cluster answered {status}: {message}")),
        });
    }
    let answer: RegisterNodeResponse =
        serde_json::from_str(&text).map_err(|e| AttemptError::Fatal(WorkerError::BadRegistration(e.to_string())))?;
    let mut registration = interpret(config, answer).map_err(AttemptError::Fatal)?;
    registration.node_ip = node_ip;
    Ok(registration)
}

fn interpret(config: &WorkerConfig, answer: RegisterNodeResponse) -> Result<Registration, WorkerError> {
    if answer.id.trim().is_empty() {
        return Err(WorkerError::BadRegistration("the node id is empty".into()));
    }
    let port = answer.mqtt_broker_port.trim().parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
        WorkerError::BadRegistration(format!("MQTT_BROKER_PORT {:?} is not a port", answer.mqtt_broker_port))
    })?;
    let host = match (&config.mqtt_host, answer.mqtt_host.trim()) {
        (Some(host), _) if !host.trim().is_empty() => host.trim().to_string(),
        (_, "") => config.cluster_address.clone(),
        (_, host) => host.to_string(),
    };
    Ok(Registration {
        identity: NodeIdentity { id: answer.id, node_secret: answer.mqtt_password.clone() },
        mqtt: MqttEndpoint { host, port, username: answer.mqtt_username, password: answer.mqtt_password },
        node_ip: String::new(),
        subnet: answer.subnet,
    })
}

/// The `message` of an `ErrorBody`, or the raw text, or the status reason.
fn server_message(text: &str, status: reqwest::StatusCode) -> String {
    if let Ok(body) = serde_json::from_str::<ErrorBody>(text) {
        return body.message;
    }
    let text = text.trim();
    if text.is_empty() {
        return status.canonical_reason().unwrap_or("no message").to_lowercase();
    }
    text.chars().take(300).collect()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// IPv6 literals need brackets in a URL.
fn url_host(address: &str) -> String {
    if address.contains(':') && !address.starts_with('[') {
        format!("[{address}]")
    } else {
        address.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(host: &str, port: &str) -> RegisterNodeResponse {
        RegisterNodeResponse {
            id: "n1".into(),
            mqtt_broker_port: port.into(),
            mqtt_host: host.into(),
            mqtt_username: "n1".into(),
            mqtt_password: "pw".into(),
            subnet: String::new(),
        }
    }

    #[test]
    fn broker_host_precedence() {
        let mut config = WorkerConfig::new("cluster.example", "/tmp/x", "t");
        let reg = interpret(&config, answer("", "10003")).unwrap();
        assert_eq!((reg.mqtt.host.as_str(), reg.mqtt.port), ("cluster.example", 10003));
        assert_eq!(reg.identity, NodeIdentity { id: "n1".into(), node_secret: "pw".into() });
        assert_eq!(interpret(&config, answer("broker.example", "1")).unwrap().mqtt.host, "broker.example");
        config.mqtt_host = Some("override".into());
        assert_eq!(interpret(&config, answer("broker.example", "1")).unwrap().mqtt.host, "override");
    }

    #[test]
    fn bad_answers() {
        let config = WorkerConfig::new("c", "/tmp/x", "t");
        for port in ["", "0", "x", "70000"] {
            assert!(interpret(&config, answer("", port)).is_err(), "{port}");
        }
        let mut a = answer("", "1");
        a.id.clear();
        assert_eq!(
            interpret(&config, a).unwrap_err().to_string(),
            "cluster sent an invalid registration answer: the node id is empty"
        );
    }

    #[test]
    fn server_messages() {
        let status = reqwest::StatusCode::UNAUTHORIZED;
        assert_eq!(server_message(r#"{"code":401,"message":"invalid join token"}"#, status), "invalid join token");
        assert_eq!(server_message("plain text", status), "plain text");
        assert_eq!(server_message("", status), "unauthorized");
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(url_host("::1"), "[::1]");
        assert_eq!(url_host("[::1]"), "[::1]");
        assert_eq!(url_host("10.0.0.1"), "10.0.0.1");
    }
}
