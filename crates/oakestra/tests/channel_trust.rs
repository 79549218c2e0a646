//! The control plane's TLS, with real `oakestra` processes on loopback: the join token never
//! crosses the wire in clear (neither to a plain TCP listener nor to a TLS server of a foreign
//! CA posing as the root), revoked tokens and tokens of another CA do not join, a leaked token
//! cannot take over an existing cluster's identity, and the public API over HTTPS with a
//! certificate reloaded on SIGHUP, which `oakestra login --ca-cert` pins and watches.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oak_tls::{Authority, ClientAuth, JoinToken, TokenKind, ROOT_SERVER_NAME};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

const ADMIN_PASSWORD: &str = "trust-test-admin";

/// A process killed when dropped (also when an assertion fails), with its stderr in a file.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(args: &[String], log: PathBuf) -> Proc {
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_oakestra"))
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("the oakestra binary runs");
        Proc { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to `within` for the process to exit.
    fn exited(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn s(v: impl ToString) -> String {
    v.to_string()
}

async fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A root process on loopback ports.
struct Root {
    proc: Proc,
    url: String,
    channel: SocketAddr,
    dir: PathBuf,
}

impl Root {
    async fn start(dir: &Path) -> Root {
        Root::start_with(dir, &[]).await
    }

    async fn start_with(dir: &Path, extra: &[String]) -> Root {
        let (api, channel) = (free_port(), free_port());
        let data = dir.join("root");
        let args = [
            s("root"),
            s("--api-addr"),
            s("127.0.0.1"),
            s("--api-port"),
            s(api),
            s("--cluster-port"),
            s(channel),
            s("--data-dir"),
            s(data.display()),
            s("--admin-password"),
            s(ADMIN_PASSWORD),
        ];
        let args: Vec<String> = args.into_iter().chain(extra.iter().cloned()).collect();
        let proc = Proc::spawn(&args, dir.join("root.log"));
        let root = Root {
            proc,
            url: format!("http://127.0.0.1:{api}"),
            channel: SocketAddr::from(([127, 0, 0, 1], channel)),
            dir: dir.to_path_buf(),
        };
        let token = data.join("cluster-token");
        wait_for("the root's API and cluster-token", Duration::from_secs(20), || {
            (std::net::TcpStream::connect(("127.0.0.1", api)).is_ok() && token.is_file()).then_some(())
        })
        .await;
        root
    }

    fn first_token(&self) -> String {
        std::fs::read_to_string(self.dir.join("root/cluster-token")).unwrap().trim().to_string()
    }

    /// Runs an `oakestra` client command; answers its success, stdout and stderr.
    fn run_cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_oakestra"))
            .args(args)
            .env("OAKESTRA_CONFIG_DIR", self.dir.join("cli"))
            .env("OAKESTRA_URL", &self.url)
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    }

    /// Runs an `oakestra` client command logged in as Admin; answers stdout.
    fn cli(&self, args: &[&str]) -> String {
        let config = self.dir.join("cli");
        let run = |args: &[&str]| {
            let out = Command::new(env!("CARGO_BIN_EXE_oakestra"))
                .args(args)
                .env("OAKESTRA_CONFIG_DIR", &config)
                .env("OAKESTRA_URL", &self.url)
                .output()
                .unwrap();
            assert!(out.status.success(), "oakestra {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap()
        };
        if !config.join("credentials.json").exists() {
            run(&["login", "--password", ADMIN_PASSWORD]);
        }
        run(args)
    }

    async fn get(&self, path: &str) -> Value {
        let http = reqwest::Client::new();
        let login: Value = http
            .post(format!("{}/api/auth/login", self.url))
            .json(&json!({"username": "Admin", "password": ADMIN_PASSWORD}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = login["token"].as_str().unwrap();
        http.get(format!("{}{path}", self.url)).bearer_auth(token).send().await.unwrap().json().await.unwrap()
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.url)).await.unwrap().text().await.unwrap()
    }

    /// The names of the clusters that are connected and reporting.
    async fn active(&self) -> Vec<String> {
        let clusters = self.get("/api/clusters/active").await;
        clusters.as_array().unwrap().iter().map(|c| c["cluster_name"].as_str().unwrap().to_string()).collect()
    }
}

/// A cluster process dialling `channel` with `token` (none: it must hold a certificate).
fn start_cluster(dir: &Path, name: &str, channel: SocketAddr, token: Option<&str>) -> Proc {
    let data = dir.join(name);
    std::fs::create_dir_all(&data).unwrap();
    let mut args = vec![
        s("cluster"),
        s("--name"),
        s(name),
        s("--root-channel"),
        s(channel),
        s("--listen-addr"),
        s("127.0.0.1"),
        s("--api-port"),
        s(free_port()),
        s("--mqtt-port"),
        s(free_port()),
        s("--data-dir"),
        s(data.display()),
        s("--report-interval"),
        s("0.5"),
    ];
    if let Some(token) = token {
        let file = dir.join(format!("{name}.token"));
        std::fs::write(&file, token).unwrap();
        args.extend([s("--token-file"), s(file.display())]);
    }
    Proc::spawn(&args, dir.join(format!("{name}-{}.log", free_port())))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Everything peers sent to a listener posing as the root, over every connection.
type Heard = Arc<Mutex<Vec<u8>>>;

/// A plain TCP listener posing as the root: records every byte clusters send it.
async fn plain_impostor() -> (SocketAddr, Heard) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heard: Heard = Arc::default();
    let h = heard.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else { return };
            let h = h.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = tcp.read(&mut buf).await {
                    h.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    (addr, heard)
}

/// A TLS server posing as the root with a certificate of a CA of its own (for the root's server
/// name): records the raw bytes and, should a handshake ever succeed, the plaintext.
async fn tls_impostor() -> (SocketAddr, Heard, Heard) {
    let foreign = Authority::generate("impostor CA").unwrap();
    let identity = foreign.issue_server(ROOT_SERVER_NAME, &["127.0.0.1".into()]).unwrap();
    let acceptor =
        oak_tls::tokio_rustls::TlsAcceptor::from(oak_tls::server_config(&identity, ClientAuth::None).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (raw, plain): (Heard, Heard) = (Arc::default(), Arc::default());
    let (r, p) = (raw.clone(), plain.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (acceptor, r, p) = (acceptor.clone(), r.clone(), p.clone());
            tokio::spawn(async move {
                let recording = Recording { inner: tcp, heard: r };
                if let Ok(mut tls) = acceptor.accept(recording).await {
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = tls.read(&mut buf).await {
                        p.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                }
            });
        }
    });
    (addr, raw, plain)
}

/// A stream that keeps a copy of everything read from it.
struct Recording {
    inner: tokio::net::TcpStream,
    heard: Heard,
}

impl tokio::io::AsyncRead for Recording {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let new = buf.filled()[before..].to_vec();
        self.heard.lock().unwrap().extend_from_slice(&new);
        poll
    }
}

impl tokio::io::AsyncWrite for Recording {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_join_token_never_reaches_a_root_impostor() {
    let dir = tempfile::tempdir().unwrap();
    let root_ca = Authority::generate("the real root CA").unwrap();
    let token = JoinToken::generate(TokenKind::Cluster, root_ca.fingerprint());
    let secret = token.secret.as_bytes().to_vec();

    // A plain TCP listener hears only a TLS ClientHello: the token waits for a verified root.
    let (plain_addr, heard) = plain_impostor().await;
    let mut plain = start_cluster(dir.path(), "plain", plain_addr, Some(&token.to_string()));
    // The cluster waits 10 s for a handshake the impostor never answers; it has dialled by then.
    wait_for("the cluster to dial the plain impostor", Duration::from_secs(20), || {
        (!heard.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let bytes = heard.lock().unwrap().clone();
    assert_eq!(bytes[0], 0x16, "the cluster did not start with a TLS handshake record");
    assert!(!contains(&bytes, &secret), "the join token's secret reached a plain TCP impostor");
    assert!(plain.exited(Duration::ZERO).is_none(), "the cluster gave up: {}", plain.log());

    // A TLS server with a certificate of another CA fails the cluster's verification: nothing
    // is sent, and the log says why.
    let (tls_addr, raw, decrypted) = tls_impostor().await;
    let impostor = start_cluster(dir.path(), "tls", tls_addr, Some(&token.to_string()));
    let log = wait_for("the cluster to refuse the impostor's certificate", Duration::from_secs(20), || {
        let log = impostor.log();
        log.contains("does not chain to the CA the token pins").then_some(log)
    })
    .await;
    assert!(log.contains("nothing was sent"), "{log}");
    // Let it retry once more.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!raw.lock().unwrap().is_empty(), "the cluster never dialled the TLS impostor");
    assert!(!contains(&raw.lock().unwrap(), &secret), "the secret crossed the wire to a TLS impostor");
    assert!(decrypted.lock().unwrap().is_empty(), "a TLS impostor completed a handshake and read data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_tokens_and_tokens_of_another_ca_do_not_join() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::start(dir.path()).await;

    // A token revoked with the CLI (by its id) is refused by the root, and the cluster says why.
    let created: Value =
        serde_json::from_str(&root.cli(&["--json", "cluster-token", "create", "--ttl", "1h"])).unwrap();
    let (token, id) = (created["token"].as_str().unwrap(), created["id"].as_str().unwrap());
    assert!(created["expires_at"].as_i64().is_some(), "{created}");
    assert!(root.cli(&["cluster-token", "--revoke", id]).contains("revoked"));
    let mut revoked = start_cluster(dir.path(), "revoked", root.channel, Some(token));
    let status = revoked.exited(Duration::from_secs(20)).expect("a refused cluster stops");
    assert!(!status.success());
    let log = revoked.log();
    assert!(log.contains(&format!("the join token {id} was revoked")), "{log}");

    // A token whose CA hash is not the root's: the cluster does not accept the root's
    // certificate and never sends the token.
    let real = JoinToken::parse(&root.first_token(), TokenKind::Cluster).unwrap();
    let wrong_ca = JoinToken { ca: oak_tls::Fingerprint::of(b"another root's CA"), ..real };
    let wrong = start_cluster(dir.path(), "wrong-ca", root.channel, Some(&wrong_ca.to_string()));
    let log = wait_for("the wrong CA to be noticed", Duration::from_secs(20), || {
        let log = wrong.log();
        log.contains("does not chain to the CA the token pins").then_some(log)
    })
    .await;
    assert!(log.contains("nothing was sent"), "{log}");

    // The root saw the handshake fail: logged with the peer and counted.
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let metrics = root.metrics().await;
        if !metrics.contains("oakestra_channel_refusals_total{reason=\"tls_handshake\"} 0") {
            break metrics;
        }
        assert!(Instant::now() < deadline, "no handshake failure counted: {metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(metrics.contains("oakestra_channel_refusals_total{reason=\"revoked_token\"} 1"), "{metrics}");
    assert!(root.proc.log().contains("cluster channel connection refused"), "{}", root.proc.log());
    let clusters = root.get("/api/clusters").await;
    assert_eq!(clusters, json!([]), "a cluster joined");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaked_token_cannot_take_over_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::start(dir.path()).await;
    let token = root.first_token();
    let a_dir = dir.path().join("a");
    let mut real = start_cluster(&a_dir, "edge", root.channel, Some(&token));
    let deadline = Instant::now() + Duration::from_secs(30);
    while root.active().await != ["edge"] {
        assert!(Instant::now() < deadline, "edge did not join: {}", real.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(a_dir.join("edge/tls/cluster.pem").is_file());

    // Another machine with the same (reusable, leaked) token and the same name is refused…
    let mut thief = start_cluster(&dir.path().join("b"), "edge", root.channel, Some(&token));
    let status = thief.exited(Duration::from_secs(20)).expect("the second cluster is refused and stops");
    assert!(!status.success());
    let log = thief.log();
    assert!(log.contains("cannot take over its identity") && log.contains("oakestra cluster-reset edge"), "{log}");

    // …and the real cluster stays connected, never dropped.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(root.active().await, ["edge"]);
    assert!(!real.log().contains("root channel down"), "{}", real.log());
    let metrics = root.metrics().await;
    assert!(metrics.contains("oakestra_channel_refusals_total{reason=\"identity_taken\"} 1"), "{metrics}");

    // A restart of the real cluster needs no token: its certificate authenticates it.
    drop(real);
    real = start_cluster(&a_dir, "edge", root.channel, None);
    let log = wait_for("edge to rejoin with its certificate", Duration::from_secs(20), || {
        let log = real.log();
        log.contains("joined the root").then_some(log)
    })
    .await;
    assert!(!log.contains("received this cluster's certificate"), "it joined anew: {log}");
    assert!(real.exited(Duration::from_secs(1)).is_none(), "{}", real.log());
}

/// Writes a server certificate of `ca` for 127.0.0.1 to `cert.pem`/`key.pem` in `dir`.
fn write_api_cert(ca: &Authority, dir: &Path) -> oak_tls::Fingerprint {
    let identity = ca.issue_server("localhost", &["127.0.0.1".into()]).unwrap();
    let (cert, key) = identity.to_pem();
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
    identity.fingerprint()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_over_https_with_a_certificate_reloaded_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::generate("the operator's CA").unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
    let first = write_api_cert(&ca, dir.path());
    let tls = [
        s("--tls-cert"),
        s(dir.path().join("cert.pem").display()),
        s("--tls-key"),
        s(dir.path().join("key.pem").display()),
    ];
    let mut root = Root::start_with(dir.path(), &tls).await;
    root.url = root.url.replace("http://", "https://");
    let ca_pem = s(dir.path().join("ca.pem").display());

    // Plain HTTP gets no answer from the HTTPS port.
    assert!(reqwest::get(root.url.replace("https://", "http://") + "/api/health").await.is_err());

    // Without the CA the certificate is not trusted, and the error says what to do.
    let (ok, _, err) = root.run_cli(&["login", "--password", ADMIN_PASSWORD]);
    assert!(!ok && err.contains("--ca-cert"), "{err}");
    // With it, login shows the certificate's fingerprint and keeps it.
    let (ok, _, err) = root.run_cli(&["login", "--password", ADMIN_PASSWORD, "--ca-cert", &ca_pem]);
    assert!(ok, "{err}");
    assert!(err.contains(&first.colon_hex()), "{err}");
    let creds = std::fs::read_to_string(dir.path().join("cli/credentials.json")).unwrap();
    assert!(creds.contains(&first.to_string()) && creds.contains("ca.pem"), "{creds}");
    let (ok, _, err) = root.run_cli(&["clusters"]);
    assert!(ok && !err.contains("WARNING"), "{err}");

    // A new certificate on disk is served after SIGHUP, and the root logs its fingerprint…
    let second = write_api_cert(&ca, dir.path());
    let hup = |pid: u32| assert!(Command::new("kill").args(["-HUP", &pid.to_string()]).status().unwrap().success());
    hup(root.proc.child.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !root.proc.log().contains(&second.to_string()) {
        assert!(Instant::now() < deadline, "no reload logged: {}", root.proc.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // …and the CLI, still trusting the CA, warns loudly that it is not the one of the login.
    let (ok, _, err) = root.run_cli(&["clusters"]);
    assert!(ok, "{err}");
    assert!(err.contains("CHANGED") && err.contains(&second.colon_hex()), "{err}");

    // A broken file keeps the certificate in use, and the log says why.
    std::fs::write(dir.path().join("key.pem"), "not a key").unwrap();
    hup(root.proc.child.id());
    wait_for("the failed reload to be logged", Duration::from_secs(10), || {
        root.proc.log().contains("the old one stays").then_some(())
    })
    .await;
    let (ok, _, err) = root.run_cli(&["clusters"]);
    assert!(ok && err.contains(&second.colon_hex()), "{err}");
}
