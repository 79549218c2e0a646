//! One session between two workers: the two keys a handshake derived, the send counter and the
//! replay window. Sealing and opening are ring's AEADs in place; the cipher is the one both
//! workers run fastest (AES-256-GCM where both CPUs accelerate AES, else ChaCha20-Poly1305),
//! agreed inside the authenticated handshake, so nobody on the path can steer it.

use std::time::{Duration, Instant};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, CHACHA20_POLY1305};

use super::replay::ReplayWindow;
use super::wire::{data_header, DATA_HEADER, TAG_LEN};

/// The initiator starts a new handshake once its session is this old (sending continues on
/// the old one meanwhile), so a flow never waits for keys.
pub const REKEY_AFTER: Duration = Duration::from_secs(120);
/// The responder rekeys later, so both ends rarely start at once.
const RESPONDER_REKEY_AFTER: Duration = Duration::from_secs(150);
/// A session is never used past this age, in either direction.
pub const REJECT_AFTER: Duration = Duration::from_secs(180);
/// Messages per session before a rekey, and the hard limit (nonces never repeat).
const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);

/// An AEAD the tunnel can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    ChaCha20Poly1305,
    Aes256Gcm,
}

/// The set of ciphers a worker offers, as sent in its handshake (bit per cipher).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer(pub u8);

const CHACHA_BIT: u8 = 1;
const AES_BIT: u8 = 2;

impl Offer {
    /// What this machine runs well: ChaCha20-Poly1305 always (fast in software, the fallback),
    /// AES-256-GCM only with AES and carry-less multiply instructions.
    pub fn of_this_cpu() -> Offer {
        Offer(CHACHA_BIT | if aes_accelerated() { AES_BIT } else { 0 })
    }

    pub fn chacha_only() -> Offer {
        Offer(CHACHA_BIT)
    }

    /// The responder's choice: AES-256-GCM when both offer it, else ChaCha20-Poly1305 (which
    /// every worker offers); `None` if the initiator offers nothing this worker runs.
    pub fn choose(self, theirs: Offer) -> Option<Cipher> {
        let both = self.0 & theirs.0;
        if both & AES_BIT != 0 {
            Some(Cipher::Aes256Gcm)
        } else if both & CHACHA_BIT != 0 {
            Some(Cipher::ChaCha20Poly1305)
        } else {
            None
        }
    }
}

impl Cipher {
    pub fn to_byte(self) -> u8 {
        match self {
            Cipher::ChaCha20Poly1305 => CHACHA_BIT,
            Cipher::Aes256Gcm => AES_BIT,
        }
    }

    pub fn from_byte(b: u8) -> Option<Cipher> {
        match b {
            CHACHA_BIT => Some(Cipher::ChaCha20Poly1305),
            AES_BIT => Some(Cipher::Aes256Gcm),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Cipher::ChaCha20Poly1305 => "chacha20-poly1305",
            Cipher::Aes256Gcm => "aes-256-gcm",
        }
    }

    fn key(self, bytes: &[u8; 32]) -> LessSafeKey {
        let alg = match self {
            Cipher::ChaCha20Poly1305 => &CHACHA20_POLY1305,
            Cipher::Aes256Gcm => &AES_256_GCM,
        };
        LessSafeKey::new(UnboundKey::new(alg, bytes).expect("32-byte key for a 256-bit AEAD"))
    }
}

#[cfg(target_arch = "x86_64")]
fn aes_accelerated() -> bool {
    std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq")
}

#[cfg(target_arch = "aarch64")]
fn aes_accelerated() -> bool {
    std::arch::is_aarch64_feature_detected!("aes") && std::arch::is_aarch64_feature_detected!("pmull")
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn aes_accelerated() -> bool {
    false
}

/// Why a data message did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    Replayed,
    Unauthenticated,
    Expired,
}

/// Keys and counters of one session.
pub struct Session {
    /// The index peers address this session by (ours); theirs is `remote_index`.
    pub local_index: u32,
    remote_index: u32,
    send: LessSafeKey,
    recv: LessSafeKey,
    pub cipher: Cipher,
    next_counter: u64,
    window: ReplayWindow,
    created: Instant,
    /// Whether this worker started the handshake (it rekeys first).
    initiator: bool,
}

impl Session {
    /// `keys` as the Noise split gives them: (initiator → responder, responder → initiator).
    pub fn new(
        keys: ([u8; 32], [u8; 32]),
        cipher: Cipher,
        local_index: u32,
        remote_index: u32,
        initiator: bool,
        now: Instant,
    ) -> Session {
        let (to_responder, to_initiator) = keys;
        let (send, recv) = if initiator { (to_responder, to_initiator) } else { (to_initiator, to_responder) };
        Session {
            local_index,
            remote_index,
            send: cipher.key(&send),
            recv: cipher.key(&recv),
            cipher,
            next_counter: 0,
            window: ReplayWindow::default(),
            created: now,
            initiator,
        }
    }

