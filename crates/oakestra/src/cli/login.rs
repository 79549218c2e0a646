//! `oakestra login`: trade a user name and password for tokens and save them.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Context, Result};
use std::path::PathBuf;

use clap::Args;

use super::credentials::{self, Credentials};
use super::output::{emit, emit_json};
use super::ClientOpts;

#[derive(Args)]
pub struct LoginArgs {
    /// User name.
    #[arg(short, long, default_value = "Admin")]
    pub username: String,
    /// Password; read from the first line of standard input when not given.
    #[arg(short, long, env = "OAKESTRA_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Organization to log in to (the root uses `root` when not given).
    #[arg(long)]
    pub organization: Option<String>,
    /// Trust this CA certificate (PEM) for the root's HTTPS instead of the system's CAs (a root
    /// whose certificate a private CA signed). Remembered with the login.
    #[arg(long, value_name = "PEM")]
    pub ca_cert: Option<PathBuf>,
}

pub async fn run(opts: &ClientOpts, args: LoginArgs) -> Result<()> {
    let password = match args.password {
        Some(p) => p,
        None => read_password()?,
    };
    let url = opts.url.as_deref().unwrap_or(super::DEFAULT_URL);
    let ca_cert = args.ca_cert.map(|p| std::path::absolute(&p).unwrap_or(p));
    let client = super::session::client(url, ca_cert.as_deref())?;
    let tokens = client
        .login(&args.username, &password, args.organization.as_deref())
        .await
        .map_err(|e| anyhow::anyhow!("{}", super::session::explain_tls(&e, url)))?;
    let path = credentials::default_path()?;
    let fingerprint = client.server_fingerprint();
    if let Some(fingerprint) = fingerprint {
        let before =
            Credentials::load(&path).ok().flatten().filter(|c| c.url == client.base_url()).and_then(|c| c.fingerprint);
        match before {
            Some(old) if old != fingerprint.to_string() => super::session::warn_changed(client.base_url(), &old, fingerprint),
            Some(_) => {}
            None => eprintln!(
                "The root's HTTPS certificate has SHA-256 fingerprint\n  {}\nCompare it with the one the root logged at start (\"serving the API over HTTPS\").",
                fingerprint.colon_hex()
            ),
        }
    }
    let creds = Credentials {
        url: client.base_url().to_string(),
        username: args.username,
        token: tokens.token,
        refresh_token: tokens.refresh_token,
        ca_cert,
        fingerprint: fingerprint.map(|f| f.to_string()),
    };
    creds.save(&path)?;
    if opts.json {
        emit_json(&serde_json::json!({ "url": creds.url, "username": creds.username }))
    } else {
        emit(&format!("logged in to {} as {}\n", creds.url, creds.username));
        Ok(())
    }
}

/// One line from stdin, so scripts can pipe a password instead of putting it on the command line
/// (where `ps` would show it). Prompts only when a person is typing.
fn read_password() -> Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("Password: ");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line).context("cannot read the password from standard input")?;
    if read == 0 {
        bail!("no password given: pass --password, set OAKESTRA_PASSWORD or write it to standard input");
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}
