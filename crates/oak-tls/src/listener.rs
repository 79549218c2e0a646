//! A TLS listener whose handshakes run in their own tasks, so one slow or garbage-speaking
//! client never holds up the accept loop, and whose failures are reported, not fatal.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client may take to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in flight at once; beyond that new connections are closed at once.
const MAX_PENDING: usize = 256;

/// Called with the peer and the reason for every connection refused during the handshake.
pub type OnRefused = Arc<dyn Fn(SocketAddr, &str) + Send + Sync>;

/// A short, stable name for a refusal reason passed to [`OnRefused`], for metric labels (the
/// reason itself carries the peer's details and would make one series per error text).
pub fn refusal_label(reason: &str) -> &'static str {
    if reason == OVERLOADED {
        "overloaded"
    } else if reason == TIMED_OUT {
        "timeout"
    } else if reason.contains("InvalidContentType") || reason.contains("corrupt message") {
        // Plaintext (HTTP, MQTT) or garbage where a TLS record was expected.
        "not_tls"
    } else if reason.contains("received fatal alert") {
        // The client gave up, typically because it does not trust this server's certificate.
        "client_alert"
    } else if reason.contains("eof") || reason.contains("close_notify") || reason.contains("reset") {
        "closed"
    } else if reason.contains("certificate") {
        "bad_certificate"
    } else {
        "handshake_failed"
    }
}

const OVERLOADED: &str = "too many handshakes in progress";
const TIMED_OUT: &str = "TLS handshake timed out";

pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>, on_refused: OnRefused) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(accept_loop(tcp, TlsAcceptor::from(config), on_refused, tx));
        Ok(TlsListener { rx, local, task })
    }

    /// The next connection whose handshake succeeded.
    pub async fn accept(&mut self) -> (TlsStream<TcpStream>, SocketAddr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept loop only ends when the listener is dropped.
            None => std::future::pending().await,
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    on_refused: OnRefused,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING));
    loop {
        let (stream, peer) = match tcp.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            on_refused(peer, OVERLOADED);
            continue;
        };
        let (acceptor, on_refused, tx) = (acceptor.clone(), on_refused.clone(), tx.clone());
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    drop(permit);
                    let _ = tx.send((tls, peer)).await;
                }
                Ok(Err(e)) => on_refused(peer, &format!("TLS handshake failed: {e}")),
                Err(_) => on_refused(peer, TIMED_OUT),
            }
        });
    }
}

#[cfg(feature = "axum")]
impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        TlsListener::accept(self).await
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
