//! One task per connection (plain TCP or TLS: any byte stream): CONNECT and authentication, then
//! a single loop that reads packets (enforcing the topic rules), writes queued deliveries in
//! batches, and watches the keep-alive.
//!
//! Anything unexpected — garbage, an unknown packet, QoS 2, a second CONNECT, an oversized packet —
//! closes this connection only; no input can make the task panic or touch other connections.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, Packet, PubAck, Publish, SubAck, Subscribe, SubscribeReasonCode, UnsubAck,
};
use rumqttc::mqttbytes::{valid_filter, valid_topic, Error as CodecError, Protocol, QoS};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, timeout, Instant};
use tracing::{debug, info, warn};

use crate::acl::{AuthError, Principal};
use crate::broker::Shared;
use crate::router::{Delivery, Heard, KickReason, KillSwitch, RemoteClient};
use crate::stats::Counters;
use crate::subscriptions::SubscriberId;
use crate::Message;

/// Most bytes one read takes from the stream, into a buffer on the poll's stack ([`read_some`]).
const READ_CHUNK: usize = 8 * 1024;
/// With this much unsent data we stop reading packets and taking deliveries until it drains.
const WRITE_HIGH_WATER: usize = 256 * 1024;
/// How long a closing connection may take to send its last packets (e.g. a refusing CONNACK).
const FINAL_FLUSH: Duration = Duration::from_secs(1);

/// Counts an accepted TCP connection for as long as it lives.
pub(crate) struct OpenConnection(Arc<Shared>);

