//! HTTPS to a root: the system's CAs, or only the CA the operator names (`--ca-cert`, for a
//! root with a certificate of a private CA), and the fingerprint of the certificate the server
//! presented, so the CLI can show it on first use and notice when it changes.

use std::sync::{Arc, Mutex};

use oak_tls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use oak_tls::rustls::client::WebPkiServerVerifier;
use oak_tls::rustls::pki_types::pem::PemObject;
use oak_tls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use oak_tls::rustls::{self, DigitallySignedStruct, RootCertStore, SignatureScheme};
use oak_tls::Fingerprint;

use crate::ClientError;

/// The last server certificate verified by a client (shared by its clones).
pub type SeenCertificate = Arc<Mutex<Option<Fingerprint>>>;

/// A rustls client config trusting `ca_pem`'s certificates only, or the system's CAs without;
/// records each verified server certificate's fingerprint in `seen`.
pub fn client_config(ca_pem: Option<&str>, seen: SeenCertificate) -> Result<rustls::ClientConfig, ClientError> {
    let invalid = ClientError::Tls;
    let mut roots = RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| invalid(format!("the CA certificate is not PEM: {e}")))?;
            if certs.is_empty() {
                return Err(invalid("the CA certificate file holds no certificate".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| invalid(format!("unusable CA certificate: {e}")))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    let provider = oak_tls::provider();
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| invalid(format!("cannot verify servers: {e} (no CA certificates: pass --ca-cert)")))?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("TLS configuration failed: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Recording { inner, seen }))
        .with_no_client_auth();
    Ok(config)
}

/// Standard WebPKI verification that remembers what it verified.
#[derive(Debug)]
struct Recording {
    inner: Arc<WebPkiServerVerifier>,
    seen: SeenCertificate,
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(Fingerprint::of(end_entity));
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
