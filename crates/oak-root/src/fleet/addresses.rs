//! The overlay's address authority (spec `oakestra-net.md` §2.1): service IPs (round-robin,
//! closest and instance IPs, one pool) and worker subnets, with an index of which service holds
//! which address. Only memory: the pools are rebuilt at start from the documents that name the
//! addresses (services, instances, the subnets table), so nothing else needs storing. Unlike the
//! original, everything is given back when its service, instance or node goes away.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use oak_api::model::Service;
use oak_core::addresses::{AddressError, ServiceIpPool, SubnetPool};
use oak_store::{RootStore, SubnetRecord};

use super::Fleet;

/// Why a service or instance cannot have the addresses it asks for.
#[derive(Debug)]
pub enum AddressRefusal {
    /// The address is held by another service (or asked for twice).
    Taken(String),
    /// The pool is empty.
    Exhausted(String),
    /// The descriptor names an address the pool never hands out (`field`, message).
    Invalid(&'static str, String),
}

#[derive(Default)]
pub(super) struct Addresses {
    service_ips: ServiceIpPool,
    subnets: SubnetPool,
    /// Every service IP in use → the id of the service holding it.
    owners: HashMap<Ipv4Addr, String>,
    /// (cluster id, node id) → the node's subnet.
    nodes: HashMap<(String, String), Ipv4Addr>,
}

/// `10.18.0.64/26` → `10.18.0.64`.
fn parse_subnet(s: &str) -> Option<Ipv4Addr> {
    s.strip_suffix("/26")?.parse().ok()
}

impl Addresses {
    /// The pools as the stored documents use them. Addresses the pools would never hand out are
    /// logged and left alone; services and instances without one get one now (they were created
    /// before the overlay), so every service has a round-robin IP and every instance its own.
    pub(super) fn rebuild(store: &dyn RootStore) -> oak_store::Result<Self> {
        let mut a = Addresses::default();
        let services = store.list_services(None)?;
        for s in &services {
            let named = [s.rr_ip.as_ref(), s.closest_ip.as_ref()]
                .into_iter()
                .chain(s.instance_list.iter().map(|i| i.instance_ip.as_ref()));
            for text in named.flatten() {
                let used = text
                    .parse::<Ipv4Addr>()
                    .map_err(|e| e.to_string())
                    .and_then(|ip| a.service_ips.mark_used(ip).map(|()| ip).map_err(|e| e.to_string()));
                match used {
                    Ok(ip) => {
                        if let Some(other) = a.owners.insert(ip, s.id.clone()).filter(|o| *o != s.id) {
                            tracing::warn!(%ip, service = %s.id, %other, "a service IP is named by two services");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(service = %s.id, address = %text, error = %e, "ignoring a stored service IP")
                    }
                }
            }
        }
        for mut s in services {
            if s.rr_ip.is_none() {
                if let Ok(ip) = a.allocate(&s.id) {
                    s.rr_ip = Some(ip.to_string());
                    store.update_service(&s)?;
                }
            }
            let keys: Vec<(String, u32)> = s
                .instance_list
                .iter()
                .filter(|i| i.instance_ip.is_none())
                .map(|i| (s.id.clone(), i.instance_number))
                .collect();
            if !keys.is_empty() {
                store.update_instances(&keys, &mut |_, inst| match a.allocate(&s.id) {
                    Ok(ip) => {
                        inst.instance_ip = Some(ip.to_string());
                        true
                    }
                    Err(_) => false,
                })?;
            }
        }
        for r in store.subnets()? {
            match parse_subnet(&r.subnet).map(|ip| (ip, a.subnets.mark_used(ip))) {
                Some((ip, Ok(()))) => {
                    a.nodes.insert((r.cluster_id, r.node_id), ip);
                }
                _ => tracing::warn!(subnet = %r.subnet, node = %r.node_id, "ignoring a stored subnet"),
            }
        }
        Ok(a)
    }

    fn allocate(&mut self, owner: &str) -> Result<Ipv4Addr, AddressError> {
        let ip = self.service_ips.allocate()?;
        self.owners.insert(ip, owner.to_string());
        Ok(ip)
    }

    fn claim(&mut self, owner: &str, ip: Ipv4Addr) -> Result<(), AddressError> {
        self.service_ips.claim(ip)?;
        self.owners.insert(ip, owner.to_string());
        Ok(())
    }

    /// Gives back `ip` if `owner` holds it (never someone else's).
    fn release(&mut self, owner: &str, ip: Ipv4Addr) {
        if self.owners.get(&ip).is_some_and(|o| o == owner) {
            self.owners.remove(&ip);
            self.service_ips.release(ip);
        }
    }

    /// Moves `owner` from addresses `old` to `new`, all or nothing.
    fn replace(&mut self, owner: &str, old: &[Ipv4Addr], new: &[Ipv4Addr]) -> Result<(), (Ipv4Addr, AddressError)> {
        let dropped: Vec<Ipv4Addr> = old.iter().filter(|ip| !new.contains(ip)).copied().collect();
        for ip in &dropped {
            self.release(owner, *ip);
        }
        let mut claimed = Vec::new();
        for ip in new.iter().filter(|ip| !old.contains(ip)) {
            if let Err(e) = self.claim(owner, *ip) {
                for c in claimed {
                    self.release(owner, c);
                }
                for ip in &dropped {
                    // Just released under the same lock: still free.
                    let _ = self.claim(owner, *ip);
                }
                return Err((*ip, e));
            }
            claimed.push(*ip);
        }
        Ok(())
    }
}

/// The addresses a service asks for, with the descriptor field naming each (RR, then closest).
fn wanted(service: &Service) -> Result<Vec<(&'static str, Ipv4Addr)>, AddressRefusal> {
    let mut out = Vec::new();
    for (field, text) in [("rr_ip", &service.rr_ip), ("closest_ip", &service.closest_ip)] {
        if let Some(text) = text {
            let ip =
                text.parse().map_err(|_| AddressRefusal::Invalid(field, format!("{text:?} is not an ipv4 address")))?;
            out.push((field, ip));
        }
    }
    Ok(out)
}

fn exhausted(e: AddressError) -> AddressRefusal {
    AddressRefusal::Exhausted(format!("{e}: delete services or instances first"))
}

impl Fleet {
    fn addresses(&self) -> std::sync::MutexGuard<'_, Addresses> {
        self.addresses.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives `service` the addresses of its descriptor, and a round-robin IP from the pool when
    /// it names none. `previous` is the service before an update: its addresses are given back
    /// unless still named, and without a new `rr_ip` the old one is kept.
    pub fn assign_addresses(&self, service: &mut Service, previous: Option<&Service>) -> Result<(), AddressRefusal> {
        if service.rr_ip.is_none() {
            service.rr_ip = previous.and_then(|p| p.rr_ip.clone());
        }
        let old: Vec<Ipv4Addr> = match previous {
            Some(p) => wanted(p).unwrap_or_default().into_iter().map(|(_, ip)| ip).collect(),
            None => Vec::new(),
        };
        let new = wanted(service)?;
        let new_ips: Vec<Ipv4Addr> = new.iter().map(|(_, ip)| *ip).collect();
        let mut a = self.addresses();
        let (ip, e) = match a.replace(&service.id, &old, &new_ips) {
            Ok(()) => {
                if service.rr_ip.is_none() {
                    match a.allocate(&service.id) {
                        Ok(ip) => service.rr_ip = Some(ip.to_string()),
                        Err(e) => {
                            let _ = a.replace(&service.id, &new_ips, &old);
                            return Err(exhausted(e));
                        }
                    }
                }
                return Ok(());
            }
            Err(failed) => failed,
        };
        let holder = a.owners.get(&ip).cloned();
        drop(a);
        let field = new.iter().find(|(_, i)| *i == ip).map_or("rr_ip", |(f, _)| *f);
        Err(match e {
            AddressError::Taken(_) => {
                let by = holder
                    .and_then(|h| self.store.service_spec(&h).ok().flatten())
                    .map(|h| format!("service {}", h.job_name))
                    .unwrap_or_else(|| "another service".into());
                AddressRefusal::Taken(format!("{field} {ip} of service {} is already used by {by}", service.job_name))
            }
            AddressError::OutOfRange { .. } => AddressRefusal::Invalid(field, e.to_string()),
            AddressError::Exhausted(_) => exhausted(e),
        })
    }

