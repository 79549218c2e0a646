//! The NetManager: the worker's part of the overlay network (spec `oakestra-net.md` §3.1, §4).
//!
//! Host plumbing (`plumbing`: bridge and iptables with `ip`/`iptables`; per-instance namespace,
//! veth, address and route in-process through `netns` and `netlink`); packets to service IPs go
//! through `oak_net::Proxy` (`datapath`: TUN reader, UDP tunnel, probes, expiry); route tables
//! arrive from the cluster over MQTT. Runtimes see the overlay only as a network namespace to
//! join (`networked`: a runtime decorator that wires an instance before it starts and unwires it
//! after it stopped).

mod datapath;
#[cfg(test)]
mod lifecycle_tests;
mod names;
mod netlink;
mod netns;
mod networked;
mod plumbing;
mod state;
#[cfg(test)]
mod test_netns;
mod tunnel_key;
#[cfg(test)]
mod wiring_tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oak_api::net::{OverlayInfo, RouteTable};
use oak_api::node::DeployCommand;
use oak_core::ports::Protocol;
use tokio::sync::{mpsc, watch};

pub use names::Subnet;
pub(crate) use networked::Networked;

use crate::reports::Outgoing;
use state::{Attachment, Attachments};

/// UDP port of the tunnel between workers (the one the root's port grammar keeps free).
pub const DEFAULT_TUNNEL_PORT: u16 = oak_core::ports::TUNNEL_PORT;

/// How the overlay is configured on this worker.
#[derive(Debug, Clone)]
pub struct OverlayConfig {
    pub tunnel_port: u16,
    /// The address peers send tunnel traffic to; `None`: the address of the interface that
    /// reaches the cluster, looked up again every `address_check`.
    pub public_addr: Option<Ipv4Addr>,
    /// How often an automatic public address is looked up again (a DHCP lease or a roaming
    /// device changes it); rounded to whole seconds, at least one.
    pub address_check: Duration,
    /// INSECURE, for benchmarks and debugging only: carry packets in clear and accept them from
    /// anyone, as before the tunnel was encrypted. Such a worker cannot talk to encrypted ones.
    pub insecure_plaintext: bool,
}

/// How often an automatic public address is looked up again by default.
pub const DEFAULT_ADDRESS_CHECK: Duration = Duration::from_secs(30);

impl Default for OverlayConfig {
    fn default() -> Self {
        Self {
            tunnel_port: DEFAULT_TUNNEL_PORT,
            public_addr: None,
            address_check: DEFAULT_ADDRESS_CHECK,
            insecure_plaintext: false,
        }
    }
}

/// Set once the host plumbing is up.
struct Started {
    node_id: String,
    subnet: Subnet,
}

pub(crate) struct NetManager {
    config: OverlayConfig,
    data_dir: PathBuf,
    cluster_host: String,
    cluster_port: u16,
    outbox: mpsc::UnboundedSender<Outgoing>,
    /// The tunnel endpoint peers use (also what the node information reports).
    endpoint: Mutex<SocketAddrV4>,
    started: Mutex<Option<Started>>,
    ready: watch::Sender<bool>,
    attachments: tokio::sync::Mutex<Attachments>,
    /// A namespace wired ahead for the next instance (address, veth, route), so a deploy waits
    /// only for its port mappings. Locked after `attachments`.
    spare: tokio::sync::Mutex<Option<plumbing::Wiring>>,
    /// Set at shutdown: no more namespaces are prepared.
    stopping: std::sync::atomic::AtomicBool,
    /// Addresses whose wiring is being removed, outside the `attachments` lock (the kernel takes
    /// tens of milliseconds to delete a veth); not handed out again until that is done.
    releasing: Mutex<BTreeSet<Ipv4Addr>>,
    /// nsIPs by instance, for the job reports (read without waiting on plumbing).
    nsips: Mutex<BTreeMap<(String, u32), Ipv4Addr>>,
    datapath: Mutex<Option<Arc<datapath::Datapath>>>,
    /// Jobs whose tables the proxy holds: asked for again after a reconnect, because the
    /// cluster forgets a worker's interests when it loses it.
    jobs: Mutex<std::collections::BTreeSet<String>>,
    /// The tunnel key; `None` with `insecure_plaintext`.
    key: Option<oak_net::StaticKey>,
}

