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
    /// Worker join token issued by the cluster (`oakn.v1.<CA SHA-256>.<secret>`): the worker
    /// trusts only the cluster whose CA it names.
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
    /// Disable the overlay network (instances then share the node's network namespace).
    #[arg(long)]
    pub no_overlay: bool,
    /// The original NodeEngine's NetManager port; `-n -1` (what its seed scripts pass) turns
    /// the overlay off like `--no-overlay`, other values are accepted and ignored.
    #[arg(short = 'n', long = "netmanager-port", allow_hyphen_values = true, hide = true)]
    pub netmanager_port: Option<i64>,
    /// UDP port of the overlay tunnel between workers.
    #[arg(long, default_value_t = oak_worker::DEFAULT_TUNNEL_PORT, env = "OAKESTRA_TUNNEL_PORT")]
    pub tunnel_port: u16,
    /// IPv4 address other workers send tunnel traffic to (e.g. a NAT's forwarded address);
    /// defaults to the address of the interface that reaches the cluster.
    #[arg(long, env = "OAKESTRA_PUBLIC_ADDR")]
    pub public_addr: Option<std::net::Ipv4Addr>,
    /// Seconds between lookups of the automatic public address (without `--public-addr`);
    /// a change is reported to the cluster and peers switch to the new address.
    #[arg(long, default_value_t = oak_worker::DEFAULT_ADDRESS_CHECK.as_secs())]
    pub address_check: u64,
    /// INSECURE, for benchmarks and debugging only: run the overlay tunnel in clear, without
    /// keys, accepting packets from any sender (the default tunnel is authenticated and
    /// encrypted). Such a worker cannot exchange overlay traffic with encrypted workers.
    #[arg(long)]
    pub insecure_plaintext_overlay: bool,
    /// Seconds between node and instance reports.
    #[arg(long, default_value_t = 2.0)]
    pub report_interval: f64,
    /// containerd's gRPC socket. If nothing answers on the default one and `containerd` is
    /// installed, the worker starts its own under `<data-dir>/containerd`.
    #[arg(long, default_value = DEFAULT_CONTAINERD_SOCKET, env = "OAKESTRA_CONTAINERD_SOCKET")]
    pub containerd_socket: PathBuf,
    /// containerd namespace of this worker's containers.
    #[arg(long, default_value = "oakestra", env = "OAKESTRA_CONTAINERD_NAMESPACE")]
    pub containerd_namespace: String,
    /// Registry (`host:port`) to pull from over plain HTTP; repeatable. Loopback registries
    /// always are.
    #[arg(long = "insecure-registry", value_delimiter = ',', env = "OAKESTRA_INSECURE_REGISTRIES")]
    pub insecure_registries: Vec<String>,
    /// Beyond public addresses, where the worker may fetch images and kernels that tenants
    /// name: `ADDRESS[:PORT]`, `NETWORK/PREFIX` or `HOST[:PORT]`; repeatable. Loopback, private,
    /// link-local and other internal addresses are refused otherwise (an `--insecure-registry`
    /// is allowed too).
    #[arg(long = "fetch-allow", value_delimiter = ',', env = "OAKESTRA_FETCH_ALLOW")]
    pub fetch_allow: Vec<String>,
    /// Most processes and threads each container may have at once, so a fork bomb cannot
    /// exhaust the node's pids; 0: no limit.
    #[arg(long, default_value_t = oak_containerd::DEFAULT_PIDS_LIMIT, env = "OAKESTRA_PIDS_LIMIT")]
    pub pids_limit: u32,
    /// Offer the `unikernel` virtualization (QEMU). Also accepted as the original's `-u=true`.
    #[arg(short = 'u', long = "unikernel", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set,
          env = "OAKESTRA_UNIKERNEL")]
    pub unikernel: bool,
    /// QEMU accelerator for unikernels: `kvm`, `tcg`, or `auto` (TCG with a warning: KVM is only
    /// used when asked for, see the README).
    #[arg(long, default_value = "auto", value_parser = clap::value_parser!(oak_qemu::AccelChoice))]
    pub unikernel_accel: oak_qemu::AccelChoice,
    /// Port of the worker's Prometheus `/metrics`; 0 turns it off.
    #[arg(long, default_value_t = oak_worker::DEFAULT_METRICS_PORT, env = "OAKESTRA_METRICS_PORT")]
    pub metrics_port: u16,
    /// Address `/metrics` listens on.
    #[arg(long, default_value = "0.0.0.0", env = "OAKESTRA_METRICS_ADDR")]
    pub metrics_addr: std::net::IpAddr,
    /// Token Prometheus presents (`Authorization: Bearer <token>`) to read `/metrics` when it
    /// listens beyond loopback; without one such scrapes are refused.
    #[arg(long, env = "OAKESTRA_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
}

