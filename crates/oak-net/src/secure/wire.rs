//! The tunnel's datagrams, byte by byte. Every one starts with a type byte and three zero bytes:
//!
//! - initiation (type 1, [`INIT_LEN`]): the Noise IK first message (ephemeral key, sealed static
//!   key, sealed payload: timestamp, offered ciphers, the initiator's session index), then `mac1`;
//! - response (type 2, [`RESP_LEN`]): the initiator's index in clear (to find the handshake),
//!   the Noise second message (ephemeral key, sealed payload: chosen cipher, the responder's
//!   index), then `mac1`;
//! - data (type 4): receiver index, 64-bit counter (the AEAD nonce), ciphertext and tag. An
//!   empty ciphertext is a keepalive that confirms a new session;
//! - unknown session (type 5, [`UNKNOWN_LEN`]): the receiver index of a data message that
//!   named no session here (this worker restarted), sent back to where it came from, so the
//!   sender starts a handshake at once instead of after its reply timer. Unauthenticated: it
//!   only ever triggers a handshake, and only when it names an index the sender uses, which an
//!   off-path attacker cannot guess.
//!
//! `mac1` is a keyed BLAKE2s over the message, keyed by the receiver's public key: anything not
//! meant for this worker is dropped before the costly key agreement.

use blake2::digest::{KeyInit, Mac};
use blake2::{Blake2s256, Blake2sMac, Digest};

use super::keys::PeerKey;

pub const INITIATION: u8 = 1;
pub const RESPONSE: u8 = 2;
pub const DATA: u8 = 4;
pub const UNKNOWN: u8 = 5;
/// Type and the index that named no session.
pub const UNKNOWN_LEN: usize = 8;

/// Noise IK message 1: ephemeral (32) + sealed static (32 + 16) + sealed payload.
pub const INIT_PAYLOAD: usize = 8 + 1 + 4;
const INIT_NOISE: usize = 32 + 48 + INIT_PAYLOAD + 16;
/// Noise IK message 2: ephemeral (32) + sealed payload.
pub const RESP_PAYLOAD: usize = 1 + 4;
const RESP_NOISE: usize = 32 + RESP_PAYLOAD + 16;
pub const MAC_LEN: usize = 16;
pub const INIT_LEN: usize = 4 + INIT_NOISE + MAC_LEN;
pub const RESP_LEN: usize = 8 + RESP_NOISE + MAC_LEN;
/// Type, receiver index, counter.
pub const DATA_HEADER: usize = 16;
pub const TAG_LEN: usize = 16;

/// A received datagram, split into its parts (lengths checked, nothing authenticated yet).
#[derive(Debug)]
pub enum Message {
    Initiation,
    Response {
        receiver: u32,
    },
    /// The sealed part is `d[DATA_HEADER..]`.
    Data {
        receiver: u32,
        counter: u64,
    },
    Unknown {
        index: u32,
    },
}

impl Message {
    /// Splits a datagram; `None` for anything that is no tunnel message.
    pub fn parse(d: &[u8]) -> Option<Self> {
        if d.len() < 4 || d[1..4] != [0, 0, 0] {
            return None;
        }
        match d[0] {
            INITIATION if d.len() == INIT_LEN => Some(Message::Initiation),
            RESPONSE if d.len() == RESP_LEN => Some(Message::Response { receiver: u32_at(d, 4) }),
            DATA if d.len() >= DATA_HEADER + TAG_LEN => {
                Some(Message::Data { receiver: u32_at(d, 4), counter: u64::from_le_bytes(d[8..16].try_into().ok()?) })
            }
            UNKNOWN if d.len() == UNKNOWN_LEN => Some(Message::Unknown { index: u32_at(d, 4) }),
            _ => None,
        }
    }
}

/// The unknown-session notice for a data message addressed to `index`.
pub fn unknown_session(index: u32) -> [u8; UNKNOWN_LEN] {
    let mut m = [0u8; UNKNOWN_LEN];
    m[0] = UNKNOWN;
    m[4..8].copy_from_slice(&index.to_le_bytes());
    m
}

fn u32_at(d: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]])
}

/// The header of a data message.
pub fn data_header(receiver: u32, counter: u64) -> [u8; DATA_HEADER] {
    let mut h = [0u8; DATA_HEADER];
    h[0] = DATA;
    h[4..8].copy_from_slice(&receiver.to_le_bytes());
    h[8..16].copy_from_slice(&counter.to_le_bytes());
    h
}

/// The key of the `mac1` of messages sent to `receiver`.
pub fn mac_key(receiver: &PeerKey) -> [u8; 32] {
    let mut h = Blake2s256::new();
    h.update(b"oakestra tunnel mac1");
    h.update(receiver.0);
    h.finalize().into()
}

fn mac(key: &[u8; 32], body: &[u8]) -> [u8; MAC_LEN] {
    let mut m = <Blake2sMac<blake2::digest::consts::U16> as KeyInit>::new_from_slice(key).expect("32-byte key");
    m.update(body);
    m.finalize().into_bytes().into()
}

/// Appends `mac1` to a message for the owner of `key` (see [`mac_key`]).
pub fn seal_mac(key: &[u8; 32], message: &mut Vec<u8>) {
    let tag = mac(key, message);
    message.extend_from_slice(&tag);
}

/// Whether a whole message (ending in its `mac1`) was made for the owner of `key`.
pub fn mac_ok(key: &[u8; 32], message: &[u8]) -> bool {
    let Some(split) = message.len().checked_sub(MAC_LEN) else {
        return false;
    };
    let (body, tag) = message.split_at(split);
    let mut m = <Blake2sMac<blake2::digest::consts::U16> as KeyInit>::new_from_slice(key).expect("32-byte key");
    m.update(body);
    m.verify_slice(tag).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_and_types_decide_what_a_datagram_is() {
        assert!(Message::parse(&[1; INIT_LEN]).is_none(), "nonzero reserved bytes");
        let mut init = vec![0u8; INIT_LEN];
        init[0] = INITIATION;
        assert!(matches!(Message::parse(&init), Some(Message::Initiation)));
        assert!(Message::parse(&init[..INIT_LEN - 1]).is_none());
        let mut data = data_header(7, 9).to_vec();
        assert!(Message::parse(&data).is_none(), "no tag");
        data.extend_from_slice(&[0; TAG_LEN]);
        assert!(matches!(Message::parse(&data), Some(Message::Data { receiver: 7, counter: 9, .. })));
        for garbage in [&[][..], &[4], &[3, 0, 0, 0, 1, 2], &[0x45, 0, 0, 20]] {
            assert!(Message::parse(garbage).is_none());
        }
    }

    #[test]
    fn mac1_binds_the_message_to_its_receiver() {
        let (a, b) = (mac_key(&PeerKey([1; 32])), mac_key(&PeerKey([2; 32])));
        let mut m = b"hello".to_vec();
        seal_mac(&a, &mut m);
        assert!(mac_ok(&a, &m));
        assert!(!mac_ok(&b, &m));
        m[0] ^= 1;
        assert!(!mac_ok(&a, &m));
        assert!(!mac_ok(&a, &[0; 3]));
    }
}
