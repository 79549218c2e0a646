//! Deploy commands on their way to workers: those a step placed on one worker go in one
//! `control/deploy` message (a JSON array) when the worker announced
//! [`oak_api::node::features::DEPLOY_BATCH`]; to other workers, one message per command as the
//! original sends them. Messages to one worker keep the order of the effects: whatever else goes
//! to a worker is sent only after the deploys queued for it before.

use std::collections::HashSet;

use oak_api::node::{topic, DeployCommand};

/// Largest batch payload: well under the 1 MiB a worker accepts in one MQTT message.
const MAX_BATCH_BYTES: usize = 512 * 1024;

pub(crate) type Message = (String, serde_json::Result<Vec<u8>>);

pub(crate) struct DeployBatches {
    batching: HashSet<String>,
    /// Per node, in the order nodes were first deployed to.
    pending: Vec<(String, Vec<DeployCommand>)>,
}

impl DeployBatches {
    /// `batching`: the nodes whose workers take batches.
    pub(crate) fn new(batching: HashSet<String>) -> Self {
        Self { batching, pending: Vec::new() }
    }

    pub(crate) fn add(&mut self, node: String, cmd: DeployCommand) {
        match self.pending.iter_mut().find(|(n, _)| *n == node) {
            Some((_, cmds)) => cmds.push(cmd),
            None => self.pending.push((node, vec![cmd])),
        }
    }

    /// The messages of the deploys queued for `node`, which are no longer queued.
    pub(crate) fn take(&mut self, node: &str) -> Vec<Message> {
        match self.pending.iter().position(|(n, _)| n == node) {
            Some(i) => {
                let (node, cmds) = self.pending.remove(i);
                self.messages(&node, cmds)
            }
            None => Vec::new(),
        }
    }

    /// Every queued deploy's messages.
    pub(crate) fn take_all(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.pending).into_iter().flat_map(|(node, cmds)| self.messages(&node, cmds)).collect()
    }

    fn messages(&self, node: &str, cmds: Vec<DeployCommand>) -> Vec<Message> {
        let one_each = || cmds.iter().map(|c| (topic::deploy(node), serde_json::to_vec(c))).collect();
        if cmds.len() < 2 || !self.batching.contains(node) {
            return one_each();
        }
        let mut encoded = Vec::with_capacity(cmds.len());
        for cmd in &cmds {
            match serde_json::to_vec(cmd) {
                Ok(bytes) => encoded.push(bytes),
                // Not expected; then each on its own, so the error is reported per command.
                Err(_) => return one_each(),
            }
        }
        let mut out = Vec::new();
        let mut batch = b"[".to_vec();
        for item in encoded {
            if batch.len() > 1 && batch.len() + item.len() + 2 > MAX_BATCH_BYTES {
                batch.push(b']');
                out.push((topic::deploy(node), Ok(std::mem::replace(&mut batch, b"[".to_vec()))));
            }
            if batch.len() > 1 {
                batch.push(b',');
            }
            batch.extend_from_slice(&item);
        }
        batch.push(b']');
        out.push((topic::deploy(node), Ok(batch)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn cmd(job: &str, n: u32, padding: usize) -> DeployCommand {
        serde_json::from_value(json!({
            "_id": "s1", "job_name": job, "image": "x", "instance_number": n, "microservice_name": "svc",
            "microservice_namespace": "ns", "virtualization": "docker", "code": "x",
            "cmd": ["p".repeat(padding)],
        }))
        .unwrap()
    }

    fn numbers(message: &Message) -> Vec<u64> {
        let value: Value = serde_json::from_slice(message.1.as_ref().unwrap()).unwrap();
        match value {
            Value::Array(items) => items.iter().map(|i| i["instance_number"].as_u64().unwrap()).collect(),
            one => vec![one["instance_number"].as_u64().unwrap()],
        }
    }

    #[test]
    fn a_batching_worker_gets_one_message_others_one_per_command() {
        let mut b = DeployBatches::new(HashSet::from(["w1".to_string()]));
        for n in 0..3 {
            b.add("w1".into(), cmd("a.b.c.d", n, 0));
            b.add("w2".into(), cmd("a.b.c.d", 10 + n, 0));
        }
        b.add("w3".into(), cmd("a.b.c.d", 20, 0));
        let out = b.take_all();
        let shape: Vec<(&str, Vec<u64>)> = out.iter().map(|m| (m.0.as_str(), numbers(m))).collect();
        assert_eq!(
            shape,
            vec![
                ("nodes/w1/control/deploy", vec![0, 1, 2]),
                ("nodes/w2/control/deploy", vec![10]),
                ("nodes/w2/control/deploy", vec![11]),
                ("nodes/w2/control/deploy", vec![12]),
                ("nodes/w3/control/deploy", vec![20]),
            ]
        );
        // A lone command stays an object, as the original sends it.
        let mut b = DeployBatches::new(HashSet::from(["w1".to_string()]));
        b.add("w1".into(), cmd("a.b.c.d", 0, 0));
        let out = b.take_all();
        assert!(out[0].1.as_ref().unwrap().starts_with(b"{"));
        assert!(b.take_all().is_empty() && b.take("w1").is_empty(), "taken once");
    }

    #[test]
    fn batches_stay_under_the_workers_message_limit() {
        let mut b = DeployBatches::new(HashSet::from(["w1".to_string()]));
        for n in 0..10 {
            b.add("w1".into(), cmd("a.b.c.d", n, 200 * 1024));
        }
        let out = b.take_all();
        assert!(out.len() >= 4, "{} messages", out.len());
        assert!(out.iter().all(|m| m.1.as_ref().unwrap().len() <= MAX_BATCH_BYTES));
        let all: Vec<u64> = out.iter().flat_map(numbers).collect();
        assert_eq!(all, (0..10).collect::<Vec<_>>(), "every command once, in order");
    }

    #[test]
    fn taking_one_nodes_deploys_leaves_the_others_queued() {
        let mut b = DeployBatches::new(HashSet::from(["w1".to_string(), "w2".to_string()]));
        b.add("w1".into(), cmd("a.b.c.d", 0, 0));
        b.add("w2".into(), cmd("a.b.c.d", 1, 0));
        b.add("w1".into(), cmd("a.b.c.d", 2, 0));
        let w1 = b.take("w1");
        assert_eq!(w1.len(), 1);
        assert_eq!(numbers(&w1[0]), vec![0, 2]);
        assert!(b.take("w3").is_empty());
        let rest = b.take_all();
        assert_eq!(rest.len(), 1);
        assert_eq!(numbers(&rest[0]), vec![1]);
    }
}
