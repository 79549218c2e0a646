use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

use super::*;

#[test]
fn tokens_round_trip_and_refuse_what_they_cannot_trust() {
    let ca = Fingerprint::of(b"some ca");
    let token = JoinToken::generate(TokenKind::Cluster, ca);
    let text = token.to_string();
    assert!(text.starts_with(&format!("oakc.v1.{ca}.")), "{text}");
    assert_eq!(JoinToken::parse(&format!("  {text}\n"), TokenKind::Cluster).unwrap(), token);
    assert!(!format!("{token:?}").contains(&token.secret), "Debug must not show the secret");

    let legacy = JoinToken::parse("oakc_0123456789abcdef0123456789abcdef0123456789abcdef", TokenKind::Cluster);
    assert!(matches!(legacy, Err(TokenError::Legacy(_))), "{legacy:?}");
    assert!(legacy.unwrap_err().to_string().contains("no CA fingerprint"));
    assert!(matches!(JoinToken::parse(&text, TokenKind::Node), Err(TokenError::WrongKind { .. })));
    for bad in [
        "",
        "oakc.v1.abc.0123456789abcdef0123456789abcdef",
        &format!("oakc.v2.{ca}.{}", token.secret),
        &format!("oakc.v1.{ca}.short"),
        &format!("oakc.v1.{ca}.{}.extra", token.secret),
        &format!("oakx.v1.{ca}.{}", token.secret),
        &format!("oakc.v1.{ca}.{}", "z".repeat(48)),
    ] {
        let e = JoinToken::parse(bad, TokenKind::Cluster).unwrap_err();
        assert!(matches!(e, TokenError::Malformed { .. }), "{bad}: {e:?}");
    }
}

#[test]
fn fingerprints_parse_in_both_notations() {
    let f = Fingerprint::of(b"x");
    assert_eq!(Fingerprint::from_hex(&f.to_string()), Some(f));
    assert_eq!(Fingerprint::from_hex(&f.colon_hex()), Some(f));
    assert_eq!(Fingerprint::from_hex("abcd"), None);
}

#[test]
fn the_authority_is_created_once_privately_and_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    let first = Authority::load_or_create(&tls, "test CA").unwrap();
    let again = Authority::load_or_create(&tls, "test CA").unwrap();
    assert_eq!(first.fingerprint(), again.fingerprint());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&tls), 0o700);
        assert_eq!(mode(&tls.join("ca-key.pem")), 0o600);
    }
    // Certificates issued after a reload still chain to the stored CA.
    let id = again.issue_server(ROOT_SERVER_NAME, &[]).unwrap();
    assert_eq!(Fingerprint::of(&id.chain[1]), first.fingerprint());

    std::fs::remove_file(tls.join("ca-key.pem")).unwrap();
    let e = Authority::load_or_create(&tls, "test CA").unwrap_err().to_string();
    assert!(e.contains("ca-key.pem") && e.contains("missing"), "{e}");
}

