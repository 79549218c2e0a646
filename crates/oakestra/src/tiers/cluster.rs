//! `oakestra cluster`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::{block_on, config_error, init_logging, read_token, shutdown_signal};

/// Default of `--worker-timeout`, in seconds.
pub const DEFAULT_WORKER_TIMEOUT_S: f64 = 15.0;
/// Upper bound of `--worker-timeout`: beyond it a dead worker's instances stay down too long to
/// be a sensible setting (and a typo like `150000` is caught).
const MAX_WORKER_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Args)]
pub struct ClusterArgs {
    /// Cluster name, unique under its root.
    #[arg(long, env = "CLUSTER_NAME")]
    pub name: Option<String>,
    /// `lat,long[,radius_m]` or a free name.
    #[arg(long, env = "CLUSTER_LOCATION", default_value = "")]
    pub location: String,
    /// Root host: sets --root-url http://HOST:10000 and --root-channel HOST:50052 unless given.
    #[arg(long = "system-manager", env = "SYSTEM_MANAGER_URL")]
    pub system_manager: Option<String>,
    /// The root's REST API.
    #[arg(long)]
    pub root_url: Option<String>,
    /// `host:port` of the root's cluster channel.
    #[arg(long)]
    pub root_channel: Option<String>,
    /// Cluster join token issued by the root (`oakc.v1.<root CA hash>.<secret>`); not needed once
    /// the cluster joined (it then authenticates with its certificate in `<data-dir>/tls`).
    #[arg(long, env = "OAKESTRA_CLUSTER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the cluster join token (e.g. the root's `<data-dir>/cluster-token`).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Address the node API and the embedded broker listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub listen_addr: std::net::IpAddr,
    /// Port of the node API (worker registration).
    #[arg(long, default_value_t = 10100)]
    pub api_port: u16,
    /// Port of the embedded MQTT broker.
    #[arg(long, default_value_t = 10003)]
    pub mqtt_port: u16,
    /// Use this external broker instead of the embedded one: `mqtts://[user:pass@]host:port`
    /// (with --mqtt-ca), or plaintext `mqtt://…` (logged as a warning).
    #[arg(long)]
    pub mqtt_url: Option<String>,
    /// PEM file of the CA that signed the external `mqtts://` broker's certificate; workers get
    /// it at registration.
    #[arg(long)]
    pub mqtt_ca: Option<PathBuf>,
    /// Broker host workers are told to use (default: the address they registered with).
    #[arg(long)]
    pub mqtt_advertise: Option<String>,
    /// Directory of the cluster's database, worker join token and CA (`tls/`).
    #[arg(long, default_value = "/var/lib/oakestra/cluster", env = "OAKESTRA_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Seconds between resource reports to the root.
    #[arg(long, default_value_t = 2.0)]
    pub report_interval: f64,
    /// Seconds without node information after which a worker is lost and its instances move.
    /// 15 s rides out a few lost reports on a lossy edge link (workers report every 2 s);
    /// `--node-timeout` is the older name.
    #[arg(long, visible_alias = "node-timeout", default_value_t = DEFAULT_WORKER_TIMEOUT_S)]
    pub worker_timeout: f64,
    /// Seconds a worker may take to start an instance before it is placed elsewhere.
    #[arg(long, default_value_t = 120.0)]
    pub deploy_timeout: f64,
    /// Seconds of silence after which a worker holding no instances is forgotten: its
    /// credentials end and the root takes back its overlay subnet; if it comes back it joins as
    /// a new node. An hour rides out reboots, upgrades and network outages (a returning worker
    /// keeps its id, subnet and routes) yet returns the subnets of workers gone for good.
    #[arg(long, default_value_t = 3600.0)]
    pub node_forget_after: f64,
    /// Token Prometheus presents (`Authorization: Bearer <token>`) to read `/metrics` of the
    /// node API when it listens beyond loopback; without one such scrapes are refused.
    #[arg(long, env = "OAKESTRA_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
}