pub const DEFAULT_CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";

/// How the worker's container runtime is set up.
pub struct RuntimeArgs {
    pub containerd: oak_containerd::ContainerdConfig,
    /// Where fetches tenants name may go, for every runtime.
    pub egress: Arc<oak_core::egress::EgressPolicy>,
    pub default_socket: bool,
    /// The unikernel runtime's accelerator, when `--unikernel` asks for it.
    pub unikernel: Option<oak_qemu::AccelChoice>,
}

impl WorkerArgs {
    /// The worker's configuration and its container runtime's.
    pub fn configs(self) -> Result<(oak_worker::WorkerConfig, RuntimeArgs), String> {
        let namespace = self.containerd_namespace.trim().to_string();
        if namespace.is_empty() || !namespace.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
            return Err(format!("--containerd-namespace {namespace:?}: use letters, digits, '.', '_' or '-'"));
        }
        let insecure: Vec<String> =
            self.insecure_registries.iter().map(|r| r.trim().to_string()).filter(|r| !r.is_empty()).collect();
        let egress = Arc::new(fetch_policy(&self.fetch_allow, &insecure)?);
        let default_socket = self.containerd_socket.as_os_str() == DEFAULT_CONTAINERD_SOCKET;
        let socket = self.containerd_socket.clone();
        let pids_limit = (self.pids_limit > 0).then_some(self.pids_limit);
        let unikernel = self.unikernel.then_some(self.unikernel_accel);
        let config = self.config()?;
        let mut containerd = oak_containerd::ContainerdConfig::new(socket, namespace, config.data_dir.join("logs"));
        containerd.insecure_registries = insecure;
        containerd.egress = egress.clone();
        containerd.pids_limit = pids_limit;
        Ok((config, RuntimeArgs { containerd, egress, default_socket, unikernel }))
    }

    pub fn config(self) -> Result<oak_worker::WorkerConfig, String> {
        let addr = self.cluster_addr.filter(|a| !a.trim().is_empty()).ok_or("no cluster address: pass -a HOST")?;
        let token = read_token(self.token, self.token_file.as_deref(), "worker join token")?;
        // Before anything else: a token the worker cannot verify its cluster with is never used.
        oak_tls::JoinToken::parse(&token, oak_tls::TokenKind::Node).map_err(|e| e.to_string())?;
        if !(self.report_interval.is_finite() && self.report_interval > 0.0) {
            return Err("--report-interval must be a positive number of seconds".into());
        }
        let mut config = oak_worker::WorkerConfig::new(addr, self.data_dir, token);
        config.cluster_port = self.cluster_port;
        if let Some(name) = self.node_name {
            config.node_name = name;
        }
        config.mqtt_host = self.mqtt_host;
        config.overlay = !self.no_overlay && self.netmanager_port != Some(-1);
        if self.tunnel_port == 0 {
            return Err("--tunnel-port must not be 0".into());
        }
        if self.address_check == 0 {
            return Err("--address-check must be at least 1 second".into());
        }
        config.overlay_config = oak_worker::OverlayConfig {
            tunnel_port: self.tunnel_port,
            public_addr: self.public_addr,
            address_check: Duration::from_secs(self.address_check),
            insecure_plaintext: self.insecure_plaintext_overlay,
        };
        config.report_interval = Duration::from_secs_f64(self.report_interval);
        config.metrics_addr =
            (self.metrics_port != 0).then(|| std::net::SocketAddr::new(self.metrics_addr, self.metrics_port));
        config.metrics_token = self.metrics_token;
        Ok(config)
    }
}