/// Serves one TLS connection per accept; echoes what it reads and records the client's
/// certificate fingerprint.
async fn echo_server(
    config: Arc<rustls::ServerConfig>,
) -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>, Arc<Mutex<Vec<Option<Fingerprint>>>>) {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = Arc::new(Mutex::new(Vec::new()));
    let peers = Arc::new(Mutex::new(Vec::new()));
    let r = refused.clone();
    let mut listener = TlsListener::new(
        tcp,
        config,
        Arc::new(move |peer, why: &str| r.lock().unwrap().push(format!("{peer}: {why}"))),
    )
    .unwrap();
    let addr = listener.local_addr();
    let p = peers.clone();
    tokio::spawn(async move {
        loop {
            let (mut tls, _) = listener.accept().await;
            p.lock().unwrap().push(peer_certificate(tls.get_ref().1).map(|c| Fingerprint::of(&c)));
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n @ 1..) = tls.read(&mut buf).await {
                    if tls.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, refused, peers)
}

async fn exchange(addr: std::net::SocketAddr, config: Arc<rustls::ClientConfig>) -> Result<Vec<u8>, std::io::Error> {
    let tcp = TcpStream::connect(addr).await?;
    // The dialled name is irrelevant to the pinned verifier.
    let mut tls = TlsConnector::from(config).connect(ServerName::try_from("10.0.0.1").unwrap(), tcp).await?;
    tls.write_all(b"secret").await?;
    let mut buf = [0u8; 6];
    tls.read_exact(&mut buf).await?;
    Ok(buf.to_vec())
}

#[tokio::test]
async fn a_pinned_client_talks_only_to_a_server_of_its_ca() {
    let ca = Authority::generate("root CA").unwrap();
    let other = Authority::generate("impostor CA").unwrap();
    let server =
        server_config(&ca.issue_server(ROOT_SERVER_NAME, &["127.0.0.1".into()]).unwrap(), ClientAuth::None).unwrap();
    let (addr, _, _) = echo_server(server).await;

    let good = pinned_client_config(ca.fingerprint(), ROOT_SERVER_NAME, None).unwrap();
    assert_eq!(exchange(addr, good).await.unwrap(), b"secret");

    let wrong_pin = pinned_client_config(other.fingerprint(), ROOT_SERVER_NAME, None).unwrap();
    let e = exchange(addr, wrong_pin).await.unwrap_err().to_string();
    assert!(e.contains("does not chain to the CA the token pins"), "{e}");

    // The right CA, but a certificate for another role (a cluster's server) is not the root.
    let cluster_server = server_config(&ca.issue_server(CLUSTER_SERVER_NAME, &[]).unwrap(), ClientAuth::None).unwrap();
    let (addr2, _, _) = echo_server(cluster_server).await;
    let pinned = pinned_client_config(ca.fingerprint(), ROOT_SERVER_NAME, None).unwrap();
    assert!(exchange(addr2, pinned).await.is_err());
}

#[tokio::test]
async fn a_client_certificate_cannot_pose_as_the_server() {
    let ca = Authority::generate("root CA").unwrap();
    let key = ClientKey::generate().unwrap();
    let (cert, _) =
        ca.sign_client(&key.request("cluster-a").unwrap(), ROOT_SERVER_NAME, Duration::from_secs(3600)).unwrap();
    let stolen = key.identity(&cert, ca.cert()).unwrap();
    let (addr, _, _) = echo_server(server_config(&stolen, ClientAuth::None).unwrap()).await;
    let pinned = pinned_client_config(ca.fingerprint(), ROOT_SERVER_NAME, None).unwrap();
    assert!(exchange(addr, pinned).await.is_err(), "a client-auth certificate served as the root");
}

#[tokio::test]
async fn members_are_recognised_by_their_certificate_and_strangers_refused() {
    let ca = Authority::generate("root CA").unwrap();
    let server =
        server_config(&ca.issue_server(ROOT_SERVER_NAME, &[]).unwrap(), ClientAuth::Optional(ca.cert().clone()))
            .unwrap();
    let (addr, refused, peers) = echo_server(server).await;

    let key = ClientKey::generate().unwrap();
    let (cert, fingerprint) =
        ca.sign_client(&key.request("ignored").unwrap(), "cluster-a", Duration::from_secs(3600)).unwrap();
    let member = key.identity(&cert, ca.cert()).unwrap();
    assert_eq!(member.fingerprint(), fingerprint);
    let config = pinned_client_config(ca.fingerprint(), ROOT_SERVER_NAME, Some(&member)).unwrap();
    exchange(addr, config).await.unwrap();
    // First joins come without a certificate.
    exchange(addr, pinned_client_config(ca.fingerprint(), ROOT_SERVER_NAME, None).unwrap()).await.unwrap();

    let other = Authority::generate("other root").unwrap();
    let key2 = ClientKey::generate().unwrap();
    let (cert2, _) = other.sign_client(&key2.request("x").unwrap(), "cluster-a", Duration::from_secs(3600)).unwrap();
    let stranger = key2.identity(&cert2, other.cert()).unwrap();
    let config = pinned_client_config(ca.fingerprint(), ROOT_SERVER_NAME, Some(&stranger)).unwrap();
    assert!(exchange(addr, config).await.is_err());

    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(*peers.lock().unwrap(), vec![Some(fingerprint), None]);
    let refused = refused.lock().unwrap();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0].contains("127.0.0.1") && refused[0].contains("handshake failed"), "{refused:?}");
}

#[tokio::test]
async fn garbage_and_silent_clients_do_not_stall_the_listener() {
    let ca = Authority::generate("root CA").unwrap();
    let server = server_config(&ca.issue_server(ROOT_SERVER_NAME, &[]).unwrap(), ClientAuth::None).unwrap();
    let (addr, refused, _) = echo_server(server).await;
    let _silent = TcpStream::connect(addr).await.unwrap();
    let mut garbage = TcpStream::connect(addr).await.unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let good = pinned_client_config(ca.fingerprint(), ROOT_SERVER_NAME, None).unwrap();
    assert_eq!(exchange(addr, good).await.unwrap(), b"secret");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let refused = refused.lock().unwrap();
    assert!(refused.iter().any(|r| r.contains("handshake failed")), "{refused:?}");
    assert!(refused.iter().any(|r| refusal_label(r) == "not_tls"), "{refused:?}");
}

