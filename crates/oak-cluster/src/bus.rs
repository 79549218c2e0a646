//! The cluster's MQTT side. By default it embeds the broker (`oak-mqtt`) and talks to it
//! in-process; with `--mqtt-url` it is a client of an external broker (e.g. Mosquitto). Either
//! way the rest of the cluster sees one stream of `(topic, payload)` from workers and one
//! `publish`.
//!
//! The embedded broker speaks MQTT over TLS only, with the cluster's certificate (workers pin its
//! CA). An external broker is reached with `mqtts://` (its CA from `--mqtt-ca`, handed to workers
//! at registration) or, with a warning, plaintext `mqtt://`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use oak_mqtt::{AuthError, Authorizer, Broker, BrokerHandle, LocalPublisher, Principal};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

use crate::credentials;
use crate::Ctx;

/// Where the workers' broker is.
#[derive(Debug, Clone)]
pub enum MqttMode {
    /// Run the broker in this process, listening on `addr` (MQTT over TLS).
    Embedded { addr: SocketAddr },
    /// Use an external broker: `mqtts://[user:password@]host:port` with `ca`, the PEM file of
    /// the CA its certificate chains to, or plaintext `mqtt://…`. Workers are told its port,
    /// scheme and CA.
    External { url: String, ca: Option<PathBuf> },
}

/// How workers reach the broker (part of their registration answer).
#[derive(Debug, Clone, Default)]
pub struct WorkerBroker {
    pub port: u16,
    /// `mqtts` or `mqtt`.
    pub scheme: &'static str,
    /// PEM of the external broker's CA; empty for the embedded broker (the cluster's own CA,
    /// which workers already pin).
    pub ca_pem: String,
}

/// The topics the cluster listens to (not `nodes/+/net/#`: it publishes the query results there).
const FILTERS: &[&str] = &[
    "nodes/+/information",
    "nodes/+/job",
    "nodes/+/jobs/resources",
    "nodes/+/logs",
    "nodes/+/net/tablequery/request",
    "nodes/+/net/peerquery/request",
    "nodes/+/net/interest/remove",
];

pub struct Bus {
    kind: Kind,
    workers: WorkerBroker,
}

enum Kind {
    Embedded { publisher: LocalPublisher, handle: BrokerHandle, stop: tokio::sync::watch::Sender<bool> },
    External { client: AsyncClient },
}

pub type Incoming = mpsc::Receiver<(String, Bytes)>;

