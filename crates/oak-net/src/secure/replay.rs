//! The replay window of a session: which counters were already opened. UDP reorders, so a
//! counter below the highest one seen is still accepted once, as long as it is within the
//! window; older ones and repeats are refused.

/// Words of the bitmap; the window spans all but one of them (the word being filled).
const WORDS: usize = 32;
const BITS: u64 = 64;
/// Counters further than this below the highest one seen are refused as too old.
pub const WINDOW: u64 = (WORDS as u64 - 1) * BITS;

/// A sliding bitmap over counters, kept as a ring of 64-bit words.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    /// One past the highest counter accepted (0: none yet).
    top: u64,
    bits: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow { top: 0, bits: [0; WORDS] }
    }
}

impl ReplayWindow {
    /// Whether `counter` may still be accepted. Checked before decryption (cheap refusal);
    /// [`Self::accept`] records it only after the packet authenticated.
    pub fn fresh(&self, counter: u64) -> bool {
        if counter >= self.top {
            return true;
        }
        if self.top - counter > WINDOW {
            return false;
        }
        let (word, bit) = Self::slot(counter);
        self.bits[word] & bit == 0
    }

    /// Records `counter` as seen; false if it was not fresh (nothing changes then).
    pub fn accept(&mut self, counter: u64) -> bool {
        if !self.fresh(counter) {
            return false;
        }
        if counter >= self.top {
            // Clear the words the window slides over (all of them after a long jump).
            let from = if self.top == 0 { 0 } else { (self.top - 1) / BITS + 1 };
            let to = counter / BITS;
            if self.top == 0 || to.saturating_sub(from) >= WORDS as u64 {
                self.bits = [0; WORDS];
            } else {
                for block in from..=to {
                    self.bits[(block % WORDS as u64) as usize] = 0;
                }
            }
            self.top = counter + 1;
        }
        let (word, bit) = Self::slot(counter);
        self.bits[word] |= bit;
        true
    }

    fn slot(counter: u64) -> (usize, u64) {
        (((counter / BITS) % WORDS as u64) as usize, 1 << (counter % BITS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_reordered_repeated_and_too_old() {
        let mut w = ReplayWindow::default();
        assert!(w.accept(0));
        assert!(!w.accept(0), "a repeat");
        for c in [5, 3, 4, 1, 2] {
            assert!(w.accept(c), "{c} arrives late but within the window");
        }
        for c in 0..=5 {
            assert!(!w.fresh(c), "{c} was seen");
        }
        assert!(w.accept(5 + WINDOW));
        assert!(!w.fresh(4), "slid out of the window");
        assert!(w.fresh(6), "inside the window and never seen");
        assert!(w.accept(6));
        assert!(!w.accept(6));
    }

    #[test]
    fn long_jumps_clear_the_bitmap() {
        let mut w = ReplayWindow::default();
        for c in 0..200 {
            assert!(w.accept(c));
        }
        assert!(w.accept(1_000_000));
        // Counters just below the jump were never seen: a stale bit must not refuse them.
        for c in (1_000_000 - WINDOW + 1)..1_000_000 {
            assert!(w.fresh(c), "{c}");
        }
        assert!(!w.fresh(1_000_000 - WINDOW - 1));
        // Every counter in a row across word boundaries, each exactly once.
        let mut w = ReplayWindow::default();
        for c in 0..10_000u64 {
            assert!(w.accept(c));
            assert!(!w.accept(c));
            if c > 70 {
                assert!(!w.fresh(c - 70));
            }
        }
    }
}
