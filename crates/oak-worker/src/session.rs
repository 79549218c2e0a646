//! One MQTT connection to the cluster's broker, with the credentials of one registration, over
//! TLS (the embedded broker: the CA the join token pins; an external one: the CA the cluster
//! named) unless the cluster said its broker is plaintext.
//!
//! The rumqttc event loop runs in its own task (it must be polled continuously and must not be
//! cancelled mid-packet); this task subscribes on every (re)connect, hands control messages to
//! the engine and publishes the outbox. The session ends only when the broker refuses the
//! credentials, so that the worker registers again.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Duration;

use std::sync::Arc;

use oak_api::net::topic as net_topic;
use oak_api::node::topic;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS, TlsConfiguration,
    Transport,
};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::engine::{EngineMsg, Shared};
use crate::net::NetManager;
use crate::register::Registration;
use crate::reports::Outgoing;

const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Deploy commands carry a whole job document.
const MAX_INCOMING: usize = 1024 * 1024;
/// A resources report grows with the instances (each carries up to 1 KiB of logs).
const MAX_OUTGOING: usize = 16 * 1024 * 1024;
const REQUEST_CAPACITY: usize = 64;

pub(crate) enum SessionEnd {
    /// The broker refused the credentials (e.g. the cluster forgot this node).
    CredentialsRefused { was_connected: bool },
}

/// What outlives one session: status reports not yet published and the node's last known IP.
#[derive(Default)]
pub(crate) struct Carry {
    pub pending: VecDeque<Outgoing>,
    pub ip: String,
}

/// Most messages kept for the next connection (beyond the one latest report per instance).
const CARRY_MAX: usize = 4096;

impl Carry {
    /// Keeps `msg` for the next connection, in bounded memory however long the broker is away:
    /// a status report replaces an older one of the same instance (the latest state is what
    /// counts), periodic reports and log answers are dropped (the next period sends fresh ones;
    /// a log read has timed out by then), and at most [`CARRY_MAX`] are kept, oldest dropped
    /// first.
    pub fn keep(&mut self, msg: Outgoing) {
        match &msg {
            Outgoing::Info(info) => {
                if !info.ip.is_empty() {
                    self.ip.clone_from(&info.ip);
                }
                return;
            }
            Outgoing::Resources(_) | Outgoing::Logs(_) => return,
            Outgoing::Job(r) => self
                .pending
                .retain(|p| !matches!(p, Outgoing::Job(old) if old.sname == r.sname && old.instance == r.instance)),
            Outgoing::TableQuery(_) | Outgoing::InterestRemove(_) | Outgoing::PeerQuery(_) => {}
        }
        if self.pending.len() >= CARRY_MAX {
            self.pending.pop_front();
            tracing::warn!(kept = CARRY_MAX, "disconnected for long: dropping the oldest message kept for the cluster");
        }
        self.pending.push_back(msg);
    }

    /// Runs `fut` while keeping what the outbox receives meanwhile (between sessions nobody else
    /// reads it, and it would grow without bound).
    pub async fn draining<F: std::future::Future>(
        &mut self,
        outbox: &mut mpsc::UnboundedReceiver<Outgoing>,
        fut: F,
    ) -> F::Output {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                out = &mut fut => return out,
                Some(msg) = outbox.recv() => self.keep(msg),
            }
        }
    }
}

enum PumpEvent {
    Connected,
    Message {
        topic: String,
        payload: Vec<u8>,
    },
    /// The connection failed or ended; `tls`: in the TLS handshake (e.g. the broker's certificate
    /// is not from the expected CA), which retrying alone will not fix.
    Disconnected {
        reason: String,
        tls: bool,
    },
    Refused(String),
}