impl Bus {
    pub async fn start(
        mode: &MqttMode,
        auth: Arc<dyn Authorizer>,
        tls: &crate::tls::ClusterTls,
    ) -> anyhow::Result<(Bus, Incoming)> {
        let (tx, rx) = mpsc::channel(65_536);
        match mode {
            MqttMode::Embedded { addr } => {
                let tcp = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen for MQTT on {addr}"))?;
                let listener = oak_tls::TlsListener::new(tcp, tls.server.clone(), tls.refusals.callback("mqtt"))?;
                let broker = Broker::from_tls_listener(listener, auth, Default::default());
                let handle = broker.handle();
                let mut local = broker.local_client("cluster");
                for f in FILTERS {
                    local.subscribe(f).map_err(|e| anyhow::anyhow!("cannot subscribe {f}: {e}"))?;
                }
                let publisher = local.publisher();
                let worker_port = broker.local_addr().port();
                let (stop, mut stopped) = tokio::sync::watch::channel(false);
                tokio::spawn(broker.run(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                }));
                tokio::spawn(async move {
                    while let Some(m) = local.recv().await {
                        if tx.send((m.topic, m.payload)).await.is_err() {
                            break;
                        }
                    }
                });
                let workers = WorkerBroker { port: worker_port, scheme: "mqtts", ca_pem: String::new() };
                Ok((Bus { kind: Kind::Embedded { publisher, handle, stop }, workers }, rx))
            }
            MqttMode::External { url, ca } => {
                let ext = parse_url(url)?;
                let mut options =
                    MqttOptions::new(format!("oakestra-cluster-{}", credentials::new_node_id()), &ext.host, ext.port);
                options.set_keep_alive(Duration::from_secs(5));
                options.set_max_packet_size(1 << 20, 1 << 20);
                if let Some((user, password)) = &ext.credentials {
                    options.set_credentials(user, password);
                }
                let ca_pem = match (ext.tls, ca) {
                    (true, Some(path)) => {
                        let pem = std::fs::read_to_string(path)
                            .with_context(|| format!("cannot read --mqtt-ca {}", path.display()))?;
                        let config = oak_tls::ca_client_config(&pem)
                            .with_context(|| format!("--mqtt-ca {}", path.display()))?;
                        options.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(config)));
                        pem
                    }
                    (true, None) => anyhow::bail!(
                        "--mqtt-url {:?} is mqtts://: pass --mqtt-ca with the PEM of the CA that signed the broker's certificate",
                        redacted(url)
                    ),
                    (false, Some(_)) => anyhow::bail!(
                        "--mqtt-ca is for an mqtts:// broker, but --mqtt-url {:?} is plaintext",
                        redacted(url)
                    ),
                    (false, None) => {
                        tracing::warn!(url = %redacted(url),
                            "the external MQTT broker is plaintext: worker credentials and commands cross the network unencrypted; use mqtts:// with --mqtt-ca");
                        String::new()
                    }
                };
                let workers = WorkerBroker { port: ext.port, scheme: if ext.tls { "mqtts" } else { "mqtt" }, ca_pem };
                let (client, mut eventloop) = AsyncClient::new(options, 65_536);
                // rumqttc leaves Nagle's algorithm on: small commands would wait for the
                // broker's delayed ACK of the previous one.
                let mut network = rumqttc::NetworkOptions::new();
                network.set_tcp_nodelay(true);
                eventloop.set_network_options(network);
                let subscriber = client.clone();
                tokio::spawn(async move {
                    loop {
                        match eventloop.poll().await {
                            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                                for f in FILTERS {
                                    let _ = subscriber.try_subscribe(*f, QoS::AtLeastOnce);
                                }
                            }
                            Ok(Event::Incoming(Packet::Publish(p))) => {
                                if tx.send((p.topic, p.payload)).await.is_err() {
                                    break;
                                }
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "external MQTT broker connection failed; retrying");
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                        }
                    }
                });
                Ok((Bus { kind: Kind::External { client }, workers }, rx))
            }
        }
    }

    /// The port workers connect to.
    pub fn worker_port(&self) -> u16 {
        self.workers.port
    }

    /// What workers need to reach the broker.
    pub fn workers(&self) -> &WorkerBroker {
        &self.workers
    }

    pub fn publish(&self, topic: String, payload: Vec<u8>) {
        match &self.kind {
            Kind::Embedded { publisher, .. } => {
                if let Err(e) = publisher.publish_with_qos(topic, payload, rumqttc::QoS::AtLeastOnce) {
                    tracing::warn!(error = %e, "cannot publish to workers");
                }
            }
            Kind::External { client } => {
                if let Err(e) = client.try_publish(topic, QoS::AtLeastOnce, false, payload) {
                    tracing::warn!(error = %e, "cannot publish to workers");
                }
            }
        }
    }

    /// The embedded broker's counters (none for an external broker).
    pub fn stats(&self) -> Option<oak_mqtt::Stats> {
        match &self.kind {
            Kind::Embedded { handle, .. } => Some(handle.stats()),
            Kind::External { .. } => None,
        }
    }

    /// Ends a node's broker sessions (its credentials changed).
    pub fn kick(&self, node_id: &str) {
        if let Kind::Embedded { handle, .. } = &self.kind {
            handle.disconnect_node(node_id);
        }
    }

    /// Every worker connected to the embedded broker, with when the broker last heard from it
    /// (any packet, keep-alive pings included); `None` with an external broker, which does not
    /// tell.
    pub fn nodes_heard(&self) -> Option<Vec<(String, std::time::Instant)>> {
        match &self.kind {
            Kind::Embedded { handle, .. } => Some(handle.nodes_heard()),
            Kind::External { .. } => None,
        }
    }

    pub fn shutdown(&self) {
        if let Kind::Embedded { stop, .. } = &self.kind {
            let _ = stop.send(true);
        }
    }
}

