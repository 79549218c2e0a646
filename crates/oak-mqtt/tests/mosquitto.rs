//! The broker against independent MQTT implementations: Debian's `mosquitto_pub` and
//! `mosquitto_sub` (package `mosquitto-clients`). Without them the test fails when `CI=true` and is
//! skipped (with a message) otherwise (`oak_testenv::can_run`).

mod common;

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::{within, TestBroker, TIMEOUT};
use tokio::time::Instant;

fn tools_available() -> bool {
    use oak_testenv::Need::Tool;
    oak_testenv::can_run("broker against mosquitto clients", &[Tool("mosquitto_pub"), Tool("mosquitto_sub")])
}

fn spawn(tool: &str, port: u16, args: &[&str]) -> Child {
    Command::new(tool)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {tool}: {e}"))
}

/// Waits for the process to exit (killing it after the test timeout).
async fn finish(mut child: Child) -> Output {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!("process did not exit in time: {}", describe(&out));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn describe(out: &Output) -> String {
    format!(
        "status {:?}, stdout {:?}, stderr {:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_interoperate_and_are_confined() {
    if !tools_available() {
        return;
    }
    let broker = TestBroker::start().await;
    let port = broker.addr.port();
    let mut cluster = broker.handle.local_client("cluster");
    cluster.subscribe("nodes/+/information").unwrap();
    cluster.subscribe("nodes/+/job").unwrap();

    // Worker → cluster, QoS 1.
    let out = finish(spawn(
        "mosquitto_pub",
        port,
        &[
            "-i",
            "n1-pub",
            "-u",
            "n1",
            "-P",
            "pw1",
            "-q",
            "1",
            "-t",
            "nodes/n1/information",
            "-m",
            "{\"cpu_percent\":3}",
        ],
    ))
    .await;
    assert!(out.status.success(), "{}", describe(&out));
    let msg = within("mosquitto_pub's message", cluster.recv()).await.unwrap();
    assert_eq!((msg.topic.as_str(), &msg.payload[..]), ("nodes/n1/information", &b"{\"cpu_percent\":3}"[..]));

    // Cluster → worker, QoS 1. Publishing returns how many subscribers got it, so we know when
    // mosquitto_sub's subscription is in place without sleeping.
    let sub = spawn(
        "mosquitto_sub",
        port,
        &["-i", "n1-sub", "-u", "n1", "-P", "pw1", "-q", "1", "-t", "nodes/n1/control/#", "-C", "1", "-v", "-W", "20"],
    );
    within("mosquitto_sub to subscribe", async {
        while cluster.publish("nodes/n1/control/deploy", b"{\"job_name\":\"a.b.c.d\"}".to_vec()).unwrap() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let out = finish(sub).await;
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), "nodes/n1/control/deploy {\"job_name\":\"a.b.c.d\"}");

    // Bad password: refused with the MQTT return code, nothing delivered.
    let out = finish(spawn(
        "mosquitto_pub",
        port,
        &["-i", "bad", "-u", "n1", "-P", "wrong", "-t", "nodes/n1/job", "-m", "x"],
    ))
    .await;
    assert!(!out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(stderr.contains("bad user name or password"), "{}", describe(&out));

    // MQTT 5 is refused with the 3.1.1 "unacceptable protocol version" code, which v5 clients understand.
    let out = finish(spawn(
        "mosquitto_pub",
        port,
        &["-V", "mqttv5", "-i", "v5", "-u", "n1", "-P", "pw1", "-t", "nodes/n1/job", "-m", "x"],
    ))
    .await;
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).to_lowercase().contains("unsupported protocol version"),
        "{}",
        describe(&out)
    );

    // Another node's topic: the connection is closed and the message never reaches the cluster.
    let out = finish(spawn(
        "mosquitto_pub",
        port,
        &["-i", "forger", "-u", "n1", "-P", "pw1", "-q", "1", "-t", "nodes/n2/job", "-m", "forged"],
    ))
    .await;
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("connection was lost"), "{}", describe(&out));

    // Subscribing to another node's topics or with a wildcard node id is refused.
    for filter in ["nodes/n2/#", "nodes/+/information"] {
        let out =
            finish(spawn("mosquitto_sub", port, &["-i", "snoop", "-u", "n1", "-P", "pw1", "-t", filter, "-E"])).await;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("All subscription requests were denied"), "{filter}: {}", describe(&out));
    }

    let out = finish(spawn(
        "mosquitto_pub",
        port,
        &["-i", "n2-pub", "-u", "n2", "-P", "pw2", "-q", "1", "-t", "nodes/n2/job", "-m", "legit"],
    ))
    .await;
    assert!(out.status.success(), "{}", describe(&out));
    let msg = within("the legitimate job message", cluster.recv()).await.unwrap();
    assert_eq!((msg.topic.as_str(), &msg.payload[..]), ("nodes/n2/job", &b"legit"[..]));
    assert_eq!(cluster.try_recv(), None);
    assert_eq!(broker.stats().acl_denials, 3);
    broker.stop().await;
}
