//! Connected clusters: joining (token, stable id), reports, and the live view the API and the
//! scheduler read.

use std::sync::Arc;
use std::time::{Duration, Instant};

use oak_api::channel::{ClusterResources, RootMsg};
use oak_api::model::Cluster;
use tokio::sync::{mpsc, Notify};

use oak_tls::Fingerprint;

use oak_core::cluster_loss::{reach, Reach};

use super::{Fleet, Inner};
use crate::ids;

/// Messages queued for one cluster's writer. A cluster that falls this far behind is
/// disconnected and resyncs from the full desired set when it re-dials (the channel is
/// level-triggered), rather than the root buffering without limit.
pub(super) const LINK_QUEUE: usize = 16 * 1024;

impl Link {
    /// Messages waiting in this connection's queue.
    pub(super) fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

/// One cluster with an open channel.
pub(super) struct Link {
    /// Distinguishes this connection from a later one of the same cluster.
    pub conn: u64,
    tx: mpsc::Sender<RootMsg>,
    /// Tells the writer to close the connection (its queue overflowed).
    overflow: Arc<Notify>,
    /// The cluster document with its latest reported resources. Changed only by a report, which
    /// `reports` counts: the scheduler's copies are taken again when that count moves.
    pub view: Cluster,
    pub reported_at: Option<Instant>,
    /// Reports received on this connection; reservations acknowledged before report `n` are
    /// accounted for by the cluster in report `n + 1`.
    pub reports: u64,
    pub seq: u64,
}

/// Why a cluster may not join: `reason` labels the refusal in `/metrics`, the message goes to
/// the cluster and the log.
#[derive(Debug)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Refusal { reason, message: message.into() }
    }

    fn store(e: impl std::fmt::Display) -> Self {
        Refusal::new("store", format!("the root cannot use its database: {e}"))
    }
}

/// How a connecting cluster proves who it is.
pub(super) enum Credential<'a> {
    /// The fingerprint of the client certificate it presented in the TLS handshake.
    Certificate(Fingerprint),
    /// A first join: a join token and a certificate request for the cluster's key.
    Token { token: &'a str, csr: &'a str },
}

pub(super) struct Joined {
    pub cluster_id: String,
    /// The certificate signed on a first join (PEM), empty on a reconnect.
    pub certificate: String,
    pub conn: u64,
    pub rx: mpsc::Receiver<RootMsg>,
    /// Notified when the queue overflowed: the writer closes the connection.
    pub overflow: Arc<Notify>,
}

