//! The Noise IK handshake (`Noise_IK_25519_ChaChaPoly_BLAKE2s`, by `snow`): the initiator knows
//! the responder's static key from a route table and proves its own in the first message, so
//! one round trip authenticates both and derives the session keys. The payloads carry what the
//! session needs: a timestamp (a replayed initiation is refused), the offered and chosen
//! cipher, and each side's session index.

use std::time::Instant;

use snow::{Builder, HandshakeState};

use super::keys::{PeerKey, StaticKey, KEY_LEN};
use super::session::{Cipher, Offer, Session};
use super::wire::{self, INITIATION, INIT_PAYLOAD, RESPONSE, RESP_PAYLOAD};

const PARAMS: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
/// Bound into every handshake: a different protocol or version never derives the same keys.
const PROLOGUE: &[u8] = b"oakestra overlay tunnel v1";

/// Why a handshake message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeError {
    /// Wrong `mac1`, failed decryption, or a payload that makes no sense.
    Unauthenticated,
    /// The initiator offers no cipher this worker runs.
    NoCommonCipher,
}

fn builder() -> Builder<'static> {
    Builder::new(PARAMS.parse().expect("a valid Noise pattern")).prologue(PROLOGUE)
}

/// Our initiation in flight: the state that reads the response.
pub struct Pending {
    state: HandshakeState,
    pub local_index: u32,
    pub sent: Instant,
}

/// Writes an initiation to `peer`; the datagram and the state waiting for its response.
pub fn initiate(
    own: &StaticKey,
    peer: &PeerKey,
    local_index: u32,
    timestamp: u64,
    offer: Offer,
    now: Instant,
) -> (Pending, Vec<u8>) {
    let secret = own.secret_bytes();
    let mut state = builder()
        .local_private_key(&secret)
        .remote_public_key(&peer.0)
        .build_initiator()
        .expect("IK with both keys builds");
    let mut payload = [0u8; INIT_PAYLOAD];
    payload[..8].copy_from_slice(&timestamp.to_be_bytes());
    payload[8] = offer.0;
    payload[9..13].copy_from_slice(&local_index.to_le_bytes());
    let mut out = vec![0u8; wire::INIT_LEN];
    out[0] = INITIATION;
    let n = state.write_message(&payload, &mut out[4..]).expect("the initiation fits its buffer");
    out.truncate(4 + n);
    wire::seal_mac(&wire::mac_key(peer), &mut out);
    (Pending { state, local_index, sent: now }, out)
}

/// A read initiation: who sent it and what it asks, before this worker decides to answer.
pub struct Initiation {
    state: HandshakeState,
    pub peer: PeerKey,
    pub timestamp: u64,
    pub offer: Offer,
    pub remote_index: u32,
}

/// Reads an initiation (`mac1` first, then the key agreement) and learns the initiator's key.
pub fn read_initiation(own: &StaticKey, datagram: &[u8]) -> Result<Initiation, HandshakeError> {
    if !wire::mac_ok(&wire::mac_key(&own.public()), datagram) {
        return Err(HandshakeError::Unauthenticated);
    }
    let secret = own.secret_bytes();
    let mut state = builder().local_private_key(&secret).build_responder().expect("IK responder builds");
    let noise = &datagram[4..datagram.len() - wire::MAC_LEN];
    let mut payload = [0u8; 64];
    let n = state.read_message(noise, &mut payload).map_err(|_| HandshakeError::Unauthenticated)?;
    if n != INIT_PAYLOAD {
        return Err(HandshakeError::Unauthenticated);
    }
    let peer = state
        .get_remote_static()
        .and_then(|k| <[u8; KEY_LEN]>::try_from(k).ok())
        .map(PeerKey)
        .ok_or(HandshakeError::Unauthenticated)?;
    Ok(Initiation {
        state,
        peer,
        timestamp: u64::from_be_bytes(payload[..8].try_into().expect("8 bytes")),
        offer: Offer(payload[8]),
        remote_index: u32::from_le_bytes(payload[9..13].try_into().expect("4 bytes")),
    })
}

/// Answers a read initiation: the responder's session and the response datagram.
pub fn respond(
    mut init: Initiation,
    own_offer: Offer,
    local_index: u32,
    now: Instant,
) -> Result<(Session, Vec<u8>), HandshakeError> {
    let cipher = own_offer.choose(init.offer).ok_or(HandshakeError::NoCommonCipher)?;
    let mut payload = [0u8; RESP_PAYLOAD];
    payload[0] = cipher.to_byte();
    payload[1..5].copy_from_slice(&local_index.to_le_bytes());
    let mut out = vec![0u8; wire::RESP_LEN];
    out[0] = RESPONSE;
    out[4..8].copy_from_slice(&init.remote_index.to_le_bytes());
    let n = init.state.write_message(&payload, &mut out[8..]).map_err(|_| HandshakeError::Unauthenticated)?;
    out.truncate(8 + n);
    wire::seal_mac(&wire::mac_key(&init.peer), &mut out);
    let keys = init.state.dangerously_get_raw_split();
    Ok((Session::new(keys, cipher, local_index, init.remote_index, false, now), out))
}

/// Reads the response to our initiation (whose `mac1` is keyed by our own key) and completes
/// the session.
pub fn complete(mut pending: Pending, own: &PeerKey, datagram: &[u8], now: Instant) -> Result<Session, HandshakeError> {
    if !wire::mac_ok(&wire::mac_key(own), datagram) {
        return Err(HandshakeError::Unauthenticated);
    }
    let noise = &datagram[8..datagram.len() - wire::MAC_LEN];
    let mut payload = [0u8; 64];
    let n = pending.state.read_message(noise, &mut payload).map_err(|_| HandshakeError::Unauthenticated)?;
    if n != RESP_PAYLOAD || !pending.state.is_handshake_finished() {
        return Err(HandshakeError::Unauthenticated);
    }
    let cipher = Cipher::from_byte(payload[0]).ok_or(HandshakeError::Unauthenticated)?;
    let remote_index = u32::from_le_bytes(payload[1..5].try_into().expect("4 bytes"));
    let keys = pending.state.dangerously_get_raw_split();
    Ok(Session::new(keys, cipher, pending.local_index, remote_index, true, now))
}
