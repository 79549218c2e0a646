//! An authenticated connection for the commands after `login`: the saved credentials plus a
//! transparent renewal of the short-lived access token.

use std::future::Future;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use oak_client::{Client, ClientError};

use super::credentials::{self, Credentials};
use super::ClientOpts;

pub struct Session {
    client: Client,
    creds: Credentials,
    path: PathBuf,
}

impl Session {
    /// Loads the saved login and talks to the root it came from, unless `--url` names another:
    /// then it refuses to send the token there, since it could not be valid and would leak.
    pub fn open(opts: &ClientOpts) -> Result<Self> {
        let path = credentials::default_path()?;
        let Some(creds) = Credentials::load(&path)? else {
            bail!("not logged in: run \"oakestra login\" first");
        };
        let url = opts.url.clone().unwrap_or_else(|| creds.url.clone());
        if normalize(&creds.url) != normalize(&url) {
            bail!(
                "not logged in to {} (the saved login is for {}): run \"oakestra login --url {}\" first",
                normalize(&url),
                creds.url,
                normalize(&url)
            );
        }
        let client = client(&url, creds.ca_cert.as_deref())?.with_token(creds.token.clone());
        Ok(Self { client, creds, path })
    }

    /// Runs `op`; when the root answers 401 (the access token lasts 10 minutes), renews the
    /// token once with the refresh token, saves it, and runs `op` again.
    pub async fn call<T, F, Fut>(&mut self, op: F) -> Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let result = match op(self.client.clone()).await {
            Err(err) if err.status() == Some(401) => {
                self.renew(&err).await?;
                op(self.client.clone()).await
            }
            other => other,
        };
        self.check_certificate();
        result.map_err(|e| anyhow!("{}", explain_tls(&e, &self.creds.url)))
    }

    /// Warns when the root's HTTPS certificate is not the one seen at login.
    fn check_certificate(&self) {
        let (Some(now), Some(then)) = (self.client.server_fingerprint(), self.creds.fingerprint.as_deref()) else {
            return;
        };
        if now.to_string() != then {
            warn_changed(&self.creds.url, then, now);
        }
    }

    async fn renew(&mut self, rejected: &ClientError) -> Result<()> {
        let renewed = match self.client.refresh(&self.creds.refresh_token).await {
            Ok(renewed) => renewed,
            Err(err @ ClientError::Api { .. }) => {
                return Err(anyhow!(
                    "the saved login was rejected ({rejected}) and could not be renewed ({err}): \
                     run \"oakestra login\" again"
                ));
            }
            Err(err) => return Err(err.into()),
        };
        self.creds.token = renewed.token;
        self.client.set_token(Some(self.creds.token.clone()));
        // The renewed token works for this command either way; only the next one would renew again.
        if let Err(e) = self.creds.save(&self.path) {
            eprintln!("warning: {e:#}");
        }
        Ok(())
    }
}

/// A client for `url`, trusting the CA in the PEM file `ca_cert` for HTTPS (else the system's).
pub fn client(url: &str, ca_cert: Option<&Path>) -> Result<Client> {
    let pem = match ca_cert {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the CA certificate {}", path.display()))?,
        ),
        None => None,
    };
    Client::with_ca(url, pem.as_deref()).with_context(|| match ca_cert {
        Some(path) => format!("{}", path.display()),
        None => "the system's CA certificates".to_string(),
    })
}

/// A transport error caused by an untrusted certificate, with the way out.
pub fn explain_tls(err: &ClientError, url: &str) -> String {
    let text = err.to_string();
    if url.starts_with("https://") && matches!(err, ClientError::Transport(_)) && text.contains("certificate") {
        format!("{text} (if a private CA signed the root's certificate, log in with --ca-cert <its PEM file>)")
    } else {
        text
    }
}

/// The loud warning of a root certificate that changed since login.
pub fn warn_changed(url: &str, before: &str, now: oak_client::Fingerprint) {
    eprintln!(
        "WARNING: the HTTPS certificate of {url} CHANGED since you logged in.\n  \
         at login: {}\n  now:      {}\n\
         If the root's certificate was not renewed on purpose, someone may be intercepting the connection. \
         Once you checked the new fingerprint, run \"oakestra login\" again to accept it.",
        oak_client::Fingerprint::from_hex(before).map_or(before.to_string(), |f| f.colon_hex()),
        now.colon_hex()
    );
}

/// URLs compare equal regardless of a trailing slash.
fn normalize(url: &str) -> &str {
    url.trim_end_matches('/')
}