pub(crate) async fn run(
    registration: &Registration,
    outbox: &mut mpsc::UnboundedReceiver<Outgoing>,
    carry: &mut Carry,
    engine: &mpsc::UnboundedSender<EngineMsg>,
    shared: &Shared,
    net: Option<&Arc<NetManager>>,
) -> SessionEnd {
    let node_id = registration.identity.id.as_str();
    let endpoint = &registration.mqtt;
    let mut options = MqttOptions::new(format!("{node_id}-ne"), endpoint.host.clone(), endpoint.port);
    options
        .set_keep_alive(KEEP_ALIVE)
        .set_credentials(endpoint.username.clone(), endpoint.password.clone())
        // The broker keeps QoS 1 commands sent while the worker was away.
        .set_clean_session(false)
        .set_max_packet_size(MAX_INCOMING, MAX_OUTGOING);
    if let Some(tls) = &endpoint.tls {
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls.clone())));
    }
    let (client, mut eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
    eventloop.set_network_options(network_options());
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let _pump = AbortOnDrop(tokio::spawn(pump(eventloop, events_tx).in_current_span()));

    let mut session = Session { client, node_id, connected: false, was_connected: false, net };
    let result = loop {
        tokio::select! {
            biased;
            event = events.recv() => match event {
                Some(PumpEvent::Connected) => {
                    tracing::info!(broker = %format!("{}:{}", endpoint.host, endpoint.port), "connected to the broker");
                    session.connected = true;
                    session.was_connected = true;
                    shared.sessions.fetch_add(1, Ordering::Relaxed);
                    shared.connected.store(true, Ordering::Relaxed);
                    session.subscribe().await;
                    if let Some(net) = session.net {
                        net.resync();
                    }
                    while let Some(pending) = carry.pending.pop_front() {
                        if let Some(kept) = session.publish(pending, carry).await {
                            carry.pending.push_front(kept);
                            break;
                        }
                    }
                }
                Some(PumpEvent::Message { topic, payload }) => session.dispatch(&topic, payload, engine),
                Some(PumpEvent::Disconnected { reason, tls }) => {
                    if tls {
                        tracing::warn!(%reason, "TLS with the broker failed; retrying");
                    } else if session.connected {
                        tracing::warn!(%reason, "lost the broker connection; reconnecting");
                    } else {
                        tracing::debug!(%reason, "cannot connect to the broker; retrying");
                    }
                    session.connected = false;
                    shared.connected.store(false, Ordering::Relaxed);
                }
                Some(PumpEvent::Refused(reason)) => {
                    tracing::warn!(%reason, "the broker refused this node's credentials");
                    break SessionEnd::CredentialsRefused { was_connected: session.was_connected };
                }
                None => break SessionEnd::CredentialsRefused { was_connected: session.was_connected },
            },
            // Read also while disconnected, into the bounded carry, so the outbox never piles up.
            msg = outbox.recv() => match msg {
                Some(msg) if session.connected => {
                    if let Some(kept) = session.publish(msg, carry).await {
                        carry.keep(kept);
                    }
                }
                Some(msg) => carry.keep(msg),
                None => std::future::pending::<()>().await,
            },
        }
    };
    shared.connected.store(false, Ordering::Relaxed);
    result
}

struct Session<'a> {
    client: AsyncClient,
    node_id: &'a str,
    connected: bool,
    was_connected: bool,
    net: Option<&'a Arc<NetManager>>,
}

