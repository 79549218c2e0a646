//! The cluster channel server (default port 50052): clusters dial in, say `Hello` with their
//! join token, and then exchange length-prefixed JSON frames (`oak_api::channel`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use oak_api::channel::{self, ClusterMsg, RootMsg, MAX_FRAME, MAX_HELLO_FRAME, PROTOCOL_VERSION};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::Fleet;

/// How long a new connection may take to say who it is.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts cluster connections until `shutdown` resolves.
pub async fn serve_channel(listener: TcpListener, fleet: Arc<Fleet>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let fleet = fleet.clone();
                    tokio::spawn(async move {
                        if let Err(e) = connection(fleet, stream).await {
                            tracing::info!(%peer, error = %e, "cluster channel closed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a cluster connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

async fn connection(fleet: Arc<Fleet>, stream: TcpStream) -> Result<(), String> {
    let _ = stream.set_nodelay(true);
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    // Before the token is checked a frame may only be small: a stranger cannot make the root
    // allocate (or wait for) a big one.
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, read_frame::<ClusterMsg>(&mut rd, MAX_HELLO_FRAME)).await {
        Err(_) => return Err("no hello within 10 s".into()),
        Ok(r) => r?,
    };
    let ClusterMsg::Hello { protocol, token, cluster_id, cluster_name, cluster_location } = hello else {
        return refuse(&mut wr, "the first message must be a hello".into()).await;
    };
    if protocol != PROTOCOL_VERSION {
        return refuse(
            &mut wr,
            format!("protocol version {protocol} is not supported (this root speaks {PROTOCOL_VERSION})"),
        )
        .await;
    }
    let joined = match fleet.join(&token, &cluster_id, &cluster_name, &cluster_location) {
        Ok(j) => j,
        Err(refusal) => {
            tracing::warn!(cluster = %cluster_name, reason = %refusal.0, "cluster refused");
            return refuse(&mut wr, refusal.0).await;
        }
    };
    let id = joined.cluster_id.clone();
    tracing::info!(cluster = %id, name = %cluster_name, "cluster joined");
    let desired = match fleet.desired_for(&id) {
        Ok(d) => d,
        Err(e) => return refuse(&mut wr, format!("the root cannot read its database: {e}")).await,
    };
    let mut rx = joined.rx;
    let overflow = joined.overflow;
    let mut first = vec![RootMsg::Welcome { cluster_id: id.clone() }];
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

async fn refuse(wr: &mut (impl AsyncWriteExt + Unpin), message: String) -> Result<(), String> {
    let _ = wr.write_all(&channel::encode(&RootMsg::Refused { message: message.clone() })).await;
    let _ = wr.shutdown().await;
    Err(format!("refused: {message}"))
}

async fn read_loop(fleet: &Fleet, id: &str, conn: u64, rd: &mut (impl AsyncRead + Unpin)) -> Result<(), String> {
    loop {
        let msg = match tokio::time::timeout(fleet.config.idle_timeout, read_frame::<ClusterMsg>(rd, MAX_FRAME)).await {
            Err(_) => return Err(format!("cluster silent for {:?}", fleet.config.idle_timeout)),
            Ok(m) => m?,
        };
        match msg {
            ClusterMsg::Report { resources } => fleet.on_report(id, conn, resources),
            ClusterMsg::Instances { updates, .. } => fleet.on_instances(id, conn, updates),
            ClusterMsg::Logs { request_id, data, cursor, error } => fleet.on_logs(request_id, data, cursor, error),
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
            ClusterMsg::Hello { .. } => return Err("a second hello on one connection".into()),
        }
    }
}

/// Writes queued messages, coalescing whatever is queued into one write.
async fn write_loop(wr: &mut (impl AsyncWriteExt + Unpin), first: Vec<RootMsg>, rx: &mut mpsc::Receiver<RootMsg>) {
    let mut buf = Vec::new();
    for m in &first {
        append(&mut buf, m);
    }
    loop {
        while buf.len() < 1 << 20 {
            match rx.try_recv() {
                Ok(m) => append(&mut buf, &m),
                Err(_) => break,
            }
        }
        if !buf.is_empty() {
            if wr.write_all(&buf).await.is_err() {
                return;
            }
            buf.clear();
        }
        match rx.recv().await {
            Some(m) => append(&mut buf, &m),
            None => {
                let _ = wr.shutdown().await;
                return;
            }
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
