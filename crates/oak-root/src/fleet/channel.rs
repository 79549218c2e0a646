//! The cluster channel server (default port 50052), over TLS: the root presents its channel
//! certificate (the CA in its chain is what join tokens pin); a member presents its client
//! certificate, a newcomer none. Then `Hello` (with a join token and a certificate request on a
//! first join) and length-prefixed JSON frames (`oak_api::channel`). Every refusal is logged
//! with the peer and counted by reason.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use oak_api::channel::{self, ClusterMsg, RootMsg, MAX_FRAME, MAX_HELLO_FRAME, PROTOCOL_VERSION};
use oak_tls::{Fingerprint, TlsListener};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::links::{Credential, Refusal};
use super::Fleet;

/// How long a new connection may take to say who it is.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

type Tls = oak_tls::tokio_rustls::server::TlsStream<TcpStream>;

/// Accepts cluster connections until `shutdown` resolves.
pub async fn serve_channel(listener: TcpListener, fleet: Arc<Fleet>, shutdown: impl Future<Output = ()>) {
    let refused = {
        let fleet = fleet.clone();
        Arc::new(move |peer: SocketAddr, why: &str| fleet.trust().refused(peer, "tls_handshake", why))
    };
    let mut listener = match TlsListener::new(listener, fleet.trust().server.clone(), refused) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot serve the cluster channel");
            return;
        }
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            (stream, peer) = listener.accept() => {
                let fleet = fleet.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(fleet, stream, peer).await {
                        tracing::info!(%peer, error = %e, "cluster channel closed");
                    }
                });
            }
        }
    }
}

async fn connection(fleet: Arc<Fleet>, stream: Tls, peer: SocketAddr) -> Result<(), String> {
    let certificate = oak_tls::peer_certificate(stream.get_ref().1).map(|c| Fingerprint::of(&c));
    let (rd, mut wr) = tokio::io::split(stream);
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let bad_hello = |fleet: &Fleet, why: String| {
        fleet.trust().refused(peer, "bad_hello", &why);
        why
    };
    // Before the cluster is authenticated a frame may only be small: a stranger cannot make the
    // root allocate (or wait for) a big one.
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, read_frame::<ClusterMsg>(&mut rd, MAX_HELLO_FRAME)).await {
        Err(_) => return Err(bad_hello(&fleet, "no hello within 10 s".into())),
        Ok(Err(e)) => return Err(bad_hello(&fleet, e)),
        Ok(Ok(m)) => m,
    };
    let ClusterMsg::Hello { protocol, token, csr, cluster_id, cluster_name, cluster_location, metrics_port } = hello
    else {
        return refuse(&fleet, peer, &mut wr, Refusal::new("bad_hello", "the first message must be a hello")).await;
    };
    if protocol != PROTOCOL_VERSION {
        let message = format!("protocol version {protocol} is not supported (this root speaks {PROTOCOL_VERSION})");
        return refuse(&fleet, peer, &mut wr, Refusal::new("bad_hello", message)).await;
    }
    let credential = match certificate {
        Some(fingerprint) => Credential::Certificate(fingerprint),
        None => Credential::Token { token: &token, csr: &csr },
    };
    let joined = match fleet.join(credential, &cluster_id, &cluster_name, &cluster_location) {
        Ok(j) => j,
        Err(refusal) => return refuse(&fleet, peer, &mut wr, refusal).await,
    };
    let id = joined.cluster_id.clone();
    fleet.heard(&id);
    fleet.cluster_metrics_at(&id, peer.ip(), metrics_port);
    tracing::info!(cluster = %id, name = %cluster_name, %peer, "cluster joined");
    let desired = match fleet.desired_for(&id) {
        Ok(d) => d,
        Err(e) => {
            return refuse(
                &fleet,
                peer,
                &mut wr,
                Refusal::new("store", format!("the root cannot read its database: {e}")),
            )
            .await
        }
    };
    let mut rx = joined.rx;
    let overflow = joined.overflow;
    let mut first = vec![RootMsg::Welcome { cluster_id: id.clone(), certificate: joined.certificate }];
    first.extend(RootMsg::full_deploy(desired));
    let writer = tokio::spawn(async move {
        tokio::select! {
            _ = write_loop(&mut wr, first, &mut rx) => {}
            // The queue overflowed: closing makes the cluster re-dial and resync.
            _ = overflow.notified() => { let _ = wr.shutdown().await; }
        }
    });

    let result = read_loop(&fleet, &id, joined.conn, &mut rd).await;
    fleet.leave(&id, joined.conn);
    writer.abort();
    result
}

/// Tells the cluster why, logs and counts the refusal, and closes.
async fn refuse(
    fleet: &Fleet,
    peer: SocketAddr,
    wr: &mut (impl AsyncWriteExt + Unpin),
    refusal: Refusal,
) -> Result<(), String> {
    fleet.trust().refused(peer, refusal.reason, &refusal.message);
    let _ = wr.write_all(&channel::encode(&RootMsg::Refused { message: refusal.message.clone() })).await;
    let _ = wr.shutdown().await;
    Err(format!("refused: {}", refusal.message))
}

