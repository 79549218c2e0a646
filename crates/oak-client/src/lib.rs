//! Typed client for the Oakestra root's public REST API.
//!
//! One async method per endpoint, returning the `oak-api` wire types, so the CLI, the integration
//! tests and benchmarks share one definition of every path and every document. Errors are
//! [`ClientError`]s whose `Display` is a single line fit for a terminal.

mod error;
mod tls;

use std::time::Duration;

use oak_api::model::{Application, Cluster, Service};
use oak_api::rest::{InstanceRequested, LoginRequest, LoginResponse, MessageResponse, RefreshResponse};
use reqwest::{Method, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use error::ClientError;
pub use oak_tls::Fingerprint;

/// How long one request may take before it fails as a transport error.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection to one root's REST API, optionally authenticated with an access token.
///
/// Cheap to clone (the HTTP connection pool is shared), so a caller can retry an operation with a
/// renewed token on a copy.
#[derive(Clone)]
pub struct Client {
    base_url: String,
    token: Option<String>,
    http: reqwest::Client,
    /// The root's certificate as last verified (HTTPS only).
    seen: tls::SeenCertificate,
}

/// Never prints the token: debug output ends up in logs.
impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.base_url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for the root at `base_url` (e.g. `http://localhost:10000`), without a token.
    /// HTTPS URLs are verified against the system's CAs; a CA that cannot be loaded leaves the
    /// client without HTTPS (its requests fail naming the reason).
    pub fn new(base_url: impl Into<String>) -> Self {
        let base_url = base_url.into();
        Self::with_ca(&base_url, None).unwrap_or_else(|_| Self::build(base_url, None, tls::SeenCertificate::default()))
    }

    /// A client that trusts only the CA certificates in `ca_pem` (PEM) for HTTPS, or the
    /// system's CAs when `None`.
    pub fn with_ca(base_url: impl Into<String>, ca_pem: Option<&str>) -> Result<Self, ClientError> {
        let base_url = base_url.into();
        let seen = tls::SeenCertificate::default();
        // Reading the system's CAs costs milliseconds: only for HTTPS.
        let config = match (ca_pem, base_url.trim_start().to_ascii_lowercase().starts_with("https:")) {
            (None, false) => None,
            (ca_pem, _) => Some(tls::client_config(ca_pem, seen.clone())?),
        };
        Ok(Self::build(base_url, config, seen))
    }

    fn build(base_url: String, tls: Option<oak_tls::rustls::ClientConfig>, seen: tls::SeenCertificate) -> Self {
        let mut builder = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).connect_timeout(Duration::from_secs(10));
        if let Some(config) = tls {
            builder = builder.use_preconfigured_tls(config);
        }
        // Building fails only when the TLS back-end cannot initialise; the default has none.
        let http = builder.build().unwrap_or_default();
        let base_url = base_url.trim_end_matches('/').to_string();
        Self { base_url, token: None, http, seen }
    }

    /// SHA-256 of the certificate the root presented on the last HTTPS connection this client
    /// (or a clone) opened; `None` over plain HTTP.
    pub fn server_fingerprint(&self) -> Option<Fingerprint> {
        *self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The same client, sending `Authorization: Bearer <token>` with every request.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Replaces the access token (e.g. after a refresh).
    pub fn set_token(&mut self, token: Option<String>) {
        self.token = token;
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The base URL without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    // --- auth ---

    /// `POST /api/auth/login`: access and refresh token for a user (in `organization`, else `root`).
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        organization: Option<&str>,
    ) -> Result<LoginResponse, ClientError> {
        let body = LoginRequest {
            username: username.to_string(),
            password: password.to_string(),
            organization_name: organization.map(str::to_string),
        };
        self.send(Method::POST, &["api", "auth", "login"], &[], Some(&body), None).await
    }

    /// `POST /api/auth/refresh`: a new access token, authenticated with the refresh token (not
    /// with this client's access token).
    pub async fn refresh(&self, refresh_token: &str) -> Result<RefreshResponse, ClientError> {
        self.send::<(), _>(Method::POST, &["api", "auth", "refresh"], &[], None, Some(refresh_token)).await
    }

    // --- applications ---

    /// `POST /api/application/`: creates the applications of an SLA descriptor; answers with all
    /// of the caller's applications.
    pub async fn create_application(&self, sla: &serde_json::Value) -> Result<Vec<Application>, ClientError> {
        self.authed(Method::POST, &["api", "application", ""], Some(sla)).await
    }

    /// `GET /api/applications/`
    pub async fn list_applications(&self) -> Result<Vec<Application>, ClientError> {
        self.authed::<(), _>(Method::GET, &["api", "applications", ""], None).await
    }

    /// `GET /api/application/{id}`
    pub async fn get_application(&self, id: &str) -> Result<Application, ClientError> {
        self.authed::<(), _>(Method::GET, &["api", "application", id], None).await
    }

    /// `DELETE /api/application/{id}`: undeploys every service of the application, then deletes it.
    pub async fn delete_application(&self, id: &str) -> Result<MessageResponse, ClientError> {
        self.authed::<(), _>(Method::DELETE, &["api", "application", id], None).await
    }

    // --- services ---

    /// `GET /api/services/`: all of the caller's services.
    pub async fn list_services(&self) -> Result<Vec<Service>, ClientError> {
        self.authed::<(), _>(Method::GET, &["api", "services", ""], None).await
    }

    /// `GET /api/services/{app_id}`: the services of one application.
    pub async fn list_app_services(&self, app_id: &str) -> Result<Vec<Service>, ClientError> {
        self.authed::<(), _>(Method::GET, &["api", "services", app_id], None).await
    }

    /// `GET /api/service/{id}`, with its `instance_list`.
    pub async fn get_service(&self, id: &str) -> Result<Service, ClientError> {
        self.authed::<(), _>(Method::GET, &["api", "service", id], None).await
    }

    /// `DELETE /api/service/{id}`: undeploys every instance and deletes the service.
    pub async fn delete_service(&self, id: &str) -> Result<MessageResponse, ClientError> {
        self.authed::<(), _>(Method::DELETE, &["api", "service", id], None).await
    }

    /// `POST /api/service/{id}/instance`: requests one more instance (scale up by one).
    pub async fn request_instance(&self, id: &str) -> Result<InstanceRequested, ClientError> {
        self.authed::<(), _>(Method::POST, &["api", "service", id, "instance"], None).await
    }

    /// `POST /api/service/{id}/instance?count=N`: requests `count` more instances at once (the
    /// answer lists them in `instances`).
    pub async fn request_instances(&self, id: &str, count: u32) -> Result<InstanceRequested, ClientError> {
        let count = count.to_string();
        let path = ["api", "service", id, "instance"];
        self.send::<(), _>(Method::POST, &path, &[("count", &count)], None, self.token.as_deref()).await
    }

    /// `DELETE /api/service/{id}/instance/{n}`: undeploys instance number `n`.
    pub async fn remove_instance(&self, id: &str, instance_number: u32) -> Result<MessageResponse, ClientError> {
        let n = instance_number.to_string();
        self.authed::<(), _>(Method::DELETE, &["api", "service", id, "instance", &n], None).await
    }

    // --- clusters ---

    /// `GET /api/clusters/`: every registered cluster.
    pub async fn list_clusters(&self) -> Result<Vec<Cluster>, ClientError> {
        self.authed::<(), _>(Method::GET, &["api", "clusters", ""], None).await
    }

    /// `GET /api/clusters/active`: clusters that reported recently.
    pub async fn list_active_clusters(&self) -> Result<Vec<Cluster>, ClientError> {
        self.authed::<(), _>(Method::GET, &["api", "clusters", "active"], None).await
    }

    /// `GET /api/clusters/{id}/workers`: a cluster's workers as it last reported them.
    pub async fn cluster_workers(&self, cluster_id: &str) -> Result<oak_api::rest::ClusterWorkers, ClientError> {
        self.authed::<(), _>(Method::GET, &["api", "clusters", cluster_id, "workers"], None).await
    }

    /// `POST /api/clusters/tokens`: a new single-use cluster join token that never expires
    /// (Admin only).
    pub async fn create_cluster_token(&self) -> Result<oak_api::rest::ClusterToken, ClientError> {
        self.authed::<(), _>(Method::POST, &["api", "clusters", "tokens"], None).await
    }

    /// `POST /api/clusters/tokens` with an expiry and/or several uses (Admin only).
    pub async fn create_cluster_token_with(
        &self,
        request: &oak_api::rest::ClusterTokenRequest,
    ) -> Result<oak_api::rest::ClusterToken, ClientError> {
        self.authed(Method::POST, &["api", "clusters", "tokens"], Some(request)).await
    }

    /// `POST /api/clusters/tokens/revoke`: revokes a join token given whole or by its id.
    pub async fn revoke_cluster_token(&self, token_or_id: &str) -> Result<MessageResponse, ClientError> {
        let body = oak_api::rest::RevokeClusterToken { token: token_or_id.to_string() };
        self.authed(Method::POST, &["api", "clusters", "tokens", "revoke"], Some(&body)).await
    }

    /// `DELETE /api/clusters/{id}/certificate`: forgets a cluster's certificate (and disconnects
    /// it) so it can join again with a join token.
    pub async fn reset_cluster_certificate(&self, cluster_id: &str) -> Result<MessageResponse, ClientError> {
        self.authed::<(), _>(Method::DELETE, &["api", "clusters", cluster_id, "certificate"], None).await
    }

    /// An instance's output as a streaming answer (read it with `chunk()`): the last `tail`
    /// lines, and with `follow` everything that comes after, until the instance goes away.
    pub async fn instance_logs(
        &self,
        id: &str,
        instance_number: u32,
        tail: Option<usize>,
        follow: bool,
    ) -> Result<reqwest::Response, ClientError> {
        let number = instance_number.to_string();
        let mut url = self.url(&["api", "service", id, "instance", &number, "logs"])?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(tail) = tail {
                query.append_pair("tail", &tail.to_string());
            }
            if follow {
                query.append_pair("follow", "true");
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        let mut request = self.http.get(url);
        if let Some(token) = self.token.as_deref() {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| self.transport(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        let body = error::error_body(status.as_u16(), status.canonical_reason(), &text);
        Err(ClientError::Api { status: status.as_u16(), body })
    }

    // --- plumbing ---

    async fn authed<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &[&str],
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        self.send(method, path, &[], body, self.token.as_deref()).await
    }

    /// Sends one request and decodes a 2xx answer as `T`, any other status as an `ErrorBody`.
    async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &[&str],
        query: &[(&str, &str)],
        body: Option<&B>,
        bearer: Option<&str>,
    ) -> Result<T, ClientError> {
        let mut url = self.url(path)?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let what = format!("{method} {}", url.path());
        let mut request = self.http.request(method, url);
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| self.transport(&e))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| self.transport(&e))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            let body = error::error_body(status.as_u16(), status.canonical_reason(), &text);
            return Err(ClientError::Api { status: status.as_u16(), body });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(format!("unexpected answer to {what}: {e}")))
    }

    fn transport(&self, err: &reqwest::Error) -> ClientError {
        ClientError::Transport(format!("cannot reach {}: {}", self.base_url, error::transport_reason(err)))
    }

    /// The base URL with `segments` appended, each percent-encoded, so an id can never change the
    /// path it is sent to. An empty last segment gives the trailing slash of list endpoints.
    fn url(&self, segments: &[&str]) -> Result<Url, ClientError> {
        let invalid = |why: &str| ClientError::InvalidUrl(format!("invalid URL {:?}: {why}", self.base_url));
        let mut url = Url::parse(&self.base_url).map_err(|e| invalid(&e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid("only http:// and https:// are supported"));
        }
        url.path_segments_mut().map_err(|()| invalid("cannot be a base URL"))?.pop_if_empty().extend(segments);
        Ok(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_prefixes_and_encode_ids() {
        let c = Client::new("http://localhost:10000/");
        assert_eq!(c.base_url(), "http://localhost:10000");
        assert_eq!(c.url(&["api", "applications", ""]).unwrap().as_str(), "http://localhost:10000/api/applications/");
        assert_eq!(
            c.url(&["api", "service", "a/../b"]).unwrap().as_str(),
            "http://localhost:10000/api/service/a%2F..%2Fb"
        );
        let prefixed = Client::new("http://host/oak");
        assert_eq!(
            prefixed.url(&["api", "clusters", "active"]).unwrap().as_str(),
            "http://host/oak/api/clusters/active"
        );
    }

    #[test]
    fn bad_base_urls_are_reported() {
        assert!(matches!(Client::new("localhost:10000").url(&["api"]), Err(ClientError::InvalidUrl(_))));
        assert!(matches!(Client::new("not a url").url(&["api"]), Err(ClientError::InvalidUrl(_))));
    }
}
