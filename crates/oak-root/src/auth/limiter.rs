//! Login rate limit: attempts are counted per (user, address) and per address in a sliding
//! window; past the limit further attempts are refused without checking the password.
//!
//! An attempt takes its slot *before* the password is verified (check and count in one step
//! under the lock), so parallel attempts cannot all pass a check made before any of them failed.
//! A successful login gives its slot back; a failed one keeps it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct LoginLimiter {
    window: Duration,
    per_user: u32,
    per_addr: u32,
    attempts: Mutex<HashMap<String, Vec<Instant>>>,
}

/// A counted attempt; hand it to [`LoginLimiter::release`] if the login succeeded.
#[derive(Debug)]
pub struct Slot {
    keys: [String; 2],
    at: Instant,
}

impl Default for LoginLimiter {
    fn default() -> Self {
        Self::new(Duration::from_secs(60), 5, 20)
    }
}

impl LoginLimiter {
    pub fn new(window: Duration, per_user: u32, per_addr: u32) -> Self {
        Self { window, per_user, per_addr, attempts: Mutex::new(HashMap::new()) }
    }

    fn keys(user: &str, addr: &str) -> [String; 2] {
        [format!("u:{user}@{addr}"), format!("a:{addr}")]
    }

    /// Counts an attempt of `user` from `addr`, or `Err(seconds to wait)` if either has used
    /// up its attempts in the window (then nothing is counted).
    pub fn acquire(&self, user: &str, addr: &str, now: Instant) -> Result<Slot, u64> {
        let mut map = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
        // Bound memory under a flood of distinct names: forget everything stale first.
        if map.len() > 10_000 {
            map.retain(|_, times| times.last().is_some_and(|t| now.duration_since(*t) < self.window));
        }
        let keys = Self::keys(user, addr);
        let mut wait = None;
        for (key, limit) in [(&keys[0], self.per_user), (&keys[1], self.per_addr)] {
            if let Some(times) = map.get_mut(key) {
                times.retain(|t| now.duration_since(*t) < self.window);
                if times.len() >= limit as usize {
                    let secs = self.window.saturating_sub(now.duration_since(times[0])).as_secs().max(1);
                    wait = Some(wait.map_or(secs, |w: u64| w.max(secs)));
                }
            }
        }
        if let Some(secs) = wait {
            return Err(secs);
        }
        for key in &keys {
            map.entry(key.clone()).or_default().push(now);
        }
        Ok(Slot { keys, at: now })
    }

    /// Gives a successful attempt's slot back.
    pub fn release(&self, slot: Slot) {
        let mut map = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
        for key in &slot.keys {
            if let Some(times) = map.get_mut(key) {
                if let Some(i) = times.iter().position(|t| *t == slot.at) {
                    times.remove(i);
                }
                if times.is_empty() {
                    map.remove(key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_limit_and_recovers() {
        let l = LoginLimiter::new(Duration::from_secs(60), 3, 5);
        let t0 = Instant::now();
        for _ in 0..3 {
            l.acquire("bob", "1.2.3.4", t0).unwrap();
        }
        assert_eq!(l.acquire("bob", "1.2.3.4", t0).unwrap_err(), 60);
        // another user from the same address still has attempts until the address limit
        l.acquire("eve", "1.2.3.4", t0).unwrap();
        l.acquire("eve", "1.2.3.4", t0).unwrap();
        assert!(l.acquire("carol", "1.2.3.4", t0).is_err());
        // the window passes
        assert!(l.acquire("bob", "1.2.3.4", t0 + Duration::from_secs(61)).is_ok());
    }

    #[test]
    fn successes_give_their_slot_back() {
        let l = LoginLimiter::new(Duration::from_secs(60), 2, 10);
        let t0 = Instant::now();
        for i in 0..5 {
            let slot = l.acquire("bob", "1.2.3.4", t0 + Duration::from_millis(i)).unwrap();
            l.release(slot);
        }
        l.acquire("bob", "1.2.3.4", t0).unwrap();
        l.acquire("bob", "1.2.3.4", t0).unwrap();
        assert!(l.acquire("bob", "1.2.3.4", t0).is_err());
    }
}
