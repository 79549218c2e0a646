//! The cluster's relay of route tables (spec `oakestra-net.md` §3.2, §3.4, §6.5): workers ask on
//! `nodes/<id>/net/tablequery/request`, the cluster answers from its cache or asks the root, and
//! pushes every change the root sends to the workers interested in the job. While the root is
//! away the cache keeps being served; after a reconnect every cached job is asked for again,
//! which registers the cluster's interest anew and refreshes the cache.
//!
//! Pure state: methods take the time and return effects, so the rules are tested without
//! sockets.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use oak_api::channel::ClusterMsg;
use oak_api::net::{RouteTable, TableQuery};

use crate::state::Effect;

/// How long a worker's query may wait for the root.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// A query sent to the root and not answered yet.
struct Pending {
    job_name: String,
    ip: String,
    /// Workers waiting, each with what it asked (the `query_key` of its answer). Empty for a
    /// refresh after a reconnect.
    waiters: Vec<(String, String)>,
    deadline: Instant,
}

#[derive(Default)]
pub struct Routes {
    /// Job name → its latest table (`query_key` = the job name).
    tables: HashMap<String, RouteTable>,
    /// Job name → workers to push its changes to.
    interest: HashMap<String, BTreeSet<String>>,
    pending: BTreeMap<u64, Pending>,
    next_request: u64,
}

fn answer(node: &str, table: &RouteTable, key: &str) -> Effect {
    let mut table = table.clone();
    table.query_key = key.to_string();
    Effect::Table { node: node.to_string(), table: Box::new(table) }
}

fn to_root(msg: ClusterMsg) -> Effect {
    Effect::Root(Box::new(msg))
}

fn failure(node: &str, key: &str, error: String) -> Effect {
    answer(node, &oak_core::routes::unknown(key, error), key)
}

impl Routes {
    /// Jobs with a cached table.
    pub fn cached(&self) -> impl Iterator<Item = &RouteTable> {
        self.tables.values()
    }

    /// Workers interested in `job`.
    pub fn interested(&self, job: &str) -> Vec<&str> {
        self.interest.get(job).map(|s| s.iter().map(String::as_str).collect()).unwrap_or_default()
    }

    /// The cached table holding an address (a service IP or an instance IP).
    fn by_ip(&self, ip: &str) -> Option<&RouteTable> {
        self.tables.values().find(|t| {
            t.service_ip.iter().any(|s| s.address == ip) || t.instance_list.iter().any(|i| i.instance_ip == ip)
        })
    }

    /// `nodes/<node>/net/tablequery/request`: answered from the cache, or asked of the root
    /// (once for all workers asking the same while it is in flight).
    pub fn query(&mut self, node: &str, q: TableQuery, root_connected: bool, now: Instant) -> Vec<Effect> {
        let (name, ip) = (q.sname.trim(), q.sip.trim());
        let (key, ip) = match (name, ip) {
            ("", "") => return vec![failure(node, "", "a table query needs sname or sip".into())],
            ("", ip) => (ip, ip),
            (name, _) => (name, ""),
        };
        let cached = if ip.is_empty() { self.tables.get(key) } else { self.by_ip(ip) };
        if let Some(table) = cached {
            let effect = answer(node, table, key);
            let job = table.app_name.clone();
            self.interest.entry(job).or_default().insert(node.to_string());
            return vec![effect];
        }
        let job_name = if ip.is_empty() { key } else { "" };
        if let Some(p) = self.pending.values_mut().find(|p| p.job_name == job_name && p.ip == ip) {
            p.waiters.push((node.to_string(), key.to_string()));
            return Vec::new();
        }
        if !root_connected {
            return vec![failure(node, key, format!("no route table for {key}: the root is not reachable"))];
        }
        let waiters = vec![(node.to_string(), key.to_string())];
        vec![self.ask(job_name.to_string(), ip.to_string(), waiters, now)]
    }

    fn ask(&mut self, job_name: String, ip: String, waiters: Vec<(String, String)>, now: Instant) -> Effect {
        self.next_request += 1;
        let request_id = self.next_request;
        let msg = ClusterMsg::TableQuery { request_id, job_name: job_name.clone(), ip: ip.clone() };
        self.pending.insert(request_id, Pending { job_name, ip, waiters, deadline: now + QUERY_TIMEOUT });
        to_root(msg)
    }

