//! Instances no cluster could take are tried again, with back-off, until one can (the original
//! never retried a negative scheduling result).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use oak_api::model::Service;
use oak_api::status;

use super::Fleet;

/// The root's negative outcomes and the not-yet-placed state; cluster-side ones
/// (`NO_WORKER_CAPACITY`, …) are retried by the cluster itself.
const WAITING: &[&str] = &[
    status::REQUESTED,
    status::TARGET_CLUSTER_NOT_FOUND,
    status::TARGET_CLUSTER_NOT_ACTIVE,
    status::TARGET_CLUSTER_NO_CAPACITY,
    status::NO_ACTIVE_CLUSTER_WITH_CAPACITY,
];

#[derive(Debug, Clone)]
pub(super) struct Backoff {
    attempts: u32,
    next: Instant,
}

/// Re-places waiting instances every tick (and at once when a cluster joins or reports), after
/// moving the instances of lost clusters (`lost.rs`).
pub async fn run_retries(fleet: Arc<Fleet>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(fleet.config.retry_tick) => {}
            _ = fleet.wake.notified() => {}
        }
        let f = fleet.clone();
        let pass = move || {
            f.check_lost();
            f.retry_once();
        };
        if let Err(e) = tokio::task::spawn_blocking(pass).await {
            tracing::error!(error = %e, "retry pass failed");
        }
    }
}

impl Fleet {
    /// One pass over the waiting instances whose back-off has expired.
    pub(super) fn retry_once(&self) {
        let waiting = match self.store.instances_in_status(WAITING) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "cannot list waiting instances");
                return;
            }
        };
        let now = Instant::now();
        let due: Vec<(String, u32)> = {
            let mut inner = self.lock();
            let keep: std::collections::HashSet<&(String, u32)> = waiting.iter().collect();
            inner.backoff.retain(|k, _| keep.contains(k));
            waiting.iter().filter(|k| inner.backoff.get(*k).is_none_or(|b| b.next <= now)).cloned().collect()
        };
        let mut services: HashMap<String, Option<Service>> = HashMap::new();
        for (service_id, number) in due {
            let service = services
                .entry(service_id.clone())
                .or_insert_with(|| self.store.service(&service_id).ok().flatten())
                .clone();
            let Some(service) = service else { continue };
            let Some(current) = service.instance_list.iter().find(|i| i.instance_number == number) else { continue };
            let placed = self.place(&service, number, Some(current));
            if placed.status == status::CLUSTER_SCHEDULED {
                self.lock().backoff.remove(&(service_id.clone(), number));
                let stored = self.store.update_instances(&[(service_id.clone(), number)], &mut |_, inst| {
                    // Only if nobody changed or removed it meanwhile.
                    if inst.status != current.status {
                        return false;
                    }
                    *inst = placed.clone();
                    true
                });
                match stored {
                    Ok(found) if found == [true] => {
                        self.dispatch(&service, &placed);
                        if oak_core::routes::route_instance(current) != oak_core::routes::route_instance(&placed) {
                            self.routes_changed([service_id.as_str()]);
                        }
                    }
                    _ => self.undeploy(&service_id, std::slice::from_ref(&placed)),
                }
            } else {
                self.note_failure(&service_id, number, now);
                if placed.status != current.status {
                    let _ = self.store.update_instances(&[(service_id.clone(), number)], &mut |_, inst| {
                        if inst.status != current.status {
                            return false;
                        }
                        inst.status = placed.status.clone();
                        inst.status_detail = placed.status_detail.clone();
                        true
                    });
                }
            }
        }
    }

    fn note_failure(&self, service_id: &str, number: u32, now: Instant) {
        let max = self.config.retry_max;
        let mut inner = self.lock();
        let b = inner.backoff.entry((service_id.to_string(), number)).or_insert(Backoff { attempts: 0, next: now });
        b.attempts = b.attempts.saturating_add(1);
        let delay = Duration::from_millis(500u64.saturating_mul(1 << b.attempts.min(10))).min(max);
        b.next = now + delay;
    }
}
