//! Serving the public API (and the dashboard) over plain HTTP or, with an operator's certificate
//! (`--tls-cert`/`--tls-key`), over HTTPS. The certificate is read again on SIGHUP, so a renewed
//! one (e.g. by an ACME client) takes effect without a restart; a bad file keeps the old one.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use axum::serve::ListenerExt;
use axum::ServiceExt;
use oak_tls::{ReloadableCert, TlsListener};

/// The API's whole service: routes behind the trailing-slash normalisation.
pub type ApiService = tower::util::MapRequest<axum::Router, fn(Request<Body>) -> Request<Body>>;

/// Serves `service` on `listener` until `shutdown`, over TLS with `cert` when given.
pub fn spawn_serve(
    listener: tokio::net::TcpListener,
    service: ApiService,
    cert: Option<Arc<ReloadableCert>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    let make = service.into_make_service_with_connect_info::<SocketAddr>();
    match cert {
        None => tokio::spawn(async move { axum::serve(listener, make).with_graceful_shutdown(shutdown).await }),
        Some(cert) => {
            let config = match oak_tls::reloadable_server_config(cert) {
                Ok(c) => c,
                Err(e) => return tokio::spawn(async move { Err(std::io::Error::other(e)) }),
            };
            let refused = Arc::new(|peer: SocketAddr, why: &str| {
                tracing::debug!(%peer, reason = why, "HTTPS connection refused");
            });
            tokio::spawn(async move {
                // `tap_io` gives the connections their peer address (`ConnectInfo`), which the
                // login limiter keys on.
                let listener = TlsListener::new(listener, config, refused)?.tap_io(|_| {});
                axum::serve(listener, make).with_graceful_shutdown(shutdown).await
            })
        }
    }
}

/// Reloads `cert` whenever the process gets SIGHUP, until `shutdown`.
pub async fn reload_on_sighup(cert: Arc<ReloadableCert>, shutdown: impl Future<Output = ()>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch for SIGHUP: the API certificate is not reloadable");
                return;
            }
        };
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = hangups.recv() => reload(&cert),
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = cert;
        shutdown.await;
    }
}

/// Reads the certificate files again, logging the outcome.
pub fn reload(cert: &ReloadableCert) {
    let old = cert.fingerprint();
    match cert.reload() {
        Ok(new) if new == old => tracing::info!(fingerprint = %new, "API certificate reloaded: unchanged"),
        Ok(new) => tracing::info!(fingerprint = %new, previous = %old, "API certificate reloaded"),
        Err(e) => tracing::error!(error = %e, fingerprint = %old, "API certificate not reloaded; the old one stays"),
    }
}
