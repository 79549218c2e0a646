//! Route tables of the jobs this worker talks to, indexed by service address, and the balancing
//! choice among their instances (spec §5).
//!
//! A table replaces everything known about its job, so the index never mixes old and new
//! instance lists. Lookups are hash maps: address → job, job → routes.

use crate::FastMap;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use oak_api::net::{RouteTable, IP_TYPE_CLOSEST, IP_TYPE_INSTANCE, IP_TYPE_RR};

/// A routable instance: where a flow's packets go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Target {
    pub instance_number: u32,
    /// Address on its worker's bridge: the rewritten destination.
    pub ns_ip: Ipv4Addr,
    /// Its instance IP: the source address of its replies.
    pub instance_ip: Ipv4Addr,
    /// Tunnel endpoint of its worker.
    pub endpoint: SocketAddrV4,
}

/// How an address picks among the instances of its job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    RoundRobin,
    Closest,
    /// Exactly the instance with this number.
    Instance(u32),
}

#[derive(Debug, Clone)]
struct Address {
    job: String,
    policy: Policy,
}

#[derive(Debug, Clone)]
struct JobRoutes {
    /// Every address the table claimed, to unindex them when the table is replaced.
    addresses: Vec<Ipv4Addr>,
    /// Routable instances, sorted by instance number.
    live: Vec<Target>,
    has_closest: bool,
    last_used: Instant,
}

/// Outcome of looking up a destination address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// No table has this address.
    Unknown,
    /// The job is known but none of the instances the address stands for is routable.
    NoTarget {
        job: String,
    },
    Target {
        job: String,
        target: Target,
    },
}

/// What `replace` did, for the caller to release waiters and report bad entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replaced {
    /// Every address now pointing to the job.
    pub addresses: Vec<Ipv4Addr>,
    /// Entries of the table that were ignored, with the reason.
    pub skipped: Vec<String>,
}

/// All known route tables plus the state of the balancing policies.
#[derive(Debug, Default)]
pub struct Routes {
    jobs: FastMap<String, JobRoutes>,
    by_ip: FastMap<Ipv4Addr, Address>,
    /// Next round-robin position per RR address.
    rr_next: FastMap<Ipv4Addr, usize>,
    /// Measured RTT per worker endpoint, for the closest policy.
    rtts: FastMap<SocketAddrV4, Duration>,
}

impl Routes {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the job's table (`table.app_name`, must be non-empty) with `table`.
    pub fn replace(&mut self, table: &RouteTable, now: Instant) -> Replaced {
        let job = table.app_name.clone();
        let last_used = self.jobs.get(&job).map_or(now, |j| j.last_used);
        let kept_counters: HashMap<Ipv4Addr, usize> = self
            .jobs
            .get(&job)
            .map(|j| j.addresses.iter().filter_map(|a| Some((*a, *self.rr_next.get(a)?))).collect())
            .unwrap_or_default();
        self.remove(&job);

        let mut skipped = Vec::new();
        let mut addresses = Vec::new();
        let mut live: Vec<Target> = Vec::new();
        let mut has_closest = false;
        let mut numbers = HashSet::new();
        let mut claim = |ip: Ipv4Addr, policy: Policy, addresses: &mut Vec<Ipv4Addr>| {
            if addresses.contains(&ip) {
                return false;
            }
            addresses.push(ip);
            self.by_ip.insert(ip, Address { job: job.clone(), policy });
            true
        };

        for sip in &table.service_ip {
            let policy = match sip.ip_type.as_str() {
                IP_TYPE_RR => Policy::RoundRobin,
                IP_TYPE_CLOSEST => Policy::Closest,
                // Instance IPs are taken from `instance_list`, which says which instance they mean.
                IP_TYPE_INSTANCE => continue,
                other => {
                    skipped.push(format!("service IP {}: unknown IpType `{other}`", sip.address));
                    continue;
                }
            };
            let Ok(ip) = sip.address.trim().parse::<Ipv4Addr>() else {
                skipped.push(format!("service IP `{}`: not an IPv4 address", sip.address));
                continue;
            };
            if !claim(ip, policy, &mut addresses) {
                skipped.push(format!("service IP {ip}: listed twice"));
                continue;
            }
            has_closest |= policy == Policy::Closest;
        }

        for inst in &table.instance_list {
            let n = inst.instance_number;
            if !numbers.insert(n) {
                skipped.push(format!("instance {n}: listed twice"));
                continue;
            }
            let Ok(instance_ip) = inst.instance_ip.trim().parse::<Ipv4Addr>() else {
                skipped.push(format!("instance {n}: instance IP `{}` invalid", inst.instance_ip));
                continue;
            };
            if !claim(instance_ip, Policy::Instance(n), &mut addresses) {
                skipped.push(format!("instance {n}: instance IP {instance_ip} listed twice"));
                continue;
            }
            match routable(inst) {
                Ok(Some((ns_ip, endpoint))) => live.push(Target { instance_number: n, ns_ip, instance_ip, endpoint }),
                Ok(None) => {} // not placed or not running: addressable but unreachable
                Err(why) => skipped.push(format!("instance {n}: {why}")),
            }
        }
        live.sort_by_key(|t| t.instance_number);

        for (ip, next) in kept_counters {
            if addresses.contains(&ip) {
                self.rr_next.insert(ip, next);
            }
        }
        self.jobs.insert(job, JobRoutes { addresses: addresses.clone(), live, has_closest, last_used });
        Replaced { addresses, skipped }
    }

