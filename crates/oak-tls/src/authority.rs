//! Private certificate authorities and the identities they issue.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use crate::files::{private_dir, read, write_private};
use crate::{Fingerprint, TlsError};

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca-key.pem";
const CA_YEARS: i64 = 20;
/// Server certificates are issued anew at every start, so they can be short-lived.
const SERVER_DAYS: i64 = 397;

/// A certificate chain and its private key, ready for a `rustls` config.
#[derive(Debug)]
pub struct Identity {
    /// Leaf first, then the CA, so a client pinning the CA finds it in the chain.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity { chain: self.chain.clone(), key: self.key.clone_key() }
    }
}

impl Identity {
    /// SHA-256 of the leaf certificate: how a server recognises the holder of this identity.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.chain[0])
    }

    /// The chain and the key as PEM, for files an operator or another tier reads.
    pub fn to_pem(&self) -> (String, String) {
        let chain = self.chain.iter().map(|c| to_pem("CERTIFICATE", c)).collect();
        (chain, to_pem("PRIVATE KEY", self.key.secret_der()))
    }
}

/// PEM text of one DER object.
pub fn to_pem(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der.to_vec()))
}

/// A CA kept in `<dir>/ca.pem` and `<dir>/ca-key.pem` (0600, in a 0700 directory).
pub struct Authority {
    cert: CertificateDer<'static>,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Authority({:?})", self.fingerprint())
    }
}

impl Authority {
    /// Loads the CA from `dir`, or creates it there at first start with `common_name`.
    pub fn load_or_create(dir: &Path, common_name: &str) -> Result<Self, TlsError> {
        private_dir(dir)?;
        let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
        match (read(&cert_path)?, read(&key_path)?) {
            (Some(cert_pem), Some(key_pem)) => Self::from_pem(&cert_path, &cert_pem, &key_path, &key_pem),
            (None, None) => {
                let ca = Self::generate(common_name)?;
                write_private(&key_path, ca.issuer.key().serialize_pem().as_bytes())?;
                write_private(&cert_path, ca.cert_pem.as_bytes())?;
                tracing::info!(dir = %dir.display(), fingerprint = %ca.fingerprint(), "created a certificate authority");
                Ok(ca)
            }
            (Some(_), None) => {
                Err(TlsError::BadFile { path: key_path, reason: format!("missing, but {CA_CERT} exists") })
            }
            (None, Some(_)) => {
                Err(TlsError::BadFile { path: cert_path, reason: format!("missing, but {CA_KEY} exists") })
            }
        }
    }

    /// A CA held only in memory (tests, benchmarks).
    pub fn generate(common_name: &str) -> Result<Self, TlsError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(365 * CA_YEARS);
        params.serial_number = Some(random_serial());
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Authority { cert_pem: cert.pem(), cert: cert.der().clone(), issuer: Issuer::new(params, key) })
    }

    fn from_pem(cert_path: &Path, cert_pem: &str, key_path: &Path, key_pem: &str) -> Result<Self, TlsError> {
        let bad = |path: &PathBuf, reason: String| TlsError::BadFile { path: path.clone(), reason };
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| bad(&cert_path.to_path_buf(), format!("not a PEM certificate: {e}")))?;
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| bad(&key_path.to_path_buf(), format!("not a PEM private key: {e}")))?;
        let issuer = Issuer::from_ca_cert_der(&cert, key)
            .map_err(|e| bad(&cert_path.to_path_buf(), format!("not a CA certificate: {e}")))?;
        Ok(Authority { cert, cert_pem: cert_pem.to_string(), issuer })
    }

    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.cert)
    }

    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A server identity for `server_name` (what clients verify, e.g. [`crate::ROOT_SERVER_NAME`])
    /// and any further DNS names or IP addresses in `alt_names`, with a fresh key.
    pub fn issue_server(&self, server_name: &str, alt_names: &[String]) -> Result<Identity, TlsError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(server_name);
        params.subject_alt_names = std::iter::once(server_name.to_string())
            .chain(alt_names.iter().cloned())
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => n
                    .clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|_| TlsError::Invalid(format!("{n:?} is not a DNS name"))),
            })
            .collect::<Result<_, _>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.validity(&mut params, Duration::from_secs(SERVER_DAYS as u64 * 86_400));
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Identity { chain: vec![cert.der().clone(), self.cert.clone()], key: private_key(&key) })
    }

    /// Signs a client's certificate request (PEM) as `subject` for client authentication only,
    /// valid for `valid_for`. The subject and usages are set here, whatever the request asked.
    /// Returns the certificate as PEM and its fingerprint.
    pub fn sign_client(
        &self,
        csr_pem: &str,
        subject: &str,
        valid_for: Duration,
    ) -> Result<(String, Fingerprint), TlsError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| TlsError::Invalid(format!("not a certificate signing request: {e}")))?;
        csr.params.distinguished_name = name(subject);
        csr.params.subject_alt_names.clear();
        csr.params.is_ca = IsCa::ExplicitNoCa;
        csr.params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        csr.params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        csr.params.custom_extensions.clear();
        self.validity(&mut csr.params, valid_for);
        let cert = csr.signed_by(&self.issuer)?;
        Ok((cert.pem(), Fingerprint::of(cert.der())))
    }

    fn validity(&self, params: &mut CertificateParams, valid_for: Duration) {
        let now = OffsetDateTime::now_utc();
        // An hour back tolerates clocks of edge devices that run slightly behind.
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::seconds(valid_for.as_secs().min(i64::MAX as u64 / 2) as i64);
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
    }
}

/// The private half of a client identity: generated where it is used, never sent anywhere; the
/// CA sees only its certificate request.
pub struct ClientKey {
    key: KeyPair,
}

impl ClientKey {
    pub fn generate() -> Result<Self, TlsError> {
        Ok(ClientKey { key: KeyPair::generate()? })
    }

    pub fn from_pem(pem: &str) -> Result<Self, TlsError> {
        Ok(ClientKey {
            key: KeyPair::from_pem(pem).map_err(|e| TlsError::Invalid(format!("not a PEM private key: {e}")))?,
        })
    }

    pub fn to_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A PEM certificate request for `subject` (the CA overrides the subject anyway).
    pub fn request(&self, subject: &str) -> Result<String, TlsError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(subject);
        Ok(params.serialize_request(&self.key)?.pem()?)
    }

    /// The identity made of this key and the certificate the CA returned for it.
    pub fn identity(&self, cert_pem: &str, ca: &CertificateDer<'static>) -> Result<Identity, TlsError> {
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| TlsError::Invalid(format!("the issued certificate is not PEM: {e}")))?;
        Ok(Identity { chain: vec![cert, ca.clone()], key: private_key(&self.key) })
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Oakestra");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn private_key(key: &KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()))
}

fn random_serial() -> rcgen::SerialNumber {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).expect("the operating system's random source is unavailable");
    bytes[0] &= 0x7f; // positive, as RFC 5280 wants
    rcgen::SerialNumber::from_slice(&bytes)
}
