//! Quiet reports ([`oak_api::node::features::QUIET_REPORTS`]): when the cluster hears a worker's
//! liveness from its MQTT connection, the worker still samples its node every report interval
//! but publishes `information` only when it changed noticeably, at the start of every broker
//! session, and at least every [`INFO_REFRESH`]. An idle worker then costs its link a keep-alive
//! ping every few seconds and one description a minute instead of one every 2 s (target P10).
//! Its instances' usage (`jobs/resources`) goes the same way ([`UsageGate`]): when the set of
//! instances, their output or their usage changed noticeably, and at least every
//! [`USAGE_REFRESH`], which is as often as the cluster passes usage on to the root.

use std::time::{Duration, Instant};

use oak_api::node::{NodeInfo, ServiceResources};

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
    if !same_but_load(before, after) {
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

/// Whether `a` and `b` agree on everything but their load figures. Compared in place, not on
/// copies: every worker samples its node every report interval. The pattern names every field,
/// so a field added to [`NodeInfo`] cannot be forgotten here.
fn same_but_load(a: &NodeInfo, b: &NodeInfo) -> bool {
    let NodeInfo {
        id,
        host,
        ip,
        port,
        system_info,
        cpu_percent: _,
        vcpus,
        architecture,
        memory_percent: _,
        memory: _,
        memory_total,
        disk_free: _,
        disk_info,
        network_info,
        gpu_driver,
        gpu_usage: _,
        vgpus,
        gpu_temp: _,
        vram_percent: _,
        vram,
        virtualization,
        supported_addons,
        csi_drivers,
        overlay,
        metrics_port,
        features,
    } = a;
    *id == b.id
        && *host == b.host
        && *ip == b.ip
        && *port == b.port
        && *system_info == b.system_info
        && *vcpus == b.vcpus
        && *architecture == b.architecture
        && *memory_total == b.memory_total
        && *disk_info == b.disk_info
        && *network_info == b.network_info
        && *gpu_driver == b.gpu_driver
        && *vgpus == b.vgpus
        && *vram == b.vram
        && *virtualization == b.virtualization
        && *supported_addons == b.supported_addons
        && *csi_drivers == b.csi_drivers
        && *overlay == b.overlay
        && *metrics_port == b.metrics_port
        && *features == b.features
}

/// Longest time between two usage reports of a quiet worker with instances: the cluster passes an
/// instance's usage on to the root at most this often anyway (its `metrics_interval`).
pub(crate) const USAGE_REFRESH: Duration = Duration::from_secs(10);

/// Decides, observation by observation, which `jobs/resources` reports a worker publishes.
#[derive(Debug, Default)]
pub(crate) struct UsageGate {
    last: Option<PublishedUsage>,
}

#[derive(Debug)]
struct PublishedUsage {
    services: Vec<ServiceResources>,
    at: Instant,
    session: u64,
}

impl UsageGate {
    /// Whether the usage of `services` (sorted by instance), observed at `now` during broker
    /// session `session`, is to be published; if so it counts as published. Without `quiet`,
    /// every report is; with it, never an empty one (it tells the cluster nothing).
    pub(crate) fn due(&mut self, services: &[ServiceResources], now: Instant, session: u64, quiet: bool) -> bool {
        let due = if !quiet {
            true
        } else if services.is_empty() {
            false
        } else {
            match &self.last {
                None => true,
                Some(last) => {
                    last.session != session
                        || now.saturating_duration_since(last.at) >= USAGE_REFRESH
                        || last.services.len() != services.len()
                        || last.services.iter().zip(services).any(|(a, b)| usage_changed(a, b))
                }
            }
        };
        if due {
            self.last = Some(PublishedUsage { services: services.to_vec(), at: now, session });
        }
        due
    }
}

/// Whether the cluster should hear of the change from `before` to `after` for one instance: it is
/// another instance, its output or limits changed, the OOM killer struck, or its usage moved by
/// what placement or an operator could notice (CPU by 10 points, memory by 5 points or a tenth,
/// disk by a tenth). CPU seconds only ever grow and are the worker's own `/metrics`' business.
fn usage_changed(before: &ServiceResources, after: &ServiceResources) -> bool {
    let number = |s: &str| s.trim().parse::<f64>().ok();
    // Unparsable figures count as changed when their text did.
    let moved = |a: &str, b: &str, by: &dyn Fn(f64) -> f64| match (number(a), number(b)) {
        (Some(x), Some(y)) => (x - y).abs() >= by(x),
        _ => a != b,
    };
    const MIB_16: f64 = 16.0 * 1024.0 * 1024.0;
    before.job_name != after.job_name
        || before.instance != after.instance
        || before.virtualization != after.virtualization
        || before.logs != after.logs
        || before.memory_limit_bytes != after.memory_limit_bytes
        || before.oom_kills != after.oom_kills
        || moved(&before.cpu_percent, &after.cpu_percent, &|_| 10.0)
        || moved(&before.memory_percent, &after.memory_percent, &|_| 5.0)
        || moved(&before.memory_bytes, &after.memory_bytes, &|x| (x / 10.0).max(MIB_16))
        || moved(&before.disk, &after.disk, &|x| (x / 10.0).max(MIB_16))
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
            |n: &mut NodeInfo| n.id = "other".into(),
            |n: &mut NodeInfo| n.host = "other".into(),
            |n: &mut NodeInfo| n.port = "1".into(),
            |n: &mut NodeInfo| n.system_info.kernel_version = "7.0".into(),
            |n: &mut NodeInfo| n.architecture = "arm64".into(),
            |n: &mut NodeInfo| n.memory_total += 1,
            |n: &mut NodeInfo| n.disk_info = serde_json::from_str(r#"{"sda": 1}"#).unwrap(),
            |n: &mut NodeInfo| n.network_info = serde_json::from_str(r#"{"eth0": 1}"#).unwrap(),
            |n: &mut NodeInfo| n.gpu_driver = "nvidia".into(),
            |n: &mut NodeInfo| n.vgpus = 1,
            |n: &mut NodeInfo| n.vram = 1,
            |n: &mut NodeInfo| n.supported_addons.push("gpu".into()),
            |n: &mut NodeInfo| n.csi_drivers.push("nfs".into()),
            |n: &mut NodeInfo| n.overlay = Some(Default::default()),
            |n: &mut NodeInfo| n.metrics_port = 9100,
            |n: &mut NodeInfo| n.features.push("x".into()),
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

    fn usage(instance: u32, cpu: &str, memory_bytes: &str) -> ServiceResources {
        ServiceResources {
            job_name: "app.ns.svc.ns".into(),
            instance,
            virtualization: "docker".into(),
            cpu_percent: cpu.into(),
            memory_percent: "2.0".into(),
            memory_bytes: memory_bytes.into(),
            disk: "1000".into(),
            cpu_seconds: Some(1.0),
            ..Default::default()
        }
    }

    #[test]
    fn quiet_usage_goes_on_change_new_sessions_and_every_refresh() {
        let t = Instant::now();
        let at = |s: u64| t + Duration::from_secs(s);
        let mut gate = UsageGate::default();
        let one = vec![usage(0, "5.0", "100000000")];
        assert!(!gate.due(&[], at(0), 1, true), "an empty report is never news");
        assert!(gate.due(&one, at(0), 1, true), "the first report");
        let mut noise = one.clone();
        noise[0].cpu_percent = "12.5".into();
        noise[0].memory_bytes = "105000000".into();
        noise[0].cpu_seconds = Some(3.0);
        assert!(!gate.due(&noise, at(2), 1, true), "small usage changes wait for the refresh");
        assert!(!gate.due(&noise, at(8), 1, true));
        assert!(gate.due(&noise, at(10), 1, true), "the refresh");
        assert!(!gate.due(&noise, at(12), 1, true));
        assert!(gate.due(&noise, at(14), 2, true), "a new broker session");
        let two = vec![usage(0, "12.5", "105000000"), usage(1, "0", "0")];
        assert!(gate.due(&two, at(16), 2, true), "another instance");
        assert!(gate.due(&two[..1], at(18), 2, true), "one instance fewer");
        for change in [
            |u: &mut ServiceResources| u.cpu_percent = "40".into(),
            |u: &mut ServiceResources| u.memory_percent = "9".into(),
            |u: &mut ServiceResources| u.memory_bytes = "300000000".into(),
            |u: &mut ServiceResources| u.disk = "900000000".into(),
            |u: &mut ServiceResources| u.logs = "hello\n".into(),
            |u: &mut ServiceResources| u.oom_kills = Some(1),
            |u: &mut ServiceResources| u.memory_limit_bytes = Some(1 << 30),
            |u: &mut ServiceResources| u.cpu_percent = "n/a".into(),
        ] {
            let mut gate = UsageGate::default();
            let mut changed = noise.clone();
            change(&mut changed[0]);
            assert!(gate.due(&noise, at(0), 1, true));
            assert!(gate.due(&changed, at(1), 1, true), "{changed:?}");
        }
        // Without the cluster's consent, every report, empty ones included.
        assert!(gate.due(&[], at(20), 2, false));
        assert!(gate.due(&noise, at(21), 2, false));
        assert!(gate.due(&noise, at(22), 2, false));
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
