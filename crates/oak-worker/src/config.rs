use std::path::PathBuf;
use std::time::Duration;

use crate::WorkerError;

/// Port of the cluster's node API (`POST /api/node/register`).
pub const DEFAULT_CLUSTER_PORT: u16 = 10100;

/// How often node information and instance usage are published (spec §5.5).
pub const DEFAULT_REPORT_INTERVAL: Duration = Duration::from_secs(2);

/// What one worker needs to know; everything else it learns from its cluster.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Host name or IP of the cluster orchestrator.
    pub cluster_address: String,
    pub cluster_port: u16,
    /// Where the worker keeps its identity (`node.json`) and desired instances
    /// (`instances.json`); one directory per worker.
    pub data_dir: PathBuf,
    /// The cluster's worker join token (`oakn.v1.<CA SHA-256>.<secret>`): the CA fingerprint
    /// decides whom the worker trusts, the secret is what it proves.
    pub join_token: String,
    /// Node name (`host`), what `direct` placement constraints match.
    pub node_name: String,
    /// Broker host to use instead of the one the cluster names (e.g. behind NAT).
    pub mqtt_host: Option<String>,
    pub report_interval: Duration,
    /// Whether the worker runs the overlay network (off unless the tier turns it on: it needs
    /// root, a TUN device and iptables).
    pub overlay: bool,
    /// Tunnel port and public address of the overlay.
    pub overlay_config: crate::net::OverlayConfig,
    /// Where `/metrics` listens (`None`: nowhere; the tier's default is port 10190).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The scrape token `/metrics` asks for when it listens beyond loopback.
    pub metrics_token: Option<String>,
}

impl WorkerConfig {
    /// A configuration with the defaults: port 10100, the host name as node name, 2 s reports,
    /// no overlay.
    pub fn new(
        cluster_address: impl Into<String>,
        data_dir: impl Into<PathBuf>,
        join_token: impl Into<String>,
    ) -> Self {
        Self {
            cluster_address: cluster_address.into(),
            cluster_port: DEFAULT_CLUSTER_PORT,
            data_dir: data_dir.into(),
            join_token: join_token.into(),
            node_name: default_node_name(),
            mqtt_host: None,
            report_interval: DEFAULT_REPORT_INTERVAL,
            overlay: false,
            overlay_config: crate::net::OverlayConfig::default(),
            metrics_addr: None,
            metrics_token: None,
        }
    }

    /// The parsed join token; checked before anything else, so a token the worker cannot use to
    /// verify its cluster never leaves the machine.
    pub(crate) fn token(&self) -> Result<oak_tls::JoinToken, WorkerError> {
        Ok(oak_tls::JoinToken::parse(&self.join_token, oak_tls::TokenKind::Node)?)
    }

    pub(crate) fn validate(&self) -> Result<(), WorkerError> {
        self.token()?;
        let problem = if self.cluster_address.trim().is_empty() {
            "the cluster address is empty"
        } else if self.cluster_port == 0 {
            "the cluster port is 0"
        } else if self.node_name.trim().is_empty() {
            "the node name is empty"
        } else if self.report_interval.is_zero() {
            "the report interval is 0"
        } else if self.data_dir.as_os_str().is_empty() {
            "the data directory is empty"
        } else {
            return Ok(());
        };
        Err(WorkerError::Config(problem.to_string()))
    }
}

/// The machine's host name, or `localhost` if it cannot be read.
pub fn default_node_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its full length; gethostname writes at most that much.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        let name = String::from_utf8_lossy(&buf[..end]).trim().to_string();
        if !name.is_empty() {
            return name;
        }
    }
    "localhost".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_validation() {
        let token = oak_tls::JoinToken::generate(oak_tls::TokenKind::Node, oak_tls::Fingerprint::of(b"ca"));
        let config = WorkerConfig::new("10.0.0.1", "/tmp/w", token.to_string());
        assert_eq!(config.cluster_port, 10100);
        assert_eq!(config.report_interval, Duration::from_secs(2));
        assert!(!config.node_name.is_empty());
        config.validate().unwrap();

        let mut bad = config.clone();
        bad.cluster_address = " ".into();
        assert_eq!(bad.validate().unwrap_err().to_string(), "invalid configuration: the cluster address is empty");
        let mut bad = config.clone();
        bad.report_interval = Duration::ZERO;
        assert!(bad.validate().is_err());
        let mut legacy = config;
        legacy.join_token = "oakn_0123456789abcdef0123456789abcdef0123456789abcdef".into();
        let e = legacy.validate().unwrap_err();
        assert!(matches!(e, WorkerError::Token(_)) && e.to_string().contains("no CA fingerprint"), "{e}");
    }
}
