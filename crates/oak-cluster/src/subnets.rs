//! Registrations waiting for a worker's overlay subnet from the root (`ClusterMsg::SubnetRequest`
//! → `RootMsg::Subnet`). A request stays listed until its registration has stored the node, so
//! the node list the cluster sends the root after a reconnect never misses a node the root just
//! gave a subnet to (the root would release it).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use tokio::sync::oneshot;

/// How long a registration waits for the root.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

type Answer = Result<String, String>;

#[derive(Default)]
pub struct Waits {
    next: u64,
    /// Request id → (node, whom to wake; `None` once answered).
    waiting: HashMap<u64, (String, Option<oneshot::Sender<Answer>>)>,
}

impl Waits {
    pub fn start(&mut self, node: &str) -> (u64, oneshot::Receiver<Answer>) {
        self.next += 1;
        let (tx, rx) = oneshot::channel();
        self.waiting.insert(self.next, (node.to_string(), Some(tx)));
        (self.next, rx)
    }

    /// The root's answer; unknown ids (given up) are dropped.
    pub fn answer(&mut self, id: u64, answer: Answer) {
        if let Some((_, waiter)) = self.waiting.get_mut(&id) {
            if let Some(tx) = waiter.take() {
                let _ = tx.send(answer);
            }
        }
    }

    pub fn finish(&mut self, id: u64) {
        self.waiting.remove(&id);
    }

    /// Nodes with a request still open.
    pub fn nodes(&self) -> impl Iterator<Item = &String> {
        self.waiting.values().map(|(node, _)| node)
    }
}

/// `10.18.0.64/26`, as the root gives it, or why not.
pub fn check(subnet: &str) -> Result<(), String> {
    match subnet.split_once('/') {
        Some((ip, "26")) if ip.parse::<Ipv4Addr>().is_ok() => Ok(()),
        _ => Err(format!("the root answered {subnet:?}, which is not a /26 subnet")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_wake_their_waiter_and_requests_stay_listed_until_finished() {
        let mut w = Waits::default();
        let (a, mut rx_a) = w.start("n1");
        let (b, _rx_b) = w.start("n2");
        w.answer(a, Ok("10.18.0.0/26".into()));
        assert_eq!(rx_a.try_recv().unwrap(), Ok("10.18.0.0/26".into()));
        w.answer(a, Ok("again".into()));
        w.answer(99, Err("unknown".into()));
        let mut nodes: Vec<&String> = w.nodes().collect();
        nodes.sort();
        assert_eq!(nodes, ["n1", "n2"], "answered but not yet stored: still listed");
        w.finish(a);
        w.finish(b);
        assert_eq!(w.nodes().count(), 0);
    }

    #[test]
    fn subnets_must_be_26_blocks() {
        assert!(check("10.18.0.64/26").is_ok());
        for bad in ["", "10.18.0.64", "10.18.0.64/24", "x/26", "10.18.0.64/26/1"] {
            assert!(check(bad).is_err(), "{bad}");
        }
    }
}
