//! A budget of log lines for refused connections and datagrams: a flood (a port scan, forged
//! tunnel packets, TLS garbage) must not fill the log, yet the first ones of each burst name the
//! sender and the reason. Every tier's refusal log uses it; the time is passed in.

use std::time::{Duration, Instant};

/// Lines per window; what is beyond is summed up when the next window opens.
const LINES: u32 = 10;
const WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct LogBudget {
    window_start: Instant,
    lines: u32,
    suppressed: u64,
}

impl LogBudget {
    pub fn new(now: Instant) -> Self {
        LogBudget { window_start: now, lines: 0, suppressed: 0 }
    }

    /// Whether to log this refusal; when a new window opens, how many went unlogged before.
    pub fn admit(&mut self, now: Instant) -> (bool, u64) {
        let mut unlogged = 0;
        if now.saturating_duration_since(self.window_start) >= WINDOW {
            unlogged = std::mem::take(&mut self.suppressed);
            self.window_start = now;
            self.lines = 0;
        }
        if self.lines < LINES {
            self.lines += 1;
            (true, unlogged)
        } else {
            self.suppressed += 1;
            (false, unlogged)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_logs_a_few_lines_then_a_sum() {
        let t0 = Instant::now();
        let mut log = LogBudget::new(t0);
        let logged = (0..1000).filter(|_| log.admit(t0).0).count();
        assert_eq!(logged, LINES as usize);
        assert_eq!(log.admit(t0 + WINDOW), (true, 1000 - u64::from(LINES)));
        assert_eq!(log.admit(t0 + WINDOW), (true, 0));
    }
}