    /// A new instance IP for an instance of service `owner`.
    pub fn allocate_instance_ip(&self, owner: &str) -> Result<String, AddressRefusal> {
        self.addresses().allocate(owner).map(|ip| ip.to_string()).map_err(exhausted)
    }

    /// Gives back addresses of service `owner` (RR, closest or instance IPs).
    pub fn release_addresses<'a>(&self, owner: &str, ips: impl IntoIterator<Item = &'a String>) {
        let mut a = self.addresses();
        for ip in ips {
            if let Ok(ip) = ip.parse() {
                a.release(owner, ip);
            }
        }
    }

    /// Gives back every address service `owner` holds (it was deleted).
    pub fn release_service(&self, owner: &str) {
        let mut a = self.addresses();
        let held: Vec<Ipv4Addr> = a.owners.iter().filter(|(_, o)| *o == owner).map(|(ip, _)| *ip).collect();
        for ip in held {
            a.release(owner, ip);
        }
    }

    /// The service holding a service IP.
    pub(super) fn owner_of(&self, ip: &str) -> Option<String> {
        let ip: Ipv4Addr = ip.trim().parse().ok()?;
        self.addresses().owners.get(&ip).cloned()
    }

    /// The subnet of node `node_id` of `cluster_id` (`10.18.0.64/26`): the one it has, or a new
    /// one, recorded before it is answered.
    pub(super) fn subnet_for(&self, cluster_id: &str, node_id: &str) -> Result<String, String> {
        if node_id.is_empty() || node_id.len() > 128 {
            return Err(format!("{node_id:?} is not a node id"));
        }
        let key = (cluster_id.to_string(), node_id.to_string());
        let ip = {
            let mut a = self.addresses();
            if let Some(ip) = a.nodes.get(&key) {
                return Ok(format!("{ip}/26"));
            }
            let ip = a.subnets.allocate().map_err(|e| e.to_string())?;
            a.nodes.insert(key.clone(), ip);
            ip
        };
        let subnet = format!("{ip}/26");
        let record = SubnetRecord { cluster_id: key.0.clone(), node_id: key.1.clone(), subnet: subnet.clone() };
        if let Err(e) = self.store.put_subnet(&record) {
            let mut a = self.addresses();
            a.nodes.remove(&key);
            a.subnets.release(ip);
            return Err(format!("the root cannot store the subnet: {e}"));
        }
        tracing::info!(cluster = cluster_id, node = node_id, %subnet, "worker subnet assigned");
        Ok(subnet)
    }

    /// The cluster knows only `node_ids`: the subnets of its other nodes go back to the pool.
    pub(super) fn keep_subnets(&self, cluster_id: &str, node_ids: &[String]) {
        let keep: std::collections::HashSet<&str> = node_ids.iter().map(String::as_str).collect();
        let gone: Vec<String> = self
            .addresses()
            .nodes
            .keys()
            .filter(|(c, n)| c == cluster_id && !keep.contains(n.as_str()))
            .map(|(_, n)| n.clone())
            .collect();
        if gone.is_empty() {
            return;
        }
        if let Err(e) = self.store.delete_subnets(cluster_id, &gone) {
            tracing::error!(cluster = cluster_id, error = %e, "cannot release worker subnets");
            return;
        }
        let mut a = self.addresses();
        for node in gone {
            if let Some(ip) = a.nodes.remove(&(cluster_id.to_string(), node.clone())) {
                a.subnets.release(ip);
                tracing::info!(cluster = cluster_id, node = %node, subnet = %format!("{ip}/26"), "worker subnet released");
            }
        }
    }
}
