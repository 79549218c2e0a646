//! The X25519 keys of the tunnel: a worker's static secret and its peers' public keys, written
//! as 64 hex digits wherever they travel (node information, route tables, peer queries).

use std::fmt;

use x25519_dalek::{x25519, X25519_BASEPOINT_BYTES};

/// Bytes of an X25519 key.
pub const KEY_LEN: usize = 32;

/// A worker's public key: its identity on the tunnel.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey(pub [u8; KEY_LEN]);

/// Why a text is not a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("a tunnel key is {len} hex digits, not {0}", len = 2 * KEY_LEN)]
    Length(usize),
    #[error("a tunnel key is written in hex digits")]
    NotHex,
    /// The all-zero key is what an unset field parses to; it is never a real key.
    #[error("the all-zero tunnel key is not a key")]
    Zero,
}

impl PeerKey {
    /// Parses 64 hex digits (surrounding blanks ignored).
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        if text.len() != 2 * KEY_LEN {
            return Err(KeyError::Length(text.len()));
        }
        let mut key = [0u8; KEY_LEN];
        hex::decode_to_slice(text, &mut key).map_err(|_| KeyError::NotHex)?;
        if key == [0; KEY_LEN] {
            return Err(KeyError::Zero);
        }
        Ok(PeerKey(key))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Only the first bytes: enough to tell peers apart in logs.
impl fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerKey({}…)", &self.to_hex()[..12])
    }
}

/// A worker's static secret. The caller draws the random bytes (this crate reads no entropy)
/// and keeps them in the worker's data dir.
#[derive(Clone)]
pub struct StaticKey {
    secret: [u8; KEY_LEN],
    public: PeerKey,
}

impl StaticKey {
    /// A key from 32 random bytes (clamped by X25519 itself).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        StaticKey { secret: bytes, public: PeerKey(x25519(bytes, X25519_BASEPOINT_BYTES)) }
    }

    /// Parses the hex form written by [`Self::to_hex`].
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        PeerKey::parse(text).map(|k| Self::from_bytes(k.0))
    }

    /// The secret in hex, for the key file.
    pub fn to_hex(&self) -> String {
        hex::encode(self.secret)
    }

    pub fn public(&self) -> PeerKey {
        self.public
    }

    pub(crate) fn secret_bytes(&self) -> [u8; KEY_LEN] {
        self.secret
    }
}

impl fmt::Debug for StaticKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StaticKey(public {:?})", self.public)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_hex() {
        let key = StaticKey::from_bytes([7; KEY_LEN]);
        let again = StaticKey::parse(&key.to_hex()).unwrap();
        assert_eq!(again.public(), key.public());
        assert_eq!(PeerKey::parse(&format!(" {} ", key.public())).unwrap(), key.public());
        assert_ne!(key.public(), StaticKey::from_bytes([8; KEY_LEN]).public());
    }

    #[test]
    fn bad_keys_are_refused() {
        assert_eq!(PeerKey::parse(""), Err(KeyError::Length(0)));
        assert_eq!(PeerKey::parse(&"ab".repeat(31)), Err(KeyError::Length(62)));
        assert_eq!(PeerKey::parse(&"zz".repeat(32)), Err(KeyError::NotHex));
        assert_eq!(PeerKey::parse(&"00".repeat(32)), Err(KeyError::Zero));
        assert!(!format!("{:?}", StaticKey::from_bytes([1; KEY_LEN])).contains(&hex::encode([1u8; KEY_LEN])));
    }
}