    /// The root's answer to a query: cached, sent to the workers that asked (who become
    /// interested) and pushed to the others interested in the job.
    pub fn answer(&mut self, request_id: u64, mut table: RouteTable) -> Vec<Effect> {
        let Some(p) = self.pending.remove(&request_id) else {
            // Timed out: the root may now count us as interested; the next push sorts it out.
            return Vec::new();
        };
        if !table.error.is_empty() {
            let mut effects: Vec<Effect> =
                p.waiters.iter().map(|(node, key)| failure(node, key, table.error.clone())).collect();
            if p.waiters.is_empty() && !p.job_name.is_empty() {
                // A refresh of a job the root no longer has: its workers learn that nothing is left.
                let gone = RouteTable { app_name: p.job_name.clone(), ..Default::default() };
                for node in self.interested(&p.job_name) {
                    effects.push(answer(node, &gone, &p.job_name));
                }
                self.tables.remove(&p.job_name);
                self.interest.remove(&p.job_name);
            }
            return effects;
        }
        let job = table.app_name.clone();
        table.query_key = job.clone();
        let mut effects = Vec::new();
        let interested = self.interest.entry(job.clone()).or_default();
        let asked: BTreeSet<&str> = p.waiters.iter().map(|(n, _)| n.as_str()).collect();
        for node in interested.iter().filter(|n| !asked.contains(n.as_str())) {
            effects.push(answer(node, &table, &job));
        }
        for (node, key) in &p.waiters {
            effects.push(answer(node, &table, key));
            interested.insert(node.clone());
        }
        if interested.is_empty() {
            self.interest.remove(&job);
            self.tables.remove(&job);
            effects.push(to_root(ClusterMsg::Uninterest { job_name: job }));
        } else {
            self.tables.insert(job, table);
        }
        effects
    }

    /// `RootMsg::Routes`: a job's table changed; every interested worker gets it.
    pub fn routes(&mut self, mut table: RouteTable) -> Vec<Effect> {
        let job = table.app_name.clone();
        table.query_key = job.clone();
        let nodes = self.interested(&job);
        if nodes.is_empty() {
            let addresses = || {
                table.service_ip.iter().map(|s| &s.address).chain(table.instance_list.iter().map(|i| &i.instance_ip))
            };
            if self.pending.values().any(|p| p.job_name == job || addresses().any(|a| *a == p.ip)) {
                // The root registered our query's interest and pushed before answering it.
                return Vec::new();
            }
            self.tables.remove(&job);
            return vec![to_root(ClusterMsg::Uninterest { job_name: job })];
        }
        let effects = nodes.into_iter().map(|node| answer(node, &table, &job)).collect();
        self.tables.insert(job, table);
        effects
    }

    /// `nodes/<node>/net/interest/remove`; the last worker gone ends the cluster's interest.
    pub fn remove_interest(&mut self, node: &str, job: &str) -> Vec<Effect> {
        let Some(set) = self.interest.get_mut(job) else { return Vec::new() };
        if !set.remove(node) || !set.is_empty() {
            return Vec::new();
        }
        self.interest.remove(job);
        self.tables.remove(job);
        vec![to_root(ClusterMsg::Uninterest { job_name: job.to_string() })]
    }

    /// A node went away: it loses every interest.
    pub fn forget_node(&mut self, node: &str) -> Vec<Effect> {
        let jobs: Vec<String> =
            self.interest.iter().filter(|(_, set)| set.contains(node)).map(|(job, _)| job.clone()).collect();
        jobs.iter().flat_map(|job| self.remove_interest(node, job)).collect()
    }

    /// Queries the root left unanswered past their deadline are answered with an error.
    pub fn expire(&mut self, now: Instant) -> Vec<Effect> {
        let due: Vec<u64> = self.pending.iter().filter(|(_, p)| p.deadline <= now).map(|(id, _)| *id).collect();
        let mut effects = Vec::new();
        for id in due {
            let p = self.pending.remove(&id).expect("listed above");
            let secs = QUERY_TIMEOUT.as_secs();
            for (node, key) in p.waiters {
                effects.push(failure(&node, &key, format!("the root did not answer the table query within {secs} s")));
            }
        }
        effects
    }

