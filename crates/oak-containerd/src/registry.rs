//! A client of the OCI distribution API, just what pulling needs: manifests and blobs, with the
//! anonymous bearer-token dance registries such as Docker Hub and ghcr.io require. Built on the
//! workspace's `reqwest` rather than a registry crate, which would bring a second HTTP stack.

use std::sync::Arc;
use std::time::Duration;

use oak_core::egress::EgressPolicy;

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode, Url};

use crate::egress;
use crate::image::{sha256_digest, MANIFEST_ACCEPT};
use crate::reference::ImageRef;

/// Largest manifest or config accepted into memory.
const MAX_DOCUMENT: usize = 8 * 1024 * 1024;

/// Why a registry call failed; the message ends up in the instance's `status_detail`.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry {host} unreachable: {message}")]
    Unreachable { host: String, message: String },
    #[error("{what} not found in registry {host}")]
    NotFound { host: String, what: String },
    #[error("registry {host} refused access to {repository} ({status})")]
    Denied { host: String, repository: String, status: u16 },
    #[error("registry {host}: {message}")]
    Protocol { host: String, message: String },
    #[error("registry {host} refused by this worker: {message}")]
    Refused { host: String, message: String },
}

/// A fetched manifest or config document.
#[derive(Debug, Clone)]
pub struct Document {
    pub media_type: String,
    pub digest: String,
    pub body: Vec<u8>,
}

#[derive(Clone)]
pub struct Registry {
    http: reqwest::Client,
    insecure: Vec<String>,
    egress: Arc<EgressPolicy>,
}

/// A pull's view of one repository: where it is and the token it was given.
pub struct Session<'a> {
    registry: &'a Registry,
    image: &'a ImageRef,
    base: String,
    token: Option<String>,
}

impl Registry {
    /// `insecure`: registries (`host:port` or `host`) spoken to over plain HTTP. Loopback
    /// registries always are, as Docker does. `egress`: where requests may go (registries,
    /// token services, redirects).
    pub fn new(insecure: Vec<String>, egress: Arc<EgressPolicy>) -> Self {
        let builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("oakestra/", env!("CARGO_PKG_VERSION")));
        // Building fails only when TLS cannot be set up, which a worker cannot do without.
        let http = egress::client(egress.clone(), builder).expect("the registry HTTP client");
        Self { http, insecure, egress }
    }

    pub fn plain_http(&self, image: &ImageRef) -> bool {
        let host = image.registry_host();
        self.insecure.iter().any(|i| i == &image.registry || i == host)
            || host == "localhost"
            || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// Whether this worker may pull from the image's registry at all; checked before an image
    /// already in containerd is used too, so taking an allowance away also takes away what was
    /// pulled under it.
    pub fn check(&self, image: &ImageRef) -> Result<(), RegistryError> {
        let session = self.session(image);
        let url = Url::parse(&session.base).map_err(|e| session.protocol(format!("bad registry address: {e}")))?;
        session.allowed(&url)
    }

    pub fn session<'a>(&'a self, image: &'a ImageRef) -> Session<'a> {
        let scheme = if self.plain_http(image) { "http" } else { "https" };
        Session { registry: self, image, base: format!("{scheme}://{}", image.api_host()), token: None }
    }
}