impl Link {
    /// Queues `msg` for the cluster; `false` if it cannot be sent. A full queue closes the
    /// connection (logged), so the cluster re-dials and gets the full desired set again.
    pub fn send(&self, msg: RootMsg) -> bool {
        match self.tx.try_send(msg) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(cluster = %self.view.id, queued = LINK_QUEUE,
                    "the cluster does not keep up with its channel; disconnecting it to resync");
                self.overflow.notify_one();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

impl Fleet {
    /// Admits a cluster: a member by its certificate, a newcomer by its join token (then its
    /// certificate request is signed). Finds or creates its stable id, records it, and replaces
    /// any older connection of the same cluster. A join token never takes over a cluster that
    /// has a certificate: a leaked token would otherwise evict the real cluster.
    pub(super) fn join(
        &self,
        credential: Credential<'_>,
        claimed_id: &str,
        name: &str,
        location: &str,
    ) -> Result<Joined, Refusal> {
        if name.trim().is_empty() {
            return Err(Refusal::new("bad_hello", "cluster_name is empty: set CLUSTER_NAME or --name"));
        }
        let by_name = self.store.cluster_by_name(name).map_err(Refusal::store)?;
        let (mut doc, certificate) = match credential {
            Credential::Certificate(fingerprint) => {
                let doc = self.member(fingerprint)?;
                if by_name.as_ref().is_some_and(|other| other.id != doc.id) {
                    return Err(Refusal::new(
                        "name_taken",
                        format!("the cluster name {name:?} is taken by another cluster"),
                    ));
                }
                (doc, String::new())
            }
            Credential::Token { token, csr } => self.newcomer(token, csr, claimed_id, name, by_name)?,
        };
        doc.cluster_name = name.to_string();
        doc.candidate_name = name.to_string();
        doc.cluster_location = location.to_string();
        doc.candidate_location = location.to_string();
        doc.active = false;
        self.store.put_cluster(&doc).map_err(Refusal::store)?;

        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        let overflow = Arc::new(Notify::new());
        let mut inner = self.lock();
        let conn = inner.next_conn;
        inner.next_conn += 1;
        let cluster_id = doc.id.clone();
        // A newer connection wins: dropping the old sender ends the old writer, whose socket
        // then closes; its reader notices and leaves without touching the new link.
        inner.links.insert(
            cluster_id.clone(),
            Link { conn, tx, overflow: overflow.clone(), view: doc, reported_at: None, reports: 0, seq: 0 },
        );
        // Report numbers restart with the connection; the resync re-establishes what is free.
        inner.reservations.forget_cluster(&cluster_id);
        // Instances waiting for any cluster get an immediate attempt.
        inner.backoff.clear();
        drop(inner);
        // An older connection's interests end with it: the cluster queries again.
        self.forget_interest(&cluster_id);
        Ok(Joined { cluster_id, certificate, conn, rx, overflow })
    }

    /// The cluster whose certificate has `fingerprint`.
    fn member(&self, fingerprint: Fingerprint) -> Result<Cluster, Refusal> {
        let unknown = || {
            Refusal::new(
                "unknown_certificate",
                "this cluster's certificate is not known to the root (an Admin reset it, or the root lost its \
                 database): remove the cluster's <data-dir>/tls and join again with a join token",
            )
        };
        let id = self.store.cluster_by_cert(&fingerprint.to_string()).map_err(Refusal::store)?.ok_or_else(unknown)?;
        self.store.cluster(&id).map_err(Refusal::store)?.ok_or_else(unknown)
    }

    /// A first join with a token: the cluster document it gets (its own if it had one without a
    /// certificate, e.g. after a reset) and its signed certificate (PEM).
    fn newcomer(
        &self,
        token: &str,
        csr: &str,
        claimed_id: &str,
        name: &str,
        by_name: Option<Cluster>,
    ) -> Result<(Cluster, String), Refusal> {
        let record = crate::cluster_tokens::check(&*self.store, token, self.trust.ca(), crate::cluster_tokens::now())
            .map_err(|e| Refusal::new(e.reason, e.message))?;
        if csr.is_empty() {
            return Err(Refusal::new("bad_hello", "a first join needs a certificate request (csr)"));
        }
        let by_id = match claimed_id {
            "" => None,
            id => self.store.cluster(id).map_err(Refusal::store)?,
        };
        let doc = match (by_id, by_name) {
            (Some(mine), Some(other)) if other.id != mine.id => {
                return Err(Refusal::new(
                    "name_taken",
                    format!("the cluster name {name:?} is taken by another cluster"),
                ));
            }
            (Some(mine), _) => mine,
            (None, Some(existing)) => existing,
            (None, None) => Cluster { id: ids::new_id(), ..Default::default() },
        };
        if self.store.cluster_cert(&doc.id).map_err(Refusal::store)?.is_some() {
            return Err(Refusal::new(
                "identity_taken",
                format!(
                    "cluster {:?} ({}) has joined before and authenticates with its certificate; a join token cannot \
                     take over its identity. If that cluster lost its data directory, an Admin lets it join again \
                     with `oakestra cluster-reset {}`, which disconnects it and forgets its certificate",
                    doc.cluster_name, doc.id, doc.cluster_name
                ),
            ));
        }
        let (certificate, fingerprint) = self
            .trust
            .authority
            .sign_client(csr, &doc.id, super::trust::CLUSTER_CERT_VALIDITY)
            .map_err(|e| Refusal::new("bad_hello", format!("the certificate request is not usable: {e}")))?;
        crate::cluster_tokens::consume(&*self.store, &record).map_err(|e| Refusal::new(e.reason, e.message))?;
        // The document first: a new cluster's id must exist before its certificate names it.
        let mut doc = doc;
        doc.cluster_name = name.to_string();
        self.store.put_cluster(&doc).map_err(Refusal::store)?;
        self.store.set_cluster_cert(&doc.id, &fingerprint.to_string()).map_err(Refusal::store)?;
        tracing::info!(cluster = %doc.id, name, token = %record.id, certificate = %fingerprint,
            "cluster joined with a join token; its certificate authenticates it from now on");
        Ok((doc, certificate))
    }

    /// Forgets `cluster_id`'s certificate and closes its connection, so it (or a replacement
    /// that lost its data) can join again with a join token. Answers whether it had one.
    pub fn reset_certificate(&self, cluster_id: &str) -> oak_store::Result<bool> {
        let had = self.store.forget_cluster_cert(cluster_id)?;
        let link = self.lock().links.remove(cluster_id);
        if link.is_some() {
            // Dropping the link ends its writer, which closes the connection.
            self.forget_interest(cluster_id);
            tracing::warn!(cluster = cluster_id, "cluster certificate reset: disconnected");
        }
        Ok(had)
    }

    /// Forgets a connection that closed (unless a newer one replaced it).
    pub(super) fn leave(&self, cluster_id: &str, conn: u64) {
        let mut inner = self.lock();
        if inner.links.get(cluster_id).is_some_and(|l| l.conn == conn) {
            inner.links.remove(cluster_id);
            drop(inner);
            self.forget_interest(cluster_id);
            tracing::warn!(cluster = cluster_id, "cluster disconnected");
        }
    }

    /// Takes a resource report: the new free capacity replaces the old, and reservations the
    /// cluster has now accounted for are dropped.
    pub(super) fn on_report(&self, cluster_id: &str, conn: u64, r: ClusterResources) {
        let now = ids::now();
        let doc = {
            let mut inner = self.lock();
            let Some(link) = inner.links.get_mut(cluster_id).filter(|l| l.conn == conn) else { return };
            apply_resources(&mut link.view, &r, now);
            link.reported_at = Some(Instant::now());
            let accounted = link.reports;
            link.reports += 1;
            let doc = link.view.clone();
            inner.reservations.confirm(cluster_id, accounted);
            doc
        };
        if let Err(e) = self.store.put_cluster(&doc) {
            tracing::error!(cluster = cluster_id, error = %e, "cannot store cluster report");
        }
        self.wake.notify_one();
    }

    /// Every known cluster, `active` when connected, recently reported and not lost; `status`
    /// says `active`, `unreachable` or `lost`.
    pub fn clusters_now(&self) -> oak_store::Result<Vec<Cluster>> {
        let mut clusters = self.store.list_clusters()?;
        let inner = self.lock();
        let now = Instant::now();
        for c in &mut clusters {
            if let Some(link) = inner.links.get(&c.id) {
                *c = link.view.clone();
            }
            let reach = self.reach_of(&inner, &c.id, now);
            c.active = reach == Reach::Active;
            c.status = reach.as_str().to_string();
        }
        Ok(clusters)
    }

    /// Notes a frame from `cluster_id`: its silence starts again.
    pub(super) fn heard(&self, cluster_id: &str) {
        let now = Instant::now();
        let mut inner = self.lock();
        match inner.heard.get_mut(cluster_id) {
            Some(t) => *t = now,
            None => {
                inner.heard.insert(cluster_id.to_string(), now);
            }
        }
        if !inner.lost.is_empty() && inner.lost.remove(cluster_id) {
            drop(inner);
            tracing::warn!(
                cluster = cluster_id,
                "a lost cluster is back: it resyncs and drops the instances moved away"
            );
        }
    }

    /// How long `cluster_id` has been silent: since its last frame, or since this root started.
    pub(super) fn silent_for(&self, inner: &Inner, cluster_id: &str, now: Instant) -> Duration {
        now.saturating_duration_since(inner.heard.get(cluster_id).copied().unwrap_or(self.started))
    }

    /// Whether placement may use `cluster_id`, or it is silent, or lost.
    pub(super) fn reach_of(&self, inner: &Inner, cluster_id: &str, now: Instant) -> Reach {
        let fresh = inner.links.get(cluster_id).is_some_and(|l| self.is_fresh(l));
        reach(self.silent_for(inner, cluster_id, now), fresh, self.config.cluster_timeout)
    }

    pub(super) fn is_fresh(&self, link: &Link) -> bool {
        link.reported_at.is_some_and(|t| t.elapsed() <= self.config.report_freshness)
    }
}

/// Copies a report into the cluster document (original field names kept for clients).
fn apply_resources(c: &mut Cluster, r: &ClusterResources, now: f64) {
    let t = &r.totals;
    c.active_nodes = r.active_nodes;
    c.total_cpu_cores = t.total_cpu_cores;
    c.vcpus = t.free_vcpus;
    c.cpu_percent = t.cpu_percent;
    c.aggregated_cpu_percent = t.cpu_percent;
    c.memory_in_mb = t.memory_in_mb;
    c.memory = t.free_memory_mb;
    c.memory_percent = t.memory_percent;
    c.total_gpu_cores = t.total_gpus;
    c.vgpus = t.free_gpus;
    c.virtualization = r.virtualization.clone();
    c.supported_addons = r.supported_addons.clone();
    c.aggregation_per_architecture = r.aggregation_per_architecture.clone();
    c.last_modified_timestamp = now;
}

#[cfg(test)]
mod tests {
    use oak_store::{RootStore, SqliteStore};

    use super::*;
    use crate::cluster_tokens::{self, TokenOptions};
    use crate::fleet::{ChannelTrust, FleetConfig};

    fn fleet() -> (tempfile::TempDir, Arc<Fleet>, String) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn RootStore> = Arc::new(SqliteStore::open(&dir.path().join("root.db")).unwrap());
        let trust = ChannelTrust::with(oak_tls::Authority::generate("test CA").unwrap(), &[]).unwrap();
        let options = TokenOptions { reusable: true, ..Default::default() };
        let token = cluster_tokens::create(&*store, trust.ca(), options).unwrap().token.to_string();
        (dir, Fleet::open(store, FleetConfig::default(), trust).unwrap(), token)
    }

    fn csr() -> String {
        oak_tls::ClientKey::generate().unwrap().request("c").unwrap()
    }

    fn fingerprint(pem: &str) -> Fingerprint {
        use oak_tls::rustls::pki_types::pem::PemObject;
        Fingerprint::of(&oak_tls::rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
    }

    #[tokio::test]
    async fn a_join_token_cannot_take_over_a_cluster_that_has_a_certificate() {
        let (_dir, fleet, token) = fleet();
        let csr = csr();
        let first = fleet.join(Credential::Token { token: &token, csr: &csr }, "", "edge", "").unwrap();
        assert!(first.certificate.contains("BEGIN CERTIFICATE"));
        let cert = fingerprint(&first.certificate);

        // The same name, or the real cluster's id, with a (leaked, reusable) token: refused.
        for claimed in ["", first.cluster_id.as_str()] {
            let e = fleet.join(Credential::Token { token: &token, csr: &csr }, claimed, "edge", "").err().unwrap();
            assert_eq!(e.reason, "identity_taken", "{}", e.message);
            assert!(e.message.contains("oakestra cluster-reset edge"), "{}", e.message);
        }
        // The real cluster stays connected.
        assert!(fleet.lock().links.get(&first.cluster_id).is_some_and(|l| l.conn == first.conn));

        // The real cluster reconnects with its certificate, a stranger's certificate is unknown.
        let again = fleet.join(Credential::Certificate(cert), "", "edge", "").unwrap();
        assert_eq!((again.cluster_id.as_str(), again.certificate.as_str()), (first.cluster_id.as_str(), ""));
        let e = fleet.join(Credential::Certificate(Fingerprint::of(b"x")), "", "edge", "").err().unwrap();
        assert_eq!(e.reason, "unknown_certificate");

        // After an Admin's reset the name can join again with a token, keeping its id; the old
        // certificate is no longer accepted.
        assert!(fleet.reset_certificate(&first.cluster_id).unwrap());
        assert!(!fleet.lock().links.contains_key(&first.cluster_id));
        let rejoined = fleet.join(Credential::Token { token: &token, csr: &csr }, "", "edge", "").unwrap();
        assert_eq!(rejoined.cluster_id, first.cluster_id);
        let e = fleet.join(Credential::Certificate(cert), "", "edge", "").err().unwrap();
        assert_eq!(e.reason, "unknown_certificate");
    }

    #[tokio::test]
    async fn a_burst_of_placements_follows_reservations_reports_and_departures() {
        let (_dir, fleet, token) = fleet();
        let report = |free_memory_mb: u64| ClusterResources {
            active_nodes: 1,
            totals: oak_api::channel::ResourceTotals {
                nodes: 1,
                total_cpu_cores: 64.0,
                free_vcpus: 64.0,
                memory_in_mb: 4000,
                free_memory_mb,
                ..Default::default()
            },
            virtualization: vec!["docker".into()],
            ..Default::default()
        };
        let mut joined = Vec::new();
        for name in ["a", "b"] {
            let j = fleet.join(Credential::Token { token: &token, csr: &csr() }, "", name, "").unwrap();
            fleet.heard(&j.cluster_id);
            fleet.on_report(&j.cluster_id, j.conn, report(1000));
            joined.push(j);
        }
        crate::fleet::test_fixtures::store_shop_with_service_s(&*fleet.store);
        let mut service = fleet.store.service("s").unwrap().unwrap();
        (service.spec.memory, service.spec.vcpus, service.spec.spread) = (300, 1, false);
        let place = |n: u32| fleet.place(&service, n, None).cluster_id;
        // 1000 MB each, 300 MB an instance: three fit on each cluster, then none.
        let placed: Vec<Option<String>> = (0..7).map(place).collect();
        for j in &joined {
            let on = placed.iter().filter(|c| c.as_deref() == Some(j.cluster_id.as_str())).count();
            assert_eq!(on, 3, "{placed:?}");
        }
        assert_eq!(placed[6], None, "a seventh instance over-committed a cluster");
        let (a, b) = (&joined[0], &joined[1]);
        // A report of more free memory (the held reservations still counted) makes room for one.
        fleet.on_report(&b.cluster_id, b.conn, report(1300));
        assert_eq!(place(7).as_deref(), Some(b.cluster_id.as_str()));
        assert_eq!(place(8), None, "b holds 4 × 300 MB of 1300");
        // What a report says beyond the free amounts counts at once too.
        let unikernel_only = ClusterResources { virtualization: vec!["unikernel".into()], ..report(4000) };
        fleet.on_report(&b.cluster_id, b.conn, unikernel_only);
        assert_eq!(place(9), None, "placed on a cluster without the runtime");
        fleet.on_report(&b.cluster_id, b.conn, report(4000));
        fleet.on_report(&a.cluster_id, a.conn, report(4000));
        assert_eq!(place(10).as_deref(), Some(a.cluster_id.as_str()), "a has 3100 MB free, b 2500");
        // A cluster that left is no candidate.
        fleet.lock().links.remove(&a.cluster_id);
        assert_eq!(place(11).as_deref(), Some(b.cluster_id.as_str()), "placed on a cluster that left");
    }

    #[tokio::test]
    async fn a_full_queue_closes_the_connection_instead_of_growing() {
        let (tx, mut rx) = mpsc::channel(2);
        let overflow = Arc::new(Notify::new());
        let link = Link {
            conn: 1,
            tx,
            overflow: overflow.clone(),
            view: Cluster::default(),
            reported_at: None,
            reports: 0,
            seq: 0,
        };
        let msg = || RootMsg::Undeploy { instances: vec![] };
        assert!(link.send(msg()) && link.send(msg()));
        assert!(!link.send(msg()), "a third message fit a queue of two");
        // The writer is told to close (the permit is kept until it looks).
        tokio::time::timeout(std::time::Duration::from_secs(1), overflow.notified()).await.unwrap();
        assert!(rx.try_recv().is_ok() && rx.try_recv().is_ok() && rx.try_recv().is_err());
    }
}
