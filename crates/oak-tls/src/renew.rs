//! A tier's own server certificate, issued by its CA at start and issued again while it runs:
//! it is valid for 397 days, and a root or cluster that runs longer must not start presenting
//! an expired one (every cluster or worker would then refuse it). The new certificate serves the
//! next handshakes; open connections keep theirs.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::{provider, Authority, Fingerprint, Identity, TlsError};

/// How long a server certificate is used before it is replaced: well within its 397 days.
pub const RENEW_AFTER: Duration = Duration::from_secs(30 * 86_400);

pub struct RenewingCert {
    server_name: String,
    alt_names: Vec<String>,
    renew_after: Duration,
    current: RwLock<(Arc<CertifiedKey>, Instant)>,
}

impl std::fmt::Debug for RenewingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RenewingCert({})", self.server_name)
    }
}

impl RenewingCert {
    /// Issues the first certificate for `server_name` and `alt_names`; the next one is due
    /// `renew_after` later ([`RENEW_AFTER`] outside tests).
    pub fn issue(
        authority: &Authority,
        server_name: &str,
        alt_names: &[String],
        renew_after: Duration,
    ) -> Result<Arc<Self>, TlsError> {
        let first = certified(&authority.issue_server(server_name, alt_names)?)?;
        Ok(Arc::new(RenewingCert {
            server_name: server_name.into(),
            alt_names: alt_names.to_vec(),
            renew_after,
            current: RwLock::new((Arc::new(first), Instant::now())),
        }))
    }

    /// Issues a new certificate with `authority` (the one that issued the first) if the one in
    /// use is due; its fingerprint when it did. On an error the certificate in use stays.
    pub fn renew_if_due(&self, authority: &Authority, now: Instant) -> Result<Option<Fingerprint>, TlsError> {
        let issued = self.current.read().unwrap_or_else(|e| e.into_inner()).1;
        if now.saturating_duration_since(issued) < self.renew_after {
            return Ok(None);
        }
        let next = Arc::new(certified(&authority.issue_server(&self.server_name, &self.alt_names)?)?);
        let fingerprint = Fingerprint::of(&next.cert[0]);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = (next, now);
        Ok(Some(fingerprint))
    }

    /// Fingerprint of the leaf certificate in use.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.current.read().unwrap_or_else(|e| e.into_inner()).0.cert[0])
    }
}

impl ResolvesServerCert for RenewingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).0.clone())
    }
}

fn certified(identity: &Identity) -> Result<CertifiedKey, TlsError> {
    let key = provider()
        .key_provider
        .load_private_key(identity.key.clone_key())
        .map_err(|e| TlsError::Invalid(format!("server key: {e}")))?;
    Ok(CertifiedKey::new(identity.chain.clone(), key))
}
