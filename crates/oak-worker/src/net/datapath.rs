//! The overlay's packet loop: packets the kernel routes into the TUN go through the proxy and
//! out on the UDP tunnel (or straight back into the TUN for instances on this node); datagrams
//! from peers go through the proxy into the TUN. Misses ask the cluster for the route table
//! without holding up other flows (the proxy queues the packet). A ticker expires flows and
//! interests, probes peers' round-trip times for closest balancing and re-checks the public
//! address.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use oak_api::net::{InterestRemove, RouteTable, TableQuery};
use oak_net::{classify, Datagram, Inbound, Outbound, Probe, ProbeKind, Proxy, ProxyConfig, Tun};
use tokio::net::UdpSocket;
use tokio::task::JoinSet;

use super::names;
use super::state::Attachment;
use super::NetManager;
use crate::reports::Outgoing;

/// Largest packet read from the TUN or the tunnel.
const BUFFER: usize = 65_536;
const TICK: Duration = Duration::from_secs(1);
const PROBE_EVERY: u32 = 2;

pub(crate) struct Datapath {
    proxy: Mutex<Proxy>,
    tun: Tun,
    udp: UdpSocket,
    epoch: Instant,
    tasks: Mutex<JoinSet<()>>,
}

impl Datapath {
    /// Opens the TUN and binds the tunnel port, then starts the loops.
    pub(crate) async fn open(net: Arc<NetManager>, endpoint: SocketAddrV4) -> std::io::Result<Arc<Self>> {
        let tun = Tun::open(names::TUN)?;
        let udp = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, endpoint.port())).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot bind the tunnel port {}: {e}", endpoint.port()))
        })?;
        let proxy = Proxy::new(ProxyConfig::new(endpoint));
        let datapath = Arc::new(Self {
            proxy: Mutex::new(proxy),
            tun,
            udp,
            epoch: Instant::now(),
            tasks: Mutex::new(JoinSet::new()),
        });
        let weak_net = Arc::downgrade(&net);
        {
            let mut tasks = datapath.tasks.lock().unwrap();
            tasks.spawn(from_tun(datapath.clone(), weak_net.clone()));
            tasks.spawn(from_tunnel(datapath.clone()));
            tasks.spawn(ticker(datapath.clone(), weak_net));
        }
        Ok(datapath)
    }

    pub(crate) fn stop(&self) {
        self.tasks.lock().unwrap().abort_all();
    }

    pub(crate) fn add_local(&self, a: &Attachment) {
        if let Some(instance_ip) = a.instance_ip {
            self.proxy.lock().unwrap().add_local(a.wiring.nsip, instance_ip, &a.job_name);
        } else {
            tracing::warn!(job = %a.job_name, instance = a.instance, "instance has no instance IP: it cannot use service IPs");
        }
    }

    pub(crate) fn remove_local(&self, nsip: Ipv4Addr) {
        self.proxy.lock().unwrap().remove_local(nsip);
    }

    /// Applies a table and sends the packets that waited for it.
    pub(crate) fn apply_table(self: &Arc<Self>, table: RouteTable) {
        let released = {
            let mut proxy = self.proxy.lock().unwrap();
            match proxy.apply_table(&table, Instant::now()) {
                Ok(report) if !report.skipped.is_empty() => {
                    tracing::debug!(job = %table.app_name, skipped = ?report.skipped, "route table entries ignored");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "ignoring a route table"),
            }
            proxy.take_released()
        };
        if released.is_empty() {
            return;
        }
        let this = self.clone();
        self.tasks.lock().unwrap().spawn(async move {
            for mut packet in released {
                this.outbound(&mut packet, None).await;
            }
        });
    }

    /// One packet from a local instance.
    async fn outbound(&self, packet: &mut [u8], net: Option<&NetManager>) {
        let action = self.proxy.lock().unwrap().outbound(packet, Instant::now());
        match action {
            Outbound::Tunnel(peer) => {
                if let Err(e) = self.udp.send_to(packet, peer).await {
                    tracing::debug!(%peer, error = %e, "tunnel send failed");
                }
            }
            Outbound::Local => {
                if let Err(e) = self.tun.send(packet).await {
                    tracing::debug!(error = %e, "TUN write failed");
                }
            }
            Outbound::Query(ip) => {
                tracing::debug!(%ip, "route table miss; asking the cluster");
                if let Some(net) = net {
                    net.send(Outgoing::TableQuery(TableQuery { sname: String::new(), sip: ip.to_string() }));
                }
            }
            Outbound::Queued => {}
            Outbound::Drop(reason) => tracing::debug!(%reason, "outbound packet dropped"),
        }
    }
}

async fn from_tun(d: Arc<Datapath>, net: Weak<NetManager>) {
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = match d.tun.recv(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "reading the TUN failed; the overlay data path stops");
                return;
            }
        };
        let net = net.upgrade();
        d.outbound(&mut buf[..n], net.as_deref()).await;
    }
}

async fn from_tunnel(d: Arc<Datapath>) {
    let mut buf = vec![0u8; BUFFER];
    loop {
        let (n, from) = match d.udp.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP port unreachable from a peer surfaces here on Linux; keep going.
                tracing::debug!(error = %e, "tunnel receive error");
                continue;
            }
        };
        match classify(&buf[..n]) {
            Datagram::Ip => {
                let verdict = d.proxy.lock().unwrap().inbound(&mut buf[..n], Instant::now());
                match verdict {
                    Inbound::Deliver => {
                        if let Err(e) = d.tun.send(&buf[..n]).await {
                            tracing::debug!(error = %e, "TUN write failed");
                        }
                    }
                    Inbound::Drop(reason) => tracing::debug!(%reason, %from, "inbound packet dropped"),
                }
            }
            Datagram::Probe(probe) if probe.kind == ProbeKind::Ping => {
                let _ = d.udp.send_to(&probe.pong().encode(), from).await;
            }
            Datagram::Probe(probe) => {
                if let SocketAddr::V4(peer) = from {
                    let now = d.epoch.elapsed().as_nanos() as u64;
                    if let Some(rtt) = now.checked_sub(probe.sent_nanos) {
                        d.proxy.lock().unwrap().set_rtt(peer, Duration::from_nanos(rtt));
                    }
                }
            }
            Datagram::Garbage => tracing::trace!(%from, "ignoring a garbled tunnel datagram"),
        }
    }
}

async fn ticker(d: Arc<Datapath>, net: Weak<NetManager>) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut ticks: u32 = 0;
    loop {
        interval.tick().await;
        ticks = ticks.wrapping_add(1);
        let Some(net) = net.upgrade() else { return };
        let expired = d.proxy.lock().unwrap().expire(Instant::now());
        for job in expired.jobs {
            net.send(Outgoing::InterestRemove(InterestRemove { appname: job }));
        }
        if ticks.is_multiple_of(PROBE_EVERY) {
            let targets = d.proxy.lock().unwrap().probe_targets();
            let sent_nanos = d.epoch.elapsed().as_nanos() as u64;
            for (i, peer) in targets.into_iter().enumerate() {
                let ping = Probe::ping(u64::from(ticks) << 16 | i as u64, sent_nanos).encode();
                let _ = d.udp.send_to(&ping, peer).await;
            }
        }
        if ticks.is_multiple_of(super::ADDRESS_CHECK.as_secs() as u32) && net.recheck_address() {
            let endpoint = *net.endpoint.lock().unwrap();
            d.proxy.lock().unwrap().set_own_endpoint(endpoint);
        }
    }
}