impl Session<'_> {
    async fn subscribe(&self) {
        let mut topics =
            vec![topic::deploy(self.node_id), topic::delete(self.node_id), topic::logs_query(self.node_id)];
        if self.net.is_some() {
            topics.push(net_topic::table_result(self.node_id));
            topics.push(net_topic::peer_result(self.node_id));
        }
        for topic in topics {
            if let Err(e) = self.client.subscribe(topic.clone(), QoS::AtLeastOnce).await {
                tracing::warn!(%topic, error = %e, "cannot subscribe");
            }
        }
    }

    fn dispatch(&self, topic_name: &str, payload: Vec<u8>, engine: &mpsc::UnboundedSender<EngineMsg>) {
        let msg = match topic::parse(topic_name) {
            Some((id, "control/deploy")) if id == self.node_id => EngineMsg::Deploy(payload),
            Some((id, "control/delete")) if id == self.node_id => EngineMsg::Delete(payload),
            Some((id, "control/logs")) if id == self.node_id => EngineMsg::Logs(payload),
            Some((id, net_topic::TABLE_RESULT)) if id == self.node_id => {
                if let Some(net) = self.net {
                    net.on_table(&payload);
                }
                return;
            }
            Some((id, net_topic::PEER_RESULT)) if id == self.node_id => {
                if let Some(net) = self.net {
                    net.on_peer(&payload);
                }
                return;
            }
            _ => {
                tracing::debug!(topic = topic_name, "ignoring message");
                return;
            }
        };
        let _ = engine.send(msg);
    }

    /// Publishes one message. A status report that cannot be handed to the client is returned,
    /// to be kept for the next connection; periodic reports are simply dropped.
    async fn publish(&self, msg: Outgoing, carry: &mut Carry) -> Option<Outgoing> {
        let (topic, qos, payload, keep) = match msg {
            Outgoing::Job(mut report) => {
                if report.publicip.is_empty() {
                    report.publicip = carry.ip.clone();
                }
                if report.nsip.is_empty() {
                    if let Some(nsip) = self.net.and_then(|net| net.nsip(&report.sname, report.instance)) {
                        report.nsip = nsip.to_string();
                    }
                }
                let payload = serde_json::to_vec(&report);
                (topic::job(self.node_id), QoS::AtLeastOnce, payload, Some(Outgoing::Job(report)))
            }
            Outgoing::Resources(report) => {
                (topic::resources(self.node_id), QoS::AtMostOnce, serde_json::to_vec(&report), None)
            }
            Outgoing::Logs(answer) => (topic::logs(self.node_id), QoS::AtLeastOnce, serde_json::to_vec(&answer), None),
            Outgoing::TableQuery(query) => {
                (net_topic::table_query(self.node_id), QoS::AtLeastOnce, serde_json::to_vec(&query), None)
            }
            Outgoing::InterestRemove(remove) => {
                (net_topic::interest_remove(self.node_id), QoS::AtLeastOnce, serde_json::to_vec(&remove), None)
            }
            Outgoing::PeerQuery(query) => {
                (net_topic::peer_query(self.node_id), QoS::AtLeastOnce, serde_json::to_vec(&query), None)
            }
            Outgoing::Info(mut info) => {
                info.id = self.node_id.to_string();
                if !info.ip.is_empty() {
                    carry.ip.clone_from(&info.ip);
                }
                (topic::information(self.node_id), QoS::AtMostOnce, serde_json::to_vec(&info), None)
            }
        };
        let payload = match payload {
            Ok(payload) => payload,
            Err(e) => {
                tracing::error!(%topic, error = %e, "cannot encode message");
                return None;
            }
        };
        match self.client.publish(topic.clone(), qos, false, payload).await {
            Ok(()) => None,
            Err(e) => {
                tracing::debug!(%topic, error = %e, "cannot publish; keeping status reports for the next connection");
                keep
            }
        }
    }
}

/// Polls the event loop forever, reconnecting with back-off, until the broker refuses the
/// credentials or the session is gone.
/// The MQTT connection's socket options: `TCP_NODELAY`, since rumqttc leaves Nagle's algorithm
/// on, and a small report written while the broker has not yet acknowledged the previous one
/// (it delays its ACKs) then waited up to 40 ms: a fixed wait on every deploy.
pub(crate) fn network_options() -> rumqttc::NetworkOptions {
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    network
}

async fn pump(mut eventloop: EventLoop, events: mpsc::UnboundedSender<PumpEvent>) {
    let mut backoff = Backoff::reconnect();
    loop {
        let event = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff.reset();
                PumpEvent::Connected
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                PumpEvent::Message { topic: publish.topic, payload: publish.payload.to_vec() }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack.return_codes.iter().any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) {
                    tracing::warn!("the broker refused a subscription; control commands may not arrive");
                }
                continue;
            }
            Ok(_) => continue,
            Err(ConnectionError::ConnectionRefused(
                code @ (ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized),
            )) => {
                let _ = events.send(PumpEvent::Refused(format!("{code:?}").to_lowercase()));
                return;
            }
            Err(e) => {
                let tls = matches!(e, ConnectionError::Tls(_));
                if events.send(PumpEvent::Disconnected { reason: e.to_string(), tls }).is_err() {
                    return;
                }
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        if events.send(event).is_err() {
            return;
        }
    }
}