#[tokio::test]
async fn a_ca_client_trusts_its_ca_for_the_name_dialled() {
    let ca = Authority::generate("broker CA").unwrap();
    let server = server_config(&ca.issue_server("broker.example", &["127.0.0.1".into()]).unwrap(), ClientAuth::None);
    let (addr, _, _) = echo_server(server.unwrap()).await;
    let config = ca_client_config(ca.cert_pem()).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = TlsConnector::from(config.clone());
    let mut tls = connector.connect(ServerName::try_from("127.0.0.1").unwrap(), tcp).await.unwrap();
    tls.write_all(b"hi").await.unwrap();
    // Another name than the certificate's is refused, as is a CA that did not sign it.
    let tcp = TcpStream::connect(addr).await.unwrap();
    assert!(connector.connect(ServerName::try_from("10.0.0.1").unwrap(), tcp).await.is_err());
    let other = ca_client_config(Authority::generate("other").unwrap().cert_pem()).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    assert!(TlsConnector::from(other).connect(ServerName::try_from("127.0.0.1").unwrap(), tcp).await.is_err());
    assert!(ca_client_config("garbage").is_err());
}

#[tokio::test]
async fn refusals_get_short_labels() {
    assert_eq!(refusal_label("too many handshakes in progress"), "overloaded");
    assert_eq!(refusal_label("TLS handshake timed out"), "timeout");
    // A client that does not trust the server aborts with an alert.
    let ca = Authority::generate("ca").unwrap();
    let server = server_config(&ca.issue_server(ROOT_SERVER_NAME, &[]).unwrap(), ClientAuth::None).unwrap();
    let (addr, refused, _) = echo_server(server).await;
    let other = Authority::generate("other").unwrap();
    let client = pinned_client_config(other.fingerprint(), ROOT_SERVER_NAME, None).unwrap();
    assert!(exchange(addr, client).await.is_err());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let refused = refused.lock().unwrap();
    assert_eq!(refused.iter().map(|r| refusal_label(r)).collect::<Vec<_>>(), ["client_alert"], "{refused:?}");
}

#[test]
fn a_reloaded_certificate_replaces_the_old_one_and_a_bad_file_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::generate("ca").unwrap();
    let write = |id: &Identity| {
        let (cert, key) = id.to_pem();
        std::fs::write(dir.path().join("cert.pem"), cert).unwrap();
        std::fs::write(dir.path().join("key.pem"), key).unwrap();
    };
    let a = ca.issue_server("api.example", &[]).unwrap();
    write(&a);
    let cert = ReloadableCert::load(&dir.path().join("cert.pem"), &dir.path().join("key.pem")).unwrap();
    assert_eq!(cert.fingerprint(), a.fingerprint());
    let b = ca.issue_server("api.example", &[]).unwrap();
    write(&b);
    assert_eq!(cert.reload().unwrap(), b.fingerprint());
    std::fs::write(dir.path().join("key.pem"), "garbage").unwrap();
    assert!(cert.reload().unwrap_err().to_string().contains("key.pem"));
    assert_eq!(cert.fingerprint(), b.fingerprint());
    reloadable_server_config(cert).unwrap();
}

/// The server certificate in use, as a client of the CA sees it in a handshake.
async fn served_certificate(addr: std::net::SocketAddr, ca: &Authority) -> Fingerprint {
    let config = pinned_client_config(ca.fingerprint(), ROOT_SERVER_NAME, None).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = TlsConnector::from(config).connect(ServerName::try_from("10.0.0.1").unwrap(), tcp).await.unwrap();
    Fingerprint::of(&tls.get_ref().1.peer_certificates().unwrap()[0])
}

#[tokio::test]
async fn a_server_certificate_is_issued_again_while_the_listener_runs() {
    let ca = Authority::generate("root CA").unwrap();
    let cert = RenewingCert::issue(&ca, ROOT_SERVER_NAME, &["127.0.0.1".into()], Duration::from_secs(3600)).unwrap();
    let (addr, _, _) = echo_server(renewing_server_config(cert.clone(), ClientAuth::None).unwrap()).await;
    let first = served_certificate(addr, &ca).await;
    assert_eq!(first, cert.fingerprint());

    let start = std::time::Instant::now();
    assert_eq!(cert.renew_if_due(&ca, start).unwrap(), None, "not due yet");
    let renewed = cert.renew_if_due(&ca, start + Duration::from_secs(3601)).unwrap().expect("due after an hour");
    assert_ne!(renewed, first);
    assert_eq!(served_certificate(addr, &ca).await, renewed, "the same listener serves the new certificate");
    assert_eq!(cert.renew_if_due(&ca, start + Duration::from_secs(3602)).unwrap(), None, "due again an hour later");
}