impl OpenConnection {
    pub fn new(shared: Arc<Shared>) -> Self {
        Counters::bump(&shared.router.stats.connections_total);
        Counters::bump(&shared.router.stats.connections);
        OpenConnection(shared)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.router.stats.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a connection ends.
enum Close {
    /// The client sent DISCONNECT.
    Disconnect,
    /// The client closed the socket.
    PeerClosed,
    Io(io::Error),
    Timeout(&'static str),
    /// Unsent data made no progress for `write_timeout`.
    Stalled,
    /// Malformed or unexpected input.
    Protocol(String),
    /// CONNECT refused; the CONNACK saying why is queued.
    Refused(String),
    /// PUBLISH outside the client's topic space (already logged).
    Unauthorized,
    Kicked(KickReason),
}

/// A connection's byte stream: what the accept loop hands over (TCP, or TLS over TCP).
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for S {}

/// The task serving one connection. The stream is split before the task starts, so that it
/// lives only in the halves' shared state and not also in the task's future: a TLS stream is
/// over a kilobyte, and a cluster's broker serves a thousand connections.
pub(crate) fn serve<S: Stream>(stream: S, peer: SocketAddr, open: OpenConnection) -> impl Future<Output = ()> {
    // Reading and writing proceed independently (a TLS stream cannot be split by reference).
    let (reader, writer) = tokio::io::split(stream);
    let conn = Connection {
        reader,
        writer,
        peer,
        shared: open.0.clone(),
        rbuf: BytesMut::new(),
        wbuf: BytesMut::new(),
        label: None,
    };
    serve_split(conn, open)
}

async fn serve_split<S: Stream>(mut conn: Connection<S>, open: OpenConnection) {
    let close = conn.run().await;
    conn.finish(close).await;
    drop(open);
}

struct Connection<S> {
    reader: ReadHalf<S>,
    writer: WriteHalf<S>,
    peer: SocketAddr,
    shared: Arc<Shared>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Who is on the other side, once authenticated.
    label: Option<Arc<str>>,
}

/// Protocol state of an authenticated connection.
struct Session {
    shared: Arc<Shared>,
    registration: Registration,
    principal: Principal,
    label: Arc<str>,
    keep_alive: Duration,
    rx: mpsc::Receiver<Delivery>,
    kill: Arc<KillSwitch>,
    heard: Arc<Heard>,
    next_pkid: u16,
    /// Reused for routing and for encoding outgoing PUBLISHes, so that the hot path doesn't allocate.
    scratch: Vec<(SubscriberId, QoS)>,
    out: Publish,
}

/// Unregisters the connection from the router when the session ends, however it ends.
struct Registration {
    shared: Arc<Shared>,
    id: SubscriberId,
    label: Arc<str>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(dropped) = self.shared.router.unregister(self.id) {
            if dropped > 0 {
                info!(client = %self.label, dropped, "messages were dropped for this slow client");
            }
        }
    }
}

fn put(wbuf: &mut BytesMut, packet: Packet) {
    // Acks and CONNACKs are a few bytes; encoding them cannot fail. Should it ever, no half packet
    // may stay in the buffer.
    let mark = wbuf.len();
    if let Err(e) = packet.write(wbuf, usize::MAX) {
        wbuf.truncate(mark);
        warn!(error = %e, "could not encode an MQTT packet");
    }
}

fn refusal_code(e: &AuthError) -> ConnectReturnCode {
    match e {
        AuthError::BadCredentials => ConnectReturnCode::BadUserNamePassword,
        AuthError::NotAuthorized => ConnectReturnCode::NotAuthorized,
        AuthError::BadClientId => ConnectReturnCode::BadClientId,
        AuthError::Unavailable(_) => ConnectReturnCode::ServiceUnavailable,
    }
}

fn packet_name(packet: &Packet) -> &'static str {
    match packet {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect => "DISCONNECT",
    }
}

/// The protocol level of the CONNECT at the start of `buf`, once enough of it has arrived.
fn connect_protocol_level(buf: &[u8]) -> Option<u8> {
    if buf.first()? >> 4 != 1 {
        return None;
    }
    // Fixed header: the type byte, then 1 to 4 remaining-length bytes (high bit: more follow).
    let length_bytes = buf.iter().skip(1).take(4).position(|b| b & 0x80 == 0)? + 1;
    let name_at = 1 + length_bytes;
    let name_len = usize::from(u16::from_be_bytes([*buf.get(name_at)?, *buf.get(name_at + 1)?]));
    buf.get(name_at + 2 + name_len).copied()
}

/// Appends what `reader` has (at most [`READ_CHUNK`] bytes) to `rbuf`; 0 at the end of the
/// stream. The bytes pass through a buffer on the stack of the poll, not in the connection's
/// task, so an idle connection holds no read buffer: a cluster's broker keeps a thousand.
async fn read_some<R: AsyncRead + Unpin>(reader: &mut R, rbuf: &mut BytesMut) -> io::Result<usize> {
    std::future::poll_fn(|cx| {
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = ReadBuf::uninit(&mut chunk);
        ready!(Pin::new(&mut *reader).poll_read(cx, &mut buf))?;
        rbuf.extend_from_slice(buf.filled());
        Poll::Ready(Ok(buf.filled().len()))
    })
    .await
}

/// Releases an empty buffer: an idle connection keeps no allocation for its reads or writes
/// (taking a new one for the next packet costs less than a thousand connections holding theirs).
fn release_if_empty(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > 0 {
        *buf = BytesMut::new();
    }
}

impl<S: Stream> Connection<S> {
    async fn run(&mut self) -> Close {
        let connect = match timeout(self.shared.config.connect_timeout, self.read_connect()).await {
            Ok(Ok(connect)) => connect,
            Ok(Err(close)) => return close,
            Err(_) => return Close::Timeout("no CONNECT received in time"),
        };
        let mut session = match self.accept(connect).await {
            Ok(session) => session,
            Err(close) => return close,
        };
        self.label = Some(session.label.clone());
        self.serve_session(&mut session).await
    }

    async fn read_connect(&mut self) -> Result<Connect, Close> {
        let max = self.shared.config.effective_max_packet_size();
        loop {
            // An MQTT 3.1 or 5 CONNECT does not parse as 3.1.1, so its version is checked first:
            // such clients get the "unacceptable protocol version" CONNACK they understand.
            if connect_protocol_level(&self.rbuf).is_some_and(|level| level != 4) {
                put(&mut self.wbuf, Packet::ConnAck(ConnAck::new(ConnectReturnCode::RefusedProtocolVersion, false)));
                return Err(Close::Refused("unsupported protocol version (only MQTT 3.1.1 is)".into()));
            }
            match Packet::read(&mut self.rbuf, max) {
                Ok(Packet::Connect(connect)) => return Ok(connect),
                Ok(other) => return Err(Close::Protocol(format!("{} before CONNECT", packet_name(&other)))),
                Err(CodecError::InsufficientBytes(n)) => self.rbuf.reserve(n),
                Err(CodecError::InvalidProtocol | CodecError::InvalidProtocolLevel(_)) => {
                    put(
                        &mut self.wbuf,
                        Packet::ConnAck(ConnAck::new(ConnectReturnCode::RefusedProtocolVersion, false)),
                    );
                    return Err(Close::Refused("unsupported protocol (only MQTT 3.1.1 is)".into()));
                }
                Err(e) => return Err(Close::Protocol(format!("malformed CONNECT: {e}"))),
            }
            match read_some(&mut self.reader, &mut self.rbuf).await {
                Ok(0) => return Err(Close::PeerClosed),
                Ok(_) => {}
                Err(e) => return Err(Close::Io(e)),
            }
        }
    }

