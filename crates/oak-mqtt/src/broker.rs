//! The listening socket, configuration, and the accept loop that spawns one task per connection.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use oak_tls::TlsListener;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::acl::Authorizer;
use crate::connection::{self, OpenConnection};
use crate::local::{LocalClient, LocalPublisher};
use crate::router::Router;
use crate::stats::Stats;

/// The largest remaining length MQTT can encode.
const MQTT_MAX_REMAINING_LENGTH: usize = 268_435_455;

/// How long [`Broker::run`] waits for connections to close after the shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Broker limits. `Default` gives values suited to a cluster with a few thousand workers.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// Largest packet accepted from a client (its remaining length), and largest local publish.
    /// Bigger packets close the connection. Default 1 MiB.
    pub max_packet_size: usize,
    /// Deliveries queued per TCP connection before QoS 0 messages are dropped and a QoS 1 message
    /// closes the connection. Default 1,024.
    pub outgoing_queue: usize,
    /// Deliveries queued per [`LocalClient`] before messages are dropped. Default 65,536.
    pub local_queue: usize,
    /// Time a new TCP connection has to send its CONNECT. Default 10 s.
    pub connect_timeout: Duration,
    /// A connection whose unsent data makes no progress for this long is closed (a peer that
    /// stopped reading). Default 30 s.
    pub write_timeout: Duration,
    /// TCP connections beyond this are closed right after accept. Default 10,000.
    pub max_connections: usize,
    /// At most this many [`Authorizer::authenticate`] calls run at a time (they may be slow
    /// password hashes). Default: the number of CPUs.
    pub auth_concurrency: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            max_packet_size: 1024 * 1024,
            outgoing_queue: 1024,
            local_queue: 65_536,
            connect_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            auth_concurrency: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

impl BrokerConfig {
    pub(crate) fn effective_max_packet_size(&self) -> usize {
        self.max_packet_size.clamp(1, MQTT_MAX_REMAINING_LENGTH)
    }
}

/// State shared by the accept loop, the connection tasks and local clients.
pub(crate) struct Shared {
    pub config: BrokerConfig,
    pub auth: Arc<dyn Authorizer>,
    pub auth_permits: Arc<Semaphore>,
    pub router: Router,
}

/// An MQTT 3.1.1 broker bound to a TCP port; see the [crate documentation](crate).
pub struct Broker {
    listener: Incoming,
    handle: BrokerHandle,
}

/// Where connections come from: plain TCP, or TLS whose handshakes the [`TlsListener`] completes
/// (and refuses, reporting why) before a connection reaches the broker.
enum Incoming {
    Tcp(TcpListener),
    Tls(TlsListener),
}

/// A cheap, cloneable handle to a broker, usable while (and after) [`Broker::run`] runs.
#[derive(Clone)]
pub struct BrokerHandle {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
}

impl Broker {
    /// Binds `addr` with the default [`BrokerConfig`].
    pub async fn bind(addr: SocketAddr, auth: Arc<dyn Authorizer>) -> io::Result<Broker> {
        Self::bind_with_config(addr, auth, BrokerConfig::default()).await
    }

    /// Binds `addr`.
    pub async fn bind_with_config(
        addr: SocketAddr,
        auth: Arc<dyn Authorizer>,
        config: BrokerConfig,
    ) -> io::Result<Broker> {
        Self::from_listener(TcpListener::bind(addr).await?, auth, config)
    }

    /// Uses an already bound listener.
    pub fn from_listener(listener: TcpListener, auth: Arc<dyn Authorizer>, config: BrokerConfig) -> io::Result<Broker> {
        let local_addr = listener.local_addr()?;
        Ok(Self::with_incoming(Incoming::Tcp(listener), local_addr, auth, config))
    }

    /// Serves MQTT over TLS (MQTT's port 8883 convention, here the cluster's 10003): clients that
    /// do not complete a handshake never reach the broker; the listener's callback hears of them.
    pub fn from_tls_listener(listener: TlsListener, auth: Arc<dyn Authorizer>, config: BrokerConfig) -> Broker {
        let local_addr = listener.local_addr();
        Self::with_incoming(Incoming::Tls(listener), local_addr, auth, config)
    }

    fn with_incoming(
        listener: Incoming,
        local_addr: SocketAddr,
        auth: Arc<dyn Authorizer>,
        config: BrokerConfig,
    ) -> Broker {
        let shared = Shared {
            auth_permits: Arc::new(Semaphore::new(config.auth_concurrency.max(1))),
            config,
            auth,
            router: Router::new(),
        };
        Broker { listener, handle: BrokerHandle { shared: Arc::new(shared), local_addr } }
    }

