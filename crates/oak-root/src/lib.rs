//! The Oakestra root orchestrator: public REST API (users, organizations, applications,
//! services, instances, clusters), authentication, and the root's share of scheduling.
//!
//! [`Root::open`] prepares a data directory (database, signing key, first `Admin`), and
//! [`Root::serve`] answers HTTP until the shutdown future resolves.

mod api;
mod auth;
mod body;
mod bootstrap;
pub mod cluster_tokens;
mod committed;
mod dashboard;
mod error;
pub mod fleet;
mod https;
mod ids;
mod metrics;
mod quotas;
mod state;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use oak_store::SqliteStore;
use tower::Layer;

pub use api::ApiDoc;
pub use dashboard::CONTENT_SECURITY_POLICY;
pub use oak_store::Durability;
pub use state::AppState;

/// The Prometheus scrape targets in the data dir, unless [`Root::set_prometheus_sd_file`] says
/// otherwise.
pub const PROMETHEUS_TARGETS_FILE: &str = "prometheus-targets.json";

/// Directory in the data dir of the root's CA (`ca.pem`, `ca-key.pem`).
pub const TLS_DIR: &str = "tls";
/// How often the root asks whether its channel certificate is due for renewal.
const CERT_CHECK: std::time::Duration = std::time::Duration::from_secs(3600);

/// Names in the channel certificate besides `oak_tls::ROOT_SERVER_NAME`: the address it listens
/// on, when that is one address (clusters verify the pinned CA, not the address they dialled).
fn channel_names(addr: SocketAddr) -> Vec<String> {
    if addr.ip().is_unspecified() {
        Vec::new()
    } else {
        vec![addr.ip().to_string()]
    }
}

#[derive(Debug, Clone)]
pub struct RootConfig {
    pub api_addr: SocketAddr,
    /// Where clusters dial in (the cluster channel).
    pub channel_addr: SocketAddr,
    pub data_dir: PathBuf,
    /// What an answered request survives: a crash of the process (`Normal`, the default) or
    /// also a power cut (`Full`: the database syncs its log at every group commit).
    pub store_durability: oak_store::Durability,
    /// Password for the `Admin` user created at first start; `None` means the default `Admin`
    /// while `api_addr` is loopback, else a generated one in `<data_dir>/admin-password`.
    pub admin_password: Option<String>,
    pub fleet: fleet::FleetConfig,
    /// Roles besides `Admin` that may ask for privileged containers and reserved host ports.
    pub privileged_roles: Vec<String>,
}

pub struct Root {
    config: RootConfig,
    /// Where the Prometheus scrape targets are written (`None`: nowhere).
    sd_file: Option<PathBuf>,
    state: AppState,
    /// More listeners answering like the API's (the dashboard's own port).
    extra: Vec<tokio::net::TcpListener>,
    /// The operator's certificate for HTTPS on the API's listeners; plain HTTP without.
    api_cert: Option<Arc<oak_tls::ReloadableCert>>,
}

impl Root {
    /// Opens the data directory: creates it, migrates the database, loads or creates the
    /// signing key and the first `Admin`. Any error here is a configuration problem.
    pub async fn open(config: RootConfig) -> anyhow::Result<Self> {
        let dir = &config.data_dir;
        bootstrap::secure_data_dir(dir)?;
        let store = SqliteStore::open_with(&dir.join(bootstrap::DATABASE_FILE), config.store_durability)
            .with_context(|| format!("cannot open the database in {}", dir.display()))?;
        bootstrap::secure_data_dir(dir)?;
        let unknown = oak_core::authz::unknown_roles(&config.privileged_roles);
        if !unknown.is_empty() {
            anyhow::bail!("privileged roles {unknown:?} are not roles ({})", oak_api::status::role::ALL.join(", "));
        }
        let key = bootstrap::signing_key(dir)?;
        let loopback = config.api_addr.ip().is_loopback();
        bootstrap::ensure_admin(&store, config.admin_password.as_deref(), dir, loopback)?;
        let trust = fleet::ChannelTrust::open(&dir.join(TLS_DIR), &channel_names(config.channel_addr))
            .context("cannot set up the cluster channel's certificate authority")?;
        cluster_tokens::ensure_first(&store, dir, trust.ca())?;
        let store: Arc<dyn oak_store::RootStore> = Arc::new(store);
        let fleet = fleet::Fleet::open(store.clone(), config.fleet.clone(), trust)
            .context("cannot rebuild the overlay's address pools from the database")?;
        let metrics = Arc::new(metrics::RootMetrics::new(&fleet, None));
        let state = AppState {
            metrics,
            fleet,
            store,
            tokens: Arc::new(auth::tokens::TokenKeys::from_secret(&key)),
            limiter: Arc::new(auth::limiter::LoginLimiter::default()),
            passwords: Arc::new(auth::passwords::PasswordWork::for_this_machine()),
            policy: Arc::new(oak_core::descriptor_policy::Policy::new(
                config.privileged_roles.clone(),
                &[config.api_addr.port(), config.channel_addr.port()],
            )),
            admin_password_file: Arc::new(dir.join(bootstrap::ADMIN_PASSWORD_FILE)),
            quota_reservations: Arc::default(),
        };
        let sd_file = Some(dir.join(PROMETHEUS_TARGETS_FILE));
        Ok(Root { config, state, extra: Vec::new(), api_cert: None, sd_file })
    }

    /// The file holding the generated `Admin` password, if this data directory has one.
    pub fn admin_password_file(&self) -> Option<PathBuf> {
        Some(self.config.data_dir.join(bootstrap::ADMIN_PASSWORD_FILE)).filter(|p| p.exists())
    }

