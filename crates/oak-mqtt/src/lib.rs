//! An embeddable MQTT 3.1.1 broker for the cluster orchestrator, with per-node authentication and
//! topic authorization.
//!
//! # Why a broker of our own
//!
//! Workers talk to their cluster over MQTT under `nodes/<node_id>/…` (spec §5.4). With a plain
//! broker any worker holding valid credentials could publish `nodes/<other>/job` or subscribe to
//! `nodes/+/control/deploy` and read or forge every other node's traffic. The broker must therefore
//! know, per connection, which node authenticated, and confine it to that node's topics.
//! `rumqttd` 0.20 only offers a connect-time authentication callback (per-client topic ACLs exist
//! only as TLS-tenant prefixes) and pulls a second axum, a metrics exporter, a config loader and clap
//! into our single small binary. So this crate implements the broker side itself — connection
//! handling, sessions, routing, ACLs — while the MQTT wire format comes from `rumqttc`'s packet
//! codec (`rumqttc::mqttbytes::v4`).
//!
//! # The rule
//!
//! An [`Authorizer`] (implemented by the cluster over its node table) maps CONNECT credentials to a
//! [`Principal`]. For [`Principal::Node`]`(X)` the broker enforces:
//!
//! * PUBLISH only to topics starting with `nodes/X/`. Anything else: the message is dropped, the
//!   denial logged with the node id and topic, and the connection closed (MQTT 3.1.1 has no negative
//!   PUBACK, and a node doing this is misbehaving).
//! * SUBSCRIBE only to filters whose first two levels are literally `nodes` and `X` — no wildcard
//!   there, so `nodes/+/…` and `#` are refused. Refused filters get the failure code in the SUBACK;
//!   the connection stays up.
//! * Bad credentials: CONNACK "bad user name or password" (or "not authorized", per [`AuthError`])
//!   and close.
//!
//! The cluster orchestrator itself lives in the same process and uses a [`LocalClient`], which has
//! full rights and skips the network (at 1,000 workers per cluster a loopback MQTT connection would
//! be one more hop and one more queue for every message).
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use oak_mqtt::{Broker, StaticAuthorizer};
//!
//! # async fn example() -> std::io::Result<()> {
//! let auth = Arc::new(StaticAuthorizer::new().with_node("node-1", "secret"));
//! let broker = Broker::bind("0.0.0.0:10003".parse().unwrap(), auth).await?;
//! let mut cluster = broker.local_client("cluster-manager");
//! cluster.subscribe("nodes/+/information").unwrap();
//! tokio::spawn(broker.run(std::future::pending()));
//! while let Some(msg) = cluster.recv().await {
//!     println!("{}: {} bytes", msg.topic, msg.payload.len());
//!     cluster.publish("nodes/node-1/control/deploy", b"{}".to_vec()).unwrap();
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Behaviour and limits
//!
//! * QoS 0 and 1. Incoming QoS 1 is acknowledged after routing; deliveries go out at
//!   min(publish QoS, subscription QoS) with fresh packet ids. PUBACKs are accepted; a delivery
//!   in flight when a connection drops is not redelivered. QoS 2 PUBLISH (and
//!   PUBREC/PUBREL/PUBCOMP) closes the connection; a QoS 2 subscription is granted as QoS 1.
//! * Sessions: a `clean_session = 0` client's subscriptions outlive its connection. While it is
//!   away, QoS 1 messages for them are kept (at most 1,024, the oldest dropped first, for an
//!   hour); its next connection with the same client id and `clean_session = 0` gets
//!   `session_present = true`, its subscriptions, and the kept messages right after the CONNACK
//!   (a worker restarting or reconnecting still gets the deploy sent meanwhile). A clean
//!   session discards what was kept. Retained messages and
//!   wills are not supported: the retain flag is ignored (messages are delivered to current
//!   subscribers and kept sessions only) and a will is never published.
//! * A second CONNECT with the same client id from the same principal takes over: the older
//!   connection is closed. Client ids are scoped per principal, so one node cannot kick another off
//!   by reusing its client id. An empty client id (with clean session) gets a generated one.
//! * Keep-alive: a client silent for 1.5× its keep-alive is disconnected. A client that stops
//!   reading is disconnected after [`BrokerConfig::write_timeout`].
//! * Incoming packets larger than [`BrokerConfig::max_packet_size`] (default 1 MiB) or malformed
//!   close that connection only.
//! * Slow consumers: every connection has a bounded queue ([`BrokerConfig::outgoing_queue`]). When
//!   it is full, QoS 0 deliveries to it are dropped and counted ([`Stats::dropped`]); a QoS 1
//!   delivery that cannot be queued closes the connection. The router never waits for a client.
//! * Passwords must be UTF-8 (the codec reads them as strings). MQTT 3.1 and 5 clients are refused
//!   with CONNACK "unacceptable protocol version".
//! * TLS: [`Broker::from_tls_listener`] serves MQTT over TLS through an `oak_tls::TlsListener`,
//!   which completes handshakes off the accept loop; plaintext, garbage and silent clients are
//!   refused there (reported to the listener's callback) and never reach the broker.

mod acl;
mod broker;
mod connection;
mod local;
mod router;
mod stats;
mod subscriptions;

pub use acl::{constant_time_eq, from_fn, AuthError, Authorizer, FnAuthorizer, Principal, StaticAuthorizer};
pub use broker::{Broker, BrokerConfig, BrokerHandle};
pub use local::{LocalClient, LocalError, LocalPublisher, Message};
pub use rumqttc::mqttbytes::QoS;
pub use stats::Stats;