impl std::fmt::Debug for NetManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetManager").field("endpoint", &*self.endpoint.lock().unwrap()).finish_non_exhaustive()
    }
}

/// Why the overlay cannot run, with what a person can do about it.
#[derive(Debug)]
pub struct OverlayError(pub String);

impl OverlayError {
    /// A set-up step failed; most often for want of root, `ip`, `iptables` or `/dev/net/tun`.
    fn setup(message: String) -> Self {
        OverlayError(format!("{message} (run as root, or start the worker with --no-overlay)"))
    }

    /// The data path could not open; a tunnel port in use is not a missing privilege.
    fn datapath(e: std::io::Error) -> Self {
        let message = format!("opening the overlay data path: {e}");
        if e.kind() == std::io::ErrorKind::AddrInUse {
            OverlayError(format!(
                "{message} (another worker or program holds the port: stop it or pick another --tunnel-port)"
            ))
        } else {
            Self::setup(message)
        }
    }
}

impl NetManager {
    pub(crate) fn new(
        config: OverlayConfig,
        data_dir: PathBuf,
        cluster_host: String,
        cluster_port: u16,
        outbox: mpsc::UnboundedSender<Outgoing>,
    ) -> Result<Arc<Self>, OverlayError> {
        let key = if config.insecure_plaintext {
            tracing::warn!("INSECURE: the overlay tunnel carries packets in clear and accepts them from anyone (--insecure-plaintext-overlay)");
            None
        } else {
            let key = tunnel_key::load_or_create(&data_dir)
                .map_err(|e| OverlayError(format!("the overlay tunnel key: {e}")))?;
            Some(key)
        };
        let addr = config
            .public_addr
            .or_else(|| crate::host_info::route_source(&cluster_host, cluster_port))
            .unwrap_or(Ipv4Addr::LOCALHOST);
        let endpoint = SocketAddrV4::new(addr, config.tunnel_port);
        Ok(Arc::new(Self {
            config,
            data_dir,
            cluster_host,
            cluster_port,
            outbox,
            endpoint: Mutex::new(endpoint),
            started: Mutex::new(None),
            ready: watch::channel(false).0,
            attachments: tokio::sync::Mutex::new(Attachments::default()),
            spare: tokio::sync::Mutex::new(None),
            releasing: Mutex::default(),
            stopping: std::sync::atomic::AtomicBool::new(false),
            nsips: Mutex::new(BTreeMap::new()),
            datapath: Mutex::new(None),
            jobs: Mutex::new(Default::default()),
            key,
        }))
    }

    /// What the node information says about the overlay.
    /// The data path's counters and per-peer round-trip times, once it runs.
    pub(crate) fn observe(&self) -> Option<datapath::Observed> {
        let datapath = self.datapath.lock().unwrap().clone()?;
        Some(datapath.observe())
    }

    pub(crate) fn info(&self) -> OverlayInfo {
        let endpoint = *self.endpoint.lock().unwrap();
        let subnet = self.started.lock().unwrap().as_ref().map(|s| s.subnet.to_string()).unwrap_or_default();
        let refused = match self.datapath.lock().unwrap().as_ref().and_then(|d| d.refusals()) {
            Some(counts) => counts.iter().map(|(r, n)| (r.as_str().to_string(), n)).collect(),
            None => Default::default(),
        };
        OverlayInfo {
            public_addr: endpoint.ip().to_string(),
            tunnel_port: endpoint.port(),
            subnet,
            public_key: self.key.as_ref().map(|k| k.public().to_hex()).unwrap_or_default(),
            refused,
        }
    }

