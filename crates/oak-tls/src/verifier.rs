//! Verifying a server against the CA a join token pins, before any secret is sent.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::Fingerprint;

/// Accepts a server whose chain contains the pinned CA certificate and whose leaf is signed by
/// it, valid now, for `server_name` and for server authentication (so a client certificate the
/// same CA signed for a cluster cannot pose as the root). The address dialled is not checked:
/// the pinned CA is the identity, and edge sites reach their root through NAT and aliases.
#[derive(Debug)]
pub struct PinnedCa {
    pin: Fingerprint,
    server_name: ServerName<'static>,
    provider: Arc<CryptoProvider>,
}

impl PinnedCa {
    pub fn new(pin: Fingerprint, server_name: &str, provider: Arc<CryptoProvider>) -> Result<Self, crate::TlsError> {
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|_| crate::TlsError::Invalid(format!("{server_name:?} is not a server name")))?;
        Ok(PinnedCa { pin, server_name, provider })
    }
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates.iter().find(|c| Fingerprint::of(c) == self.pin) else {
            return Err(rustls::Error::General(format!(
                "the server's certificate does not chain to the CA the token pins (sha256 {}): this is not the server that issued the token",
                self.pin
            )));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(format!("cannot verify against the pinned CA: {e}")))?;
        webpki.verify_server_cert(end_entity, &[], &self.server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
