//! Joining the cluster: `POST /api/node/register` (spec §5.2) with the join token's secret and,
//! when the worker has been here before, its old id and secret, so it keeps its identity.
//!
//! Over HTTPS only, trusting exactly the CA the join token pins (whatever address was dialled):
//! the secret and the MQTT password that comes back cross the wire encrypted, and only to the
//! cluster that issued the token. A server that cannot prove it is a fatal error.

use std::sync::Arc;
use std::time::Duration;

use oak_api::node::{NodeInfo, RegisterNodeRequest, RegisterNodeResponse};
use oak_api::ErrorBody;
use oak_tls::rustls::ClientConfig;
use oak_tls::{Fingerprint, JoinToken};

use crate::backoff::Backoff;
use crate::identity::NodeIdentity;
use crate::{WorkerConfig, WorkerError};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and as whom to connect to the cluster's broker.
#[derive(Debug, Clone)]
pub(crate) struct MqttEndpoint {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: String,
    /// `None`: plaintext (an external broker the cluster was configured with so).
    pub tls: Option<Arc<ClientConfig>>,
}

/// An HTTPS client that trusts only the cluster CA with fingerprint `ca`.
pub(crate) fn https_client(ca: Fingerprint) -> Result<reqwest::Client, WorkerError> {
    pinned_builder(ca)?.build().map_err(|e| WorkerError::Config(format!("HTTPS client: {e}")))
}

fn pinned_builder(ca: Fingerprint) -> Result<reqwest::ClientBuilder, WorkerError> {
    let tls = oak_tls::pinned_client_config(ca, oak_tls::CLUSTER_SERVER_NAME, None)
        .map_err(|e| WorkerError::Config(format!("TLS client: {e}")))?;
    Ok(reqwest::Client::builder().use_preconfigured_tls(ClientConfig::clone(&tls)))
}

/// A client builder for the node API (`https://<cluster>:10100`) of the cluster that issued
/// `token` (`oakn.v1.…`), trusting only that cluster's CA: for tools and tests that talk to a
/// cluster as its workers do (health checks, `/metrics`).
pub fn cluster_client_builder(token: &str) -> Result<reqwest::ClientBuilder, WorkerError> {
    pinned_builder(oak_tls::JoinToken::parse(token, oak_tls::TokenKind::Node)?.ca)
}