    /// Sets the host up for `subnet` (the first time, or again if the cluster gave a new one),
    /// re-attaches instances that survived a restart and starts the data path.
    pub(crate) async fn start(self: &Arc<Self>, node_id: &str, subnet: &str) -> Result<(), OverlayError> {
        let subnet =
            Subnet::parse(subnet).map_err(|e| OverlayError::setup(format!("the cluster sent a bad subnet: {e}")))?;
        {
            let started = self.started.lock().unwrap();
            if let Some(s) = started.as_ref() {
                if s.subnet == subnet && s.node_id == node_id {
                    return Ok(());
                }
            }
        }
        plumbing::setup_host(subnet)
            .await
            .map_err(|e| OverlayError::setup(format!("setting up the overlay bridge: {e}")))?;
        let datapath = {
            let existing = self.datapath.lock().unwrap().clone();
            match existing {
                Some(d) => d,
                None => {
                    let endpoint = *self.endpoint.lock().unwrap();
                    let d = datapath::Datapath::open(self.clone(), endpoint, self.key.clone())
                        .await
                        .map_err(OverlayError::datapath)?;
                    plumbing::setup_tun()
                        .await
                        .map_err(|e| OverlayError::setup(format!("routing the service range: {e}")))?;
                    *self.datapath.lock().unwrap() = Some(d.clone());
                    d
                }
            }
        };
        *self.started.lock().unwrap() = Some(Started { node_id: node_id.to_string(), subnet });
        self.drop_spare().await;
        self.reconcile(node_id, subnet, &datapath).await;
        self.replenish().await;
        // `send` would not store the value while nobody waits yet.
        self.ready.send_replace(true);
        let endpoint = *self.endpoint.lock().unwrap();
        tracing::info!(%subnet, %endpoint, "overlay network ready");
        Ok(())
    }

    /// Keeps the attachments that are still wired (and of this subnet), removes the rest and
    /// every namespace or veth of this node nobody owns.
    async fn reconcile(&self, node_id: &str, subnet: Subnet, datapath: &datapath::Datapath) {
        let mut attachments = self.attachments.lock().await;
        if attachments.is_empty() {
            *attachments = state::load(&self.data_dir).await;
        }
        let mut keep = Attachments::default();
        for (key, a) in std::mem::take(&mut *attachments).into_iter() {
            let ours = subnet.offset_of(a.wiring.nsip).is_some();
            if ours && plumbing::intact(&a.wiring).await {
                if let Err(e) = plumbing::add_rules(&a.wiring).await {
                    tracing::warn!(job = %key.0, instance = key.1, error = %e, "cannot restore source guard or port mappings");
                }
                datapath.add_local(&a);
                self.nsips.lock().unwrap().insert(key.clone(), a.wiring.nsip);
                keep.insert(key, a);
            } else {
                tracing::info!(job = %key.0, instance = key.1, "removing a stale overlay attachment");
                plumbing::detach(&a.wiring).await;
            }
        }
        sweep(node_id, &keep).await;
        *attachments = keep;
        self.save(&attachments).await;
    }

    async fn save(&self, attachments: &Attachments) {
        if let Err(e) = state::save(&self.data_dir, attachments).await {
            tracing::error!(error = %e, "cannot persist overlay attachments; a restart may leave them behind");
        }
    }

    async fn wait_ready(&self) {
        let mut ready = self.ready.subscribe();
        let _ = ready.wait_for(|r| *r).await;
    }

    /// Wires an instance: its namespace (what the runtime joins), address, veth, port mappings
    /// and its entry in the proxy.
    /// Wires the next free address ahead of need (nothing if one is ready or none is free).
    async fn replenish(&self) {
        let (node_id, subnet) = match self.started.lock().unwrap().as_ref() {
            Some(s) => (s.node_id.clone(), s.subnet),
            None => return,
        };
        let attachments = self.attachments.lock().await;
        let mut spare = self.spare.lock().await;
        if spare.is_some() || self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let Some(nsip) = state::free_nsip(&attachments, &self.releasing.lock().unwrap(), subnet) else { return };
        let wiring = plumbing::Wiring {
            netns: names::netns(&node_id, nsip),
            veth: names::veth(&node_id, nsip),
            nsip,
            ports: Vec::new(),
        };
        match plumbing::attach(&wiring, subnet).await {
            Ok(()) => *spare = Some(wiring),
            Err(e) => tracing::warn!(error = %e, "cannot prepare an overlay namespace ahead"),
        }
    }

