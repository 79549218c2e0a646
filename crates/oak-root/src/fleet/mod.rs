//! The root's side of its clusters: who is connected, what each can still take, and the
//! dispatch of instances to them over the cluster channel.
//!
//! Decisions come from `oak-core` (`placement`, `reservations`); this module only keeps the live
//! state (links, reported resources, reservations, retry back-off) and performs the effects.
//! Everything durable is in the store, so a restarted root rebuilds this from the database and
//! from the clusters' full reports when they re-dial.

mod addresses;
mod channel;
mod dispatch;
mod links;
mod logs;
mod lost;
mod observe;
mod retry;
mod routes;
mod spread;
mod targets;
mod trust;
mod workers;

pub use targets::{write_scrape_targets, RootTarget, TargetGroup};

/// Fixtures the fleet's unit tests share.
#[cfg(test)]
mod test_fixtures {
    use oak_api::model::Application;
    use oak_store::RootStore;

    /// Stores the application "shop" with one container service, id "s".
    pub(super) fn store_shop_with_service_s(store: &dyn RootStore) {
        let app: Application = serde_json::from_value(serde_json::json!({
            "_id": "a", "applicationID": "a", "application_name": "shop", "application_namespace": "test", "userId": "u"
        }))
        .unwrap();
        let ms = serde_json::from_value(serde_json::json!({
            "microservice_name": "web", "microservice_namespace": "test", "virtualization": "container", "code": "img"
        }))
        .unwrap();
        let service = oak_core::jobs::new_service("s".into(), &app, ms);
        store.create_application(&app, std::slice::from_ref(&service)).unwrap();
    }
}

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use oak_core::reservations::Reservations;
use oak_core::stats::Samples;
use oak_store::RootStore;
use tokio::sync::Notify;

pub use addresses::AddressRefusal;
pub use channel::serve_channel;
pub use logs::LogsError;
pub use retry::run_retries;
pub use trust::ChannelTrust;

/// Timing knobs of the root's control loops, and the per-user quotas on what the fleet holds.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Services, instances and service IPs one (non-Admin) user may hold.
    pub quotas: oak_core::quotas::Quotas,
    /// A connected cluster whose last report is older than this is not scheduled onto.
    pub report_freshness: Duration,
    /// How often instances waiting for a cluster are re-examined.
    pub retry_tick: Duration,
    /// Longest wait between two placement attempts of the same instance.
    pub retry_max: Duration,
    /// How long a cluster may send nothing before its connection is considered dead (clusters
    /// send a keepalive after a second without other frames).
    pub idle_timeout: Duration,
    /// A cluster silent this long (since the last frame the root received from it) is lost:
    /// its instances are placed on other clusters (`--cluster-timeout`).
    pub cluster_timeout: Duration,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            quotas: Default::default(),
            report_freshness: Duration::from_secs(15),
            retry_tick: Duration::from_millis(500),
            retry_max: Duration::from_secs(15),
            idle_timeout: oak_api::channel::IDLE_TIMEOUT,
            cluster_timeout: Duration::from_secs(30),
        }
    }
}

/// Shared by the API handlers, the channel connections and the retry loop.
pub struct Fleet {
    store: Arc<dyn RootStore>,
    config: FleetConfig,
    inner: Mutex<Inner>,
    /// Woken when placing again may now succeed (a cluster joined or reported).
    wake: Notify,
    /// Root placement decision times, in microseconds.
    placement: Mutex<Samples>,
    /// The same as a histogram in seconds (`oakestra_placement_seconds`).
    placement_seconds: oak_metrics::Histogram,
    /// Logs reads waiting for their cluster's answer.
    logs: Mutex<logs::Pending>,
    /// The overlay's service IPs and worker subnets.
    addresses: Mutex<addresses::Addresses>,
    /// Which clusters want which jobs' route changes.
    interest: Mutex<routes::Interest>,
    /// The clusters' workers as last reported.
    workers: Mutex<workers::Known>,
    /// Instances per service and cluster, for spreading.
    spread: Mutex<spread::Spread>,
    /// The CA and TLS config of the cluster channel, and its refusal counters.
    trust: ChannelTrust,
    /// Where the clusters' `/metrics` are, for the scrape targets.
    cluster_addresses: Mutex<targets::ClusterAddresses>,
    /// When this root started: clusters not heard from since count their silence from here.
    started: Instant,
}

struct Inner {
    links: HashMap<String, links::Link>,
    reservations: Reservations,
    backoff: HashMap<(String, u32), retry::Backoff>,
    next_conn: u64,
    /// When the root last received a frame from each cluster (kept across disconnects).
    heard: HashMap<String, Instant>,
    /// Clusters whose loss was logged (a cluster heard again leaves it).
    lost: HashSet<String>,
    /// The root scheduler's copies of the connected clusters' views, with the connection and
    /// report count of the link each was copied from: copied again only when a cluster
    /// connects, leaves or reports, not for every instance placed.
    placement_views: Vec<oak_api::model::Cluster>,
    placement_copied: Vec<(u64, u64)>,
}

impl Fleet {
    /// The fleet of `store`'s root, with the overlay's address pools rebuilt from it.
    pub fn open(store: Arc<dyn RootStore>, config: FleetConfig, trust: ChannelTrust) -> oak_store::Result<Arc<Self>> {
        let addresses = addresses::Addresses::rebuild(&*store)?;
        Ok(Arc::new(Fleet {
            store,
            config,
            inner: Mutex::new(Inner {
                links: HashMap::new(),
                reservations: Reservations::default(),
                backoff: HashMap::new(),
                next_conn: 1,
                heard: HashMap::new(),
                lost: HashSet::new(),
                placement_views: Vec::new(),
                placement_copied: Vec::new(),
            }),
            wake: Notify::new(),
            placement: Mutex::new(Samples::new(100_000)),
            placement_seconds: oak_metrics::latency_histogram(),
            logs: Mutex::new(logs::Pending::default()),
            addresses: Mutex::new(addresses),
            interest: Mutex::new(routes::Interest::default()),
            workers: Mutex::new(workers::Known::default()),
            spread: Mutex::new(spread::Spread::default()),
            trust,
            cluster_addresses: Mutex::default(),
            started: Instant::now(),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves `Inner` consistent before any call that could panic.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spread(&self) -> MutexGuard<'_, spread::Spread> {
        self.spread.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn quotas(&self) -> oak_core::quotas::Quotas {
        self.config.quotas
    }

    /// Placement decision times as a histogram in seconds, to register for `/metrics`.
    pub fn placement_histogram(&self) -> oak_metrics::Histogram {
        self.placement_seconds.clone()
    }

    /// Placement decision times so far (microseconds): p50, p99, count.
    pub fn placement_stats(&self) -> (f64, f64, usize) {
        let s = self.placement.lock().unwrap_or_else(|e| e.into_inner());
        (s.quantile(0.5), s.quantile(0.99), s.len())
    }
}