/// The worker's dependencies: its container runtime (containerd) and where it reads the node.
/// Fails with a message naming the socket when no containerd can be reached or started.
pub async fn deps(
    config: &oak_worker::WorkerConfig,
    runtime: RuntimeArgs,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(oak_worker::WorkerDeps, Option<tokio::task::JoinHandle<()>>), String> {
    let (containerd, supervisor) =
        oak_containerd::ContainerdRuntime::open(runtime.containerd, &config.data_dir, runtime.default_socket, stop)
            .await
            .map_err(|e| e.to_string())?;
    if let Ok(version) = containerd.version().await {
        tracing::info!(%version, "using containerd");
    }
    let mut runtimes: Vec<Arc<dyn oak_runtime::Runtime>> = vec![Arc::new(containerd)];
    if let Some(accel) = runtime.unikernel {
        match unikernel_runtime(config, accel, runtime.egress.clone()).await {
            Ok(qemu) => runtimes.push(Arc::new(qemu)),
            Err(why) => tracing::warn!("unikernel is not offered: {why}"),
        }
    }
    let deps = oak_worker::WorkerDeps {
        runtimes,
        node_source: Arc::new(oak_worker::HostInfo::new(
            config.data_dir.clone(),
            config.cluster_address.clone(),
            config.cluster_port,
        )),
    };
    Ok((deps, supervisor))
}

/// `--fetch-allow` plus the insecure registries, which the operator named as registries to use.
fn fetch_policy(allow: &[String], insecure: &[String]) -> Result<oak_core::egress::EgressPolicy, String> {
    let mut entries = Vec::new();
    for entry in allow.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
        entries.push(oak_core::egress::Allow::parse(entry).map_err(|e| format!("--fetch-allow: {e}"))?);
    }
    for registry in insecure {
        entries.push(oak_core::egress::Allow::parse(registry).map_err(|e| format!("--insecure-registry: {e}"))?);
    }
    Ok(oak_core::egress::EgressPolicy::new(entries))
}

/// The node's architecture as the SLA's `arch` names it.
fn node_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The QEMU runtime, once QEMU of this architecture and the accelerator proved to work.
async fn unikernel_runtime(
    config: &oak_worker::WorkerConfig,
    accel: oak_qemu::AccelChoice,
    egress: Arc<oak_core::egress::EgressPolicy>,
) -> Result<oak_qemu::QemuRuntime, String> {
    let arch = node_arch();
    let probed = oak_qemu::probe(arch, accel).await?;
    if let Some(warning) = &probed.warning {
        tracing::warn!("{warning}");
    }
    let mut qemu = oak_qemu::QemuConfig::new(
        config.data_dir.join("unikernel"),
        config.data_dir.join("logs"),
        probed.binary.clone(),
        probed.accel,
        arch.to_string(),
    );
    qemu.egress = egress;
    let runtime = oak_qemu::QemuRuntime::open(qemu).await?;
    tracing::info!(binary = %probed.binary.display(), accel = probed.accel.as_str(), "unikernels offered");
    Ok(runtime)
}