/// Aborts the task when the session ends, closing its connection.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {

    /// `TCP_NODELAY` of this process's socket connected to `peer` (looked up among its open
    /// file descriptors).
    fn nodelay_towards(peer: std::net::SocketAddr) -> Option<bool> {
        use std::os::fd::AsRawFd;
        for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
            let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
            // Borrow the descriptor without taking it over (never closed here).
            // SAFETY: an open descriptor of this process; only queried, never closed.
            let sock = std::mem::ManuallyDrop::new(unsafe {
                <std::net::TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd)
            });
            if sock.peer_addr().ok() != Some(peer) {
                continue;
            }
            let mut on: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: a valid socket descriptor and an int-sized out buffer.
            let r = unsafe {
                libc::getsockopt(
                    sock.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_NODELAY,
                    (&mut on as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            return (r == 0).then_some(on != 0);
        }
        None
    }

    #[tokio::test]
    async fn the_mqtt_connection_turns_nagle_off() {
        let broker = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = broker.local_addr().unwrap();
        let options = rumqttc::MqttOptions::new("nagle-test", "127.0.0.1", addr.port());
        let (_client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
        eventloop.set_network_options(super::network_options());
        // The event loop connects and then waits for a CONNACK that never comes.
        let poll = tokio::spawn(async move { eventloop.poll().await.map(|_| ()) });
        let (_accepted, _) = broker.accept().await.unwrap();
        let mut nodelay = None;
        for _ in 0..200 {
            nodelay = nodelay_towards(addr);
            if nodelay.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        poll.abort();
        assert_eq!(nodelay, Some(true), "the worker's MQTT socket has TCP_NODELAY");
    }

    use oak_api::net::TableQuery;
    use oak_api::node::{NodeInfo, ResourcesReport};

    use super::*;
    use crate::reports;

    fn jobs(carry: &Carry) -> Vec<(String, u32, String)> {
        carry
            .pending
            .iter()
            .filter_map(|m| match m {
                Outgoing::Job(r) => Some((r.sname.clone(), r.instance, r.status.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn what_waits_for_the_broker_stays_bounded() {
        let mut carry = Carry::default();
        for _ in 0..10_000 {
            carry.keep(Outgoing::Resources(ResourcesReport::default()));
            carry.keep(Outgoing::Info(Box::new(NodeInfo { ip: "192.0.2.7".into(), ..Default::default() })));
        }
        assert!(carry.pending.is_empty(), "periodic reports were kept");
        assert_eq!(carry.ip, "192.0.2.7");

        // Only the latest state of an instance waits, in the order of the last changes.
        carry.keep(reports::job("a", 0, "CREATING", ""));
        carry.keep(reports::job("b", 0, "RUNNING", ""));
        carry.keep(reports::job("a", 0, "RUNNING", ""));
        carry.keep(reports::job("a", 1, "FAILED", ""));
        assert_eq!(
            jobs(&carry),
            [
                ("b".to_string(), 0, "RUNNING".to_string()),
                ("a".into(), 0, "RUNNING".into()),
                ("a".into(), 1, "FAILED".into()),
            ]
        );

        for i in 0..2 * CARRY_MAX {
            carry.keep(Outgoing::TableQuery(TableQuery { sname: format!("job{i}"), sip: String::new() }));
        }
        assert_eq!(carry.pending.len(), CARRY_MAX);
        assert!(
            matches!(carry.pending.back(), Some(Outgoing::TableQuery(q)) if q.sname == format!("job{}", 2 * CARRY_MAX - 1))
        );
    }

    #[tokio::test]
    async fn the_outbox_is_read_between_sessions() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        for _ in 0..1000 {
            tx.send(Outgoing::Resources(ResourcesReport::default())).unwrap();
        }
        tx.send(reports::job("a", 0, "RUNNING", "")).unwrap();
        let mut carry = Carry::default();
        carry.draining(&mut rx, tokio::time::sleep(Duration::from_millis(50))).await;
        assert!(rx.try_recv().is_err(), "the outbox still holds messages");
        assert_eq!(jobs(&carry), [("a".to_string(), 0, "RUNNING".to_string())]);
    }
}
