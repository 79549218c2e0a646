//! `oakestra root`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use oak_core::quotas::Quotas;

use super::{block_on, config_error, init_logging, shutdown_signal};

/// Shorter would count a cluster lost between two of its keepalives (one a second).
const MIN_CLUSTER_TIMEOUT: f64 = 2.0;
/// A week: longer is a typo, not a policy.
const MAX_CLUSTER_TIMEOUT: f64 = 7.0 * 24.0 * 3600.0;

/// `--store-sync`: SQLite's `synchronous` setting for the root's database.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreSync {
    Normal,
    Full,
}

#[derive(Args)]
pub struct RootArgs {
    /// Port of the public REST API.
    #[arg(long, default_value_t = 10000, env = "OAKESTRA_API_PORT")]
    pub api_port: u16,
    /// Address the REST API and the cluster channel listen on.
    #[arg(long, default_value = "0.0.0.0", env = "OAKESTRA_API_ADDR")]
    pub api_addr: std::net::IpAddr,
    /// Port serving the web dashboard (and the API it calls) besides the API port; 0: only on
    /// the API port.
    #[arg(long, default_value_t = 0, env = "OAKESTRA_DASHBOARD_PORT")]
    pub dashboard_port: u16,
    /// Port clusters dial (the cluster channel).
    #[arg(long, default_value_t = 50052, env = "OAKESTRA_CLUSTER_PORT")]
    pub cluster_port: u16,
    /// Directory of the root's database and key material.
    #[arg(long, default_value = "/var/lib/oakestra/root", env = "OAKESTRA_DATA_DIR")]
    pub data_dir: PathBuf,
    /// What an answered request survives: `normal` (a crash of the root process; the database's
    /// log is synced at checkpoints) or `full` (a power cut too; one sync per group commit).
    #[arg(long, value_enum, default_value_t = StoreSync::Normal, env = "OAKESTRA_STORE_SYNC")]
    pub store_sync: StoreSync,
    /// Password of the `Admin` user created at first start (default: `Admin` if the API listens
    /// on loopback only, else a generated one written to `<data-dir>/admin-password`).
    #[arg(long, env = "OAKESTRA_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
    /// Roles besides Admin that may submit privileged containers and host ports below 1024 or of
    /// the orchestrator (comma-separated, e.g. `Organization_Admin,Application_Provider`).
    #[arg(long, env = "OAKESTRA_PRIVILEGED_ROLES", value_delimiter = ',')]
    pub privileged_roles: Vec<String>,
    /// Seconds a cluster may stay silent (counted from the last frame the root received from
    /// it; connected clusters send one at least every second) before it is lost and its
    /// instances are placed on other clusters. At least 2.
    #[arg(long, default_value_t = 30.0, env = "OAKESTRA_CLUSTER_TIMEOUT")]
    pub cluster_timeout: f64,
    /// Per-user quotas (Admins are exempt): services, instances and service IPs one user may hold.
    #[command(flatten)]
    pub quotas: QuotaArgs,
    #[command(flatten)]
    pub tls: ApiTlsArgs,
    /// Token Prometheus presents (`Authorization: Bearer <token>`) to read `/metrics` when the
    /// API listens beyond loopback; without one only an Admin's access token reads it there.
    #[arg(long, env = "OAKESTRA_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// File the root keeps the scrape targets of every tier in, for Prometheus' file-based
    /// service discovery (default `<data-dir>/prometheus-targets.json`; empty: none).
    #[arg(long, env = "OAKESTRA_PROMETHEUS_SD_FILE")]
    pub prometheus_sd_file: Option<PathBuf>,
}

/// The scrape-targets file `--prometheus-sd-file` asks for (an empty path: none).
pub fn sd_file(flag: Option<PathBuf>, data_dir: &std::path::Path) -> Option<PathBuf> {
    match flag {
        None => Some(data_dir.join(oak_root::PROMETHEUS_TARGETS_FILE)),
        Some(p) if p.as_os_str().is_empty() => None,
        Some(p) => Some(p),
    }
}

/// HTTPS for the public API and the dashboard.
#[derive(Args, Clone, Default)]
pub struct ApiTlsArgs {
    /// Serve the API (and the dashboard) over HTTPS with this certificate chain (PEM, leaf
    /// first); re-read on SIGHUP. Without it the API is plain HTTP.
    #[arg(long, requires = "tls_key", env = "OAKESTRA_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert", env = "OAKESTRA_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
}

impl ApiTlsArgs {
    /// The certificate to serve, if HTTPS was asked for; an unusable file is a configuration
    /// error naming it.
    pub fn load(&self) -> Result<Option<std::sync::Arc<oak_tls::ReloadableCert>>, String> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                oak_tls::ReloadableCert::load(cert, key).map(Some).map_err(|e| format!("--tls-cert/--tls-key: {e}"))
            }
            (None, None) => Ok(None),
            _ => Err("--tls-cert and --tls-key go together".into()),
        }
    }

    /// `https` with a certificate, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls_cert.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

#[derive(Args, Clone)]
pub struct QuotaArgs {
    /// Services one user may hold.
    #[arg(long, default_value_t = Quotas::default().services, env = "OAKESTRA_QUOTA_SERVICES")]
    pub quota_services: usize,
    /// Instances one user's services may have together.
    #[arg(long, default_value_t = Quotas::default().instances, env = "OAKESTRA_QUOTA_INSTANCES")]
    pub quota_instances: usize,
    /// Round-robin and closest service IPs one user's services may hold together.
    #[arg(long, default_value_t = Quotas::default().service_ips, env = "OAKESTRA_QUOTA_SERVICE_IPS")]
    pub quota_service_ips: usize,
}