    /// Serves the dashboard (and the API it calls, so the page stays same-origin) also on
    /// `listener`, e.g. the root's `--dashboard-port` or port 80 of `oakestra up`.
    pub fn add_listener(&mut self, listener: tokio::net::TcpListener) {
        self.extra.push(listener);
    }

    /// Serves the API and the dashboard over HTTPS with `cert` (reloaded on SIGHUP).
    pub fn use_tls(&mut self, cert: Arc<oak_tls::ReloadableCert>) {
        self.api_cert = Some(cert);
    }

    /// The scrape token `/metrics` asks for when the API listens on more than loopback
    /// (`--metrics-token`); without one only an Admin's access token reads it there.
    pub fn set_metrics_token(&mut self, token: Option<String>) {
        self.state.metrics = Arc::new(metrics::RootMetrics::new(&self.state.fleet, token));
    }

    /// Where the scrape targets of every tier are kept for Prometheus' file-based discovery
    /// (default `<data-dir>/prometheus-targets.json`; `None`: not written).
    pub fn set_prometheus_sd_file(&mut self, path: Option<PathBuf>) {
        self.sd_file = path;
    }

    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// The whole HTTP service (routes plus trailing-slash handling), for in-process tests.
    pub fn service(
        &self,
    ) -> impl tower::Service<
        axum::http::Request<axum::body::Body>,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
        Future = impl Send,
    > + Clone {
        tower::util::MapRequestLayer::new(api::trim_trailing_slash).layer(api::router(self.state.clone()))
    }

    /// Serves the API and the cluster channel, and runs the retry loop, until `shutdown`
    /// resolves.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let (listener, channel) = self.listen().await?;
        self.serve_on(listener, channel, shutdown).await
    }

    /// Binds the configured API and cluster-channel addresses, for [`Root::serve_on`]; a caller
    /// that starts more than the root (`oakestra up`) binds first, so a port in use stops it
    /// before anything else has started.
    pub async fn listen(&self) -> anyhow::Result<(tokio::net::TcpListener, tokio::net::TcpListener)> {
        let listener = tokio::net::TcpListener::bind(self.config.api_addr)
            .await
            .with_context(|| format!("cannot listen on {}", self.config.api_addr))?;
        let channel = tokio::net::TcpListener::bind(self.config.channel_addr)
            .await
            .with_context(|| format!("cannot listen for clusters on {}", self.config.channel_addr))?;
        Ok((listener, channel))
    }

    /// Like [`Root::serve`], on listeners bound by the caller (tests bind port 0).
    pub async fn serve_on(
        self,
        listener: tokio::net::TcpListener,
        channel: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(addr = %listener.local_addr()?, channel = %channel.local_addr()?,
            data_dir = %self.config.data_dir.display(), "root orchestrator listening");
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let channel_task = tokio::spawn(fleet::serve_channel(channel, self.state.fleet.clone(), stopped()));
        let retry_task = tokio::spawn(fleet::run_retries(self.state.fleet.clone(), stopped()));
        let renewals = {
            let fleet = self.state.fleet.clone();
            let stop = stopped();
            tokio::spawn(async move {
                let checks = async {
                    loop {
                        tokio::time::sleep(CERT_CHECK).await;
                        fleet.trust().renew_if_due();
                    }
                };
                tokio::select! { _ = checks => {}, _ = stop => {} }
            })
        };
        let trim: fn(axum::http::Request<axum::body::Body>) -> axum::http::Request<axum::body::Body> =
            api::trim_trailing_slash;
        let service = tower::util::MapRequestLayer::new(trim).layer(api::router(self.state.clone()));
        let cert = self.api_cert;
        if let Some(cert) = &cert {
            tracing::info!(fingerprint = %cert.fingerprint(), "serving the API over HTTPS");
            tokio::spawn(https::reload_on_sighup(cert.clone(), stopped()));
        }
        let access = &self.state.metrics.access;
        for addr in std::iter::once(&listener).chain(&self.extra).filter_map(|l| l.local_addr().ok()) {
            access.listening_on(addr);
        }
        if access.exposed() && !access.has_token() {
            tracing::warn!("the API listens beyond loopback and no --metrics-token is set: /metrics answers only to an Admin's access token");
        }
        let mut extra_tasks = Vec::new();
        if let (Some(path), Ok(addr)) = (self.sd_file.clone(), listener.local_addr()) {
            let root = fleet::RootTarget { addr, https: cert.is_some() };
            tokio::spawn(fleet::write_scrape_targets(self.state.fleet.clone(), path, root, stopped()));
        }
        for extra in self.extra {
            tracing::info!(addr = ?extra.local_addr().ok(), "dashboard and API also listening");
            extra_tasks.push(https::spawn_serve(extra, service.clone(), cert.clone(), stopped()));
        }
        let main = https::spawn_serve(listener, service, cert, stopped());
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let result = match main.await {
            Ok(r) => r.context("the API server failed"),
            Err(e) => Err(anyhow::anyhow!("the API server task failed: {e}")),
        };
        let _ = channel_task.await;
        let _ = retry_task.await;
        let _ = renewals.await;
        for task in extra_tasks {
            match task.await {
                Ok(Err(e)) => tracing::error!(error = %e, "the dashboard listener failed"),
                Err(e) => tracing::error!(error = %e, "the dashboard listener task failed"),
                Ok(Ok(())) => {}
            }
        }
        result
    }
}
