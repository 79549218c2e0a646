//! The overlay's wiring over a worker's life, for real (bridge, TUN, veths, namespaces,
//! iptables) inside a network namespace of the test's own: what a stop that cuts work short
//! leaves behind. Needs root.

use std::future::Future;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::task::Poll;

use oak_api::node::DeployCommand;

use super::{names, plumbing, NetManager, OverlayConfig};

const JOB: &str = "life.test.server.test";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn namespaces_with(prefix: &str) -> Vec<String> {
    std::fs::read_dir(names::NETNS_DIR)
        .map(|dir| {
            dir.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

fn deploy_command() -> DeployCommand {
    serde_json::from_value(serde_json::json!({
        "_id": "s1", "job_name": JOB, "image": "example/server", "instance_number": 0,
        "microservice_name": "server", "microservice_namespace": "test", "virtualization": "docker",
        "code": "example/server", "memory": 16, "instance_ip": "10.30.0.9",
    }))
    .expect("a valid deploy command")
}

/// Removes the namespaces of the test's node also when an assertion failed (they live in the
/// machine's `/run/netns`).
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for ns in namespaces_with(&self.0) {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}

/// The scenario, on the calling thread (already in its own network namespace).
async fn stop_after_cut_short_work(data_dir: &Path) {
    ip(&["link", "set", "lo", "up"]);
    let (outbox, _outbox_rx) = tokio::sync::mpsc::unbounded_channel();
    let config = OverlayConfig { public_addr: Some(Ipv4Addr::LOCALHOST), ..OverlayConfig::default() };
    let net = NetManager::new(config, data_dir.to_path_buf(), "127.0.0.1".into(), 1, outbox).unwrap();
    let node_id = format!("lifecycle-{}", std::process::id());
    let prefix = names::netns_prefix(&node_id);
    let _cleanup = Cleanup(prefix.clone());
    net.start(&node_id, "10.18.0.0/26").await.expect("the overlay starts");

    let netns = net.attach(&deploy_command()).await.expect("the instance is wired");
    assert!(Path::new(&netns).exists(), "{netns}");
    // The instance's offloaded packets are sized for one UDP send once sealed.
    let name = Path::new(&netns).file_name().unwrap().to_string_lossy().into_owned();
    let link = Command::new("ip").args(["-n", &name, "-d", "link", "show", names::INSTANCE_IF]).output().unwrap();
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(link.contains(&format!("gso_max_size {} ", names::INSTANCE_GSO_MAX)), "{link}");
    // The undeploy is cut short at its first wait, as the worker's stop aborts running work.
    let mut detach = Box::pin(net.detach(JOB, 0));
    std::future::poll_fn(|cx| {
        assert!(detach.as_mut().poll(cx).is_pending(), "the detach waits for the thread that unwires");
        Poll::Ready(())
    })
    .await;
    drop(detach);
    // And a namespace of this node no entry names (an attach cut short).
    ip(&["netns", "add", &format!("{prefix}stray")]);

    net.shutdown().await;
    assert_eq!(namespaces_with(&prefix), Vec::<String>::new(), "namespaces left behind");
    let (_, veths) = plumbing::leftovers(&prefix).await;
    assert_eq!(veths, Vec::<String>::new(), "veths left behind");
    assert!(!plumbing::link_exists(names::BRIDGE), "the bridge is left behind");
}

#[test]
fn a_stop_that_cuts_an_undeploy_short_leaves_no_wiring() {
    if !super::test_netns::root_or_skip("the overlay lifecycle test") {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_path_buf();
    // The runtime lives on the namespace's thread, so everything it starts is in there too.
    super::test_netns::in_own_netns(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(stop_after_cut_short_work(&dir));
    });
}
