//! One session between two workers: the two keys a handshake derived, the send counter and the
//! replay window. Sealing and opening are ring's AEADs in place; the cipher is the one both
//! workers run fastest (AES-128-GCM where both CPUs accelerate AES, else ChaCha20-Poly1305),
//! agreed inside the authenticated handshake, so nobody on the path can steer it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, CHACHA20_POLY1305};

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
    Aes128Gcm,
}

/// The set of ciphers a worker offers, as sent in its handshake (bit per cipher).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer(pub u8);

const CHACHA_BIT: u8 = 1;
const AES_BIT: u8 = 2;

impl Offer {
    /// What this machine runs well: ChaCha20-Poly1305 always (fast in software, the fallback),
    /// AES-128-GCM only with AES and carry-less multiply instructions.
    pub fn of_this_cpu() -> Offer {
        Offer(CHACHA_BIT | if aes_accelerated() { AES_BIT } else { 0 })
    }

    pub fn chacha_only() -> Offer {
        Offer(CHACHA_BIT)
    }

    /// The responder's choice: AES-128-GCM when both offer it, else ChaCha20-Poly1305 (which
    /// every worker offers); `None` if the initiator offers nothing this worker runs.
    pub fn choose(self, theirs: Offer) -> Option<Cipher> {
        let both = self.0 & theirs.0;
        if both & AES_BIT != 0 {
            Some(Cipher::Aes128Gcm)
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
            Cipher::Aes128Gcm => AES_BIT,
        }
    }

    pub fn from_byte(b: u8) -> Option<Cipher> {
        match b {
            CHACHA_BIT => Some(Cipher::ChaCha20Poly1305),
            AES_BIT => Some(Cipher::Aes128Gcm),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Cipher::ChaCha20Poly1305 => "chacha20-poly1305",
            Cipher::Aes128Gcm => "aes-128-gcm",
        }
    }

    /// The AEAD key from one 32-byte Noise split key: ChaCha20 takes all of it, AES-128 its
    /// first half. 128 bits is the security level of X25519, the handshake's weakest link (and
    /// TLS 1.3's default suite); AES-256 would cost 40 % more rounds per packet for nothing.
    fn key(self, bytes: &[u8; 32]) -> LessSafeKey {
        let (alg, key) = match self {
            Cipher::ChaCha20Poly1305 => (&CHACHA20_POLY1305, &bytes[..]),
            Cipher::Aes128Gcm => (&AES_128_GCM, &bytes[..16]),
        };
        LessSafeKey::new(UnboundKey::new(alg, key).expect("a key of the AEAD's length"))
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
    pub remote_index: u32,
    send: Arc<LessSafeKey>,
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
            send: Arc::new(cipher.key(&send)),
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
        out[DATA_HEADER..DATA_HEADER + packet.len()].copy_from_slice(packet);
        self.reserve(1).seal_in_place(out, packet.len())
    }

    /// Takes the next `count` counters for a batch the caller seals without holding the
    /// tunnel (the key is shared, the counters are the batch's alone, so nonces never repeat).
    pub fn reserve(&mut self, count: u64) -> SealBatch {
        let next = self.next_counter;
        self.next_counter = next.saturating_add(count);
        SealBatch { key: self.send.clone(), remote_index: self.remote_index, next, end: self.next_counter }
    }

    /// Opens the sealed part of a data message into `out` (at least `sealed.len()` bytes);
    /// returns the plaintext's length.
    #[cfg(test)]
    pub fn open(&mut self, counter: u64, sealed: &[u8], out: &mut [u8], now: Instant) -> Result<usize, OpenError> {
        let buf = &mut out[..sealed.len()];
        buf.copy_from_slice(sealed);
        self.open_in_place(counter, buf, now)
    }

    /// Opens the sealed part of a data message where it lies (the plaintext then starts at
    /// `sealed[0]`); returns the plaintext's length. The counter counts as seen only once it
    /// authenticated.
    pub fn open_in_place(&mut self, counter: u64, sealed: &mut [u8], now: Instant) -> Result<usize, OpenError> {
        if self.expired(now) {
            return Err(OpenError::Expired);
        }
        if !self.window.fresh(counter) {
            return Err(OpenError::Replayed);
        }
        let len = self
            .recv
            .open_in_place(nonce(counter), Aad::empty(), sealed)
            .map_err(|_| OpenError::Unauthenticated)?
            .len();
        self.window.accept(counter);
        Ok(len)
    }
}