    /// Forgets a job's table; whether it was known.
    pub fn remove(&mut self, job: &str) -> bool {
        let Some(old) = self.jobs.remove(job) else {
            return false;
        };
        for ip in old.addresses {
            // Another job may have claimed the address since; leave its entry alone.
            if self.by_ip.get(&ip).is_some_and(|a| a.job == job) {
                self.by_ip.remove(&ip);
                self.rr_next.remove(&ip);
            }
        }
        true
    }

    /// Picks the instance for a new flow to `dst`; advances round-robin state.
    pub fn resolve(&mut self, dst: Ipv4Addr, own: SocketAddrV4) -> Resolved {
        let Some(addr) = self.by_ip.get(&dst) else {
            return Resolved::Unknown;
        };
        let job = addr.job.clone();
        let Some(routes) = self.jobs.get(&job) else {
            return Resolved::Unknown;
        };
        let live = &routes.live;
        let chosen = match addr.policy {
            Policy::Instance(n) => live.iter().find(|t| t.instance_number == n).copied(),
            Policy::RoundRobin if live.is_empty() => None,
            Policy::RoundRobin => {
                let next = self.rr_next.entry(dst).or_insert(0);
                let t = live[*next % live.len()];
                *next = (*next % live.len()) + 1;
                Some(t)
            }
            Policy::Closest => closest(live, own, &self.rtts),
        };
        match chosen {
            Some(target) => Resolved::Target { job, target },
            None => Resolved::NoTarget { job },
        }
    }

    /// The tunnel endpoint of the worker running the instance whose instance IP is `ip`, if a
    /// known table lists it as routable (for checking who may send from that address).
    pub fn instance_endpoint(&self, ip: Ipv4Addr) -> Option<SocketAddrV4> {
        let addr = self.by_ip.get(&ip)?;
        let Policy::Instance(n) = addr.policy else { return None };
        self.jobs.get(&addr.job)?.live.iter().find(|t| t.instance_number == n).map(|t| t.endpoint)
    }

    /// Whether `dst` still belongs to `job` and `target` is still one of its routable instances
    /// unchanged (same number, address and worker): a flow may keep its choice.
    pub fn still_routes(&self, job: &str, dst: Ipv4Addr, target: &Target) -> bool {
        let Some(addr) = self.by_ip.get(&dst) else {
            return false;
        };
        if addr.job != job {
            return false;
        }
        if let Policy::Instance(n) = addr.policy {
            if n != target.instance_number {
                return false;
            }
        }
        self.jobs.get(job).is_some_and(|r| {
            r.live
                .binary_search_by_key(&target.instance_number, |t| t.instance_number)
                .is_ok_and(|i| r.live[i] == *target)
        })
    }

    /// Whether the job's table is known.
    pub fn has_job(&self, job: &str) -> bool {
        self.jobs.contains_key(job)
    }

    /// Names of the known jobs.
    pub fn job_names(&self) -> impl Iterator<Item = &str> {
        self.jobs.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Marks the job's table as used now (keeps its interest alive).
    pub fn touch(&mut self, job: &str, now: Instant) {
        if let Some(r) = self.jobs.get_mut(job) {
            r.last_used = now;
        }
    }

    /// When the job's table was last used.
    pub fn last_used(&self, job: &str) -> Option<Instant> {
        self.jobs.get(job).map(|r| r.last_used)
    }

    /// The last probed round-trip time to each worker (read for metrics).
    pub fn rtts(&self) -> impl Iterator<Item = (SocketAddrV4, Duration)> + '_ {
        self.rtts.iter().map(|(ep, rtt)| (*ep, *rtt))
    }

    pub fn set_rtt(&mut self, peer: SocketAddrV4, rtt: Duration) {
        self.rtts.insert(peer, rtt);
    }

