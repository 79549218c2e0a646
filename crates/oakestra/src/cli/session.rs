//! An authenticated connection for the commands after `login`: the saved credentials plus a
//! transparent renewal of the short-lived access token.

use std::future::Future;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
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
        let client = Client::new(&url).with_token(creds.token.clone());
        Ok(Self { client, creds, path })
    }

    /// Runs `op`; when the root answers 401 (the access token lasts 10 minutes), renews the
    /// token once with the refresh token, saves it, and runs `op` again.
    pub async fn call<T, F, Fut>(&mut self, op: F) -> Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        match op(self.client.clone()).await {
            Err(err) if err.status() == Some(401) => {
                self.renew(&err).await?;
                Ok(op(self.client.clone()).await?)
            }
            other => Ok(other?),
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

/// URLs compare equal regardless of a trailing slash.
fn normalize(url: &str) -> &str {
    url.trim_end_matches('/')
}
