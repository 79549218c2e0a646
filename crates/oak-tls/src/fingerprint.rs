use std::fmt;

use sha2::{Digest, Sha256};

/// SHA-256 of a certificate's DER encoding: what join tokens pin and what `oakestra login`
/// shows on first use. Displayed as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of(der: &[u8]) -> Self {
        Fingerprint(Sha256::digest(der).into())
    }

    /// Parses 64 hex digits (either case, colons allowed as in `openssl x509 -fingerprint`).
    pub fn from_hex(s: &str) -> Option<Self> {
        let plain: String = s.chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(plain).ok()?;
        Some(Fingerprint(bytes.try_into().ok()?))
    }

    /// `AB:CD:…`, the form browsers and `openssl x509 -fingerprint -sha256` print.
    pub fn colon_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{self}")
    }
}
