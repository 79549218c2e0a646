//! Test helpers: a broker on an ephemeral port, real `rumqttc` clients, and a raw TCP client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use oak_mqtt::{Authorizer, Broker, BrokerConfig, BrokerHandle, StaticAuthorizer, Stats};
use rumqttc::mqttbytes::v4::{Connect, Packet};
use rumqttc::{AsyncClient, Event, MqttOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Generous bound for anything that should happen "soon"; never used to assert durations.
pub const TIMEOUT: Duration = Duration::from_secs(20);

pub async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(TIMEOUT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Nodes `n1`/`pw1`, `n2`/`pw2`, `n3`/`pw3`.
pub fn nodes() -> StaticAuthorizer {
    StaticAuthorizer::new().with_node("n1", "pw1").with_node("n2", "pw2").with_node("n3", "pw3")
}

pub struct TestBroker {
    pub handle: BrokerHandle,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl TestBroker {
    pub async fn start() -> TestBroker {
        Self::start_with(BrokerConfig::default()).await
    }

    pub async fn start_with(config: BrokerConfig) -> TestBroker {
        Self::start_with_auth(config, Arc::new(nodes())).await
    }

    pub async fn start_with_auth(config: BrokerConfig, auth: Arc<dyn Authorizer>) -> TestBroker {
        let broker = Broker::bind_with_config("127.0.0.1:0".parse().unwrap(), auth, config).await.expect("bind broker");
        let addr = broker.local_addr();
        let handle = broker.handle();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(broker.run(async move {
            let _ = stopped.await;
        }));
        TestBroker { handle, addr, stop: Some(stop), task }
    }

    pub fn stats(&self) -> Stats {
        self.handle.stats()
    }

    /// Signals shutdown and waits for `run` to return.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        within("broker shutdown", &mut self.task).await.expect("broker task");
    }

    /// Waits until `cond(stats)` holds.
    pub async fn wait_stats(&self, what: &str, cond: impl Fn(&Stats) -> bool) -> Stats {
        within(what, async {
            loop {
                let stats = self.stats();
                if cond(&stats) {
                    return stats;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }
}

/// What a `rumqttc` client observed: an incoming packet, or the end of its connection.
#[derive(Debug)]
pub enum Ev {
    In(Packet),
    Closed(String),
}

/// A real `rumqttc` client whose event loop runs in a task and stops at the first error (no
/// automatic reconnect, so a closed connection stays closed).
pub struct Client {
    pub client: AsyncClient,
    events: mpsc::UnboundedReceiver<Ev>,
    task: JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn options(addr: SocketAddr, client_id: &str, login: Option<(&str, &str)>) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(1024 * 1024, 1024 * 1024);
    if let Some((user, password)) = login {
        options.set_credentials(user, password);
    }
    options
}

impl Client {
    pub fn start(options: MqttOptions) -> Client {
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(packet)) => {
                        if tx.send(Ev::In(packet)).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(e) => {
                        let _ = tx.send(Ev::Closed(format!("{e:?}")));
                        return;
                    }
                }
            }
        });
        Client { client, events, task }
    }

    /// Connects as node `node` (password `pw<digit>` from [`nodes`]) with `client_id` and waits for
    /// a successful CONNACK.
    pub async fn connect(addr: SocketAddr, client_id: &str, user: &str, password: &str) -> Client {
        let mut client = Client::start(options(addr, client_id, Some((user, password))));
        match client.next().await {
            Ev::In(Packet::ConnAck(ack)) => {
                assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success, "{ack:?}");
                assert!(!ack.session_present);
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
        client
    }

    pub async fn next(&mut self) -> Ev {
        within("a client event", self.events.recv()).await.unwrap_or(Ev::Closed("event loop gone".into()))
    }

    /// Skips events until `pick` returns `Some`.
    pub async fn wait_for<T>(&mut self, what: &str, mut pick: impl FnMut(&Ev) -> Option<T>) -> T {
        loop {
            let ev = self.next().await;
            if let Some(out) = pick(&ev) {
                return out;
            }
            if let Ev::Closed(e) = ev {
                panic!("connection closed ({e}) while waiting for {what}");
            }
        }
    }

    pub async fn subscribe(&mut self, filter: &str, qos: rumqttc::QoS) -> rumqttc::SubscribeReasonCode {
        self.client.subscribe(filter, qos).await.unwrap();
        let codes = self
            .wait_for("SUBACK", |ev| match ev {
                Ev::In(Packet::SubAck(ack)) => Some(ack.return_codes.clone()),
                _ => None,
            })
            .await;
        assert_eq!(codes.len(), 1);
        codes[0]
    }

    pub async fn next_publish(&mut self) -> rumqttc::Publish {
        self.wait_for("PUBLISH", |ev| match ev {
            Ev::In(Packet::Publish(p)) => Some(p.clone()),
            _ => None,
        })
        .await
    }

    /// Waits for the connection to end; returns the incoming packets seen before.
    pub async fn closed(&mut self) -> (String, Vec<Packet>) {
        let mut seen = Vec::new();
        loop {
            match self.next().await {
                Ev::In(p) => seen.push(p),
                Ev::Closed(e) => return (e, seen),
            }
        }
    }
}

/// A hand-driven TCP connection for what real clients won't do.
pub struct Raw {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        Raw::from_stream(TcpStream::connect(addr).await.expect("tcp connect"))
    }

    pub fn from_stream(stream: TcpStream) -> Raw {
        Raw { stream, buf: BytesMut::new() }
    }

    /// TCP connect + MQTT CONNECT as `user`/`password`, asserting a successful CONNACK.
    pub async fn login(addr: SocketAddr, client_id: &str, user: &str, password: &str, keep_alive: u16) -> Raw {
        let mut raw = Raw::connect(addr).await;
        let mut connect = Connect::new(client_id);
        connect.keep_alive = keep_alive;
        connect.set_login(user, password);
        raw.send(Packet::Connect(connect)).await;
        match raw.recv().await {
            Some(Packet::ConnAck(ack)) => assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success),
            other => panic!("expected CONNACK, got {other:?}"),
        }
        raw
    }

    pub async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        packet.write(&mut out, usize::MAX).expect("encode");
        self.send_bytes(&out).await;
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        // The broker may already have closed the socket; that is what some tests want.
        let _ = self.stream.write_all(bytes).await;
    }

    /// The next packet, or `None` at end of stream (or reset).
    pub async fn recv(&mut self) -> Option<Packet> {
        within("a packet from the broker", async {
            loop {
                match Packet::read(&mut self.buf, usize::MAX) {
                    Ok(packet) => return Some(packet),
                    Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                    Err(e) => panic!("broker sent garbage: {e}"),
                }
                self.buf.reserve(64 * 1024);
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
    }

    /// Reads until the broker closes the connection; returns the packets received before.
    pub async fn until_closed(&mut self) -> Vec<Packet> {
        let mut seen = Vec::new();
        while let Some(packet) = self.recv().await {
            seen.push(packet);
        }
        seen
    }
}