    async fn drop_spare(&self) {
        if let Some(w) = self.spare.lock().await.take() {
            plumbing::detach(&w).await;
        }
    }

    pub(crate) async fn attach(self: &Arc<Self>, cmd: &DeployCommand) -> Result<String, String> {
        let ports = port_mappings(&cmd.job.spec.port, self.config.tunnel_port)?;
        let instance_ip = match cmd.instance_ip.as_deref().filter(|s| !s.is_empty()) {
            Some(ip) => Some(ip.parse::<Ipv4Addr>().map_err(|_| format!("instance IP {ip:?} is not an IPv4 address"))?),
            None => None,
        };
        self.wait_ready().await;
        let (node_id, subnet) = {
            let started = self.started.lock().unwrap();
            let s = started.as_ref().expect("ready implies started");
            (s.node_id.clone(), s.subnet)
        };
        let key = (cmd.job.job_name.clone(), cmd.instance_number);
        let mut attachments = self.attachments.lock().await;
        self.remove_attachment(&mut attachments, &key).await;
        let ready = self.spare.lock().await.take();
        let wiring = match ready {
            Some(mut wiring) => {
                wiring.ports = ports;
                if let Err(e) = plumbing::add_ports(&wiring).await {
                    plumbing::detach(&wiring).await;
                    return Err(format!("overlay network: {e}"));
                }
                wiring
            }
            None => {
                let nsip =
                    state::free_nsip(&attachments, &self.releasing.lock().unwrap(), subnet).ok_or_else(|| {
                        format!("all {} overlay addresses of subnet {subnet} are in use", Subnet::HOSTS.count())
                    })?;
                let wiring = plumbing::Wiring {
                    netns: names::netns(&node_id, nsip),
                    veth: names::veth(&node_id, nsip),
                    nsip,
                    ports,
                };
                plumbing::attach(&wiring, subnet).await.map_err(|e| format!("overlay network: {e}"))?;
                wiring
            }
        };
        let nsip = wiring.nsip;
        let path = wiring.netns_path();
        let attachment = Attachment { job_name: key.0.clone(), instance: key.1, instance_ip, wiring };
        if let Some(d) = self.datapath.lock().unwrap().clone() {
            d.add_local(&attachment);
        }
        self.nsips.lock().unwrap().insert(key.clone(), nsip);
        attachments.insert(key, attachment);
        self.save(&attachments).await;
        drop(attachments);
        let this = self.clone();
        tokio::spawn(async move { this.replenish().await });
        Ok(path)
    }

    /// Removes an instance's wiring (nothing happens if it has none). The entry goes at once;
    /// the namespace and veth are removed after the lock is released, so a deploy arriving
    /// meanwhile does not wait for the kernel; their address stays taken until they are gone.
    /// A removal cut short leaves a namespace no entry names, which the shutdown's or the next
    /// start's sweep removes.
    pub(crate) async fn detach(&self, job_name: &str, instance: u32) {
        let key = (job_name.to_string(), instance);
        let wiring = {
            let mut attachments = self.attachments.lock().await;
            let Some(a) = attachments.remove(&key) else { return };
            self.forget_local(&key, &a);
            self.releasing.lock().unwrap().insert(a.wiring.nsip);
            self.save(&attachments).await;
            a.wiring
        };
        plumbing::detach(&wiring).await;
        self.releasing.lock().unwrap().remove(&wiring.nsip);
    }

    /// Unwires an instance, then forgets it (whether it had an entry). In this order, a removal
    /// cut short (the worker stopping) keeps the entry and the shutdown finishes it.
    async fn remove_attachment(&self, attachments: &mut Attachments, key: &(String, u32)) -> bool {
        let Some(a) = attachments.get(key).cloned() else { return false };
        self.unwire(key, &a).await;
        attachments.remove(key);
        true
    }