pub fn run(args: WorkerArgs) -> ExitCode {
    init_logging();
    let (config, runtime) = match args.configs() {
        Ok(c) => c,
        Err(e) => return config_error("worker", e),
    };
    block_on("worker", async {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (deps, supervisor) = match deps(&config, runtime, stop_rx).await {
            Ok(d) => d,
            Err(e) => {
                eprintln!("oakestra worker: {e}");
                return ExitCode::FAILURE;
            }
        };
        let result = oak_worker::run(config, deps, shutdown_signal()).await;
        let _ = stop_tx.send(true);
        if let Some(supervisor) = supervisor {
            let _ = supervisor.await;
        }
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("oakestra worker: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use super::WorkerArgs;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: WorkerArgs,
    }

    /// A well-formed worker join token.
    const TOKEN: &str =
        "oakn.v1.0000000000000000000000000000000000000000000000000000000000000000.0123456789abcdef0123456789abcdef";

    fn config(extra: &[&str]) -> Result<oak_worker::WorkerConfig, String> {
        let base = ["oakestra", "-a", "127.0.0.1", "--token", TOKEN];
        Cli::try_parse_from(base.iter().chain(extra)).unwrap().args.config()
    }

    #[test]
    fn containers_get_a_pids_limit_of_1024_unless_told_otherwise() {
        let limit = |extra: &[&str]| {
            let base = ["oakestra", "-a", "127.0.0.1", "--token", TOKEN];
            Cli::try_parse_from(base.iter().chain(extra)).unwrap().args.configs().unwrap().1.containerd.pids_limit
        };
        assert_eq!(limit(&[]), Some(1024));
        assert_eq!(limit(&["--pids-limit", "64"]), Some(64));
        assert_eq!(limit(&["--pids-limit", "0"]), None, "0: no limit");
        let base = ["oakestra", "-a", "127.0.0.1", "--token", TOKEN, "--pids-limit", "-1"];
        assert!(Cli::try_parse_from(base).is_err(), "a negative limit is refused");
    }

    #[test]
    fn fetches_go_to_public_addresses_and_what_the_operator_allows() {
        use oak_core::egress::{Dest, EgressPolicy};
        let policy = |extra: &[&str]| -> Result<std::sync::Arc<EgressPolicy>, String> {
            let base = ["oakestra", "-a", "127.0.0.1", "--token", TOKEN];
            Cli::try_parse_from(base.iter().chain(extra)).unwrap().args.configs().map(|c| c.1.egress)
        };
        let loopback = Dest::Ip("127.0.0.1".parse().unwrap());
        assert!(policy(&[]).unwrap().check(loopback, 5000).is_err(), "nothing internal by default");
        let p = policy(&["--fetch-allow", "127.0.0.1:5000,10.0.0.0/8", "--insecure-registry", "reg.lan:5000"]).unwrap();
        assert!(p.check(loopback, 5000).is_ok());
        assert!(p.check(loopback, 10190).is_err());
        assert!(p.check(Dest::Ip("10.9.9.9".parse().unwrap()), 80).is_ok());
        assert!(p.check(Dest::Name("reg.lan"), 5000).is_ok(), "an insecure registry is one to use");
        let e = policy(&["--fetch-allow", "http://reg.lan"]).unwrap_err();
        assert!(e.starts_with("--fetch-allow: fetch allowance \"http://reg.lan\""), "{e}");
    }

    #[test]
    fn unikernels_are_asked_for_with_u_the_new_or_the_originals_way() {
        let uni = |extra: &[&str]| {
            let base = ["oakestra", "-a", "127.0.0.1", "--token", TOKEN];
            Cli::try_parse_from(base.iter().chain(extra)).map(|c| c.args.configs().unwrap().1.unikernel)
        };
        use oak_qemu::AccelChoice;
        assert_eq!(uni(&[]).unwrap(), None);
        assert_eq!(uni(&["-u"]).unwrap(), Some(AccelChoice::Auto));
        assert_eq!(uni(&["-u=true"]).unwrap(), Some(AccelChoice::Auto));
        assert_eq!(uni(&["-u=false"]).unwrap(), None);
        assert_eq!(uni(&["--unikernel", "--unikernel-accel", "tcg"]).unwrap(), Some(AccelChoice::Tcg));
        assert_eq!(uni(&["--unikernel=true", "--unikernel-accel", "kvm"]).unwrap(), Some(AccelChoice::Kvm));
        assert!(uni(&["-u", "--unikernel-accel", "hvf"]).is_err());
    }

    #[test]
    fn a_token_without_the_cluster_ca_is_refused_with_a_clear_message() {
        let legacy = ["oakestra", "-a", "127.0.0.1", "--token", "oakn_0123456789abcdef0123456789abcdef"];
        let e = Cli::try_parse_from(legacy).unwrap().args.config().unwrap_err();
        assert!(e.contains("no CA fingerprint") && e.contains("create a new token"), "{e}");
        let e = Cli::try_parse_from(["oakestra", "-a", "h", "--token", "t"]).unwrap().args.config().unwrap_err();
        assert!(e.contains("malformed worker join token"), "{e}");
    }

    #[test]
    fn metrics_listen_on_10190_of_every_address_unless_told_otherwise() {
        let c = config(&[]).unwrap();
        assert_eq!(c.metrics_addr, Some("0.0.0.0:10190".parse().unwrap()));
        assert_eq!(c.metrics_token, None);
        assert_eq!(config(&["--metrics-port", "0"]).unwrap().metrics_addr, None, "0 turns it off");
        let c = config(&["--metrics-port", "9999", "--metrics-addr", "127.0.0.1", "--metrics-token", "t"]).unwrap();
        assert_eq!((c.metrics_addr, c.metrics_token.as_deref()), (Some("127.0.0.1:9999".parse().unwrap()), Some("t")));
    }

    #[test]
    fn the_overlay_is_on_unless_turned_off_the_new_way_or_the_seeds_way() {
        assert!(config(&[]).unwrap().overlay);
        assert!(!config(&["--no-overlay"]).unwrap().overlay);
        assert!(!config(&["-n", "-1"]).unwrap().overlay);
        assert!(config(&["-n", "6000"]).unwrap().overlay);
    }

    #[test]
    fn the_automatic_public_address_is_looked_up_every_30_s_unless_told_otherwise() {
        let overlay = config(&[]).unwrap().overlay_config;
        assert_eq!(
            (overlay.address_check, overlay.public_addr, overlay.tunnel_port),
            (Duration::from_secs(30), None, 50103)
        );
        assert_eq!(config(&["--address-check", "2"]).unwrap().overlay_config.address_check, Duration::from_secs(2));
        assert!(config(&["--address-check", "0"]).unwrap_err().contains("--address-check"));
        assert!(config(&["--tunnel-port", "0"]).unwrap_err().contains("--tunnel-port"));
    }
}