async fn read_loop(fleet: &Fleet, id: &str, conn: u64, rd: &mut (impl AsyncRead + Unpin)) -> Result<(), String> {
    loop {
        let msg = match tokio::time::timeout(fleet.config.idle_timeout, read_frame::<ClusterMsg>(rd, MAX_FRAME)).await {
            Err(_) => return Err(format!("cluster silent for {:?}", fleet.config.idle_timeout)),
            Ok(m) => m?,
        };
        fleet.heard(id);
        match msg {
            ClusterMsg::Report { resources } => fleet.on_report(id, conn, resources),
            ClusterMsg::Instances { updates, .. } => fleet.on_instances(id, conn, updates).await,
            ClusterMsg::Logs { request_id, data, cursor, error } => fleet.on_logs(id, request_id, data, cursor, error),
            ClusterMsg::SubnetRequest { request_id, node_id } => {
                let (subnet, error) = match fleet.subnet_for(id, &node_id) {
                    Ok(s) => (s, String::new()),
                    Err(e) => (String::new(), e),
                };
                fleet.send_to(id, Some(conn), RootMsg::Subnet { request_id, node_id, subnet, error });
            }
            ClusterMsg::Nodes { node_ids } => fleet.keep_subnets(id, &node_ids),
            ClusterMsg::TableQuery { request_id, job_name, ip } => {
                fleet.on_table_query(id, conn, request_id, &job_name, &ip)
            }
            ClusterMsg::Uninterest { job_name } => fleet.on_uninterest(id, &job_name),
            ClusterMsg::PeerQuery { request_id, public_key } => fleet.on_peer_query(id, conn, request_id, &public_key),
            ClusterMsg::Workers { full, workers, removed, last } => {
                fleet.on_workers(id, conn, full, workers, removed, last)
            }
            ClusterMsg::Ping => {}
            ClusterMsg::Hello { .. } => return Err("a second hello on one connection".into()),
        }
    }
}

/// Most instances one merged `Deploy` frame carries (a job spec is at most a 64 KiB body, so
/// such a frame stays well under [`MAX_FRAME`]).
const DEPLOY_BATCH: usize = 100;

/// Writes queued messages, coalescing whatever is queued into one write, and the incremental
/// `Deploy`s queued back to back into one frame (one per cluster for a burst of requests); a
/// `Ping` after [`channel::KEEPALIVE`] without any, so the cluster can tell a quiet root from a
/// cut link.
async fn write_loop(wr: &mut (impl AsyncWriteExt + Unpin), first: Vec<RootMsg>, rx: &mut mpsc::Receiver<RootMsg>) {
    let mut out = Outgoing::default();
    for m in first {
        out.push(m);
    }
    loop {
        while out.buf.len() < 1 << 20 {
            match rx.try_recv() {
                Ok(m) => out.push(m),
                Err(_) => break,
            }
        }
        out.flush_deploys();
        if !out.buf.is_empty() {
            if wr.write_all(&out.buf).await.is_err() {
                return;
            }
            out.buf.clear();
        }
        match tokio::time::timeout(channel::KEEPALIVE, rx.recv()).await {
            Err(_) => out.push(RootMsg::Ping),
            Ok(Some(m)) => out.push(m),
            Ok(None) => {
                let _ = wr.shutdown().await;
                return;
            }
        }
    }
}

/// Frames to write, with incremental deploys held back to be merged.
#[derive(Default)]
struct Outgoing {
    buf: Vec<u8>,
    /// Highest sequence number and the instances of the `Deploy { full: false }`s merged so far.
    deploys: Option<(u64, Vec<channel::DeployInstance>)>,
}

impl Outgoing {
    /// Queues `m` in order: an incremental deploy joins those before it (up to
    /// [`DEPLOY_BATCH`] instances), anything else goes after them.
    fn push(&mut self, m: RootMsg) {
        match m {
            RootMsg::Deploy { full: false, seq, instances, .. } => {
                if self.deploys.as_ref().is_some_and(|(_, held)| held.len() + instances.len() > DEPLOY_BATCH) {
                    self.flush_deploys();
                }
                let (last_seq, held) = self.deploys.get_or_insert_with(|| (seq, Vec::new()));
                *last_seq = (*last_seq).max(seq);
                held.extend(instances);
            }
            other => {
                self.flush_deploys();
                append(&mut self.buf, &other);
            }
        }
    }

    fn flush_deploys(&mut self) {
        if let Some((seq, instances)) = self.deploys.take() {
            append(&mut self.buf, &RootMsg::Deploy { full: false, seq, instances, last: true });
        }
    }
}

