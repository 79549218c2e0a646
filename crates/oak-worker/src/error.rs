use std::path::PathBuf;

use thiserror::Error;

/// Why a worker stopped. Transient problems (cluster or broker unreachable) are retried and never
/// end up here; these need a person to act.
#[derive(Debug, Error)]
pub enum WorkerError {
    #[error("invalid configuration: {0}")]
    Config(String),
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
    #[error("cluster sent an invalid registration answer: {0}")]
    BadRegistration(String),
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl WorkerError {
    /// An overlay set-up failure, with what a person can do about it.
    pub fn overlay(message: String) -> Self {
        let hint = if message.contains("Address already in use") {
            "another worker or program holds the port: stop it or pick another --tunnel-port"
        } else {
            "run as root, or start the worker with --no-overlay"
        };
        WorkerError::Overlay(format!("{message} ({hint})"))
    }
}

#[cfg(test)]
mod tests {
    use super::WorkerError;

    #[test]
    fn overlay_failures_say_what_helps() {
        let busy =
            WorkerError::overlay("cannot bind the tunnel port 50103: Address already in use (os error 98)".into());
        assert!(busy.to_string().contains("pick another --tunnel-port"), "{busy}");
        let denied = WorkerError::overlay("creating the TUN: Operation not permitted (os error 1)".into());
        assert!(denied.to_string().contains("run as root, or start the worker with --no-overlay"), "{denied}");
    }
}
