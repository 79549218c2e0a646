//! The cluster's trust in its root and its identity there, kept in `<data-dir>/tls/`.
//!
//! Before the first join the cluster knows only its join token, whose CA hash tells it which
//! root to trust: it verifies the root against that hash before sending the token, and sends a
//! certificate request for its own key (`cluster-key.pem`, generated here, 0600, never sent).
//! The root answers with a certificate (`cluster.pem`); the root's CA certificate, taken from the
//! verified handshake, is kept beside it (`root-ca.pem`). From then on the cluster pins that CA
//! and authenticates with its certificate: the token is not needed (nor sent) any more.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context};
use oak_tls::rustls::pki_types::pem::PemObject;
use oak_tls::rustls::pki_types::CertificateDer;
use oak_tls::{ClientKey, Fingerprint, Identity, JoinToken, TokenKind, ROOT_SERVER_NAME};

/// Directory in the cluster's data dir holding its key, its certificate and the root's CA.
pub const TLS_DIR: &str = "tls";
const KEY_FILE: &str = "cluster-key.pem";
const CERT_FILE: &str = "cluster.pem";
const ROOT_CA_FILE: &str = "root-ca.pem";

pub struct RootTrust {
    dir: PathBuf,
    /// SHA-256 of the root CA's certificate: the only CA the root's certificate may chain to.
    pin: Fingerprint,
    token: Option<JoinToken>,
    key: ClientKey,
    /// Set once the root signed our certificate.
    identity: Mutex<Option<Identity>>,
}

impl RootTrust {
    /// Reads what an earlier join left in `<data_dir>/tls`, and parses `token` (may be empty when
    /// the cluster has joined before). A token without a CA hash, or one pinning another CA than
    /// the certificate already held, is refused here, before anything is dialled.
    pub fn open(data_dir: &Path, token: &str) -> anyhow::Result<Self> {
        let dir = data_dir.join(TLS_DIR);
        private_dir(&dir)?;
        let token = match token.trim() {
            "" => None,
            text => Some(JoinToken::parse(text, TokenKind::Cluster).map_err(|e| anyhow!("{e}"))?),
        };
        let key = match read(&dir.join(KEY_FILE))? {
            Some(pem) => ClientKey::from_pem(&pem).with_context(|| format!("{}", dir.join(KEY_FILE).display()))?,
            None => {
                let key = ClientKey::generate()?;
                oak_tls::write_private(&dir.join(KEY_FILE), key.to_pem().as_bytes())?;
                key
            }
        };
        let (pin, identity) = match (read(&dir.join(CERT_FILE))?, read(&dir.join(ROOT_CA_FILE))?) {
            (Some(cert), Some(ca)) => {
                let ca = CertificateDer::from_pem_slice(ca.as_bytes())
                    .map_err(|e| anyhow!("{}: not a PEM certificate: {e}", dir.join(ROOT_CA_FILE).display()))?;
                let pin = Fingerprint::of(&ca);
                if let Some(t) = token.as_ref().filter(|t| t.ca != pin) {
                    bail!(
                        "the join token pins root CA {} but this cluster already belongs to the root with CA {pin} \
                         (see {}): to join another root, remove that directory",
                        t.ca,
                        dir.display()
                    );
                }
                (pin, Some(key.identity(&cert, &ca)?))
            }
            _ => match &token {
                Some(t) => (t.ca, None),
                None => bail!(
                    "no cluster join token, and no certificate from an earlier join in {}: pass --token or --token-file",
                    dir.display()
                ),
            },
        };
        Ok(RootTrust { dir, pin, token, key, identity: Mutex::new(identity) })
    }

    /// TLS settings for dialling the root: only a server of the pinned CA, presenting our
    /// certificate once we have one.
    pub fn client_config(&self) -> anyhow::Result<Arc<oak_tls::rustls::ClientConfig>> {
        let identity = self.identity.lock().unwrap_or_else(|e| e.into_inner());
        Ok(oak_tls::pinned_client_config(self.pin, ROOT_SERVER_NAME, identity.as_ref())?)
    }

    /// Whether the cluster has its certificate (then it sends no token).
    pub fn is_member(&self) -> bool {
        self.identity.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// What a first join's hello carries: the token and a certificate request for `name`;
    /// empty for a member.
    pub fn join_request(&self, name: &str) -> anyhow::Result<(String, String)> {
        if self.is_member() {
            return Ok((String::new(), String::new()));
        }
        let token = self.token.as_ref().ok_or_else(|| anyhow!("no join token"))?;
        Ok((token.to_string(), self.key.request(name)?))
    }

    /// Keeps the certificate the root signed, with the root's CA certificate found among
    /// `server_chain` (the verified handshake's).
    pub fn store_certificate(&self, cert_pem: &str, server_chain: &[CertificateDer<'_>]) -> anyhow::Result<()> {
        let ca = server_chain
            .iter()
            .find(|c| Fingerprint::of(c) == self.pin)
            .ok_or_else(|| anyhow!("the root's chain lacks the pinned CA"))?
            .clone()
            .into_owned();
        let identity = self.key.identity(cert_pem, &ca)?;
        oak_tls::write_private(&self.dir.join(ROOT_CA_FILE), oak_tls::to_pem("CERTIFICATE", &ca).as_bytes())?;
        oak_tls::write_private(&self.dir.join(CERT_FILE), cert_pem.as_bytes())?;
        tracing::info!(certificate = %identity.fingerprint(), dir = %self.dir.display(),
            "received this cluster's certificate; it authenticates the cluster from now on");
        *self.identity.lock().unwrap_or_else(|e| e.into_inner()) = Some(identity);
        Ok(())
    }
}

fn private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {}", dir.display()))?;
    }
    Ok(())
}

fn read(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use oak_tls::Authority;

    use super::*;

    #[test]
    fn a_token_without_a_ca_hash_is_refused_before_dialling() {
        let dir = tempfile::tempdir().unwrap();
        let e = RootTrust::open(dir.path(), "oakc_0123456789abcdef0123456789abcdef0123456789abcdef").err().unwrap();
        assert!(e.to_string().contains("no CA fingerprint"), "{e}");
        let e = RootTrust::open(dir.path(), "").err().unwrap();
        assert!(e.to_string().contains("--token"), "{e}");
    }

    #[test]
    fn after_the_first_join_the_certificate_replaces_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::generate("root").unwrap();
        let token = JoinToken::generate(TokenKind::Cluster, ca.fingerprint()).to_string();
        let trust = RootTrust::open(dir.path(), &token).unwrap();
        let (sent, csr) = trust.join_request("c1").unwrap();
        assert_eq!(sent, token);
        let (cert, fingerprint) = ca.sign_client(&csr, "id-1", Duration::from_secs(3600)).unwrap();
        let server = ca.issue_server(ROOT_SERVER_NAME, &[]).unwrap();
        trust.store_certificate(&cert, &server.chain).unwrap();
        assert_eq!(trust.join_request("c1").unwrap(), (String::new(), String::new()));

        // A restart needs no token; the key and certificate are private.
        let again = RootTrust::open(dir.path(), "").unwrap();
        assert!(again.is_member());
        assert_eq!(again.identity.lock().unwrap().as_ref().unwrap().fingerprint(), fingerprint);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("tls").join(KEY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A token of another root does not silently replace the membership.
        let other = JoinToken::generate(TokenKind::Cluster, Fingerprint::of(b"other CA")).to_string();
        let e = RootTrust::open(dir.path(), &other).err().unwrap();
        assert!(e.to_string().contains("already belongs to the root"), "{e}");
    }
}
