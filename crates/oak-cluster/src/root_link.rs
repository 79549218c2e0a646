//! The cluster's end of the cluster channel: dial the root over TLS (verified against the pinned
//! root CA before anything is sent), say hello (with the join token and a certificate request on
//! the first join; with the client certificate after), then exchange full state and changes. A broken connection is re-dialled with back-off and both
//! sides resynchronise from full state, so nothing depends on a message that was lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use oak_api::channel::{self, ClusterMsg, RootMsg, PROTOCOL_VERSION};
use oak_tls::rustls::pki_types::{CertificateDer, ServerName};
use oak_tls::tokio_rustls::TlsConnector;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::Ctx;

/// The root said no (wrong token, name taken, protocol): retrying will not help.
#[derive(Debug, thiserror::Error)]
#[error("the root refused this cluster: {0}")]
pub struct Refused(pub String);

const META_CLUSTER_ID: &str = "cluster_id";

/// Keeps the channel up until shutdown; returns only on shutdown or refusal.
pub async fn run(ctx: Arc<Ctx>, mut shutdown: watch::Receiver<bool>) -> Result<(), Refused> {
    let mut delay = Duration::from_millis(250);
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let started = Instant::now();
        let outcome = tokio::select! {
            r = session(&ctx) => r,
            _ = shutdown.wait_for(|s| *s) => return Ok(()),
        };
        ctx.set_root(None);
        match outcome {
            Err(SessionError::Refused(m)) => return Err(Refused(m)),
            Err(SessionError::Lost(e)) => {
                if started.elapsed() > Duration::from_secs(30) {
                    delay = Duration::from_millis(250);
                }
                tracing::warn!(root = %ctx.config.root_channel, error = %e, retry_in = ?delay, "root channel down");
            }
            Ok(()) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.wait_for(|s| *s) => return Ok(()),
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

enum SessionError {
    Refused(String),
    Lost(String),
}

impl From<std::io::Error> for SessionError {
    fn from(e: std::io::Error) -> Self {
        SessionError::Lost(e.to_string())
    }
}

async fn session(ctx: &Arc<Ctx>) -> Result<(), SessionError> {
    let addr = &ctx.config.root_channel;
    let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
        .await
        .map_err(|_| SessionError::Lost(format!("connecting to {addr} timed out")))??;
    let _ = tcp.set_nodelay(true);
    // Nothing is sent before the root proved it holds a certificate of the pinned CA.
    let config = ctx.root_trust.client_config().map_err(|e| SessionError::Lost(format!("{e:#}")))?;
    let server_name = ServerName::try_from(oak_tls::ROOT_SERVER_NAME).expect("a valid server name");
    let tls = tokio::time::timeout(Duration::from_secs(10), TlsConnector::from(config).connect(server_name, tcp))
        .await
        .map_err(|_| SessionError::Lost(format!("the TLS handshake with {addr} timed out")))?
        .map_err(|e| {
            SessionError::Lost(format!(
                "the TLS handshake with {addr} failed, so nothing was sent (no join token): {e}"
            ))
        })?;
    let server_chain: Vec<CertificateDer<'static>> =
        tls.get_ref().1.peer_certificates().unwrap_or_default().iter().map(|c| c.clone().into_owned()).collect();
    let (rd, mut wr) = tokio::io::split(tls);
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let known_id = ctx.store.meta(META_CLUSTER_ID).ok().flatten().unwrap_or_default();
    let (token, csr) =
        ctx.root_trust.join_request(&ctx.config.name).map_err(|e| SessionError::Refused(format!("{e:#}")))?;
    let joining = !token.is_empty();
    let hello = ClusterMsg::Hello {
        protocol: PROTOCOL_VERSION,
        token,
        csr,
        cluster_id: known_id.clone(),
        cluster_name: ctx.config.name.clone(),
        cluster_location: ctx.config.location.clone(),
        metrics_port: ctx.api_port(),
    };
    wr.write_all(&channel::encode(&hello)).await?;
    let first = tokio::time::timeout(Duration::from_secs(10), read_frame::<RootMsg>(&mut rd))
        .await
        .map_err(|_| SessionError::Lost("the root did not answer the hello within 10 s".into()))?
        .map_err(SessionError::Lost)?;
    let cluster_id = match first {
        RootMsg::Welcome { cluster_id, certificate } => {
            if joining {
                if certificate.is_empty() {
                    return Err(SessionError::Lost("the root welcomed a first join without a certificate".into()));
                }
                // Without the certificate the next connection could not authenticate, and the
                // root does not let a token take over a cluster that has one.
                ctx.root_trust.store_certificate(&certificate, &server_chain).map_err(|e| {
                    SessionError::Refused(format!("cannot keep the certificate the root signed: {e:#}"))
                })?;
            }
            cluster_id
        }
        RootMsg::Refused { message } => return Err(SessionError::Refused(message)),
        other => return Err(SessionError::Lost(format!("unexpected first message from the root: {other:?}"))),
    };
    if cluster_id != known_id {
        if let Err(e) = ctx.store.set_meta(META_CLUSTER_ID, &cluster_id) {
            tracing::error!(error = %e, "cannot store the cluster id");
        }
    }
    tracing::info!(cluster_id = %cluster_id, root = %addr, "joined the root");

    // Full state first: every instance we hold, our resources, every node (the root releases
    // the subnets of nodes gone meanwhile), every worker's summary, and the route tables our workers use (asked again,
    // which registers our interest anew and refreshes them).
    // These go first, ahead of the bounded queue (the full instance list in parts).
    let mut first = Vec::new();
    let node_ids = ctx.node_ids();
    {
        let now = Instant::now();
        let mut st = ctx.state();
        first.extend(ClusterMsg::instances(true, st.root_updates(true, now)));
        first.push(ClusterMsg::Report { resources: st.resources(now) });
        first.push(ClusterMsg::Nodes { node_ids });
        let workers = st.worker_summaries(now);
        ctx.workers_sent.lock().unwrap_or_else(|e| e.into_inner()).full(&workers);
        first.extend(ClusterMsg::workers(true, workers, vec![]));
        for effect in st.routes.resync(now) {
            if let crate::state::Effect::Root(msg) = effect {
                first.push(*msg);
            }
        }
    }
    let (tx, mut rx) = mpsc::channel::<ClusterMsg>(crate::ROOT_QUEUE);
    ctx.set_root(Some(tx));
    let writer = async move {
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
            if let Err(e) = wr.write_all(&buf).await {
                return SessionError::Lost(format!("cannot write to the root: {e}"));
            }
            buf.clear();
            // A keepalive when there is nothing else: the root counts this cluster's silence
            // from the last frame it received.
            match tokio::time::timeout(channel::KEEPALIVE, rx.recv()).await {
                Err(_) => append(&mut buf, &ClusterMsg::Ping),
                Ok(Some(m)) => append(&mut buf, &m),
                Ok(None) => return SessionError::Lost("the queue to the root closed (overflow or shutdown)".into()),
            }
        }
    };
    let reader = async {
        loop {
            // The root pings after a second of silence: ten without a frame mean a cut link
            // (no FIN), so the cluster re-dials instead of waiting for TCP to give up.
            match tokio::time::timeout(channel::IDLE_TIMEOUT, read_frame::<RootMsg>(&mut rd)).await {
                Err(_) => return SessionError::Lost(format!("the root was silent for {:?}", channel::IDLE_TIMEOUT)),
                Ok(Ok(msg)) => ctx.on_root_message(msg),
                Ok(Err(e)) => return SessionError::Lost(e),
            }
        }
    };
    let err = tokio::select! {
        e = writer => e,
        e = reader => e,
    };
    Err(err)
}

/// Adds `m`'s frame to `buf`; a message over the frame limit (the root would refuse it and the
/// channel break for good) is dropped and logged instead.
fn append(buf: &mut Vec<u8>, m: &ClusterMsg) {
    match channel::encode_checked(m) {
        Ok(frame) => buf.extend(frame),
        Err(e) => tracing::error!(error = %e, "dropping a message to the root"),
    }
}

async fn read_frame<T: serde::de::DeserializeOwned>(rd: &mut (impl AsyncRead + Unpin)) -> Result<T, String> {
    let mut header = [0u8; 4];
    rd.read_exact(&mut header).await.map_err(|e| format!("connection closed: {e}"))?;
    let len = channel::frame_len(header)?;
    let mut body = vec![0u8; len];
    rd.read_exact(&mut body).await.map_err(|e| format!("connection closed mid-frame: {e}"))?;
    serde_json::from_slice(&body).map_err(|e| format!("malformed message from the root: {e}"))
}

#[cfg(test)]
mod tests {
    use oak_api::channel::{DeployInstance, RootMsg};
    use oak_api::node::JobSpec;

    use super::*;
    use crate::test_ctx as open;

    fn instance(job: &str) -> DeployInstance {
        let spec = serde_json::from_value(serde_json::json!({
            "microservice_name": job, "microservice_namespace": "test", "virtualization": "container",
            "code": "docker.io/library/nginx:latest",
        }))
        .unwrap();
        let job = JobSpec { id: job.into(), job_name: format!("app.test.{job}.test"), image: "nginx".into(), spec };
        DeployInstance { instance_number: 0, job, instance_ip: None }
    }

    fn held(ctx: &Ctx) -> Vec<String> {
        let mut ids: Vec<String> =
            ctx.state().root_updates(true, Instant::now()).into_iter().map(|r| r.job_id).collect();
        ids.sort();
        ids
    }

    #[tokio::test]
    async fn a_full_queue_to_the_root_ends_the_connection_instead_of_growing() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = open(dir.path()).await;
        let (tx, mut rx) = mpsc::channel(2);
        ctx.set_root(Some(tx));
        let msg = || ClusterMsg::Uninterest { job_name: "a.b.c.d".into() };
        assert!(ctx.send_root(msg()) && ctx.send_root(msg()));
        assert!(!ctx.send_root(msg()), "a third message fit a queue of two");
        // The session's writer drains what is queued, then sees the queue closed and ends.
        assert!(!ctx.root_connected());
        assert!(rx.recv().await.is_some() && rx.recv().await.is_some());
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_full_set_in_parts_is_applied_once_complete() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = open(dir.path()).await;
        ctx.on_root_message(RootMsg::Deploy { full: true, seq: 0, instances: vec![instance("a")], last: true });
        assert_eq!(held(&ctx), ["a"]);

        // A first part changes nothing yet: "a" is not removed before the set is complete.
        ctx.on_root_message(RootMsg::Deploy { full: true, seq: 0, instances: vec![instance("b")], last: false });
        assert_eq!(held(&ctx), ["a"]);
        ctx.on_root_message(RootMsg::Deploy { full: true, seq: 0, instances: vec![instance("c")], last: true });
        assert_eq!(held(&ctx), ["b", "c"]);

        // Parts of a connection that broke are forgotten with it.
        ctx.on_root_message(RootMsg::Deploy { full: true, seq: 0, instances: vec![instance("d")], last: false });
        ctx.set_root(None);
        ctx.on_root_message(RootMsg::Deploy { full: true, seq: 0, instances: vec![instance("e")], last: true });
        assert_eq!(held(&ctx), ["e"]);
    }
}