#[derive(Debug, Clone)]
pub(crate) struct Registration {
    pub identity: NodeIdentity,
    pub mqtt: MqttEndpoint,
    /// The IP the worker registered with (used as `publicip` until the next sample).
    pub node_ip: String,
    /// The overlay subnet the cluster gave this node ("" without the overlay).
    pub subnet: String,
    /// The cluster hears this node's liveness from its broker connection
    /// ([`oak_api::node::features::QUIET_REPORTS`]).
    pub quiet_reports: bool,
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
    config: &WorkerConfig,
    previous: Option<&NodeIdentity>,
    mut info: F,
) -> Result<Registration, WorkerError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = NodeInfo>,
{
    let token = config.token()?;
    let http = https_client(token.ca)?;
    let mut backoff = Backoff::reconnect();
    let mut previous = previous;
    loop {
        match register_once(&http, config, &token, previous, info().await).await {
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
    token: &JoinToken,
    previous: Option<&NodeIdentity>,
    mut node: NodeInfo,
) -> Result<Registration, AttemptError> {
    node.id = previous.map(|p| p.id.clone()).unwrap_or_default();
    let node_ip = node.ip.clone();
    let body = RegisterNodeRequest {
        node,
        token: token.secret.clone(),
        node_secret: previous.map(|p| p.node_secret.clone()).unwrap_or_default(),
    };
    let url = format!("https://{}:{}/api/node/register", url_host(&config.cluster_address), config.cluster_port);
    let response = http.post(&url).timeout(REQUEST_TIMEOUT).json(&body).send().await.map_err(|e| {
        if let Some(why) = untrusted(&e) {
            return AttemptError::Fatal(WorkerError::UntrustedCluster(format!(
                "{url} is not the cluster that issued the join token ({why}); the token was not sent: \
                 check the address, or get the cluster's current token (<cluster data>/node-token)"
            )));
        }
        AttemptError::Transient(format!("cannot reach {url}: {}", error_chain(&e)))
    })?;
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
    let mut registration = interpret(config, token, answer).map_err(AttemptError::Fatal)?;
    registration.node_ip = node_ip;
    Ok(registration)
}

fn interpret(
    config: &WorkerConfig,
    token: &JoinToken,
    answer: RegisterNodeResponse,
) -> Result<Registration, WorkerError> {
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
    let bad = |what: String| WorkerError::BadRegistration(what);
    let tls = match (answer.mqtt_scheme.trim(), answer.mqtt_ca.trim()) {
        ("" | "mqtts", "") => Some(
            oak_tls::pinned_client_config(token.ca, oak_tls::CLUSTER_SERVER_NAME, None)
                .map_err(|e| bad(format!("broker TLS: {e}")))?,
        ),
        ("" | "mqtts", ca) => Some(oak_tls::ca_client_config(ca).map_err(|e| bad(format!("mqtt_ca: {e}")))?),
        ("mqtt", _) => {
            tracing::warn!(broker = %format!("{host}:{port}"),
                "the cluster's MQTT broker is plaintext: this node's credentials and commands cross the network unencrypted");
            None
        }
        (other, _) => return Err(bad(format!("unknown mqtt_scheme {other:?}"))),
    };
    Ok(Registration {
        identity: NodeIdentity { id: answer.id, node_secret: answer.mqtt_password.clone() },
        mqtt: MqttEndpoint { host, port, username: answer.mqtt_username, password: answer.mqtt_password, tls },
        node_ip: String::new(),
        subnet: answer.subnet,
        quiet_reports: answer.features.iter().any(|f| f == oak_api::node::features::QUIET_REPORTS),
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

/// Why the server's certificate was not accepted, if that is why the request failed (the TLS
/// error sits inside I/O errors inside the connector's error).
fn untrusted(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    use oak_tls::rustls::Error as Tls;
    let mut current = Some(e);
    while let Some(e) = current {
        if let Some(tls @ (Tls::InvalidCertificate(_) | Tls::General(_) | Tls::NoCertificatesPresented)) =
            e.downcast_ref::<Tls>()
        {
            return Some(tls.to_string());
        }
        // An I/O error's `source` skips the error it wraps; `get_ref` does not.
        current = match e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
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
            mqtt_scheme: String::new(),
            mqtt_ca: String::new(),
            features: Vec::new(),
        }
    }

    fn token() -> JoinToken {
        JoinToken::generate(oak_tls::TokenKind::Node, Fingerprint::of(b"cluster ca"))
    }

    #[test]
    fn broker_host_precedence() {
        let t = token();
        let mut config = WorkerConfig::new("cluster.example", "/tmp/x", t.to_string());
        let reg = interpret(&config, &t, answer("", "10003")).unwrap();
        assert_eq!((reg.mqtt.host.as_str(), reg.mqtt.port), ("cluster.example", 10003));
        assert_eq!(reg.identity, NodeIdentity { id: "n1".into(), node_secret: "pw".into() });
        assert_eq!(interpret(&config, &t, answer("broker.example", "1")).unwrap().mqtt.host, "broker.example");
        config.mqtt_host = Some("override".into());
        assert_eq!(interpret(&config, &t, answer("broker.example", "1")).unwrap().mqtt.host, "override");
    }

    #[test]
    fn the_broker_is_tls_unless_the_cluster_says_plaintext() {
        let t = token();
        let config = WorkerConfig::new("c", "/tmp/x", t.to_string());
        assert!(interpret(&config, &t, answer("", "1")).unwrap().mqtt.tls.is_some(), "absent scheme: TLS");
        let mut a = answer("", "1");
        a.mqtt_scheme = "mqtt".into();
        assert!(interpret(&config, &t, a).unwrap().mqtt.tls.is_none());
        let mut a = answer("", "1");
        a.mqtt_scheme = "mqtts".into();
        a.mqtt_ca = oak_tls::Authority::generate("broker CA").unwrap().cert_pem().to_string();
        assert!(interpret(&config, &t, a).unwrap().mqtt.tls.is_some());
        for (scheme, ca) in [("mqtts", "not pem"), ("ws", "")] {
            let mut a = answer("", "1");
            (a.mqtt_scheme, a.mqtt_ca) = (scheme.into(), ca.into());
            assert!(matches!(interpret(&config, &t, a), Err(WorkerError::BadRegistration(_))), "{scheme} {ca}");
        }
    }

    #[test]
    fn bad_answers() {
        let t = token();
        let config = WorkerConfig::new("c", "/tmp/x", t.to_string());
        for port in ["", "0", "x", "70000"] {
            assert!(interpret(&config, &t, answer("", port)).is_err(), "{port}");
        }
        let mut a = answer("", "1");
        a.id.clear();
        assert_eq!(
            interpret(&config, &t, a).unwrap_err().to_string(),
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
