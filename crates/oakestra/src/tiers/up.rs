//! `oakestra up`: a whole 1-DOC deployment (root, cluster and worker) in one process, with
//! default ports and data under one directory.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::cluster::ClusterArgs;
use super::root::{ApiTlsArgs, RootArgs};
use super::worker::WorkerArgs;
use super::{block_on, config_error, init_logging, shutdown_signal};

#[derive(Args)]
pub struct UpArgs {
    /// Directory holding `root/`, `cluster/` and `worker/`.
    #[arg(long, default_value = "/var/lib/oakestra", env = "OAKESTRA_HOME")]
    pub data_dir: PathBuf,
    /// Port of the public REST API.
    #[arg(long, default_value_t = 10000)]
    pub api_port: u16,
    /// Port serving the web dashboard besides the API port (0: none). If it cannot be bound
    /// (in use, or no privilege for a port below 1024) `up` says so and goes on without it.
    #[arg(long, default_value_t = 80, env = "OAKESTRA_DASHBOARD_PORT")]
    pub dashboard_port: u16,
    /// Port of the root's cluster channel.
    #[arg(long, default_value_t = 50052)]
    pub cluster_port: u16,
    /// Port of the cluster's node API (workers register here).
    #[arg(long, default_value_t = 10100)]
    pub cluster_api_port: u16,
    /// Port of the cluster's embedded MQTT broker.
    #[arg(long, default_value_t = 10003)]
    pub mqtt_port: u16,
    /// UDP port of the overlay tunnel.
    #[arg(long, default_value_t = oak_worker::DEFAULT_TUNNEL_PORT)]
    pub tunnel_port: u16,
    /// Name of the cluster.
    #[arg(long, default_value = "local", env = "CLUSTER_NAME")]
    pub cluster_name: String,
    /// Password of the `Admin` user created at first start (default: generated, written to
    /// `<data-dir>/root/admin-password`).
    #[arg(long, env = "OAKESTRA_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
    /// containerd's gRPC socket (the worker starts its own if none answers on the default).
    #[arg(long, default_value = super::worker::DEFAULT_CONTAINERD_SOCKET, env = "OAKESTRA_CONTAINERD_SOCKET")]
    pub containerd_socket: PathBuf,
    /// Registry (`host:port`) to pull from over plain HTTP; repeatable.
    #[arg(long = "insecure-registry", value_delimiter = ',', env = "OAKESTRA_INSECURE_REGISTRIES")]
    pub insecure_registries: Vec<String>,
    /// Beyond public addresses, where the worker may fetch images and kernels tenants name
    /// (`ADDRESS[:PORT]`, `NETWORK/PREFIX`, `HOST[:PORT]`); see `oakestra worker --help`.
    #[arg(long = "fetch-allow", value_delimiter = ',', env = "OAKESTRA_FETCH_ALLOW")]
    pub fetch_allow: Vec<String>,
    /// Run without the overlay network (containers share the host's network namespace).
    #[arg(long)]
    pub no_overlay: bool,
    /// Roles besides Admin that may submit privileged containers and reserved host ports.
    #[arg(long, env = "OAKESTRA_PRIVILEGED_ROLES", value_delimiter = ',')]
    pub privileged_roles: Vec<String>,
    #[command(flatten)]
    pub tls: ApiTlsArgs,
    /// Let the worker offer the `unikernel` virtualization (QEMU).
    #[arg(short = 'u', long = "unikernel", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    pub unikernel: bool,
    /// QEMU accelerator for unikernels: `kvm`, `tcg` or `auto`.
    #[arg(long, default_value = "auto", value_parser = clap::value_parser!(oak_qemu::AccelChoice))]
    pub unikernel_accel: oak_qemu::AccelChoice,
    /// Seconds a cluster may stay silent before the root places its instances elsewhere (as
    /// `oakestra root --cluster-timeout`).
    #[arg(long, default_value_t = 30.0)]
    pub cluster_timeout: f64,
    /// Port of the worker's `/metrics` (0: none).
    #[arg(long, default_value_t = oak_worker::DEFAULT_METRICS_PORT)]
    pub metrics_port: u16,
    /// Token Prometheus presents (`Authorization: Bearer <token>`) to read `/metrics` of the
    /// root, the cluster and the worker (they listen beyond loopback); see the README's
    /// monitoring section.
    #[arg(long, env = "OAKESTRA_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// File the root keeps every tier's scrape targets in (default
    /// `<data-dir>/prometheus-targets.json`, outside the root's private directory so that a
    /// Prometheus of another user can read it; empty: none).
    #[arg(long)]
    pub prometheus_sd_file: Option<PathBuf>,
}

