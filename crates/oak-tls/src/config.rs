//! `rustls` configurations for the internal wires: TLS 1.3 only (both ends are ours), the
//! `ring` provider, and client certificates checked against the server's own CA.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, CommonState, RootCertStore, ServerConfig};

use crate::{Fingerprint, Identity, PinnedCa, TlsError};

/// The one crypto provider of the binary.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Whether and how a server asks for client certificates.
#[derive(Clone, Debug)]
pub enum ClientAuth {
    /// No client certificates (joins authenticate with a token inside the session).
    None,
    /// Clients may present a certificate signed by this CA (members reconnecting) or none
    /// (first joins with a token); one signed by anybody else fails the handshake.
    Optional(CertificateDer<'static>),
    /// Every client must present a certificate signed by this CA.
    Required(CertificateDer<'static>),
}

/// A server config presenting `identity`.
pub fn server_config(identity: &Identity, clients: ClientAuth) -> Result<Arc<ServerConfig>, TlsError> {
    Ok(Arc::new(server_builder(clients)?.with_single_cert(identity.chain.clone(), identity.key.clone_key())?))
}

/// A server config presenting whatever certificate `cert` holds at each handshake.
pub fn renewing_server_config(
    cert: Arc<crate::RenewingCert>,
    clients: ClientAuth,
) -> Result<Arc<ServerConfig>, TlsError> {
    Ok(Arc::new(server_builder(clients)?.with_cert_resolver(cert)))
}

fn server_builder(
    clients: ClientAuth,
) -> Result<rustls::ConfigBuilder<ServerConfig, rustls::server::WantsServerCert>, TlsError> {
    let provider = provider();
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(&[&rustls::version::TLS13])?;
    Ok(match clients {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Optional(ca) => builder.with_client_cert_verifier(client_verifier(ca, provider, true)?),
        ClientAuth::Required(ca) => builder.with_client_cert_verifier(client_verifier(ca, provider, false)?),
    })
}

fn client_verifier(
    ca: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
    optional: bool,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca)?;
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = if optional { builder.allow_unauthenticated() } else { builder };
    builder.build().map_err(|e| TlsError::Invalid(format!("client verifier: {e}")))
}

/// A client config that trusts exactly the CA whose fingerprint is `pin` for `server_name`,
/// presenting `identity` when given (a member reconnecting with its certificate).
pub fn pinned_client_config(
    pin: Fingerprint,
    server_name: &str,
    identity: Option<&Identity>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = Arc::new(PinnedCa::new(pin, server_name, provider.clone())?);
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    Ok(Arc::new(match identity {
        Some(id) => builder.with_client_auth_cert(id.chain.clone(), id.key.clone_key())?,
        None => builder.with_no_client_auth(),
    }))
}

/// A client config for a server outside Oakestra (an external MQTT broker) whose certificate
/// chains to one of the CA certificates in `ca_pem` and names the host dialled; TLS 1.2 or 1.3.
pub fn ca_client_config(ca_pem: &str) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| TlsError::Invalid(format!("not a PEM certificate: {e}")))?;
        roots.add(cert)?;
    }
    if roots.is_empty() {
        return Err(TlsError::Invalid("no CA certificate in the PEM text".into()));
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The certificate the peer presented (a client's, on a server connection), if any.
pub fn peer_certificate(conn: &CommonState) -> Option<CertificateDer<'static>> {
    conn.peer_certificates().and_then(|c| c.first()).map(|c| c.clone().into_owned())
}
