use std::path::PathBuf;

use thiserror::Error;

/// Why a worker stopped. Transient problems (cluster or broker unreachable) are retried and never
/// end up here; these need a person to act.
#[derive(Debug, Error)]
pub enum WorkerError {
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The join token is unusable (malformed, or a legacy one without the CA fingerprint).
    #[error("{0}")]
    Token(#[from] oak_tls::TokenError),
    /// The server at the cluster address did not prove it holds the CA the token pins: it is not
    /// the cluster that issued the token (or the cluster's CA was re-created). Nothing was sent.
    #[error("{0}")]
    UntrustedCluster(String),
    /// The cluster answered 401/403 to the registration: the join token is wrong or revoked.
    #[error("cluster refused the join token: {0}")]
    TokenRefused(String),
    /// Any other 4xx: retrying the same request cannot help.
    #[error("cluster rejected the registration ({status}): {message}")]
    RegistrationRejected { status: u16, message: String },
    /// The overlay network cannot be set up (needs root, `ip`, `iptables`, `/dev/net/tun`, and
    /// its tunnel port free).
    #[error("overlay network: {0}")]
    Overlay(String),
    /// The metrics listener cannot be bound (its port is taken, or the address is not local).
    #[error("metrics listener: {0}")]
    Metrics(String),
    #[error("cluster sent an invalid registration answer: {0}")]
    BadRegistration(String),
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
