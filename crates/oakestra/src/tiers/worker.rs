//! `oakestra worker` (the NodeEngine).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::{block_on, config_error, init_logging, read_token, shutdown_signal};

#[derive(Args)]
pub struct WorkerArgs {
    /// Address of the cluster orchestrator.
    #[arg(short = 'a', long = "cluster-addr", env = "OAKESTRA_CLUSTER_ADDR")]
    pub cluster_addr: Option<String>,
    /// Port of the cluster's node API.
    #[arg(short = 'p', long = "cluster-port", default_value_t = 10100)]
    pub cluster_port: u16,
    /// Directory of the worker's identity and desired instances.
    #[arg(long, default_value = "/var/lib/oakestra/worker", env = "OAKESTRA_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Worker join token issued by the cluster.
    #[arg(long, env = "OAKESTRA_NODE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the worker join token (e.g. the cluster's `<data-dir>/node-token`).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Node name (what `direct` constraints match); defaults to the host name.
    #[arg(long)]
    pub node_name: Option<String>,
    /// Broker host to use instead of the one the cluster names.
    #[arg(long)]
    pub mqtt_host: Option<String>,
    /// Disable the overlay network.
    #[arg(long)]
    pub no_overlay: bool,
    /// Seconds between node and instance reports.
    #[arg(long, default_value_t = 2.0)]
    pub report_interval: f64,
}

impl WorkerArgs {
    pub fn config(self) -> Result<oak_worker::WorkerConfig, String> {
        let addr = self.cluster_addr.filter(|a| !a.trim().is_empty()).ok_or("no cluster address: pass -a HOST")?;
        let token = read_token(self.token, self.token_file.as_deref(), "worker join token")?;
        if !(self.report_interval.is_finite() && self.report_interval > 0.0) {
            return Err("--report-interval must be a positive number of seconds".into());
        }
        let mut config = oak_worker::WorkerConfig::new(addr, self.data_dir, token);
        config.cluster_port = self.cluster_port;
        if let Some(name) = self.node_name {
            config.node_name = name;
        }
        config.mqtt_host = self.mqtt_host;
        config.overlay = !self.no_overlay;
        config.report_interval = Duration::from_secs_f64(self.report_interval);
        Ok(config)
    }
}

/// The runtimes this build offers. Containers through containerd arrive with the runtime
/// issue; until then a worker registers and reports but can run nothing.
pub fn deps(config: &oak_worker::WorkerConfig) -> oak_worker::WorkerDeps {
    oak_worker::WorkerDeps {
        runtimes: Vec::new(),
        node_source: Arc::new(oak_worker::HostInfo::new(
            config.data_dir.clone(),
            config.cluster_address.clone(),
            config.cluster_port,
        )),
        http: reqwest::Client::new(),
    }
}

pub fn run(args: WorkerArgs) -> ExitCode {
    init_logging();
    let config = match args.config() {
        Ok(c) => c,
        Err(e) => return config_error("worker", e),
    };
    block_on("worker", async {
        let deps = deps(&config);
        match oak_worker::run(config, deps, shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("oakestra worker: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