/// Adds `m`'s frame to `buf`; a message over the frame limit (the cluster would refuse it and
/// the channel break for good) is dropped and logged instead.
fn append(buf: &mut Vec<u8>, m: &RootMsg) {
    match channel::encode_checked(m) {
        Ok(frame) => buf.extend(frame),
        Err(e) => tracing::error!(error = %e, "dropping a message to a cluster"),
    }
}

/// Reads one frame of at most `limit` bytes; a garbled or oversized frame ends the connection
/// with a message naming it (an oversized one before its body is allocated).
pub async fn read_frame<T: serde::de::DeserializeOwned>(
    rd: &mut (impl AsyncRead + Unpin),
    limit: usize,
) -> Result<T, String> {
    let mut header = [0u8; 4];
    rd.read_exact(&mut header).await.map_err(|e| format!("connection closed: {e}"))?;
    let len = channel::frame_len_within(header, limit)?;
    let mut body = vec![0u8; len];
    rd.read_exact(&mut body).await.map_err(|e| format!("connection closed mid-frame: {e}"))?;
    serde_json::from_slice(&body).map_err(|e| format!("malformed message: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deploy(seq: u64, numbers: &[u32]) -> RootMsg {
        let job: oak_api::node::JobSpec = serde_json::from_value(serde_json::json!({
            "_id": "s", "job_name": "a.b.c.d", "image": "img",
            "microservice_name": "c", "microservice_namespace": "d", "virtualization": "container", "code": "img"
        }))
        .unwrap();
        let instances = numbers
            .iter()
            .map(|&n| channel::DeployInstance { instance_number: n, job: job.clone(), instance_ip: None })
            .collect();
        RootMsg::Deploy { full: false, seq, instances, last: true }
    }

    #[tokio::test]
    async fn deploys_queued_back_to_back_go_in_one_frame_in_order() {
        let (mut ours, theirs) = tokio::io::duplex(1 << 20);
        let (tx, mut rx) = mpsc::channel(512);
        let undeploy = RootMsg::Undeploy { instances: vec![] };
        tx.send(deploy(1, &[0])).await.unwrap();
        tx.send(deploy(2, &[1, 2])).await.unwrap();
        tx.send(undeploy.clone()).await.unwrap();
        tx.send(deploy(3, &[3])).await.unwrap();
        // More than one frame's worth: split at DEPLOY_BATCH instances.
        for n in 4..(5 + DEPLOY_BATCH as u32) {
            tx.send(deploy(u64::from(n), &[n])).await.unwrap();
        }
        let writer = tokio::spawn(async move {
            let (_, mut wr) = tokio::io::split(theirs);
            write_loop(&mut wr, vec![], &mut rx).await;
        });
        let mut frames: Vec<RootMsg> = Vec::new();
        for _ in 0..4 {
            frames.push(read_frame(&mut ours, MAX_FRAME).await.unwrap());
        }
        let numbers = |m: &RootMsg| -> Vec<u32> {
            match m {
                RootMsg::Deploy { full: false, instances, .. } => instances.iter().map(|i| i.instance_number).collect(),
                other => panic!("not an incremental deploy: {other:?}"),
            }
        };
        let seq = |m: &RootMsg| match m {
            RootMsg::Deploy { seq, .. } => *seq,
            _ => 0,
        };
        assert_eq!(numbers(&frames[0]), vec![0, 1, 2]);
        assert_eq!(seq(&frames[0]), 2, "the highest sequence number of the merged ones");
        assert_eq!(frames[1], undeploy, "order kept");
        assert_eq!(numbers(&frames[2]), (3..3 + DEPLOY_BATCH as u32).collect::<Vec<_>>());
        assert_eq!(numbers(&frames[3]), vec![3 + DEPLOY_BATCH as u32, 4 + DEPLOY_BATCH as u32]);
        drop(tx);
        writer.abort();
    }

    #[tokio::test]
    async fn a_quiet_writer_sends_keepalives_and_queued_messages_go_first() {
        let (mut ours, theirs) = tokio::io::duplex(64 * 1024);
        let (tx, mut rx) = mpsc::channel(8);
        tx.send(RootMsg::Undeploy { instances: vec![] }).await.unwrap();
        let writer = tokio::spawn(async move {
            let (_, mut wr) = tokio::io::split(theirs);
            write_loop(&mut wr, vec![], &mut rx).await;
        });
        let started = std::time::Instant::now();
        let first: RootMsg = read_frame(&mut ours, MAX_FRAME).await.unwrap();
        assert_eq!(first, RootMsg::Undeploy { instances: vec![] });
        // Nothing else queued: a keepalive after about a second, and another.
        for _ in 0..2 {
            let ping: RootMsg = read_frame(&mut ours, MAX_FRAME).await.unwrap();
            assert_eq!(ping, RootMsg::Ping);
        }
        assert!(started.elapsed() >= channel::KEEPALIVE, "pings only when idle");
        // The queue closed: the writer ends the stream.
        drop(tx);
        writer.await.unwrap();
        let end = read_frame::<RootMsg>(&mut ours, MAX_FRAME).await;
        assert!(end.is_err());
    }
}
