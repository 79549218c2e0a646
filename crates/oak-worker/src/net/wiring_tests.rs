//! An instance's wiring as the system's tools see it (namespaces under `/run/netns`, veths on the
//! bridge), made and removed for real inside a network namespace of the test's own. Needs root.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use super::names::{self, Subnet};
use super::plumbing::{self, Wiring};
use super::test_netns;

const SUBNET: &str = "10.18.0.0/26";

fn wiring(node_id: &str, nsip: Ipv4Addr) -> Wiring {
    Wiring { netns: names::netns(node_id, nsip), veth: names::veth(node_id, nsip), nsip, ports: Vec::new() }
}

/// Removes the test node's namespaces also when an assertion failed (they live in the machine's
/// `/run/netns`, not in the test's network namespace).
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Ok(dir) = std::fs::read_dir(names::NETNS_DIR) else { return };
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&self.0) {
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
            }
        }
    }
}

/// Runs `scenario` with the host side set up (bridge, chains) in a network namespace of its own,
/// for a node id of the test's own.
fn with_host<F, Fut>(test: &str, scenario: F) -> bool
where
    F: FnOnce(String, Subnet) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    if !test_netns::root_or_skip(test) {
        return false;
    }
    let node_id = format!("{test}-{}", std::process::id());
    test_netns::in_own_netns(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let _cleanup = Cleanup(names::netns_prefix(&node_id));
            let subnet = Subnet::parse(SUBNET).unwrap();
            plumbing::setup_host(subnet).await.expect("the bridge is set up");
            scenario(node_id, subnet).await;
            plumbing::teardown_host().await;
        });
    });
    true
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn summary(mut times: Vec<Duration>) -> String {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "p50 {:.2} ms, p90 {:.2} ms, max {:.2} ms",
        ms(percentile(&times, 50)),
        ms(percentile(&times, 90)),
        ms(*times.last().unwrap())
    )
}

/// What one instance's wiring and unwiring cost, printed (`--nocapture`) and never asserted on.
#[test]
fn wiring_time() {
    with_host("wiring_time", |node_id, subnet| async move {
        let (mut attach, mut detach) = (Vec::new(), Vec::new());
        for offset in 0..20 {
            let w = wiring(&node_id, subnet.host(2 + offset % 4));
            let start = Instant::now();
            plumbing::attach(&w, subnet).await.expect("the instance is wired");
            attach.push(start.elapsed());
            let start = Instant::now();
            plumbing::detach(&w).await;
            detach.push(start.elapsed());
        }
        eprintln!(
            "wiring time over {} instances: attach {}; detach {}",
            attach.len(),
            summary(attach),
            summary(detach)
        );
    });
}