    async fn unwire(&self, key: &(String, u32), a: &Attachment) {
        self.forget_local(key, a);
        plumbing::detach(&a.wiring).await;
    }

    /// Takes the instance out of the proxy and the address list.
    fn forget_local(&self, key: &(String, u32), a: &Attachment) {
        if let Some(d) = self.datapath.lock().unwrap().clone() {
            d.remove_local(a.wiring.nsip);
        }
        self.nsips.lock().unwrap().remove(key);
    }

    /// Removes wirings of instances no runtime holds any more (e.g. stopped while the worker was
    /// down), except those being deployed right now (`busy`).
    pub(crate) async fn forget_missing(&self, present: &[(String, u32)], busy: &[(String, u32)]) {
        if !*self.ready.borrow() {
            return;
        }
        let mut attachments = self.attachments.lock().await;
        let gone: Vec<(String, u32)> =
            attachments.keys().filter(|k| !present.contains(k) && !busy.contains(k)).cloned().collect();
        for key in gone {
            tracing::info!(job = %key.0, instance = key.1, "removing the overlay wiring of an instance that no longer runs");
            self.remove_attachment(&mut attachments, &key).await;
        }
        self.save(&attachments).await;
    }

    /// The instance's namespace address, for its status reports.
    pub(crate) fn nsip(&self, job_name: &str, instance: u32) -> Option<Ipv4Addr> {
        self.nsips.lock().unwrap().get(&(job_name.to_string(), instance)).copied()
    }

    /// A table from the cluster (an answer or a pushed change).
    pub(crate) fn on_table(&self, payload: &[u8]) {
        let table: RouteTable = match serde_json::from_slice(payload) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a garbled route table from the cluster");
                return;
            }
        };
        if !table.app_name.is_empty() && table.error.is_empty() {
            self.jobs.lock().unwrap().insert(table.app_name.clone());
        }
        if let Some(d) = self.datapath.lock().unwrap().clone() {
            d.apply_table(table);
        }
    }

    /// `nodes/<id>/net/peerquery/result`: the directory's answer about a tunnel key.
    pub(crate) fn on_peer(&self, payload: &[u8]) {
        let answer: oak_api::net::PeerAnswer = match serde_json::from_slice(payload) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a garbled peer answer from the cluster");
                return;
            }
        };
        if let Some(d) = self.datapath.lock().unwrap().clone() {
            d.directory_answer(&answer);
        }
    }

    /// After (re)connecting to the broker: registers the interests again.
    pub(crate) fn resync(&self) {
        let jobs: Vec<String> = self.jobs.lock().unwrap().iter().cloned().collect();
        for job in jobs {
            self.send(Outgoing::TableQuery(oak_api::net::TableQuery { sname: job, sip: String::new() }));
        }
    }

    /// The proxy dropped a job (no use for a while): the cluster is told.
    fn interest_expired(&self, job: String) {
        self.jobs.lock().unwrap().remove(&job);
        self.send(Outgoing::InterestRemove(oak_api::net::InterestRemove { appname: job }));
    }

    /// Looks the public address up again (automatic mode); returns whether it changed.
    fn recheck_address(&self) -> bool {
        if self.config.public_addr.is_some() {
            return false;
        }
        let Some(addr) = crate::host_info::route_source(&self.cluster_host, self.cluster_port) else { return false };
        let mut endpoint = self.endpoint.lock().unwrap();
        if *endpoint.ip() == addr {
            return false;
        }
        tracing::info!(old = %endpoint.ip(), new = %addr, "the node's public address changed");
        *endpoint = SocketAddrV4::new(addr, self.config.tunnel_port);
        true
    }

    fn send(&self, msg: Outgoing) {
        let _ = self.outbox.send(msg);
    }

    /// At worker shutdown: without instances, removes everything the overlay made; with
    /// instances, keeps their wiring (they keep running and a restarted worker adopts them).
    pub(crate) async fn shutdown(&self) {
        let datapath = self.datapath.lock().unwrap().take();
        if let Some(d) = datapath {
            d.stop();
        }
        self.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        self.drop_spare().await;
        let mut attachments = self.attachments.lock().await;
        // Undeploys cut short by the stop leave wirings of instances that are gone.
        let keys: Vec<(String, u32)> = attachments.keys().cloned().collect();
        for key in keys {
            if !plumbing::in_use(&attachments[&key].wiring).await {
                self.remove_attachment(&mut attachments, &key).await;
            }
        }
        let node_id = self.started.lock().unwrap().as_ref().map(|s| s.node_id.clone());
        if let Some(node_id) = &node_id {
            // Attaches and detaches the stop cut short may have left a namespace or veth that no
            // entry names.
            sweep(node_id, &attachments).await;
        }
        self.save(&attachments).await;
        let started = node_id.is_some();
        if attachments.is_empty() && started {
            plumbing::teardown_host().await;
            tracing::info!("overlay network removed");
        } else if !attachments.is_empty() {
            tracing::info!(instances = attachments.len(), "keeping the overlay wiring of running instances");
        }
    }
}