/// Counters reserved from a session: seals exactly that many datagrams, in place.
pub struct SealBatch {
    key: Arc<LessSafeKey>,
    pub remote_index: u32,
    next: u64,
    end: u64,
}

impl SealBatch {
    /// Seals the packet at `buf[DATA_HEADER..DATA_HEADER + len]` where it lies, writing the
    /// header before it and the tag after it (`buf` holds at least `len` + header + tag bytes);
    /// returns the datagram's length.
    ///
    /// # Panics
    /// When called more often than counters were reserved (a nonce must never repeat).
    pub fn seal_in_place(&mut self, buf: &mut [u8], len: usize) -> usize {
        assert!(self.next < self.end, "more datagrams sealed than counters reserved");
        let counter = self.next;
        self.next += 1;
        let end = DATA_HEADER + len;
        buf[..DATA_HEADER].copy_from_slice(&data_header(self.remote_index, counter));
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(counter), Aad::empty(), &mut buf[DATA_HEADER..end])
            .expect("an AEAD seals any packet shorter than its limit");
        buf[end..end + TAG_LEN].copy_from_slice(tag.as_ref());
        end + TAG_LEN
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
        for cipher in [Cipher::Aes128Gcm, Cipher::ChaCha20Poly1305] {
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
    fn a_reserved_batch_seals_in_place_with_its_own_counters() {
        let (mut a, mut b) = pair(Cipher::Aes128Gcm);
        let mut batch = a.reserve(2);
        let after = {
            let mut wire = [0u8; 64];
            let n = a.seal(b"after", &mut wire);
            wire[..n].to_vec()
        };
        let now = Instant::now();
        let mut out = [0u8; 64];
        for (i, text) in [&b"one"[..], b"two"].iter().enumerate() {
            let mut buf = [0u8; 64];
            buf[DATA_HEADER..DATA_HEADER + text.len()].copy_from_slice(text);
            let n = batch.seal_in_place(&mut buf, text.len());
            assert_eq!(n, text.len() + DATA_HEADER + TAG_LEN);
            assert_eq!(u64::from_le_bytes(buf[8..16].try_into().unwrap()), i as u64, "counter");
            assert_eq!(b.open(i as u64, &buf[DATA_HEADER..n], &mut out, now), Ok(text.len()));
            assert_eq!(&out[..text.len()], *text);
        }
        assert_eq!(b.open(2, &after[DATA_HEADER..], &mut out, now), Ok(5), "the session went on after the batch");
        let over = std::panic::catch_unwind(move || batch.seal_in_place(&mut [0u8; 64], 1));
        assert!(over.is_err(), "a batch never seals more than it reserved");
    }

    #[test]
    fn the_choice_prefers_aes_only_when_both_accelerate_it() {
        let both = Offer(CHACHA_BIT | AES_BIT);
        assert_eq!(both.choose(both), Some(Cipher::Aes128Gcm));
        assert_eq!(both.choose(Offer::chacha_only()), Some(Cipher::ChaCha20Poly1305));
        assert_eq!(Offer::chacha_only().choose(both), Some(Cipher::ChaCha20Poly1305));
        assert_eq!(both.choose(Offer(0)), None);
        assert_eq!(Cipher::from_byte(Cipher::Aes128Gcm.to_byte()), Some(Cipher::Aes128Gcm));
        assert_eq!(Cipher::from_byte(3), None);
    }

    #[test]
    fn rekey_and_expiry_ages() {
        let (a, b) = pair(Cipher::Aes128Gcm);
        let t = Instant::now();
        assert!(!a.wants_rekey(t) && !a.expired(t));
        assert!(a.wants_rekey(t + REKEY_AFTER));
        assert!(!b.wants_rekey(t + REKEY_AFTER), "the responder waits longer");
        assert!(b.wants_rekey(t + RESPONDER_REKEY_AFTER));
        assert!(a.expired(t + REJECT_AFTER));
    }
}