    /// Authenticates and registers the client; queues the CONNACK either way.
    async fn accept(&mut self, connect: Connect) -> Result<Session, Close> {
        let refuse = |wbuf: &mut BytesMut, code: ConnectReturnCode, why: String| {
            put(wbuf, Packet::ConnAck(ConnAck::new(code, false)));
            Close::Refused(why)
        };
        if connect.protocol != Protocol::V4 {
            let code = ConnectReturnCode::RefusedProtocolVersion;
            return Err(refuse(&mut self.wbuf, code, "MQTT 5 is not supported".into()));
        }
        if connect.client_id.is_empty() && !connect.clean_session {
            let code = ConnectReturnCode::BadClientId;
            return Err(refuse(&mut self.wbuf, code, "empty client id without clean session".into()));
        }

        let (username, password) = match &connect.login {
            Some(login) => (
                Some(login.username.clone()).filter(|u| !u.is_empty()),
                Some(login.password.clone().into_bytes()).filter(|p| !p.is_empty()),
            ),
            None => (None, None),
        };
        let principal = match self.authenticate(&connect.client_id, username.clone(), password).await {
            Ok(principal) if principal.is_well_formed() => principal,
            Ok(principal) => {
                Counters::bump(&self.shared.router.stats.auth_failures);
                warn!(peer = %self.peer, client_id = %connect.client_id, principal = ?principal,
                    "authorizer returned a node id that is not a single topic level; refusing");
                let code = ConnectReturnCode::NotAuthorized;
                return Err(refuse(&mut self.wbuf, code, "malformed principal".into()));
            }
            Err(e) => {
                Counters::bump(&self.shared.router.stats.auth_failures);
                warn!(peer = %self.peer, client_id = %connect.client_id, username = ?username, error = %e,
                    "MQTT CONNECT refused");
                return Err(refuse(&mut self.wbuf, refusal_code(&e), e.to_string()));
            }
        };

        let client_id = if connect.client_id.is_empty() { format!("auto-{}", self.peer) } else { connect.client_id };
        let label: Arc<str> = format!("{principal} (client id {client_id:?}, {})", self.peer).into();
        let (tx, rx) = mpsc::channel(self.shared.config.outgoing_queue.max(1));
        let kill = Arc::new(KillSwitch::default());
        let heard = Arc::new(Heard::default());
        heard.now(&self.shared.router);
        let registered = self.shared.router.register_remote(RemoteClient {
            principal: &principal,
            client_id: &client_id,
            clean_session: connect.clean_session,
            label: label.clone(),
            sink: tx,
            kill: kill.clone(),
            heard: heard.clone(),
        });
        let Some((id, session_present)) = registered else {
            let code = ConnectReturnCode::ServiceUnavailable;
            return Err(refuse(&mut self.wbuf, code, "broker shutting down".into()));
        };
        // Queued before any delivery (kept ones of a resumed session wait in `rx`).
        put(&mut self.wbuf, Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, session_present)));
        debug!(client = %label, keep_alive = connect.keep_alive, "MQTT client connected");
        Ok(Session {
            shared: self.shared.clone(),
            registration: Registration { shared: self.shared.clone(), id, label: label.clone() },
            principal,
            label,
            keep_alive: Duration::from_secs(u64::from(connect.keep_alive)),
            rx,
            kill,
            heard,
            next_pkid: 0,
            scratch: Vec::new(),
            out: Publish::from_bytes(String::new(), QoS::AtMostOnce, Bytes::new()),
        })
    }

    /// Runs the authorizer on the blocking pool, at most `auth_concurrency` at a time.
    async fn authenticate(
        &self,
        client_id: &str,
        username: Option<String>,
        password: Option<Vec<u8>>,
    ) -> Result<Principal, AuthError> {
        // The semaphore is never closed, so this always yields a permit.
        let permit = self.shared.auth_permits.clone().acquire_owned().await.ok();
        let auth = self.shared.auth.clone();
        let client_id = client_id.to_owned();
        let result = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            auth.authenticate(&client_id, username.as_deref(), password.as_deref())
        })
        .await;
        result.unwrap_or_else(|e| Err(AuthError::Unavailable(format!("authorizer failed: {e}"))))
    }

    async fn serve_session(&mut self, session: &mut Session) -> Close {
        let Connection { reader, writer, rbuf, wbuf, shared, .. } = self;
        let write_timeout = shared.config.write_timeout;
        // MQTT 3.1.1 §3.1.2.10: one and a half times the keep-alive; 0 disables it.
        let grace = (!session.keep_alive.is_zero()).then(|| session.keep_alive * 3 / 2);

        // Packets that arrived together with the CONNECT.
        if let Err(close) = session.handle_input(rbuf, wbuf) {
            return close;
        }

        let mut last_read = Instant::now();
        // When the write buffer was last empty or last made progress.
        let mut write_progress = last_read;
        let next_check = |now: Instant, last_read: Instant, write_progress: Instant, pending: bool| {
            let write_check = if pending { write_progress + write_timeout } else { now + write_timeout };
            match grace {
                Some(grace) => write_check.min(last_read + grace),
                None => write_check,
            }
        };
        let timer = sleep_until(next_check(last_read, last_read, write_progress, !wbuf.is_empty()));
        tokio::pin!(timer);

        loop {
            if wbuf.is_empty() {
                write_progress = Instant::now();
                release_if_empty(wbuf);
            }
            release_if_empty(rbuf);
            if let Some(reason) = session.kill.reason() {
                return Close::Kicked(reason);
            }
            let room = wbuf.len() < WRITE_HIGH_WATER;
            tokio::select! {
                reason = session.kill.tripped() => return Close::Kicked(reason),
                written = writer.write_buf(wbuf), if !wbuf.is_empty() => match written {
                    Ok(0) => return Close::PeerClosed,
                    Ok(_) => write_progress = Instant::now(),
                    Err(e) => return Close::Io(e),
                },
                read = read_some(reader, rbuf), if room => match read {
                    Ok(0) => return Close::PeerClosed,
                    Ok(_) => {
                        last_read = Instant::now();
                        session.heard.now(&shared.router);
                        if let Err(close) = session.handle_input(rbuf, wbuf) {
                            return close;
                        }
                    }
                    Err(e) => return Close::Io(e),
                },
                delivery = session.rx.recv(), if room => {
                    // The router dropped our queue: taken over or shut down (the kill switch says which).
                    let Some(delivery) = delivery else {
                        return Close::Kicked(session.kill.reason().unwrap_or(KickReason::Shutdown));
                    };
                    session.encode(delivery, wbuf);
                    // Batch whatever else is queued into the same write.
                    while wbuf.len() < WRITE_HIGH_WATER {
                        match session.rx.try_recv() {
                            Ok(delivery) => session.encode(delivery, wbuf),
                            Err(_) => break,
                        }
                    }
                }
                () = &mut timer => {
                    let now = Instant::now();
                    if grace.is_some_and(|grace| now >= last_read + grace) {
                        return Close::Timeout("keep-alive expired");
                    }
                    if !wbuf.is_empty() && now >= write_progress + write_timeout {
                        return Close::Stalled;
                    }
                    timer.as_mut().reset(next_check(now, last_read, write_progress, !wbuf.is_empty()));
                }
            }
        }
    }

    /// Logs why the connection ends and sends what is still buffered (e.g. a refusing CONNACK).
    async fn finish(&mut self, close: Close) {
        let who: &str = self.label.as_deref().unwrap_or("unauthenticated client");
        let peer = self.peer;
        let flush = match &close {
            Close::Disconnect => {
                debug!(client = %who, %peer, "MQTT client disconnected");
                true
            }
            Close::PeerClosed => {
                debug!(client = %who, %peer, "MQTT connection closed by peer");
                false
            }
            Close::Io(e) => {
                debug!(client = %who, %peer, error = %e, "MQTT connection failed");
                false
            }
            Close::Timeout(why) => {
                info!(client = %who, %peer, "closing MQTT connection: {why}");
                true
            }
            Close::Stalled => {
                info!(client = %who, %peer, "closing MQTT connection: the peer stopped reading");
                false
            }
            Close::Protocol(why) => {
                info!(client = %who, %peer, "closing MQTT connection: protocol violation: {why}");
                true
            }
            Close::Refused(why) => {
                debug!(client = %who, %peer, "MQTT connection refused: {why}");
                true
            }
            Close::Unauthorized => true,
            Close::Kicked(reason) => {
                info!(client = %who, %peer, "closing MQTT connection: {}", reason.describe());
                *reason != KickReason::SlowConsumer
            }
        };
        if flush && !self.wbuf.is_empty() {
            let _ = timeout(FINAL_FLUSH, self.writer.write_all_buf(&mut self.wbuf)).await;
        }
        let _ = timeout(FINAL_FLUSH, self.writer.shutdown()).await;
    }
}

