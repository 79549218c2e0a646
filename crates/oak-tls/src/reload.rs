//! A server certificate read from PEM files and swapped in place when the operator asks
//! (SIGHUP), without dropping connections or restarting the listener.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::{provider, Fingerprint, TlsError};

pub struct ReloadableCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for ReloadableCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReloadableCert({})", self.cert_path.display())
    }
}

impl ReloadableCert {
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<Self>, TlsError> {
        let current = RwLock::new(Arc::new(read_pair(cert_path, key_path)?));
        Ok(Arc::new(ReloadableCert { cert_path: cert_path.into(), key_path: key_path.into(), current }))
    }

    /// Reads the files again; on error the previous certificate stays in use.
    pub fn reload(&self) -> Result<Fingerprint, TlsError> {
        let pair = Arc::new(read_pair(&self.cert_path, &self.key_path)?);
        let fingerprint = Fingerprint::of(&pair.cert[0]);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = pair;
        Ok(fingerprint)
    }

    /// Fingerprint of the leaf certificate in use.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.current.read().unwrap_or_else(|e| e.into_inner()).cert[0])
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

fn read_pair(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let bad = |path: &Path, reason: String| TlsError::BadFile { path: path.into(), reason };
    let pem = std::fs::read(cert_path).map_err(|e| TlsError::io(cert_path, e))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| bad(cert_path, format!("not PEM certificates: {e}")))?;
    if chain.is_empty() {
        return Err(bad(cert_path, "holds no certificate".into()));
    }
    let key_pem = std::fs::read(key_path).map_err(|e| TlsError::io(key_path, e))?;
    let key =
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| bad(key_path, format!("not a PEM private key: {e}")))?;
    let key = provider().key_provider.load_private_key(key).map_err(|e| bad(key_path, format!("unusable key: {e}")))?;
    let pair = CertifiedKey::new(chain, key);
    pair.keys_match().map_err(|e| bad(key_path, format!("does not belong to {}: {e}", cert_path.display())))?;
    Ok(pair)
}

/// A config for a public HTTPS listener (TLS 1.2 and 1.3, HTTP/1.1) serving `cert`.
pub fn reloadable_server_config(cert: Arc<ReloadableCert>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