/// Removes this node's instance namespaces and veths that belong to none of `keep`.
async fn sweep(node_id: &str, keep: &Attachments) {
    let (namespaces, veths) = plumbing::leftovers(&names::netns_prefix(node_id)).await;
    for ns in namespaces.iter().filter(|ns| !keep.values().any(|a| &a.wiring.netns == *ns)) {
        tracing::info!(netns = %ns, "removing a leftover instance namespace");
        plumbing::remove_netns(ns).await;
    }
    for veth in veths.iter().filter(|v| !keep.values().any(|a| &a.wiring.veth == *v)) {
        tracing::info!(%veth, "removing a leftover veth");
        plumbing::remove_link(veth).await;
    }
}

/// The descriptor's `port` as mappings, by the grammar the root validated it with (errors name
/// the bad part). The cluster never places a mapping of this worker's tunnel port here; it is
/// checked again because the tunnel would stop working.
fn port_mappings(spec: &str, tunnel_port: u16) -> Result<Vec<plumbing::Mapping>, String> {
    let parsed = oak_core::ports::parse_port_mappings(spec).map_err(|e| format!("port {spec:?}: {e}"))?;
    if parsed.iter().any(|m| m.host == tunnel_port && m.protocol == Protocol::Udp) {
        return Err(format!("port {spec:?}: host port {tunnel_port}/udp is this worker's overlay tunnel"));
    }
    Ok(parsed
        .into_iter()
        .map(|m| plumbing::Mapping { host: m.host, container: m.container, udp: m.protocol == Protocol::Udp })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::io::{Error, ErrorKind};

    use super::{port_mappings, OverlayError};

    #[test]
    fn overlay_failures_say_what_helps() {
        let busy = OverlayError::datapath(Error::new(ErrorKind::AddrInUse, "cannot bind the tunnel port 50103"));
        assert!(busy.0.contains("pick another --tunnel-port"), "{}", busy.0);
        let denied = OverlayError::datapath(Error::new(ErrorKind::PermissionDenied, "creating the TUN"));
        assert!(denied.0.contains("run as root, or start the worker with --no-overlay"), "{}", denied.0);
    }

    /// The root's grammar, plus this worker's own tunnel port (which may differ from the default).
    #[test]
    fn port_mappings_refuse_the_tunnel_port() {
        let ok = port_mappings("8080:80;53/udp", 50103).unwrap();
        assert_eq!(
            ok.iter().map(|m| (m.host, m.container, m.udp)).collect::<Vec<_>>(),
            [(8080, 80, false), (53, 53, true)]
        );
        assert!(port_mappings("40000/udp", 50103).is_ok());
        let tunnel = port_mappings("40000/udp", 40000).unwrap_err();
        assert!(tunnel.contains("host port 40000/udp is this worker's overlay tunnel"), "{tunnel}");
        assert!(port_mappings("40000", 40000).is_ok(), "the tunnel is UDP only");
        assert!(port_mappings("80;80", 50103).unwrap_err().contains("mapped twice"));
    }
}