impl Session {
    /// Handles every complete packet in `rbuf`, queueing responses in `wbuf`.
    fn handle_input(&mut self, rbuf: &mut BytesMut, wbuf: &mut BytesMut) -> Result<(), Close> {
        let max = self.shared.config.effective_max_packet_size();
        loop {
            let packet = match Packet::read(rbuf, max) {
                Ok(packet) => packet,
                Err(CodecError::InsufficientBytes(n)) => {
                    rbuf.reserve(n);
                    return Ok(());
                }
                Err(e) => return Err(Close::Protocol(format!("malformed packet: {e}"))),
            };
            self.handle_packet(packet, wbuf)?;
        }
    }

    fn handle_packet(&mut self, packet: Packet, wbuf: &mut BytesMut) -> Result<(), Close> {
        match packet {
            Packet::Publish(publish) => self.on_publish(publish, wbuf),
            // Outgoing QoS 1 is not redelivered, so there is nothing to release.
            Packet::PubAck(_) => Ok(()),
            Packet::Subscribe(subscribe) => self.on_subscribe(subscribe, wbuf),
            Packet::Unsubscribe(unsubscribe) => {
                for filter in &unsubscribe.topics {
                    self.shared.router.unsubscribe(self.registration.id, filter);
                }
                put(wbuf, Packet::UnsubAck(UnsubAck::new(unsubscribe.pkid)));
                Ok(())
            }
            Packet::PingReq => {
                put(wbuf, Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect => Err(Close::Disconnect),
            Packet::PubRec(_) | Packet::PubRel(_) | Packet::PubComp(_) => {
                Err(Close::Protocol("QoS 2 is not supported".into()))
            }
            other => Err(Close::Protocol(format!("unexpected {} from a client", packet_name(&other)))),
        }
    }

    fn on_publish(&mut self, publish: Publish, wbuf: &mut BytesMut) -> Result<(), Close> {
        if publish.qos == QoS::ExactlyOnce {
            return Err(Close::Protocol(format!("QoS 2 PUBLISH to {:?} is not supported", publish.topic)));
        }
        if publish.topic.is_empty() || !valid_topic(&publish.topic) {
            return Err(Close::Protocol(format!("invalid topic name {:?}", publish.topic)));
        }
        if !self.principal.may_publish(&publish.topic) {
            Counters::bump(&self.shared.router.stats.acl_denials);
            warn!(node = %self.principal.name(), topic = %publish.topic, client = %self.label,
                "unauthorized PUBLISH: message dropped, closing the connection");
            return Err(Close::Unauthorized);
        }
        let (qos, pkid) = (publish.qos, publish.pkid);
        let msg = Arc::new(Message { topic: publish.topic, payload: publish.payload });
        self.shared.router.route(msg, qos, &mut self.scratch);
        if qos == QoS::AtLeastOnce {
            put(wbuf, Packet::PubAck(PubAck::new(pkid)));
        }
        Ok(())
    }

    fn on_subscribe(&mut self, subscribe: Subscribe, wbuf: &mut BytesMut) -> Result<(), Close> {
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        for filter in &subscribe.filters {
            let path = filter.path.as_str();
            if !valid_filter(path) {
                debug!(client = %self.label, filter = %path, "invalid topic filter refused");
                codes.push(SubscribeReasonCode::Failure);
            } else if !self.principal.may_subscribe(path) {
                Counters::bump(&self.shared.router.stats.acl_denials);
                warn!(node = %self.principal.name(), filter = %path, client = %self.label,
                    "unauthorized SUBSCRIBE refused");
                codes.push(SubscribeReasonCode::Failure);
            } else {
                // QoS 2 is granted as QoS 1, which MQTT allows.
                let qos = if filter.qos == QoS::AtMostOnce { QoS::AtMostOnce } else { QoS::AtLeastOnce };
                if !self.shared.router.subscribe(self.registration.id, path, qos) {
                    return Err(Close::Kicked(self.kill.reason().unwrap_or(KickReason::Shutdown)));
                }
                codes.push(SubscribeReasonCode::Success(qos));
            }
        }
        put(wbuf, Packet::SubAck(SubAck::new(subscribe.pkid, codes)));
        Ok(())
    }

    /// Encodes a delivery as a PUBLISH, reusing one `Publish` value (and its topic buffer).
    fn encode(&mut self, delivery: Delivery, wbuf: &mut BytesMut) {
        let out = &mut self.out;
        out.topic.clear();
        out.topic.push_str(&delivery.msg.topic);
        out.payload = delivery.msg.payload.clone();
        out.qos = delivery.qos;
        out.pkid = match delivery.qos {
            QoS::AtMostOnce => 0,
            _ => {
                self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
                self.next_pkid
            }
        };
        // Sizes were bounded when the message entered the broker, so this cannot fail; should it
        // ever, no half packet may stay in the buffer.
        let mark = wbuf.len();
        if let Err(e) = out.write(wbuf) {
            wbuf.truncate(mark);
            warn!(client = %self.label, topic = %out.topic, error = %e, "could not encode a PUBLISH");
        }
        out.payload = Bytes::new();
    }
}

#[cfg(test)]
mod tests {
    use super::{connect_protocol_level, read_some, release_if_empty, BytesMut, READ_CHUNK};

    #[test]
    fn protocol_level_is_found_once_it_arrived() {
        let v311 = [0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 0];
        let v31 = [0x10, 14, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 2, 0, 60, 0, 0];
        let long_length = [0x10, 0x80, 0x01, 0, 4, b'M', b'Q', b'T', b'T', 5];
        assert_eq!(connect_protocol_level(&v311), Some(4));
        assert_eq!(connect_protocol_level(&v311[..8]), None);
        assert_eq!(connect_protocol_level(&v31), Some(3));
        assert_eq!(connect_protocol_level(&long_length), Some(5));
        assert_eq!(connect_protocol_level(&[0x30, 0, 0, 4, b'M', b'Q', b'T', b'T', 5]), None);
        assert_eq!(connect_protocol_level(&[0x10, 0xff, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(connect_protocol_level(&[]), None);
    }

    /// Reads append to what is already buffered, in chunks, up to the end of the stream; an
    /// emptied buffer gives its allocation back.
    #[tokio::test]
    async fn reads_append_through_the_stack_and_empty_buffers_are_released() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let sent: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
        tokio::io::AsyncWriteExt::write_all(&mut client, &sent).await.unwrap();
        drop(client);
        let mut rbuf = BytesMut::from(&b"xy"[..]);
        loop {
            let n = read_some(&mut server, &mut rbuf).await.unwrap();
            assert!(n <= READ_CHUNK);
            if n == 0 {
                break;
            }
        }
        assert_eq!(&rbuf[..2], b"xy");
        assert_eq!(&rbuf[2..], &sent[..]);
        release_if_empty(&mut rbuf);
        assert!(rbuf.capacity() > 0, "a buffer holding bytes is kept");
        rbuf.clear();
        release_if_empty(&mut rbuf);
        assert_eq!(rbuf.capacity(), 0);
    }
}
