//! Join tokens that say whom to trust: `<kind>.v1.<CA SHA-256, 64 hex>.<secret>`.
//!
//! `kind` is `oakc` (a cluster joining a root) or `oakn` (a worker joining a cluster). The
//! fingerprint lets the joining side verify the server before it sends the secret; the secret
//! (48 hex digits, 192 random bits) is what the server checks, stored only as a hash. Tokens of
//! the older `oakc_<hex>` / `oakn_<hex>` form carry no fingerprint and are refused with a message
//! saying how to get a new one.

use std::fmt;

use crate::Fingerprint;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    /// A cluster joining the root (`oakestra cluster --token-file`).
    Cluster,
    /// A worker joining a cluster (`oakestra worker --token-file`).
    Node,
}

impl TokenKind {
    pub fn prefix(self) -> &'static str {
        match self {
            TokenKind::Cluster => "oakc",
            TokenKind::Node => "oakn",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            TokenKind::Cluster => "cluster join token",
            TokenKind::Node => "worker join token",
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub kind: TokenKind,
    /// SHA-256 of the DER certificate of the CA the server's certificate must chain to.
    pub ca: Fingerprint,
    pub secret: String,
}

/// Why a token string is not usable; the messages are meant for operators.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("this {0} has no CA fingerprint (it predates TLS), so the server could not be verified before sending it: create a new token")]
    Legacy(&'static str),
    #[error("this is a {found}, but a {expected} is needed here")]
    WrongKind { expected: &'static str, found: &'static str },
    #[error("malformed {kind}: {reason} (expected <{prefix}>.v1.<64 hex digits of the CA's SHA-256>.<secret>)")]
    Malformed { kind: &'static str, prefix: &'static str, reason: String },
}

const VERSION: &str = "v1";
const SECRET_BYTES: usize = 24;

impl JoinToken {
    /// A fresh token with a random secret, pinning `ca`.
    pub fn generate(kind: TokenKind, ca: Fingerprint) -> Self {
        let mut bytes = [0u8; SECRET_BYTES];
        getrandom::getrandom(&mut bytes).expect("the operating system's random source is unavailable");
        JoinToken { kind, ca, secret: hex::encode(bytes) }
    }

    /// Parses a token that must be of `expected` kind. Surrounding whitespace is ignored.
    pub fn parse(text: &str, expected: TokenKind) -> Result<Self, TokenError> {
        let text = text.trim();
        let malformed = |reason: &str| TokenError::Malformed {
            kind: expected.describe(),
            prefix: expected.prefix(),
            reason: reason.into(),
        };
        for kind in [TokenKind::Cluster, TokenKind::Node] {
            if text.starts_with(&format!("{}_", kind.prefix())) {
                return Err(if kind == expected {
                    TokenError::Legacy(expected.describe())
                } else {
                    TokenError::WrongKind { expected: expected.describe(), found: kind.describe() }
                });
            }
        }
        let mut parts = text.split('.');
        let (Some(prefix), Some(version), Some(ca), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("it does not have four dot-separated parts"));
        };
        let kind = match prefix {
            "oakc" => TokenKind::Cluster,
            "oakn" => TokenKind::Node,
            _ => return Err(malformed(&format!("unknown kind {prefix:?}"))),
        };
        if kind != expected {
            return Err(TokenError::WrongKind { expected: expected.describe(), found: kind.describe() });
        }
        if version != VERSION {
            return Err(malformed(&format!("unknown version {version:?}")));
        }
        let ca = match Fingerprint::from_hex(ca) {
            Some(f) if ca.len() == 64 => f,
            _ => return Err(malformed("the CA fingerprint is not 64 hex digits")),
        };
        if secret.len() < 32 || secret.len() > 128 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(malformed("the secret is not 32 to 128 hex digits"));
        }
        Ok(JoinToken { kind, ca, secret: secret.to_ascii_lowercase() })
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{VERSION}.{}.{}", self.kind.prefix(), self.ca, self.secret)
    }
}

/// Never prints the secret, so tokens can sit in structs that get logged.
impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{VERSION}.{}.<secret>", self.kind.prefix(), self.ca)
    }
}
