//! TLS for Oakestra's control wires (cluster channel, node API, MQTT, and optionally the public
//! REST API), on `rustls` with the `ring` provider; no OpenSSL.
//!
//! Trust is bootstrapped the way K3s does it: a tier that accepts joins (the root for clusters,
//! a cluster for workers) owns a private CA ([`Authority`]); the join token it hands out carries
//! the SHA-256 of that CA's certificate ([`JoinToken`]), so the joining side verifies the server
//! ([`pinned_client_config`]) before it sends any secret. On first join the joining side gets a
//! client certificate signed for its CSR ([`ClientKey`]), and reconnects authenticate with it.

mod authority;
mod config;
mod error;
mod files;
mod fingerprint;
mod listener;
mod reload;
mod renew;
mod token;
mod verifier;

pub use authority::{to_pem, Authority, ClientKey, Identity};
pub use config::{
    ca_client_config, peer_certificate, pinned_client_config, provider, renewing_server_config, server_config,
    ClientAuth,
};
pub use error::TlsError;
pub use files::write_private;
pub use fingerprint::Fingerprint;
pub use listener::{refusal_label, OnRefused, TlsListener};
pub use reload::{reloadable_server_config, ReloadableCert};
pub use renew::{RenewingCert, RENEW_AFTER};
pub use token::{JoinToken, TokenError, TokenKind};
pub use verifier::PinnedCa;

pub use rustls;
pub use tokio_rustls;

/// The name every root channel certificate carries and every cluster verifies, whatever
/// address it dialled (NAT, DNS aliases): the pinned CA, not the address, is the identity.
pub const ROOT_SERVER_NAME: &str = "oakestra-root";
/// The same for a cluster's node API and MQTT broker, verified by its workers.
pub const CLUSTER_SERVER_NAME: &str = "oakestra-cluster";

#[cfg(test)]
mod tests;