pub fn run(args: UpArgs) -> ExitCode {
    init_logging();
    let root_args = RootArgs {
        api_port: args.api_port,
        api_addr: "0.0.0.0".parse().expect("literal address"),
        dashboard_port: 0,
        cluster_port: args.cluster_port,
        data_dir: args.data_dir.join("root"),
        store_sync: super::root::StoreSync::Normal,
        admin_password: args.admin_password,
        privileged_roles: args.privileged_roles,
        quotas: Default::default(),
        cluster_timeout: args.cluster_timeout,
        tls: args.tls.clone(),
        metrics_token: args.metrics_token.clone(),
        prometheus_sd_file: args.prometheus_sd_file.clone(),
    };
    let root_config = match root_args.config() {
        Ok(c) => c,
        Err(e) => return config_error("up", e),
    };
    let cert = match args.tls.load() {
        Ok(c) => c,
        Err(e) => return config_error("up", e),
    };
    let scheme = args.tls.scheme();
    block_on("up", async move {
        let mut root = match oak_root::Root::open(root_config).await {
            Ok(r) => r,
            Err(e) => return config_error("up", format!("root: {e:#}")),
        };
        root.set_metrics_token(args.metrics_token.clone());
        root.set_prometheus_sd_file(super::root::sd_file(args.prometheus_sd_file.clone(), &args.data_dir));
        if let Some(cert) = cert {
            root.use_tls(cert);
        }
        let admin_password_file = root.admin_password_file();
        let (api_listener, channel_listener) = match root.listen().await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("oakestra up: root: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        let dashboard = match args.dashboard_port {
            0 => None,
            port => match tokio::net::TcpListener::bind(("0.0.0.0", port)).await {
                Ok(l) => {
                    root.add_listener(l);
                    Some(port)
                }
                Err(e) => {
                    tracing::warn!(port, error = %e, "the dashboard is not served on this port (only on the API port)");
                    None
                }
            },
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let containerd_stop = stop_rx.clone();
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let mut root_task = tokio::spawn(tier_result(root.serve_on(api_listener, channel_listener, stopped())));

        let cluster_args = ClusterArgs {
            name: Some(args.cluster_name.clone()),
            location: String::new(),
            system_manager: None,
            root_url: Some(format!("{scheme}://127.0.0.1:{}", args.api_port)),
            root_channel: Some(format!("127.0.0.1:{}", args.cluster_port)),
            token: None,
            token_file: Some(root_args.data_dir.join(oak_root::cluster_tokens::TOKEN_FILE)),
            listen_addr: "0.0.0.0".parse().expect("literal address"),
            api_port: args.cluster_api_port,
            mqtt_port: args.mqtt_port,
            mqtt_url: None,
            mqtt_ca: None,
            mqtt_advertise: None,
            data_dir: args.data_dir.join("cluster"),
            report_interval: 2.0,
            worker_timeout: super::cluster::DEFAULT_WORKER_TIMEOUT_S,
            deploy_timeout: 120.0,
            node_forget_after: 3600.0,
            metrics_token: args.metrics_token.clone(),
        };
        let cluster_dir = cluster_args.data_dir.clone();
        let cluster = match cluster_args.config() {
            Ok(c) => oak_cluster::Cluster::open(c).await,
            Err(e) => return config_error("up", format!("cluster: {e}")),
        };
        let cluster = match cluster {
            Ok(c) => c,
            Err(e) => return config_error("up", format!("cluster: {e:#}")),
        };
        let mut cluster_task = tokio::spawn(tier_result(cluster.run(stopped())));

        let worker_args = WorkerArgs {
            cluster_addr: Some("127.0.0.1".into()),
            cluster_port: args.cluster_api_port,
            data_dir: args.data_dir.join("worker"),
            token: None,
            token_file: Some(cluster_dir.join("node-token")),
            node_name: None,
            mqtt_host: None,
            no_overlay: args.no_overlay,
            netmanager_port: None,
            tunnel_port: args.tunnel_port,
            public_addr: None,
            address_check: oak_worker::DEFAULT_ADDRESS_CHECK.as_secs(),
            insecure_plaintext_overlay: false,
            report_interval: 2.0,
            containerd_socket: args.containerd_socket,
            containerd_namespace: "oakestra".into(),
            insecure_registries: args.insecure_registries,
            fetch_allow: args.fetch_allow,
            pids_limit: oak_containerd::DEFAULT_PIDS_LIMIT,
            unikernel: args.unikernel,
            unikernel_accel: args.unikernel_accel,
            metrics_port: args.metrics_port,
            metrics_addr: "0.0.0.0".parse().expect("literal address"),
            metrics_token: args.metrics_token.clone(),
        };
        let (worker_config, runtime) = match worker_args.configs() {
            Ok(c) => c,
            Err(e) => return config_error("up", format!("worker: {e}")),
        };
        let (deps, supervisor) = match super::worker::deps(&worker_config, runtime, containerd_stop).await {
            Ok(d) => d,
            Err(e) => {
                eprintln!("oakestra up: worker: {e}");
                let _ = stop_tx.send(true);
                return ExitCode::FAILURE;
            }
        };
        let mut worker_task = tokio::spawn(tier_result(oak_worker::run(worker_config, deps, stopped())));

        println!(
            "Oakestra is up (1-DOC): dashboard {dashboard}, API {scheme}://127.0.0.1:{port}, docs {scheme}://127.0.0.1:{port}/api/docs\n\
             {admin}Log in:   oakestra login --url {scheme}://127.0.0.1:{port} -u Admin {login}\n\
             Deploy:   oakestra app create -f examples/sla/nginx.json && oakestra service list\n\
             Scale:    oakestra service scale <service id>   (then: oakestra service show <service id>)",
            port = args.api_port,
            dashboard = match dashboard {
                Some(80) if scheme == "http" => "http://127.0.0.1/".to_string(),
                Some(d) => format!("{scheme}://127.0.0.1:{d}/"),
                None => format!("{scheme}://127.0.0.1:{}/", args.api_port),
            },
            login = admin_login(admin_password_file.as_deref()),
            admin = generated_password_line(admin_password_file.as_deref()),
        );
        // A tier that ends on its own (a port in use, its store gone) ends the whole deployment
        // at once, with its reason, instead of leaving the others running without it.
        let early = tokio::select! {
            _ = shutdown_signal() => None,
            r = &mut root_task => Some(("root", r)),
            r = &mut cluster_task => Some(("cluster", r)),
            r = &mut worker_task => Some(("worker", r)),
        };
        let _ = stop_tx.send(true);
        let mut ok = true;
        let early_tier = early.as_ref().map(|(tier, _)| *tier);
        if let Some((tier, result)) = early {
            ok &= report(tier, result, true);
        }
        if early_tier != Some("worker") {
            ok &= report("worker", worker_task.await, false);
        }
        if let Some(supervisor) = supervisor {
            let _ = supervisor.await;
        }
        if early_tier != Some("cluster") {
            ok &= report("cluster", cluster_task.await, false);
        }
        if early_tier != Some("root") {
            ok &= report("root", root_task.await, false);
        }
        if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    })
}

/// How to pass Admin's password to `oakestra login`: the API listens on every address, so the
/// first start generated one into a file (read from standard input, so it shows neither on
/// screen nor in the process list); otherwise it is the `--admin-password` given at that start.
fn admin_login(generated: Option<&std::path::Path>) -> String {
    match generated {
        Some(file) => {
            let file = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
            format!("< {}", file.display())
        }
        None => "(then type the --admin-password of the first start)".to_string(),
    }
}

/// The generated Admin password, shown once here to whoever started `up` so that the dashboard
/// can be used with no other tool (it stays in the 0600 file until Admin changes it).
fn generated_password_line(generated: Option<&std::path::Path>) -> String {
    let Some(file) = generated else { return String::new() };
    match std::fs::read_to_string(file) {
        Ok(password) => {
            format!("Admin:    user Admin, password {} (generated; kept in {})\n", password.trim(), file.display())
        }
        Err(_) => String::new(),
    }
}

/// A tier's outcome with its error as one line (causes included).
async fn tier_result<E: std::fmt::Display>(
    run: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), String> {
    run.await.map_err(|e| format!("{e:#}"))
}

/// Prints why a tier ended, if it failed or (`early`) ended before it was asked to; whether it
/// ended well.
fn report(tier: &str, joined: Result<Result<(), String>, tokio::task::JoinError>, early: bool) -> bool {
    match joined {
        Ok(Ok(())) if early => {
            eprintln!("oakestra up: {tier} stopped on its own; stopping the others");
            false
        }
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            eprintln!("oakestra up: {tier}: {e}");
            false
        }
        Err(e) => {
            eprintln!("oakestra up: {tier} task failed: {e}");
            false
        }
    }
}