impl Default for QuotaArgs {
    fn default() -> Self {
        let q = Quotas::default();
        QuotaArgs { quota_services: q.services, quota_instances: q.instances, quota_service_ips: q.service_ips }
    }
}

impl RootArgs {
    pub fn config(&self) -> Result<oak_root::RootConfig, String> {
        let cluster_timeout = self.cluster_timeout;
        if !(cluster_timeout.is_finite() && (MIN_CLUSTER_TIMEOUT..=MAX_CLUSTER_TIMEOUT).contains(&cluster_timeout)) {
            return Err(format!(
                "--cluster-timeout must be between {MIN_CLUSTER_TIMEOUT} and {MAX_CLUSTER_TIMEOUT} seconds, got {cluster_timeout}"
            ));
        }
        Ok(oak_root::RootConfig {
            api_addr: SocketAddr::new(self.api_addr, self.api_port),
            channel_addr: SocketAddr::new(self.api_addr, self.cluster_port),
            data_dir: self.data_dir.clone(),
            store_durability: match self.store_sync {
                StoreSync::Normal => oak_root::Durability::Normal,
                StoreSync::Full => oak_root::Durability::Full,
            },
            admin_password: self.admin_password.clone(),
            fleet: oak_root::fleet::FleetConfig {
                quotas: Quotas {
                    services: self.quotas.quota_services,
                    instances: self.quotas.quota_instances,
                    service_ips: self.quotas.quota_service_ips,
                },
                cluster_timeout: std::time::Duration::from_secs_f64(cluster_timeout),
                ..Default::default()
            },
            privileged_roles: self.privileged_roles.clone(),
        })
    }
}

pub fn run(args: RootArgs) -> ExitCode {
    init_logging();
    let config = match args.config() {
        Ok(c) => c,
        Err(e) => return config_error("root", e),
    };
    let (api_addr, dashboard_port) = (args.api_addr, args.dashboard_port);
    let metrics_token = args.metrics_token.clone();
    let sd = sd_file(args.prometheus_sd_file.clone(), &args.data_dir);
    let cert = match args.tls.load() {
        Ok(c) => c,
        Err(e) => return config_error("root", e),
    };
    block_on("root", async move {
        let mut root = match oak_root::Root::open(config).await {
            Ok(root) => root,
            Err(e) => return config_error("root", format!("{e:#}")),
        };
        root.set_metrics_token(metrics_token);
        root.set_prometheus_sd_file(sd);
        if let Some(cert) = cert {
            root.use_tls(cert);
        }
        if dashboard_port != 0 {
            let addr = SocketAddr::new(api_addr, dashboard_port);
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => root.add_listener(l),
                Err(e) => {
                    eprintln!("oakestra root: cannot listen for the dashboard on {addr}: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        match root.serve(shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("oakestra root: {e:#}");
                ExitCode::FAILURE
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::RootArgs;

    #[test]
    fn scrape_targets_go_to_the_data_dir_unless_told_otherwise() {
        let dir = std::path::Path::new("/d");
        assert_eq!(super::sd_file(None, dir), Some(dir.join("prometheus-targets.json")));
        assert_eq!(super::sd_file(Some("/x/t.json".into()), dir), Some("/x/t.json".into()));
        assert_eq!(super::sd_file(Some("".into()), dir), None, "empty: none");
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: RootArgs,
    }

    #[test]
    fn privileged_roles_are_a_comma_separated_list() {
        let parse = |extra: &[&str]| {
            Cli::try_parse_from(["oakestra"].iter().chain(extra)).unwrap().args.config().unwrap().privileged_roles
        };
        assert!(parse(&[]).is_empty(), "only Admin unless told otherwise");
        let roles = parse(&["--privileged-roles", "Organization_Admin,Application_Provider"]);
        assert_eq!(roles, ["Organization_Admin", "Application_Provider"]);
    }

    #[test]
    fn the_store_sync_is_normal_unless_full_is_asked_for() {
        let parse = |extra: &[&str]| Cli::try_parse_from(["oakestra"].iter().chain(extra)).map(|c| c.args.config());
        let durability = |extra: &[&str]| parse(extra).unwrap().unwrap().store_durability;
        assert_eq!(durability(&[]), oak_root::Durability::Normal);
        assert_eq!(durability(&["--store-sync", "full"]), oak_root::Durability::Full);
        let e = parse(&["--store-sync", "always"]).err().unwrap().to_string();
        assert!(e.contains("--store-sync") && e.contains("normal, full"), "{e}");
    }

    #[test]
    fn the_cluster_timeout_is_validated() {
        let parse = |extra: &[&str]| Cli::try_parse_from(["oakestra"].iter().chain(extra)).unwrap().args.config();
        assert_eq!(parse(&[]).unwrap().fleet.cluster_timeout, std::time::Duration::from_secs(30));
        assert_eq!(
            parse(&["--cluster-timeout", "2.5"]).unwrap().fleet.cluster_timeout,
            std::time::Duration::from_millis(2500)
        );
        for bad in ["1", "0", "-3", "NaN", "inf", "1e9"].map(|b| format!("--cluster-timeout={b}")) {
            let e = parse(&[bad.as_str()]).unwrap_err();
            assert!(e.contains("--cluster-timeout must be between 2 and 604800 seconds"), "{bad}: {e}");
        }
        assert!(Cli::try_parse_from(["oakestra", "--cluster-timeout", "soon"]).is_err());
    }
}
