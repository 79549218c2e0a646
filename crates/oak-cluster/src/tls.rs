//! The cluster's own certificate authority (`<data-dir>/tls/`), the server certificate of its
//! node API (:10100) and embedded broker (:10003), and the count of connections refused there.
//!
//! Workers pin the CA through the node token's fingerprint, so the CA must outlive restarts; the
//! server certificate is issued anew at every start (with the addresses of the day).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use oak_core::log_budget::LogBudget;
use oak_tls::rustls::ServerConfig;
use oak_tls::{Authority, ClientAuth, OnRefused, CLUSTER_SERVER_NAME};

use crate::ClusterConfig;

/// Directory of the CA under the cluster's data directory.
pub const TLS_DIR: &str = "tls";

pub struct ClusterTls {
    pub authority: Authority,
    /// For both listeners: workers authenticate with the node token and MQTT credentials inside
    /// the session, so no client certificates.
    pub server: Arc<ServerConfig>,
    /// The certificate `server` presents, issued again while the cluster runs.
    cert: Arc<oak_tls::RenewingCert>,
    pub refusals: Arc<Refusals>,
}

impl ClusterTls {
    pub fn load(config: &ClusterConfig) -> anyhow::Result<Self> {
        let dir = config.data_dir.join(TLS_DIR);
        let authority = Authority::load_or_create(&dir, &format!("Oakestra cluster {} CA", config.name))
            .with_context(|| format!("cannot set up the cluster's certificate authority in {}", dir.display()))?;
        let cert =
            oak_tls::RenewingCert::issue(&authority, CLUSTER_SERVER_NAME, &alt_names(config), oak_tls::RENEW_AFTER)
                .context("cannot issue the cluster's server certificate")?;
        let server = oak_tls::renewing_server_config(cert.clone(), ClientAuth::None)?;
        Ok(ClusterTls { authority, server, cert, refusals: Arc::default() })
    }

    /// Issues the server certificate (node API and broker) again when it is due; new
    /// handshakes get the new one.
    pub fn renew_if_due(&self) {
        match self.cert.renew_if_due(&self.authority, std::time::Instant::now()) {
            Ok(Some(fingerprint)) => tracing::info!(%fingerprint, "server certificate renewed"),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "cannot renew the server certificate; the old one stays"),
        }
    }
}

/// Names besides [`CLUSTER_SERVER_NAME`] (which is what workers verify): the addresses an
/// operator's tools (`curl --cacert <data-dir>/tls/ca.pem`) may dial.
fn alt_names(config: &ClusterConfig) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    if !config.api_addr.ip().is_unspecified() {
        names.push(config.api_addr.ip().to_string());
    }
    if let Some(host) = config.mqtt_advertise.as_deref().map(str::trim).filter(|h| !h.is_empty()) {
        names.push(host.trim_matches(['[', ']']).to_string());
    }
    names.sort();
    names.dedup();
    // A name rcgen cannot encode would fail the start for a cosmetic reason.
    names.retain(|n| {
        n.parse::<std::net::IpAddr>().is_ok() || n.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
    });
    names
}

/// Connections refused during the TLS handshake, by listener and reason (`/metrics`).
pub struct Refusals {
    counts: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// A port scan must not fill the log: a few lines per window, then a sum.
    log: Mutex<LogBudget>,
}

impl Default for Refusals {
    fn default() -> Self {
        Refusals { counts: Mutex::default(), log: Mutex::new(LogBudget::new(Instant::now())) }
    }
}

impl Refusals {
    /// The callback for the listener named `listener`: logs the peer and the reason, counts it.
    pub fn callback(self: &Arc<Self>, listener: &'static str) -> OnRefused {
        let this = self.clone();
        Arc::new(move |peer, reason: &str| {
            let label = oak_tls::refusal_label(reason);
            let (log, unlogged) = this.log.lock().unwrap_or_else(|e| e.into_inner()).admit(Instant::now());
            if unlogged > 0 {
                tracing::warn!(count = unlogged, "more connections refused (not logged one by one)");
            }
            if log {
                tracing::warn!(%peer, listener, reason, "refused a connection");
            }
            *this.counts.lock().unwrap_or_else(|e| e.into_inner()).entry((listener, label)).or_default() += 1;
        })
    }

    /// The counters by (listener, reason), as metric labels.
    pub fn counts(&self) -> Vec<(Vec<(&'static str, String)>, u64)> {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        (counts.iter())
            .map(|((listener, reason), n)| {
                (vec![("listener", listener.to_string()), ("reason", reason.to_string())], *n)
            })
            .collect()
    }
}
