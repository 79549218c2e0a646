//! What the cluster channel trusts: the root's CA (signs each cluster's certificate at its first
//! join), the channel's TLS config (the root's certificate; clients may present one of the CA's
//! certificates), and counters of what was refused, by reason, for `/metrics`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oak_core::log_budget::LogBudget;
use oak_tls::{Authority, ClientAuth, Fingerprint, ROOT_SERVER_NAME};

use super::Fleet;

/// Certificates of clusters are long-lived: the root checks each one's fingerprint against its
/// store at every connection, so forgetting it (`oakestra cluster-reset`) revokes it.
pub const CLUSTER_CERT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Reasons a channel connection is refused; each is a label of
/// `oakestra_channel_refusals_total`, listed so every one shows (as 0) from the start.
pub const REFUSAL_REASONS: &[&str] = &[
    "tls_handshake",
    "bad_hello",
    "malformed_token",
    "unknown_token",
    "revoked_token",
    "expired_token",
    "used_token",
    "identity_taken",
    "name_taken",
    "unknown_certificate",
    "store",
];

pub struct ChannelTrust {
    pub authority: Authority,
    pub server: Arc<oak_tls::rustls::ServerConfig>,
    /// The channel's certificate, issued again while the root runs ([`ChannelTrust::renew_if_due`]).
    cert: Arc<oak_tls::RenewingCert>,
    refusals: Mutex<BTreeMap<&'static str, u64>>,
    /// A port scan must not fill the log: a few lines per window, then a sum.
    refusal_log: Mutex<LogBudget>,
    /// Answers (by request id) from a cluster that was not asked.
    pub stray_answers: AtomicU64,
}

impl ChannelTrust {
    /// Loads or creates the CA in `tls_dir` and issues the channel's certificate for
    /// [`ROOT_SERVER_NAME`] and `addresses`.
    pub fn open(tls_dir: &Path, addresses: &[String]) -> Result<Self, oak_tls::TlsError> {
        let authority = Authority::load_or_create(tls_dir, "Oakestra root CA")?;
        Self::with(authority, addresses)
    }

    /// The same with a given CA (tests).
    pub fn with(authority: Authority, addresses: &[String]) -> Result<Self, oak_tls::TlsError> {
        let cert = oak_tls::RenewingCert::issue(&authority, ROOT_SERVER_NAME, addresses, oak_tls::RENEW_AFTER)?;
        let server = oak_tls::renewing_server_config(cert.clone(), ClientAuth::Optional(authority.cert().clone()))?;
        Ok(ChannelTrust {
            authority,
            server,
            cert,
            refusals: Mutex::new(BTreeMap::new()),
            refusal_log: Mutex::new(LogBudget::new(Instant::now())),
            stray_answers: AtomicU64::new(0),
        })
    }

    /// Issues the channel's certificate again when it is due; new handshakes get the new one.
    pub fn renew_if_due(&self) {
        match self.cert.renew_if_due(&self.authority, Instant::now()) {
            Ok(Some(fingerprint)) => tracing::info!(%fingerprint, "cluster channel certificate renewed"),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "cannot renew the cluster channel certificate; the old one stays"),
        }
    }

    pub fn ca(&self) -> Fingerprint {
        self.authority.fingerprint()
    }

    /// Logs and counts a refused connection.
    pub fn refused(&self, peer: SocketAddr, reason: &'static str, detail: &str) {
        let (log, unlogged) = self.refusal_log.lock().unwrap_or_else(|e| e.into_inner()).admit(Instant::now());
        if unlogged > 0 {
            tracing::warn!(count = unlogged, "more cluster channel connections refused (not logged one by one)");
        }
        if log {
            tracing::warn!(%peer, reason, detail, "cluster channel connection refused");
        }
        *self.refusals.lock().unwrap_or_else(|e| e.into_inner()).entry(reason).or_default() += 1;
    }

    /// Refusals so far by reason, every known reason included.
    pub fn refusal_counts(&self) -> Vec<(&'static str, u64)> {
        let counts = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: BTreeMap<&'static str, u64> = REFUSAL_REASONS.iter().map(|r| (*r, 0)).collect();
        all.extend(counts.iter().map(|(k, v)| (*k, *v)));
        all.into_iter().collect()
    }

    pub fn count_stray_answer(&self) {
        self.stray_answers.fetch_add(1, Ordering::Relaxed);
    }
}

impl Fleet {
    pub fn trust(&self) -> &ChannelTrust {
        &self.trust
    }
}
