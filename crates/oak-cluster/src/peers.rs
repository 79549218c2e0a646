//! The cluster's part of the overlay's peer directory: a worker that receives a tunnel
//! handshake from a key no route table named asks `nodes/<id>/net/peerquery/request`. The
//! cluster answers at once for its own workers (their node information carries their keys),
//! from its cache, or asks the root, which knows every cluster's workers. Positive answers are
//! cached for a minute; a worker whose key changes is found under its new key, and its old key
//! ages out.
//!
//! Pure state: methods take the time and return effects.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use oak_api::channel::ClusterMsg;
use oak_api::net::PeerAnswer;

use crate::state::Effect;

/// How long the root may take to answer.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an answer of the root is served from the cache.
pub const CACHE_FOR: Duration = Duration::from_secs(60);
/// Most cached answers (a fleet's workers of other clusters that talk to ours).
const CACHE_MAX: usize = 16_384;

struct Pending {
    key: String,
    waiters: Vec<String>,
    deadline: Instant,
}

#[derive(Default)]
pub struct Peers {
    cache: HashMap<String, (PeerAnswer, Instant)>,
    pending: BTreeMap<u64, Pending>,
    next_request: u64,
}

fn reply(node: &str, answer: PeerAnswer) -> Effect {
    Effect::Peer { node: node.to_string(), answer: Box::new(answer) }
}

fn failure(node: &str, key: &str, error: String) -> Effect {
    reply(node, PeerAnswer { public_key: key.to_string(), error, ..Default::default() })
}

impl Peers {
    /// A worker's question about `key`; `own` is the answer from this cluster's own workers.
    pub fn query(
        &mut self,
        node: &str,
        key: &str,
        own: Option<PeerAnswer>,
        root_connected: bool,
        now: Instant,
    ) -> Vec<Effect> {
        let key = key.trim();
        if key.is_empty() {
            return vec![failure(node, key, "a peer query needs a public_key".into())];
        }
        if let Some(own) = own {
            return vec![reply(node, own)];
        }
        if let Some((answer, until)) = self.cache.get(key) {
            if now < *until {
                return vec![reply(node, answer.clone())];
            }
        }
        if let Some(p) = self.pending.values_mut().find(|p| p.key == key) {
            if !p.waiters.iter().any(|w| w == node) {
                p.waiters.push(node.to_string());
            }
            return Vec::new();
        }
        if !root_connected {
            return vec![failure(
                node,
                key,
                "no worker of this cluster has that key and the root is not reachable".into(),
            )];
        }
        self.next_request += 1;
        let request_id = self.next_request;
        self.pending.insert(
            request_id,
            Pending { key: key.to_string(), waiters: vec![node.to_string()], deadline: now + QUERY_TIMEOUT },
        );
        vec![Effect::Root(Box::new(ClusterMsg::PeerQuery { request_id, public_key: key.to_string() }))]
    }

    /// The root's answer: cached when positive, sent to every worker that asked.
    pub fn answer(&mut self, request_id: u64, answer: PeerAnswer, now: Instant) -> Vec<Effect> {
        let Some(p) = self.pending.remove(&request_id) else {
            return Vec::new();
        };
        let mut answer = answer;
        answer.public_key = p.key.clone();
        if answer.error.is_empty() {
            if self.cache.len() >= CACHE_MAX {
                self.cache.retain(|_, (_, until)| now < *until);
            }
            if self.cache.len() < CACHE_MAX {
                self.cache.insert(p.key.clone(), (answer.clone(), now + CACHE_FOR));
            }
        }
        p.waiters.iter().map(|node| reply(node, answer.clone())).collect()
    }

    /// Questions the root did not answer in time fail; stale cache entries go.
    pub fn expire(&mut self, now: Instant) -> Vec<Effect> {
        self.cache.retain(|_, (_, until)| now < *until);
        let late: Vec<u64> = self.pending.iter().filter(|(_, p)| now >= p.deadline).map(|(id, _)| *id).collect();
        let mut effects = Vec::new();
        for id in late {
            if let Some(p) = self.pending.remove(&id) {
                for node in &p.waiters {
                    effects.push(failure(node, &p.key, "the root did not answer the peer query in time".into()));
                }
            }
        }
        effects
    }

    /// A forgotten worker waits for nothing.
    pub fn forget_node(&mut self, node: &str) {
        for p in self.pending.values_mut() {
            p.waiters.retain(|w| w != node);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ab";

    fn found() -> PeerAnswer {
        PeerAnswer {
            public_key: KEY.into(),
            worker_id: "w9".into(),
            host_ip: "192.0.2.9".into(),
            host_port: 50103,
            subnet: "10.18.0.64/26".into(),
            ..Default::default()
        }
    }

    fn answers(fx: &[Effect]) -> Vec<(&str, &PeerAnswer)> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Peer { node, answer } => Some((node.as_str(), answer.as_ref())),
                _ => None,
            })
            .collect()
    }

    fn asked(fx: &[Effect]) -> Option<u64> {
        fx.iter().find_map(|e| match e {
            Effect::Root(m) => match m.as_ref() {
                ClusterMsg::PeerQuery { request_id, public_key } if public_key == KEY => Some(*request_id),
                _ => None,
            },
            _ => None,
        })
    }

    #[test]
    fn own_workers_answer_at_once() {
        let mut p = Peers::default();
        let fx = p.query("w1", KEY, Some(found()), false, Instant::now());
        assert_eq!(answers(&fx), vec![("w1", &found())]);
    }

    #[test]
    fn the_root_is_asked_once_and_its_answer_cached() {
        let mut p = Peers::default();
        let now = Instant::now();
        let id = asked(&p.query("w1", KEY, None, true, now)).unwrap();
        assert!(p.query("w2", KEY, None, true, now).is_empty(), "joins the question out");
        let fx = p.answer(id, found(), now);
        assert_eq!(answers(&fx), vec![("w1", &found()), ("w2", &found())]);
        let fx = p.query("w3", KEY, None, true, now + Duration::from_secs(1));
        assert_eq!(answers(&fx), vec![("w3", &found())], "from the cache");
        assert!(p.expire(now + CACHE_FOR).is_empty());
        assert!(asked(&p.query("w3", KEY, None, true, now + CACHE_FOR)).is_some(), "expired: asked again");
    }

    #[test]
    fn unknown_keys_and_silence_fail() {
        let mut p = Peers::default();
        let now = Instant::now();
        let id = asked(&p.query("w1", KEY, None, true, now)).unwrap();
        let unknown = PeerAnswer { error: "no worker has that key".into(), ..Default::default() };
        let fx = p.answer(id, unknown, now);
        assert_eq!(answers(&fx)[0].1.error, "no worker has that key");
        assert_eq!(answers(&fx)[0].1.public_key, KEY);
        assert!(asked(&p.query("w1", KEY, None, true, now)).is_some(), "negative answers are not cached");
        let fx = p.expire(now + QUERY_TIMEOUT);
        assert!(answers(&fx)[0].1.error.contains("in time"));
        let fx = p.query("w1", KEY, None, false, now);
        assert!(answers(&fx)[0].1.error.contains("root is not reachable"));
        let fx = p.query("w1", " ", None, true, now);
        assert!(answers(&fx)[0].1.error.contains("needs a public_key"));
    }
}