    /// Distinct worker endpoints of jobs with a closest address, except `own`, sorted.
    pub fn probe_targets(&self, own: SocketAddrV4) -> Vec<SocketAddrV4> {
        let set: BTreeSet<SocketAddrV4> = self
            .jobs
            .values()
            .filter(|r| r.has_closest)
            .flat_map(|r| r.live.iter().map(|t| t.endpoint))
            .filter(|ep| *ep != own)
            .collect();
        set.into_iter().collect()
    }

    /// Forgets RTTs of endpoints that are no longer probe targets.
    pub fn prune_rtts(&mut self, own: SocketAddrV4) {
        let keep: BTreeSet<SocketAddrV4> = self.probe_targets(own).into_iter().collect();
        self.rtts.retain(|ep, _| keep.contains(ep));
    }
}

/// `Ok(Some(..))` for a routable instance, `Ok(None)` for one without a namespace address yet,
/// `Err` for entries that claim to be placed but are unusable.
fn routable(inst: &oak_api::net::RouteInstance) -> Result<Option<(Ipv4Addr, SocketAddrV4)>, String> {
    let ns = inst.namespace_ip.trim();
    if ns.is_empty() {
        return Ok(None);
    }
    let ns_ip: Ipv4Addr = ns.parse().map_err(|_| format!("namespace IP `{ns}` invalid"))?;
    let host: Ipv4Addr = inst.host_ip.trim().parse().map_err(|_| format!("host IP `{}` invalid", inst.host_ip))?;
    if inst.host_port == 0 {
        return Err("host port 0".to_string());
    }
    Ok(Some((ns_ip, SocketAddrV4::new(host, inst.host_port))))
}

