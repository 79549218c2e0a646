//! MQTT over TLS: the broker behind a `TlsListener`, as the cluster serves it on :10003.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{nodes, options, within, Client, Ev};
use oak_mqtt::{Broker, BrokerConfig, BrokerHandle};
use oak_tls::{pinned_client_config, refusal_label, server_config, Authority, ClientAuth, TlsListener};
use rumqttc::{ConnectReturnCode, Packet, QoS, TlsConfiguration, Transport};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

struct TlsBroker {
    addr: SocketAddr,
    handle: BrokerHandle,
    ca: Authority,
    /// Refusal reasons the listener reported, in order.
    refused: Arc<Mutex<Vec<String>>>,
}

async fn start() -> TlsBroker {
    let ca = Authority::generate("cluster CA").unwrap();
    let identity = ca.issue_server(oak_tls::CLUSTER_SERVER_NAME, &["127.0.0.1".into()]).unwrap();
    let config = server_config(&identity, ClientAuth::None).unwrap();
    let refused = Arc::new(Mutex::new(Vec::new()));
    let r = refused.clone();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listener =
        TlsListener::new(tcp, config, Arc::new(move |_peer, why: &str| r.lock().unwrap().push(why.to_string())))
            .unwrap();
    let broker = Broker::from_tls_listener(listener, Arc::new(nodes()), BrokerConfig::default());
    let (addr, handle) = (broker.local_addr(), broker.handle());
    tokio::spawn(broker.run(std::future::pending()));
    TlsBroker { addr, handle, ca, refused }
}

/// rumqttc options for `user` speaking TLS, trusting only the CA with `pin`.
fn tls_options(addr: SocketAddr, user: &str, password: &str, pin: oak_tls::Fingerprint) -> rumqttc::MqttOptions {
    let mut options = options(addr, user, Some((user, password)));
    let config = pinned_client_config(pin, oak_tls::CLUSTER_SERVER_NAME, None).unwrap();
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
    options
}

async fn connack(client: &mut Client) -> Result<(), String> {
    match client.next().await {
        Ev::In(Packet::ConnAck(ack)) if ack.code == ConnectReturnCode::Success => Ok(()),
        other => Err(format!("{other:?}")),
    }
}

async fn refusals(broker: &TlsBroker, at_least: usize) -> Vec<&'static str> {
    within("the listener's refusals", async {
        loop {
            let labels: Vec<&str> = broker.refused.lock().unwrap().iter().map(|r| refusal_label(r)).collect();
            if labels.len() >= at_least {
                return labels;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_mqtt_is_refused_and_tls_with_valid_credentials_works() {
    let broker = start().await;
    let mut plain = Client::start(options(broker.addr, "n1", Some(("n1", "pw1"))));
    let outcome = connack(&mut plain).await;
    assert!(outcome.is_err(), "a plaintext CONNECT was accepted");
    assert_eq!(refusals(&broker, 1).await, ["not_tls"]);
    assert_eq!(broker.handle.stats().connections_total, 0, "plaintext reached the broker");

    let mut cluster = broker.handle.local_client("cluster");
    cluster.subscribe("nodes/+/information").unwrap();
    let mut n1 = Client::start(tls_options(broker.addr, "n1", "pw1", broker.ca.fingerprint()));
    connack(&mut n1).await.unwrap();
    n1.client.publish("nodes/n1/information", QoS::AtLeastOnce, false, b"{}".to_vec()).await.unwrap();
    let msg = within("the node's message", cluster.recv()).await.unwrap();
    assert_eq!(msg.topic, "nodes/n1/information");

    // TLS does not replace the credentials.
    let mut wrong = Client::start(tls_options(broker.addr, "n2", "pw1", broker.ca.fingerprint()));
    let (error, _) = wrong.closed().await;
    assert!(error.contains("BadUserNamePassword"), "{error}");
    // A client pinning another CA gives up during the handshake and sends nothing.
    let other = Authority::generate("other CA").unwrap();
    let mut stranger = Client::start(tls_options(broker.addr, "n3", "pw3", other.fingerprint()));
    let (error, seen) = stranger.closed().await;
    assert!(seen.is_empty() && error.contains("Tls"), "{error}: {seen:?}");
    assert_eq!(refusals(&broker, 2).await, ["not_tls", "client_alert"]);
    assert_eq!(broker.handle.stats().auth_failures, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_silent_connections_do_not_stall_other_clients() {
    let broker = start().await;
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(broker.addr).await.unwrap());
    }
    let mut garbage = TcpStream::connect(broker.addr).await.unwrap();
    garbage.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5, 6, 7, 8]).await.unwrap();
    let mut mqtt_in_clear = TcpStream::connect(broker.addr).await.unwrap();
    mqtt_in_clear.write_all(&[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 0]).await.unwrap();

    let mut n1 = Client::start(tls_options(broker.addr, "n1", "pw1", broker.ca.fingerprint()));
    within("a TLS client next to garbage", connack(&mut n1)).await.unwrap();
    let labels = refusals(&broker, 2).await;
    assert_eq!(labels, ["not_tls", "not_tls"], "{:?}", broker.refused.lock().unwrap());
    assert_eq!(broker.handle.stats().connections, 1, "only the TLS client reached the broker");
}