/// Worker credentials for the embedded broker: user name = node id, password = the secret the
/// node got at registration. Resolves the context lazily (the broker starts before it exists).
pub fn node_authorizer(ctx: Arc<OnceLock<Weak<Ctx>>>) -> Arc<dyn Authorizer> {
    Arc::new(oak_mqtt::from_fn(move |_client_id, username, password| {
        let ctx = ctx.get().and_then(Weak::upgrade).ok_or(AuthError::Unavailable("cluster starting".into()))?;
        let (Some(user), Some(password)) = (username, password) else { return Err(AuthError::BadCredentials) };
        let st = ctx.state();
        let hash = st.node_secret_hash(user).ok_or(AuthError::BadCredentials)?;
        if credentials::matches(password, hash) {
            Ok(Principal::node(user))
        } else {
            Err(AuthError::BadCredentials)
        }
    }))
}

struct ExternalBroker {
    tls: bool,
    host: String,
    port: u16,
    credentials: Option<(String, String)>,
}

fn parse_url(url: &str) -> anyhow::Result<ExternalBroker> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://").or_else(|| url.strip_prefix("ssl://")) {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("mqtt://").or_else(|| url.strip_prefix("tcp://")) {
        (false, rest)
    } else {
        anyhow::bail!("--mqtt-url {:?} must start with mqtts:// (or plaintext mqtt://)", redacted(url));
    };
    let rest = rest.trim_end_matches('/');
    let (credentials, hostport) = match rest.rsplit_once('@') {
        Some((cred, hp)) => {
            let (u, p) = cred.split_once(':').unwrap_or((cred, ""));
            (Some((u.to_string(), p.to_string())), hp)
        }
        None => (None, rest),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => {
            (h, p.parse::<u16>().with_context(|| format!("--mqtt-url {:?}: bad port {p:?}", redacted(url)))?)
        }
        None => (hostport, if tls { 8883 } else { 1883 }),
    };
    anyhow::ensure!(!host.is_empty(), "--mqtt-url {:?} has no host", redacted(url));
    Ok(ExternalBroker { tls, host: host.trim_matches(['[', ']']).to_string(), port, credentials })
}

/// The URL without its password, for logs and errors.
fn redacted(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, rest)), Some((_, hostport))) => {
            let user = rest.split(['@', ':']).next().unwrap_or_default();
            format!("{scheme}://{user}:***@{hostport}")
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_url;

    #[test]
    fn external_broker_urls() {
        let b = parse_url("mqtt://127.0.0.1:1884").unwrap();
        assert_eq!((b.tls, b.host.as_str(), b.port, b.credentials), (false, "127.0.0.1", 1884, None));
        let b = parse_url("mqtts://broker.local").unwrap();
        assert_eq!((b.tls, b.host.as_str(), b.port), (true, "broker.local", 8883));
        assert_eq!(parse_url("mqtts://u:pw@[::1]:8884").unwrap().port, 8884);
        assert_eq!(super::redacted("mqtts://u:pw@h:1"), "mqtts://u:***@h:1");
        let e = parse_url("ftp://u:secret@h").err().expect("refused").to_string();
        assert!(e.contains("mqtts://") && !e.contains("secret"), "{e}");
        let b = parse_url("mqtt://admin:pw@broker.local").unwrap();
        assert_eq!((b.host.as_str(), b.port), ("broker.local", 1883));
        assert_eq!(b.credentials, Some(("admin".into(), "pw".into())));
        assert!(parse_url("http://x:1").is_err());
        assert!(parse_url("mqtt://x:notaport").is_err());
        assert!(parse_url("mqtt://:1883").is_err());
    }
}