    /// The address the broker listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.handle.local_addr
    }

    /// A handle for stats, local clients and disconnects that outlives `run(self)`.
    pub fn handle(&self) -> BrokerHandle {
        self.handle.clone()
    }

    /// Creates an in-process client with full rights; see [`LocalClient`].
    pub fn local_client(&self, name: &str) -> LocalClient {
        self.handle.local_client(name)
    }

    /// A snapshot of the broker's counters.
    pub fn stats(&self) -> Stats {
        self.handle.stats()
    }

    /// Accepts connections until `shutdown` completes, then closes every connection (waiting up to
    /// 5 s for them) and ends every local client's stream. Dropping this future shuts down too.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Broker { mut listener, handle } = self;
        let shared = handle.shared;
        let _shutdown_on_drop = ShutdownOnDrop(shared.clone());
        let mut shutdown = pin!(shutdown);
        let mut tasks = JoinSet::new();
        let mut refused: u64 = 0;
        info!(addr = %handle.local_addr, "MQTT broker listening");
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let open = shared.router.stats.connections.load(Ordering::Relaxed);
                        if open >= shared.config.max_connections as u64 {
                            refused += 1;
                            if refused.is_power_of_two() {
                                warn!(%peer, open, refused, "connection limit reached, closing new connections");
                            }
                            continue;
                        }
                        let open = OpenConnection::new(shared.clone());
                        match stream {
                            Accepted::Tcp(stream) => tasks.spawn(connection::serve(stream, peer, open)),
                            Accepted::Tls(stream) => tasks.spawn(connection::serve(*stream, peer, open)),
                        };
                    }
                    Err(e) => {
                        // Typically EMFILE; back off instead of spinning.
                        warn!(error = %e, "accepting an MQTT connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = done {
                        if e.is_panic() {
                            error!("an MQTT connection task panicked");
                        }
                    }
                }
            }
        }
        info!(addr = %handle.local_addr, "MQTT broker shutting down");
        drop(listener);
        shared.router.shutdown();
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            warn!(remaining = tasks.len(), "MQTT connections did not close in time, aborting them");
            tasks.abort_all();
        }
    }
}

enum Accepted {
    Tcp(TcpStream),
    Tls(Box<oak_tls::tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Incoming {
    async fn accept(&mut self) -> io::Result<(Accepted, SocketAddr)> {
        match self {
            Incoming::Tcp(tcp) => {
                let (stream, peer) = tcp.accept().await?;
                // Small MQTT packets must not wait for Nagle; batching happens in our write buffer.
                let _ = stream.set_nodelay(true);
                Ok((Accepted::Tcp(stream), peer))
            }
            // Handshakes fail inside the listener (reported there), never here.
            Incoming::Tls(tls) => {
                let (stream, peer) = tls.accept().await;
                Ok((Accepted::Tls(Box::new(stream)), peer))
            }
        }
    }
}

struct ShutdownOnDrop(Arc<Shared>);

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        self.0.router.shutdown();
    }
}

impl BrokerHandle {
    /// See [`Broker::local_addr`].
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// See [`Broker::local_client`].
    pub fn local_client(&self, name: &str) -> LocalClient {
        LocalClient::new(self.shared.clone(), name)
    }

    /// Publishes with full rights without subscribing to anything.
    pub fn publisher(&self) -> LocalPublisher {
        LocalPublisher { shared: self.shared.clone() }
    }

    /// See [`Broker::stats`].
    pub fn stats(&self) -> Stats {
        self.shared.router.stats.snapshot()
    }

    /// Every node with a connection open now, with when it last heard from that node (any
    /// packet, keep-alive pings included). A node's connection is closed after one and a half
    /// keep-alive periods of silence.
    pub fn nodes_heard(&self) -> Vec<(String, std::time::Instant)> {
        self.shared.router.nodes_heard()
    }

    /// Closes every connection authenticated as node `node_id` (e.g. after it was deregistered);
    /// returns how many there were. The node may reconnect if its credentials are still accepted,
    /// and then resumes its persistent session (kept sessions are forgotten after an hour).
    pub fn disconnect_node(&self, node_id: &str) -> usize {
        self.shared.router.kick_node(node_id)
    }

    /// Whether the broker has shut down.
    pub fn is_shut_down(&self) -> bool {
        self.shared.router.is_closed()
    }
}

impl std::fmt::Debug for BrokerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerHandle").field("local_addr", &self.local_addr).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("local_addr", &self.handle.local_addr).finish_non_exhaustive()
    }
}
