//! The worker trusts only the cluster its join token pins: impostors never see the token's secret.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{RunningWorker, WAIT};
use oak_runtime::FakeRuntime;
use oak_tls::{Authority, ClientAuth, Fingerprint, JoinToken, TlsListener, TokenKind};
use oak_worker::{WorkerConfig, WorkerError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn worker(port: u16, token: &str) -> (RunningWorker, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = WorkerConfig::new("127.0.0.1", dir.path(), token);
    config.cluster_port = port;
    config.node_name = "worker-a".into();
    (RunningWorker::start(config, vec![Arc::new(FakeRuntime::new("docker"))]), dir)
}

/// Everything received on connections accepted from `listener`, each connection's bytes apart.
fn record<S, F>(mut accept: impl FnMut() -> F + Send + 'static) -> Arc<Mutex<Vec<Vec<u8>>>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: std::future::Future<Output = S> + Send,
{
    let seen = Arc::new(Mutex::new(Vec::new()));
    let all = seen.clone();
    tokio::spawn(async move {
        loop {
            let mut stream = accept().await;
            let all = all.clone();
            tokio::spawn(async move {
                let index = {
                    let mut all = all.lock().unwrap();
                    all.push(Vec::new());
                    all.len() - 1
                };
                // Answer like a plaintext HTTP server would, then keep listening.
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").await;
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = stream.read(&mut buf).await {
                    all.lock().unwrap()[index].extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    seen
}

fn contains(haystack: &[Vec<u8>], needle: &str) -> bool {
    haystack.iter().any(|c| c.windows(needle.len()).any(|w| w == needle.as_bytes()))
}

#[tokio::test]
async fn a_plaintext_server_posing_as_the_cluster_never_receives_the_token() {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    let tcp = Arc::new(tcp);
    let seen = record(move || {
        let tcp = tcp.clone();
        async move { tcp.accept().await.unwrap().0 }
    });
    let token = JoinToken::generate(TokenKind::Node, Fingerprint::of(b"the real cluster's CA"));
    let (worker, dir) = worker(port, &token.to_string());
    // Two attempts (the retry comes after a second): the worker keeps trying, never in clear.
    common::eventually_sync("two registration attempts", || seen.lock().unwrap().len() >= 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let seen = seen.lock().unwrap().clone();
    assert!(seen.iter().all(|c| c.first() == Some(&0x16)), "not a TLS handshake: {seen:?}");
    assert!(!contains(&seen, &token.secret) && !contains(&seen, "register"), "the token crossed in clear");
    assert!(worker.is_running(), "a plaintext answer is not a verdict on the token");
    worker.stop().await.unwrap();
    assert!(!dir.path().join("node.json").exists());
}

#[tokio::test]
async fn a_tls_server_of_another_ca_gets_no_token_and_the_worker_says_why() {
    let impostor = Authority::generate("impostor CA").unwrap();
    // It even uses the cluster's server name: only the pinned CA counts.
    let identity = impostor.issue_server(oak_tls::CLUSTER_SERVER_NAME, &["127.0.0.1".into()]).unwrap();
    let config = oak_tls::server_config(&identity, ClientAuth::None).unwrap();
    let refused = Arc::new(Mutex::new(Vec::new()));
    let r = refused.clone();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    let listener = TlsListener::new(tcp, config, Arc::new(move |_, why: &str| r.lock().unwrap().push(why.to_string())));
    let listener = Arc::new(tokio::sync::Mutex::new(listener.unwrap()));
    let seen = record(move || {
        let listener = listener.clone();
        async move { listener.lock().await.accept().await.0 }
    });

    let token = JoinToken::generate(TokenKind::Node, Fingerprint::of(b"the real cluster's CA"));
    let (worker, dir) = worker(port, &token.to_string());
    let err = tokio::time::timeout(WAIT, worker.finished()).await.expect("the worker gave up").unwrap_err();
    assert!(matches!(err, WorkerError::UntrustedCluster(_)), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("is not the cluster that issued the join token"), "{message}");
    assert!(message.contains("does not chain to the CA the token pins"), "{message}");
    assert!(seen.lock().unwrap().is_empty(), "a session was established: {:?}", seen.lock().unwrap());
    common::eventually_sync("the impostor's refusal", || !refused.lock().unwrap().is_empty()).await;
    assert_eq!(oak_tls::refusal_label(&refused.lock().unwrap()[0]), "client_alert", "{:?}", refused.lock().unwrap());
    assert!(!dir.path().join("node.json").exists());
}

#[tokio::test]
async fn a_token_without_the_ca_fingerprint_is_refused_before_connecting() {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    let (worker, _dir) = worker(port, "oakn_0123456789abcdef0123456789abcdef0123456789abcdef");
    let err = worker.finished().await.unwrap_err();
    assert!(matches!(err, WorkerError::Token(oak_tls::TokenError::Legacy(_))), "{err:?}");
    assert!(err.to_string().contains("no CA fingerprint") && err.to_string().contains("create a new token"), "{err}");
    let accepted = tokio::time::timeout(Duration::from_millis(300), tcp.accept()).await;
    assert!(accepted.is_err(), "the worker connected with a token it cannot verify the cluster by");
}