impl Session<'_> {
    fn host(&self) -> String {
        self.image.registry.clone()
    }

    /// Fetches a manifest (by tag or digest) and checks its digest when it was asked by digest.
    pub async fn manifest(&mut self, reference: &str) -> Result<Document, RegistryError> {
        let url = format!("{}/v2/{}/manifests/{reference}", self.base, self.image.repository);
        let resp = self.get(&url, Some(MANIFEST_ACCEPT)).await?;
        let resp = self.check(resp, &format!("manifest {reference:?}")).await?;
        let media_type = content_type(&resp);
        let body = read_limited(resp, &self.host()).await?;
        let digest = sha256_digest(&body);
        if reference.starts_with("sha256:") && digest != reference {
            return Err(self.protocol(format!("manifest {reference} arrived with digest {digest}")));
        }
        let media_type = if media_type.is_empty() || media_type == "application/json" {
            serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("mediaType").and_then(|m| m.as_str()).map(str::to_string))
                .unwrap_or_default()
        } else {
            media_type
        };
        Ok(Document { media_type, digest, body })
    }

    /// Fetches a small blob (a config) into memory, checking its digest.
    pub async fn small_blob(&mut self, digest: &str) -> Result<Vec<u8>, RegistryError> {
        let resp = self.blob(digest).await?;
        let body = read_limited(resp, &self.host()).await?;
        let got = sha256_digest(&body);
        if got != digest {
            return Err(self.protocol(format!("blob {digest} arrived with digest {got}")));
        }
        Ok(body)
    }

    /// Starts fetching a blob; the caller streams the body (and containerd checks the digest).
    pub async fn blob(&mut self, digest: &str) -> Result<Response, RegistryError> {
        let url = format!("{}/v2/{}/blobs/{digest}", self.base, self.image.repository);
        let resp = self.get(&url, None).await?;
        self.check(resp, &format!("blob {digest}")).await
    }

    /// GET with the session's token; on a bearer challenge, fetches a token once and retries.
    async fn get(&mut self, url: &str, accept: Option<&str>) -> Result<Response, RegistryError> {
        let resp = self.send(url, accept).await?;
        if resp.status() != StatusCode::UNAUTHORIZED || self.token.is_some() {
            return Ok(resp);
        }
        let Some(challenge) = resp.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).map(str::to_string)
        else {
            return Ok(resp);
        };
        let Some(params) = parse_bearer_challenge(&challenge) else {
            return Ok(resp);
        };
        self.token = Some(self.fetch_token(&params).await?);
        self.send(url, accept).await
    }

    /// Refuses a URL the egress policy does not allow, before anything is sent.
    fn allowed(&self, url: &Url) -> Result<(), RegistryError> {
        egress::check_url(&self.registry.egress, url)
            .map_err(|refusal| RegistryError::Refused { host: self.host(), message: refusal.to_string() })
    }

    async fn send(&self, url: &str, accept: Option<&str>) -> Result<Response, RegistryError> {
        let url = Url::parse(url).map_err(|e| self.protocol(format!("bad URL {url:?}: {e}")))?;
        self.allowed(&url)?;
        let mut req = self.registry.http.get(url);
        if let Some(accept) = accept {
            req = req.header(ACCEPT, accept);
        }
        if let Some(token) = &self.token {
            req = req.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        req.send().await.map_err(|e| self.unreachable(&e, ""))
    }

    async fn fetch_token(&self, params: &[(String, String)]) -> Result<String, RegistryError> {
        let realm = params.iter().find(|(k, _)| k == "realm").map(|(_, v)| v.as_str()).unwrap_or_default();
        let query: Vec<(&str, &str)> =
            params.iter().filter(|(k, _)| k != "realm").map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let url = Url::parse_with_params(realm, &query)
            .map_err(|e| self.protocol(format!("bad token realm {realm:?}: {e}")))?;
        self.allowed(&url)?;
        let resp = self.registry.http.get(url).send().await.map_err(|e| self.unreachable(&e, "token service: "))?;
        if !resp.status().is_success() {
            return Err(RegistryError::Denied {
                host: self.host(),
                repository: self.image.repository.clone(),
                status: resp.status().as_u16(),
            });
        }
        let body = read_limited(resp, &self.host()).await?;
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| self.protocol(format!("token answer is not JSON: {e}")))?;
        v.get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .ok_or_else(|| self.protocol("token answer holds no token".into()))
    }

    async fn check(&self, resp: Response, what: &str) -> Result<Response, RegistryError> {
        match resp.status() {
            s if s.is_success() => Ok(resp),
            StatusCode::NOT_FOUND => Err(RegistryError::NotFound { host: self.host(), what: what.to_string() }),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                // Docker Hub answers 401 for repositories that do not exist.
                Err(RegistryError::Denied {
                    host: self.host(),
                    repository: self.image.repository.clone(),
                    status: resp.status().as_u16(),
                })
            }
            s => Err(self.protocol(format!("{what}: HTTP {}", s.as_u16()))),
        }
    }

    /// A failed request: refused by the egress policy (on resolving or redirecting) or not
    /// answered.
    fn unreachable(&self, e: &reqwest::Error, what: &str) -> RegistryError {
        match egress::refusal_in(e) {
            Some(refusal) => RegistryError::Refused { host: self.host(), message: format!("{what}{refusal}") },
            None => RegistryError::Unreachable { host: self.host(), message: format!("{what}{}", error_chain(e)) },
        }
    }

    fn protocol(&self, message: String) -> RegistryError {
        RegistryError::Protocol { host: self.host(), message }
    }
}

fn content_type(resp: &Response) -> String {
    resp.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_string())
        .unwrap_or_default()
}

async fn read_limited(mut resp: Response, host: &str) -> Result<Vec<u8>, RegistryError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| RegistryError::Unreachable { host: host.to_string(), message: error_chain(&e) })?
    {
        if body.len() + chunk.len() > MAX_DOCUMENT {
            return Err(RegistryError::Protocol {
                host: host.to_string(),
                message: "document larger than 8 MiB".into(),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The error and its causes on one line (reqwest's top-level message alone says little).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Parameters of `Bearer realm="…",service="…",scope="…"`.
pub fn parse_bearer_challenge(header: &str) -> Option<Vec<(String, String)>> {
    let rest = header.trim().strip_prefix("Bearer ").or_else(|| header.trim().strip_prefix("bearer "))?;
    let mut params = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect::<String>().trim().to_string();
        if key.is_empty() {
            break;
        }
        let value = if chars.peek() == Some(&'"') {
            chars.next();
            let mut v = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => v.extend(chars.next()),
                    '"' => break,
                    c => v.push(c),
                }
            }
            v
        } else {
            chars.by_ref().take_while(|c| *c != ',').collect::<String>().trim().to_string()
        };
        params.push((key.to_ascii_lowercase(), value));
    }
    params.iter().any(|(k, _)| k == "realm").then_some(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges() {
        let p = parse_bearer_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
        )
        .unwrap();
        assert_eq!(
            p,
            vec![
                ("realm".into(), "https://auth.docker.io/token".into()),
                ("service".into(), "registry.docker.io".into()),
                ("scope".into(), "repository:library/nginx:pull".into()),
            ]
        );
        let p = parse_bearer_challenge(r#"Bearer realm="https://ghcr.io/token", scope="a,b""#).unwrap();
        assert_eq!(p[1], ("scope".into(), "a,b".into()));
        assert!(parse_bearer_challenge(r#"Basic realm="x""#).is_none());
        assert!(parse_bearer_challenge("Bearer service=x").is_none());
    }

    #[test]
    fn loopback_and_listed_registries_use_plain_http() {
        let r = Registry::new(vec!["10.0.0.5:5000".into(), "reg.local".into()], Default::default());
        let plain = |s: &str| r.plain_http(&ImageRef::parse(s).unwrap());
        assert!(plain("127.0.0.1:5000/x"));
        assert!(plain("localhost:5000/x"));
        assert!(plain("10.0.0.5:5000/x"));
        assert!(plain("reg.local:443/x"));
        assert!(!plain("10.0.0.5:5001/x"));
        assert!(!plain("nginx"));
        assert!(!plain("ghcr.io/a/b"));
    }
}