impl ClusterArgs {
    pub fn config(self) -> Result<oak_cluster::ClusterConfig, String> {
        let name = self.name.filter(|n| !n.trim().is_empty()).ok_or("no cluster name: set CLUSTER_NAME or --name")?;
        let host = self.system_manager.as_deref().map(|h| {
            let h = h.trim_start_matches("http://").trim_end_matches('/');
            h.split(':').next().unwrap_or(h).to_string()
        });
        let root_channel = self
            .root_channel
            .or_else(|| host.as_ref().map(|h| format!("{h}:50052")))
            .ok_or("no root address: set SYSTEM_MANAGER_URL or --root-channel")?;
        if root_channel.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
            return Err(format!("--root-channel {root_channel:?} is not host:port"));
        }
        let root_url = self
            .root_url
            .or_else(|| host.as_ref().map(|h| format!("http://{h}:10000")))
            .unwrap_or_else(|| format!("http://{}:10000", root_channel.rsplit_once(':').map_or("", |(h, _)| h)));
        // A cluster that joined before authenticates with its certificate and needs no token.
        let root_token = match (self.token.is_some() || self.token_file.is_some(), joined_before(&self.data_dir)) {
            (false, true) => String::new(),
            _ => read_token(self.token, self.token_file.as_deref(), "cluster join token")?,
        };
        let seconds = |v: f64, flag: &str| {
            if v.is_finite() && v > 0.0 {
                Ok(Duration::from_secs_f64(v))
            } else {
                Err(format!("--{flag} must be a positive number of seconds"))
            }
        };
        let node_timeout = seconds(self.worker_timeout, "worker-timeout")?;
        if node_timeout > MAX_WORKER_TIMEOUT {
            return Err(format!(
                "--worker-timeout must be at most {} seconds (instances of a lost worker wait that long to move)",
                MAX_WORKER_TIMEOUT.as_secs()
            ));
        }
        let node_forget_after = seconds(self.node_forget_after, "node-forget-after")?;
        if node_forget_after <= node_timeout {
            return Err("--node-forget-after must be longer than --worker-timeout".into());
        }
        let mqtt = match self.mqtt_url {
            Some(url) => oak_cluster::MqttMode::External { url, ca: self.mqtt_ca },
            None if self.mqtt_ca.is_some() => return Err("--mqtt-ca needs --mqtt-url mqtts://…".into()),
            None => oak_cluster::MqttMode::Embedded { addr: SocketAddr::new(self.listen_addr, self.mqtt_port) },
        };
        Ok(oak_cluster::ClusterConfig {
            name,
            location: self.location,
            root_channel,
            root_url,
            root_token,
            api_addr: SocketAddr::new(self.listen_addr, self.api_port),
            mqtt,
            mqtt_advertise: self.mqtt_advertise,
            data_dir: self.data_dir,
            report_interval: seconds(self.report_interval, "report-interval")?,
            timing: oak_cluster::state::Timing {
                node_timeout,
                deploy_timeout: seconds(self.deploy_timeout, "deploy-timeout")?,
                node_forget_after,
                ..Default::default()
            },
            metrics_token: self.metrics_token,
        })
    }
}

/// Whether `data_dir` holds the certificate of an earlier join.
fn joined_before(data_dir: &std::path::Path) -> bool {
    data_dir.join(oak_cluster::root_trust::TLS_DIR).join("cluster.pem").exists()
}

pub fn run(args: ClusterArgs) -> ExitCode {
    init_logging();
    let config = match args.config() {
        Ok(c) => c,
        Err(e) => return config_error("cluster", e),
    };
    block_on("cluster", async {
        let cluster = match oak_cluster::Cluster::open(config).await {
            Ok(c) => c,
            Err(e) => return config_error("cluster", format!("{e:#}")),
        };
        match cluster.run(shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("oakestra cluster: {e:#}");
                ExitCode::FAILURE
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::ClusterArgs;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ClusterArgs,
    }

    fn config(extra: &[&str]) -> Result<oak_cluster::ClusterConfig, String> {
        let base = ["oakestra", "--name", "c1", "--root-channel", "127.0.0.1:50052", "--token", "t"];
        Cli::try_parse_from(base.iter().chain(extra)).unwrap().args.config()
    }

    #[test]
    fn silent_workers_are_forgotten_after_an_hour_unless_told_otherwise() {
        let timing = config(&[]).unwrap().timing;
        assert_eq!(timing.node_forget_after.as_secs(), 3600);
        assert_eq!(config(&["--node-forget-after", "120"]).unwrap().timing.node_forget_after.as_secs(), 120);
        let err = config(&["--node-forget-after", "5"]).unwrap_err();
        assert!(err.contains("longer than --worker-timeout"), "{err}");
        assert!(config(&["--node-forget-after", "0"]).unwrap_err().contains("--node-forget-after"));
    }

    #[test]
    fn worker_timeout_defaults_to_15s_has_an_alias_and_is_bounded() {
        assert_eq!(config(&[]).unwrap().timing.node_timeout, std::time::Duration::from_secs(15));
        assert_eq!(config(&["--worker-timeout", "2.5"]).unwrap().timing.node_timeout.as_millis(), 2500);
        assert_eq!(config(&["--node-timeout", "7"]).unwrap().timing.node_timeout.as_secs(), 7);
        for bad in ["0", "-3", "NaN", "inf", "601"] {
            let err = config(&[&format!("--worker-timeout={bad}")]).unwrap_err();
            assert!(err.contains("--worker-timeout"), "{bad}: {err}");
        }
        assert!(config(&["--worker-timeout", "600"]).is_ok());
        let not_a_number = Cli::try_parse_from(["oakestra", "--name", "c", "--worker-timeout", "soon"]);
        assert!(not_a_number.is_err());
    }
}