    /// After a (re)connect to the root: the queries in flight again (their answers were lost
    /// with the old connection) and every cached job, to refresh it and register interest.
    pub fn resync(&mut self, now: Instant) -> Vec<Effect> {
        let mut effects: Vec<Effect> = self
            .pending
            .iter()
            .map(|(id, p)| {
                to_root(ClusterMsg::TableQuery { request_id: *id, job_name: p.job_name.clone(), ip: p.ip.clone() })
            })
            .collect();
        let asked: BTreeSet<String> = self.pending.values().map(|p| p.job_name.clone()).collect();
        let jobs: Vec<String> = self.tables.keys().filter(|j| !asked.contains(*j)).cloned().collect();
        for job in jobs {
            effects.push(self.ask(job, String::new(), Vec::new(), now));
        }
        effects
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oak_api::net::{RouteInstance, ServiceIp};

    const JOB: &str = "app.test.web.test";

    fn table(namespace: &str) -> RouteTable {
        RouteTable {
            app_name: JOB.into(),
            job_id: "s1".into(),
            query_key: "whatever the root echoed".into(),
            service_ip: vec![ServiceIp { ip_type: "RR".into(), address: "10.30.0.1".into() }],
            instance_list: vec![RouteInstance {
                instance_number: 0,
                instance_ip: "10.30.0.2".into(),
                namespace_ip: namespace.into(),
                host_ip: "192.0.2.1".into(),
                host_port: 50103,
                worker_id: "w1".into(),
                cluster_id: "c1".into(),
                public_key: String::new(),
            }],
            error: String::new(),
        }
    }

    fn by_name(name: &str) -> TableQuery {
        TableQuery { sname: name.into(), sip: String::new() }
    }

    fn by_ip(ip: &str) -> TableQuery {
        TableQuery { sname: String::new(), sip: ip.into() }
    }

    /// (node, query_key, namespace of the first instance, error) of each table sent to a worker.
    fn tables(fx: &[Effect]) -> Vec<(String, String, String, String)> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Table { node, table } => Some((
                    node.clone(),
                    table.query_key.clone(),
                    table.instance_list.first().map(|i| i.namespace_ip.clone()).unwrap_or_default(),
                    table.error.clone(),
                )),
                _ => None,
            })
            .collect()
    }

    fn sent(fx: &[Effect]) -> Vec<ClusterMsg> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Root(m) => Some((**m).clone()),
                _ => None,
            })
            .collect()
    }

    fn request_id(fx: &[Effect]) -> u64 {
        match sent(fx).as_slice() {
            [ClusterMsg::TableQuery { request_id, .. }] => *request_id,
            other => panic!("expected one table query to the root, got {other:?}"),
        }
    }

    fn t(s: &str) -> (String, String, String, String) {
        let parts: Vec<&str> = s.split('|').collect();
        (parts[0].into(), parts[1].into(), parts[2].into(), parts.get(3).copied().unwrap_or("").into())
    }

    #[test]
    fn a_miss_asks_the_root_once_and_the_answer_is_cached() {
        let now = Instant::now();
        let mut r = Routes::default();
        let fx = r.query("w1", by_ip("10.30.0.1"), true, now);
        assert!(tables(&fx).is_empty(), "the worker waits for the root");
        let id = request_id(&fx);
        assert!(
            matches!(&sent(&fx)[0], ClusterMsg::TableQuery { job_name, ip, .. } if job_name.is_empty() && ip == "10.30.0.1")
        );
        // A second worker asking the same meanwhile waits for the same answer.
        assert!(r.query("w2", by_ip("10.30.0.1"), true, now).is_empty());
        let fx = r.answer(id, table("10.18.0.2"));
        assert_eq!(tables(&fx), [t("w1|10.30.0.1|10.18.0.2"), t("w2|10.30.0.1|10.18.0.2")]);
        assert_eq!(r.interested(JOB), ["w1", "w2"]);
        // Cached now: by name, by RR IP and by instance IP, without asking the root.
        for (q, key) in [(by_name(JOB), JOB), (by_ip("10.30.0.1"), "10.30.0.1"), (by_ip("10.30.0.2"), "10.30.0.2")] {
            let fx = r.query("w3", q, false, now);
            assert_eq!(tables(&fx), [t(&format!("w3|{key}|10.18.0.2"))]);
            assert!(sent(&fx).is_empty());
        }
        assert_eq!(r.interested(JOB), ["w1", "w2", "w3"]);
        assert_eq!(r.answer(id, table("x")), Vec::new(), "answered once");
    }

    #[test]
    fn failures_are_answered_with_their_key_and_not_cached() {
        let now = Instant::now();
        let mut r = Routes::default();
        assert_eq!(tables(&r.query("w1", by_name("  "), true, now)), [t("w1|||a table query needs sname or sip")]);
        let fx = r.query("w1", by_name(JOB), false, now);
        assert_eq!(tables(&fx), [t(&format!("w1|{JOB}||no route table for {JOB}: the root is not reachable"))]);
        let id = request_id(&r.query("w1", by_name("a.b.c.d"), true, now));
        let unknown = oak_core::routes::unknown("a.b.c.d", "no service with job name a.b.c.d".into());
        assert_eq!(tables(&r.answer(id, unknown)), [t("w1|a.b.c.d||no service with job name a.b.c.d")]);
        assert!(r.interested("a.b.c.d").is_empty());
        assert_eq!(request_id(&r.query("w1", by_name("a.b.c.d"), true, now)), id + 1, "asked again: nothing cached");
        // An unanswered query times out after 5 s.
        assert!(r.expire(now + Duration::from_secs(4)).is_empty());
        let fx = r.expire(now + QUERY_TIMEOUT);
        assert_eq!(tables(&fx), [t("w1|a.b.c.d||the root did not answer the table query within 5 s")]);
        assert!(r.expire(now + QUERY_TIMEOUT * 2).is_empty());
    }

    #[test]
    fn pushes_reach_interested_workers_only_and_the_last_one_out_ends_the_interest() {
        let now = Instant::now();
        let mut r = Routes::default();
        let id = request_id(&r.query("w1", by_name(JOB), true, now));
        r.answer(id, table("10.18.0.2"));
        r.query("w2", by_ip("10.30.0.2"), true, now);
        let fx = r.routes(table("10.18.0.9"));
        assert_eq!(tables(&fx), [t(&format!("w1|{JOB}|10.18.0.9")), t(&format!("w2|{JOB}|10.18.0.9"))]);
        assert!(sent(&fx).is_empty());
        assert_eq!(tables(&r.query("w3", by_name(JOB), false, now)), [t(&format!("w3|{JOB}|10.18.0.9"))], "replaced");

        assert!(r.remove_interest("w1", JOB).is_empty());
        assert!(r.remove_interest("w1", JOB).is_empty(), "twice");
        assert!(r.remove_interest("w1", "10.30.0.1").is_empty(), "an address is no job");
        assert_eq!(tables(&r.routes(table("10.18.0.10"))).len(), 2, "w2 and w3 only");
        assert!(r.forget_node("w3").is_empty());
        let fx = r.remove_interest("w2", JOB);
        assert_eq!(sent(&fx), [ClusterMsg::Uninterest { job_name: JOB.into() }]);
        assert_eq!(r.cached().count(), 0, "the table goes with the last interest");
        // A push for a job nobody here wants tells the root so, unless a query for it is on its
        // way (the root pushed before it answered).
        let fx = r.routes(table("10.18.0.11"));
        assert!(tables(&fx).is_empty());
        assert_eq!(sent(&fx), [ClusterMsg::Uninterest { job_name: JOB.into() }]);
        let id = request_id(&r.query("w5", by_ip("10.30.0.2"), true, now));
        assert_eq!(r.routes(table("10.18.0.12")), Vec::new());
        assert_eq!(tables(&r.answer(id, table("10.18.0.12"))), [t("w5|10.30.0.2|10.18.0.12")]);
        r.remove_interest("w5", JOB);
        // A node that goes away loses its interests, the cluster's with the last.
        let id = request_id(&r.query("w4", by_name(JOB), true, now));
        r.answer(id, table("10.18.0.2"));
        assert_eq!(sent(&r.forget_node("w4")), [ClusterMsg::Uninterest { job_name: JOB.into() }]);
    }

    #[test]
    fn a_reconnect_asks_again_for_cached_jobs_and_queries_in_flight() {
        let now = Instant::now();
        let mut r = Routes::default();
        let id = request_id(&r.query("w1", by_name(JOB), true, now));
        r.answer(id, table("10.18.0.2"));
        let waiting = request_id(&r.query("w2", by_ip("10.30.9.9"), true, now));
        let fx = r.resync(now);
        let msgs = sent(&fx);
        assert_eq!(msgs.len(), 2, "{msgs:?}");
        assert!(msgs.contains(&ClusterMsg::TableQuery {
            request_id: waiting,
            job_name: String::new(),
            ip: "10.30.9.9".into()
        }));
        let refresh = msgs
            .iter()
            .find_map(|m| match m {
                ClusterMsg::TableQuery { request_id, job_name, .. } if job_name == JOB => Some(*request_id),
                _ => None,
            })
            .unwrap();
        // Served from the cache meanwhile; the refresh is pushed to the interested workers.
        assert_eq!(tables(&r.query("w3", by_name(JOB), false, now)), [t(&format!("w3|{JOB}|10.18.0.2"))]);
        let fx = r.answer(refresh, table("10.18.0.5"));
        assert_eq!(tables(&fx), [t(&format!("w1|{JOB}|10.18.0.5")), t(&format!("w3|{JOB}|10.18.0.5"))]);
        // A refresh of a job the root no longer has empties it for its workers.
        r.answer(waiting, oak_core::routes::unknown("10.30.9.9", "no service with address 10.30.9.9".into()));
        let refresh = request_id(&r.resync(now));
        let fx = r.answer(refresh, oak_core::routes::unknown(JOB, format!("no service with job name {JOB}")));
        assert_eq!(tables(&fx), [t(&format!("w1|{JOB}|")), t(&format!("w3|{JOB}|"))]);
        assert_eq!(r.cached().count(), 0);
    }
}