    pub fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.created) >= REJECT_AFTER || self.next_counter >= REJECT_AFTER_MESSAGES
    }

    /// Whether it is time for a new handshake (the session still works until it expires).
    pub fn wants_rekey(&self, now: Instant) -> bool {
        let after = if self.initiator { REKEY_AFTER } else { RESPONDER_REKEY_AFTER };
        now.saturating_duration_since(self.created) >= after || self.next_counter >= REKEY_AFTER_MESSAGES
    }

    /// Seals `packet` into `out` (at least `packet.len()` + header + tag bytes, which the
    /// caller checked); returns the datagram's length.
    pub fn seal(&mut self, packet: &[u8], out: &mut [u8]) -> usize {
        let counter = self.next_counter;
        self.next_counter += 1;
        let end = DATA_HEADER + packet.len();
        out[..DATA_HEADER].copy_from_slice(&data_header(self.remote_index, counter));
        out[DATA_HEADER..end].copy_from_slice(packet);
        let tag = self
            .send
            .seal_in_place_separate_tag(nonce(counter), Aad::empty(), &mut out[DATA_HEADER..end])
            .expect("an AEAD seals any packet shorter than its limit");
        out[end..end + TAG_LEN].copy_from_slice(tag.as_ref());
        end + TAG_LEN
    }

    /// Opens the sealed part of a data message into `out` (at least `sealed.len()` bytes);
    /// returns the plaintext's length. The counter counts as seen only once it authenticated.
    pub fn open(&mut self, counter: u64, sealed: &[u8], out: &mut [u8], now: Instant) -> Result<usize, OpenError> {
        if self.expired(now) {
            return Err(OpenError::Expired);
        }
        if !self.window.fresh(counter) {
            return Err(OpenError::Replayed);
        }
        let buf = &mut out[..sealed.len()];
        buf.copy_from_slice(sealed);
        let len =
            self.recv.open_in_place(nonce(counter), Aad::empty(), buf).map_err(|_| OpenError::Unauthenticated)?.len();
        self.window.accept(counter);
        Ok(len)
    }
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(cipher: Cipher) -> (Session, Session) {
        let keys = ([1; 32], [2; 32]);
        let now = Instant::now();
        (Session::new(keys, cipher, 10, 20, true, now), Session::new(keys, cipher, 20, 10, false, now))
    }

    #[test]
    fn both_ciphers_round_trip_and_refuse_what_they_should() {
        for cipher in [Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305] {
            let (mut a, mut b) = pair(cipher);
            let mut wire = [0u8; 64];
            let n = a.seal(b"payload", &mut wire);
            assert_eq!(n, 7 + DATA_HEADER + TAG_LEN);
            assert_eq!(u32::from_le_bytes(wire[4..8].try_into().unwrap()), 20, "addressed to b's index");
            let mut out = [0u8; 64];
            let now = Instant::now();
            assert_eq!(b.open(0, &wire[DATA_HEADER..n], &mut out, now), Ok(7));
            assert_eq!(&out[..7], b"payload");
            assert_eq!(b.open(0, &wire[DATA_HEADER..n], &mut out, now), Err(OpenError::Replayed));
            // The other direction uses the other key: a's own datagram does not open at a.
            assert_eq!(a.open(0, &wire[DATA_HEADER..n], &mut out, now), Err(OpenError::Unauthenticated));
            // A wrong counter is a wrong nonce.
            let n2 = a.seal(b"two", &mut wire);
            assert_eq!(b.open(5, &wire[DATA_HEADER..n2], &mut out, now), Err(OpenError::Unauthenticated));
            assert_eq!(b.open(1, &wire[DATA_HEADER..n2], &mut out, now), Ok(3), "a failed open marks nothing seen");
            assert_eq!(b.open(1, &wire[DATA_HEADER..n2], &mut out, now + REJECT_AFTER), Err(OpenError::Expired));
        }
    }

    #[test]
    fn the_choice_prefers_aes_only_when_both_accelerate_it() {
        let both = Offer(CHACHA_BIT | AES_BIT);
        assert_eq!(both.choose(both), Some(Cipher::Aes256Gcm));
        assert_eq!(both.choose(Offer::chacha_only()), Some(Cipher::ChaCha20Poly1305));
        assert_eq!(Offer::chacha_only().choose(both), Some(Cipher::ChaCha20Poly1305));
        assert_eq!(both.choose(Offer(0)), None);
        assert_eq!(Cipher::from_byte(Cipher::Aes256Gcm.to_byte()), Some(Cipher::Aes256Gcm));
        assert_eq!(Cipher::from_byte(3), None);
    }

    #[test]
    fn rekey_and_expiry_ages() {
        let (a, b) = pair(Cipher::Aes256Gcm);
        let t = Instant::now();
        assert!(!a.wants_rekey(t) && !a.expired(t));
        assert!(a.wants_rekey(t + REKEY_AFTER));
        assert!(!b.wants_rekey(t + REKEY_AFTER), "the responder waits longer");
        assert!(b.wants_rekey(t + RESPONDER_REKEY_AFTER));
        assert!(a.expired(t + REJECT_AFTER));
    }
}
