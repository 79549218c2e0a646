//! Login rate limit: failed attempts are counted per (user, address) and per address in a
//! sliding window; past the limit further attempts are refused without checking the password.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct LoginLimiter {
    window: Duration,
    per_user: u32,
    per_addr: u32,
    failures: Mutex<HashMap<String, Vec<Instant>>>,
}

impl Default for LoginLimiter {
    fn default() -> Self {
        Self::new(Duration::from_secs(60), 5, 20)
    }
}

impl LoginLimiter {
    pub fn new(window: Duration, per_user: u32, per_addr: u32) -> Self {
        Self { window, per_user, per_addr, failures: Mutex::new(HashMap::new()) }
    }

    fn keys(user: &str, addr: &str) -> [String; 2] {
        [format!("u:{user}@{addr}"), format!("a:{addr}")]
    }

    /// `Err(seconds to wait)` if this user or address has failed too often recently.
    pub fn check(&self, user: &str, addr: &str, now: Instant) -> Result<(), u64> {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let [k_user, k_addr] = Self::keys(user, addr);
        let mut wait = None;
        for (key, limit) in [(k_user, self.per_user), (k_addr, self.per_addr)] {
            if let Some(times) = map.get_mut(&key) {
                times.retain(|t| now.duration_since(*t) < self.window);
                if times.len() >= limit as usize {
                    let oldest = times[0];
                    let secs = self.window.saturating_sub(now.duration_since(oldest)).as_secs().max(1);
                    wait = Some(wait.map_or(secs, |w: u64| w.max(secs)));
                }
            }
        }
        wait.map_or(Ok(()), Err)
    }

    pub fn record_failure(&self, user: &str, addr: &str, now: Instant) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        // Bound memory under a flood of distinct names: forget everything stale first.
        if map.len() > 10_000 {
            map.retain(|_, times| times.last().is_some_and(|t| now.duration_since(*t) < self.window));
        }
        for key in Self::keys(user, addr) {
            map.entry(key).or_default().push(now);
        }
    }

    pub fn record_success(&self, user: &str, addr: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&Self::keys(user, addr)[0]);
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
            assert!(l.check("bob", "1.2.3.4", t0).is_ok());
            l.record_failure("bob", "1.2.3.4", t0);
        }
        assert!(l.check("bob", "1.2.3.4", t0).is_err());
        // another user from the same address still has attempts until the address limit
        assert!(l.check("eve", "1.2.3.4", t0).is_ok());
        l.record_failure("eve", "1.2.3.4", t0);
        l.record_failure("eve", "1.2.3.4", t0);
        assert!(l.check("carol", "1.2.3.4", t0).is_err());
        // the window passes
        assert!(l.check("bob", "1.2.3.4", t0 + Duration::from_secs(61)).is_ok());
    }
}