/// The instance with the lowest RTT to its worker: this worker's own instances count as 0,
/// unmeasured workers rank after measured ones, ties go to the lower instance number.
fn closest(live: &[Target], own: SocketAddrV4, rtts: &FastMap<SocketAddrV4, Duration>) -> Option<Target> {
    live.iter()
        .min_by_key(|t| {
            let rtt = if t.endpoint == own { Some(Duration::ZERO) } else { rtts.get(&t.endpoint).copied() };
            (rtt.is_none(), rtt.unwrap_or(Duration::ZERO), t.instance_number)
        })
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use oak_api::net::{RouteInstance, ServiceIp};

    pub(crate) fn inst(n: u32, ip: &str, ns: &str, host: &str) -> RouteInstance {
        RouteInstance {
            instance_number: n,
            instance_ip: ip.into(),
            namespace_ip: ns.into(),
            host_ip: host.into(),
            host_port: 50103,
            worker_id: format!("w-{host}"),
            cluster_id: "c1".into(),
            public_key: String::new(),
        }
    }

    fn table(job: &str, sips: &[(&str, &str)], instances: Vec<RouteInstance>) -> RouteTable {
        RouteTable {
            app_name: job.into(),
            service_ip: sips
                .iter()
                .map(|(t, a)| ServiceIp { ip_type: t.to_string(), address: a.to_string() })
                .collect(),
            instance_list: instances,
            ..Default::default()
        }
    }

    fn own() -> SocketAddrV4 {
        "192.168.1.1:50103".parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn pick(r: &mut Routes, dst: &str) -> Option<u32> {
        match r.resolve(ip(dst), own()) {
            Resolved::Target { target, .. } => Some(target.instance_number),
            _ => None,
        }
    }

    #[test]
    fn instance_ip_routes_to_exactly_that_instance() {
        let mut r = Routes::new();
        let rep = r.replace(
            &table(
                "a.b.c.d",
                &[(IP_TYPE_RR, "10.30.1.1")],
                vec![
                    inst(0, "10.30.0.10", "10.18.0.66", "192.168.1.2"),
                    inst(1, "10.30.0.11", "10.18.0.130", "192.168.1.3"),
                    inst(2, "10.30.0.12", "", ""),
                ],
            ),
            Instant::now(),
        );
        assert!(rep.skipped.is_empty(), "{:?}", rep.skipped);
        assert_eq!(rep.addresses.len(), 4);
        match r.resolve(ip("10.30.0.11"), own()) {
            Resolved::Target { job, target } => {
                assert_eq!(job, "a.b.c.d");
                assert_eq!(target.instance_number, 1);
                assert_eq!(target.ns_ip, ip("10.18.0.130"));
                assert_eq!(target.instance_ip, ip("10.30.0.11"));
                assert_eq!(target.endpoint, "192.168.1.3:50103".parse().unwrap());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(pick(&mut r, "10.30.0.10"), Some(0));
        assert_eq!(r.resolve(ip("10.30.0.12"), own()), Resolved::NoTarget { job: "a.b.c.d".into() });
        assert_eq!(r.resolve(ip("10.30.9.9"), own()), Resolved::Unknown);
        // Who may send from an instance IP: the worker its table names, if routable.
        assert_eq!(r.instance_endpoint(ip("10.30.0.11")), Some("192.168.1.3:50103".parse().unwrap()));
        assert_eq!(r.instance_endpoint(ip("10.30.0.12")), None, "not routable");
        assert_eq!(r.instance_endpoint(ip("10.30.1.1")), None, "a service IP, not an instance's");
        assert_eq!(r.instance_endpoint(ip("10.30.9.9")), None);
    }

    #[test]
    fn round_robin_rotates_over_live_instances_in_number_order() {
        let mut r = Routes::new();
        let mut bad_port = inst(4, "10.30.0.14", "10.18.0.70", "192.168.1.2");
        bad_port.host_port = 0;
        let rep = r.replace(
            &table(
                "j",
                &[(IP_TYPE_RR, "10.30.1.1")],
                vec![
                    inst(3, "10.30.0.13", "10.18.0.69", "192.168.1.2"),
                    inst(1, "10.30.0.11", "10.18.0.67", "192.168.1.2"),
                    inst(2, "10.30.0.12", "", "192.168.1.2"),
                    inst(5, "10.30.0.15", "10.18.0.71", "not-an-ip"),
                    bad_port,
                    inst(0, "10.30.0.10", "10.18.0.66", "192.168.1.3"),
                ],
            ),
            Instant::now(),
        );
        assert_eq!(rep.skipped.len(), 2, "{:?}", rep.skipped);
        let picks: Vec<_> = (0..7).map(|_| pick(&mut r, "10.30.1.1").unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 3, 0, 1, 3, 0]);
    }

    #[test]
    fn round_robin_counter_is_per_service_ip_and_survives_refresh() {
        let mut r = Routes::new();
        let instances = vec![
            inst(0, "10.30.0.10", "10.18.0.66", "192.168.1.2"),
            inst(1, "10.30.0.11", "10.18.0.67", "192.168.1.2"),
        ];
        let t = table("j", &[(IP_TYPE_RR, "10.30.1.1"), (IP_TYPE_RR, "10.30.1.2")], instances);
        r.replace(&t, Instant::now());
        assert_eq!(pick(&mut r, "10.30.1.1"), Some(0));
        assert_eq!(pick(&mut r, "10.30.1.2"), Some(0));
        r.replace(&t, Instant::now());
        assert_eq!(pick(&mut r, "10.30.1.1"), Some(1));
        assert_eq!(pick(&mut r, "10.30.1.1"), Some(0));
    }

    #[test]
    fn empty_round_robin_has_no_target() {
        let mut r = Routes::new();
        r.replace(&table("j", &[(IP_TYPE_RR, "10.30.1.1")], vec![]), Instant::now());
        assert_eq!(r.resolve(ip("10.30.1.1"), own()), Resolved::NoTarget { job: "j".into() });
    }

    #[test]
    fn closest_prefers_own_node_then_lowest_rtt_then_known_then_lower_number() {
        let mut r = Routes::new();
        let mk = |instances| table("j", &[(IP_TYPE_CLOSEST, "10.30.2.1")], instances);
        let far = "192.168.1.5";
        let near = "192.168.1.6";
        let unknown = "192.168.1.7";
        r.set_rtt(format!("{far}:50103").parse().unwrap(), Duration::from_millis(40));
        r.set_rtt(format!("{near}:50103").parse().unwrap(), Duration::from_millis(5));
        let all = vec![
            inst(0, "10.30.0.10", "10.18.0.66", unknown),
            inst(1, "10.30.0.11", "10.18.0.67", far),
            inst(2, "10.30.0.12", "10.18.0.68", near),
            inst(3, "10.30.0.13", "10.18.0.69", "192.168.1.1"), // own node
            inst(4, "10.30.0.14", "10.18.0.70", near),
        ];
        r.replace(&mk(all.clone()), Instant::now());
        assert_eq!(pick(&mut r, "10.30.2.1"), Some(3));
        r.replace(&mk(all[..3].to_vec()), Instant::now());
        assert_eq!(pick(&mut r, "10.30.2.1"), Some(2));
        // Tie on RTT: lower instance number.
        r.replace(&mk(vec![all[4].clone(), all[2].clone(), all[0].clone()]), Instant::now());
        assert_eq!(pick(&mut r, "10.30.2.1"), Some(2));
        // Unknown ranks after known, even a slow one.
        r.replace(&mk(vec![all[0].clone(), all[1].clone()]), Instant::now());
        assert_eq!(pick(&mut r, "10.30.2.1"), Some(1));
        r.replace(&mk(vec![all[0].clone()]), Instant::now());
        assert_eq!(pick(&mut r, "10.30.2.1"), Some(0));
        assert_eq!(r.probe_targets(own()), vec![format!("{unknown}:50103").parse::<SocketAddrV4>().unwrap()]);
    }

    #[test]
    fn probe_targets_only_from_closest_jobs_and_not_own() {
        let mut r = Routes::new();
        r.replace(
            &table("rr", &[(IP_TYPE_RR, "10.30.1.1")], vec![inst(0, "10.30.0.1", "10.18.0.66", "192.168.1.9")]),
            Instant::now(),
        );
        r.replace(
            &table(
                "cl",
                &[(IP_TYPE_CLOSEST, "10.30.2.1")],
                vec![
                    inst(0, "10.30.0.2", "10.18.0.66", "192.168.1.4"),
                    inst(1, "10.30.0.3", "10.18.0.67", "192.168.1.1"),
                    inst(2, "10.30.0.4", "10.18.0.68", "192.168.1.3"),
                    inst(3, "10.30.0.5", "10.18.0.69", "192.168.1.4"),
                ],
            ),
            Instant::now(),
        );
        let eps: Vec<String> = r.probe_targets(own()).iter().map(|e| e.to_string()).collect();
        assert_eq!(eps, vec!["192.168.1.3:50103", "192.168.1.4:50103"]);
    }

    #[test]
    fn still_routes_checks_job_address_and_instance() {
        let mut r = Routes::new();
        r.replace(
            &table(
                "j",
                &[(IP_TYPE_RR, "10.30.1.1")],
                vec![
                    inst(0, "10.30.0.10", "10.18.0.66", "192.168.1.2"),
                    inst(1, "10.30.0.11", "10.18.0.67", "192.168.1.2"),
                ],
            ),
            Instant::now(),
        );
        let Resolved::Target { target, .. } = r.resolve(ip("10.30.1.1"), own()) else { panic!() };
        assert!(r.still_routes("j", ip("10.30.1.1"), &target));
        assert!(!r.still_routes("other", ip("10.30.1.1"), &target));
        assert!(!r.still_routes("j", ip("10.30.0.11"), &target), "instance IP of another instance");
        let moved = Target { ns_ip: ip("10.18.0.99"), ..target };
        assert!(!r.still_routes("j", ip("10.30.1.1"), &moved));
        r.replace(
            &table("j", &[(IP_TYPE_RR, "10.30.1.1")], vec![inst(1, "10.30.0.11", "10.18.0.67", "192.168.1.2")]),
            Instant::now(),
        );
        assert!(!r.still_routes("j", ip("10.30.1.1"), &target));
    }

    #[test]
    fn bad_entries_are_skipped_and_replacement_unindexes_old_addresses() {
        let mut r = Routes::new();
        let rep = r.replace(
            &table(
                "j",
                &[(IP_TYPE_RR, "10.30.1.1"), ("Weird", "10.30.1.2"), (IP_TYPE_RR, "nope"), (IP_TYPE_RR, "10.30.1.1")],
                vec![
                    inst(0, "10.30.0.10", "10.18.0.66", "192.168.1.2"),
                    inst(0, "10.30.0.20", "10.18.0.76", "192.168.1.2"),
                    inst(1, "garbage", "10.18.0.67", "192.168.1.2"),
                    inst(2, "10.30.0.12", "bad", "192.168.1.2"),
                ],
            ),
            Instant::now(),
        );
        assert_eq!(rep.skipped.len(), 6, "{:?}", rep.skipped);
        // Instance 2 is still addressable (its instance IP is valid) but not routable.
        assert_eq!(rep.addresses, vec![ip("10.30.1.1"), ip("10.30.0.10"), ip("10.30.0.12")]);
        assert_eq!(r.resolve(ip("10.30.0.12"), own()), Resolved::NoTarget { job: "j".into() });
        r.replace(&table("j", &[(IP_TYPE_RR, "10.30.1.5")], vec![]), Instant::now());
        assert_eq!(r.resolve(ip("10.30.1.1"), own()), Resolved::Unknown);
        assert_eq!(r.resolve(ip("10.30.0.10"), own()), Resolved::Unknown);
        assert!(r.remove("j"));
        assert!(!r.remove("j"));
        assert!(r.is_empty());
    }
}
