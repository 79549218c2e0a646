//! Quiet reports ([`oak_api::node::features::QUIET_REPORTS`]): when the cluster hears a worker's
//! liveness from its MQTT connection, the worker still samples its node every report interval
//! but publishes `information` only when it changed noticeably, at the start of every broker
//! session, and at least every [`INFO_REFRESH`]. An idle worker then costs its link a keep-alive
//! ping every few seconds and one description a minute instead of one every 2 s (target P10).

use std::time::{Duration, Instant};

use oak_api::node::NodeInfo;

/// Longest time between two descriptions of a quiet worker: a safety net for a lost message
/// (they go at QoS 0), not how changes travel.
pub(crate) const INFO_REFRESH: Duration = Duration::from_secs(60);

/// Decides, sample by sample, which node descriptions a worker publishes.
#[derive(Debug)]
pub(crate) struct InfoGate {
    last: Option<Published>,
    /// Time from the last publication to the next refresh. The first one in a session is a
    /// random part of [`INFO_REFRESH`], so that a fleet started together does not refresh in
    /// step.
    refresh: Duration,
    /// In `[0, 1)`: where in [`INFO_REFRESH`] this worker's refreshes fall.
    phase: f64,
}

#[derive(Debug)]
struct Published {
    info: NodeInfo,
    at: Instant,
    session: u64,
}

impl InfoGate {
    pub(crate) fn new(phase: f64) -> Self {
        let phase = if phase.is_finite() { phase.clamp(0.0, 1.0) } else { 0.0 };
        InfoGate { last: None, refresh: INFO_REFRESH, phase }
    }

    /// Whether `info`, sampled at `now` during broker session number `session`, is to be
    /// published; if so it counts as published. Without `quiet` every sample is.
    pub(crate) fn due(&mut self, info: &NodeInfo, now: Instant, session: u64, quiet: bool) -> bool {
        let (due, new_session) = match &self.last {
            None => (true, true),
            Some(last) if last.session != session => (true, true),
            Some(last) => {
                let refresh = now.saturating_duration_since(last.at) >= self.refresh;
                (!quiet || refresh || noticeably_changed(&last.info, info), false)
            }
        };
        if due {
            self.refresh =
                if new_session { INFO_REFRESH.mul_f64(self.phase).max(Duration::from_secs(1)) } else { INFO_REFRESH };
            self.last = Some(Published { info: info.clone(), at: now, session });
        }
        due
    }
}

/// Whether the cluster should hear of the change from `before` to `after`: anything but the
/// load figures changed, or a load figure moved by what placement could notice.
pub(crate) fn noticeably_changed(before: &NodeInfo, after: &NodeInfo) -> bool {
    if steady(before) != steady(after) {
        return true;
    }
    let moved = |a: f64, b: f64, by: f64| (a - b).abs() >= by;
    let moved_mb = |a: u64, b: u64, by: u64| a.abs_diff(b) >= by;
    moved(before.cpu_percent, after.cpu_percent, 10.0)
        || moved(before.memory_percent, after.memory_percent, 5.0)
        || moved_mb(before.memory, after.memory, (after.memory_total / 20).max(64))
        || moved_mb(before.disk_free, after.disk_free, (before.disk_free / 10).max(1024))
        || moved(before.gpu_usage, after.gpu_usage, 10.0)
        || moved(before.gpu_temp, after.gpu_temp, 5.0)
        || moved(before.vram_percent, after.vram_percent, 5.0)
}

/// `info` without its load figures.
fn steady(info: &NodeInfo) -> NodeInfo {
    NodeInfo {
        cpu_percent: 0.0,
        memory_percent: 0.0,
        memory: 0,
        disk_free: 0,
        gpu_usage: 0.0,
        gpu_temp: 0.0,
        vram_percent: 0.0,
        ..info.clone()
    }
}

/// A number in `[0, 1)` that differs between workers and runs (the standard library's hash
/// seeds), for [`InfoGate::new`].
pub(crate) fn random_phase() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let bits = std::collections::hash_map::RandomState::new().build_hasher().finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeInfo {
        NodeInfo {
            host: "w1".into(),
            ip: "10.0.0.5".into(),
            vcpus: 4,
            cpu_percent: 3.0,
            memory: 6000,
            memory_total: 8000,
            memory_percent: 25.0,
            disk_free: 50_000,
            virtualization: vec!["docker".into()],
            ..Default::default()
        }
    }

    #[test]
    fn load_noise_is_not_news_but_a_real_change_is() {
        let a = node();
        let mut b = node();
        b.cpu_percent = 9.5;
        b.memory = 5700;
        b.memory_percent = 28.0;
        b.disk_free = 49_500;
        assert!(!noticeably_changed(&a, &b), "small load changes wait for the refresh");
        for change in [
            |n: &mut NodeInfo| n.cpu_percent = 40.0,
            |n: &mut NodeInfo| n.memory = 5000,
            |n: &mut NodeInfo| n.memory_percent = 31.0,
            |n: &mut NodeInfo| n.disk_free = 40_000,
            |n: &mut NodeInfo| n.ip = "10.0.0.6".into(),
            |n: &mut NodeInfo| n.virtualization.push("unikernel".into()),
            |n: &mut NodeInfo| n.vcpus = 8,
            |n: &mut NodeInfo| n.gpu_temp = 80.0,
        ] {
            let mut c = node();
            change(&mut c);
            assert!(noticeably_changed(&a, &c), "{c:?}");
        }
    }

    #[test]
    fn a_quiet_worker_publishes_changes_new_sessions_and_a_refresh_a_minute() {
        let t = Instant::now();
        let at = |s: u64| t + Duration::from_secs(s);
        let mut gate = InfoGate::new(0.5);
        let info = node();
        assert!(gate.due(&info, at(0), 1, true), "the first sample");
        assert!(!gate.due(&info, at(2), 1, true));
        // The first refresh of a session comes at its phase (here half of the period)...
        assert!(!gate.due(&info, at(28), 1, true));
        assert!(gate.due(&info, at(30), 1, true));
        // ...then every period.
        assert!(!gate.due(&info, at(88), 1, true));
        assert!(gate.due(&info, at(90), 1, true));
        let mut busy = node();
        busy.cpu_percent = 60.0;
        assert!(gate.due(&busy, at(92), 1, true), "a noticeable change at once");
        assert!(!gate.due(&busy, at(94), 1, true), "compared with what was published last");
        assert!(gate.due(&busy, at(96), 2, true), "a new broker session");
        // Without the cluster's consent, every sample.
        assert!(gate.due(&busy, at(98), 2, false));
        assert!(gate.due(&busy, at(100), 2, false));
    }

    #[test]
    fn phases_spread_over_the_period() {
        let phases: Vec<f64> = (0..64).map(|_| random_phase()).collect();
        assert!(phases.iter().all(|p| (0.0..1.0).contains(p)));
        assert!(phases.iter().any(|p| *p < 0.5) && phases.iter().any(|p| *p >= 0.5), "{phases:?}");
        let t = Instant::now();
        let mut early = InfoGate::new(0.0);
        assert!(early.due(&node(), t, 1, true));
        assert!(early.due(&node(), t + Duration::from_secs(1), 1, true), "never sooner than a second");
    }
}
