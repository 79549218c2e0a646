//! `oakestra up`: a whole 1-DOC deployment (root, cluster and worker) in one process, with
//! default ports and data under one directory.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::cluster::ClusterArgs;
use super::root::RootArgs;
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
    /// Name of the cluster.
    #[arg(long, default_value = "local", env = "CLUSTER_NAME")]
    pub cluster_name: String,
    /// Password of the `Admin` user created at first start (default `Admin`).
    #[arg(long, env = "OAKESTRA_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
    /// containerd's gRPC socket (the worker starts its own if none answers on the default).
    #[arg(long, default_value = super::worker::DEFAULT_CONTAINERD_SOCKET, env = "OAKESTRA_CONTAINERD_SOCKET")]
    pub containerd_socket: PathBuf,
    /// Registry (`host:port`) to pull from over plain HTTP; repeatable.
    #[arg(long = "insecure-registry", value_delimiter = ',', env = "OAKESTRA_INSECURE_REGISTRIES")]
    pub insecure_registries: Vec<String>,
    /// Run without the overlay network (containers share the host's network namespace).
    #[arg(long)]
    pub no_overlay: bool,
}

pub fn run(args: UpArgs) -> ExitCode {
    init_logging();
    let root_args = RootArgs {
        api_port: args.api_port,
        api_addr: "0.0.0.0".parse().expect("literal address"),
        cluster_port: 50052,
        data_dir: args.data_dir.join("root"),
        admin_password: args.admin_password,
    };
    block_on("up", async move {
        let root = match oak_root::Root::open(root_args.config()).await {
            Ok(r) => r,
            Err(e) => return config_error("up", format!("{e:#}")),
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let containerd_stop = stop_rx.clone();
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let root_task = tokio::spawn(root.serve(stopped()));

        let cluster_args = ClusterArgs {
            name: Some(args.cluster_name.clone()),
            location: String::new(),
            system_manager: None,
            root_url: Some(format!("http://127.0.0.1:{}", args.api_port)),
            root_channel: Some("127.0.0.1:50052".into()),
            token: None,
            token_file: Some(root_args.data_dir.join(oak_root::cluster_tokens::TOKEN_FILE)),
            listen_addr: "0.0.0.0".parse().expect("literal address"),
            api_port: 10100,
            mqtt_port: 10003,
            mqtt_url: None,
            mqtt_advertise: None,
            data_dir: args.data_dir.join("cluster"),
            report_interval: 2.0,
            node_timeout: 6.0,
            deploy_timeout: 120.0,
            node_forget_after: 3600.0,
        };
        let cluster_dir = cluster_args.data_dir.clone();
        let cluster = match cluster_args.config() {
            Ok(c) => oak_cluster::Cluster::open(c).await,
            Err(e) => return config_error("up", e),
        };
        let cluster = match cluster {
            Ok(c) => c,
            Err(e) => return config_error("up", format!("{e:#}")),
        };
        let cluster_task = tokio::spawn(cluster.run(stopped()));

        let worker_args = WorkerArgs {
            cluster_addr: Some("127.0.0.1".into()),
            cluster_port: 10100,
            data_dir: args.data_dir.join("worker"),
            token: None,
            token_file: Some(cluster_dir.join("node-token")),
            node_name: None,
            mqtt_host: None,
            no_overlay: args.no_overlay,
            netmanager_port: None,
            tunnel_port: oak_worker::DEFAULT_TUNNEL_PORT,
            public_addr: None,
            address_check: oak_worker::DEFAULT_ADDRESS_CHECK.as_secs(),
            report_interval: 2.0,
            containerd_socket: args.containerd_socket,
            containerd_namespace: "oakestra".into(),
            insecure_registries: args.insecure_registries,
        };
        let (worker_config, runtime) = match worker_args.configs() {
            Ok(c) => c,
            Err(e) => return config_error("up", e),
        };
        let (deps, supervisor) = match super::worker::deps(&worker_config, runtime, containerd_stop).await {
            Ok(d) => d,
            Err(e) => {
                eprintln!("oakestra up: worker: {e}");
                let _ = stop_tx.send(true);
                return ExitCode::FAILURE;
            }
        };
        let worker_task = tokio::spawn(oak_worker::run(worker_config, deps, stopped()));

        println!(
            "Oakestra is up (1-DOC): API http://127.0.0.1:{port}, docs http://127.0.0.1:{port}/api/docs\n\
             Log in:   oakestra login --url http://127.0.0.1:{port} -u Admin -p Admin\n\
             Deploy:   oakestra app create -f examples/sla/nginx.json && oakestra service list\n\
             Scale:    oakestra service scale <service id>   (then: oakestra service show <service id>)",
            port = args.api_port
        );
        shutdown_signal().await;
        let _ = stop_tx.send(true);
        let mut code = ExitCode::SUCCESS;
        if let Ok(Err(e)) = worker_task.await {
            eprintln!("oakestra up: worker: {e}");
            code = ExitCode::FAILURE;
        }
        if let Some(supervisor) = supervisor {
            let _ = supervisor.await;
        }
        if let Ok(Err(e)) = cluster_task.await {
            eprintln!("oakestra up: cluster: {e:#}");
            code = ExitCode::FAILURE;
        }
        if let Ok(Err(e)) = root_task.await {
            eprintln!("oakestra up: root: {e:#}");
            code = ExitCode::FAILURE;
        }
        code
    })
}
