//! Flags of the server tiers and the glue that starts them: parse, validate (exit 64 with one
//! line before any socket is bound), set up logging, run until SIGINT/SIGTERM.

pub mod cluster;
pub mod root;
pub mod up;
pub mod worker;

use std::future::Future;
use std::process::ExitCode;

/// Exit code for invalid configuration (sysexits EX_USAGE), reported before any socket is bound.
pub const EXIT_CONFIG: u8 = 64;

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: log files and journals stay greppable (`grep deploy_id=…`).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).try_init();
}

/// Keeps the resident memory of long-running tiers close to what they use. glibc otherwise
/// keeps big freed buffers (a login's 19 MiB argon2 work area) in the heap of each thread's
/// arena for good: an idle root grew from 13 to 70 MB after a few logins. A fixed mmap threshold
/// maps such buffers and unmaps them when freed.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 * 1024 * 1024);
    }
}

/// Runs `body` on a multi-threaded runtime; its error is printed as `oakestra <tier>: …`.
pub fn block_on(tier: &str, body: impl Future<Output = ExitCode>) -> ExitCode {
    tune_allocator();
    match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt.block_on(body),
        Err(e) => {
            eprintln!("oakestra {tier}: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A configuration error: one line, exit 64.
pub fn config_error(tier: &str, e: impl std::fmt::Display) -> ExitCode {
    eprintln!("oakestra {tier}: {e}");
    ExitCode::from(EXIT_CONFIG)
}

/// Reads a token given inline or in a file (first line, trimmed).
pub fn read_token(inline: Option<String>, file: Option<&std::path::Path>, what: &str) -> Result<String, String> {
    let token = match (inline, file) {
        (Some(t), _) => t,
        (None, Some(path)) => {
            std::fs::read_to_string(path).map_err(|e| format!("cannot read the {what} from {}: {e}", path.display()))?
        }
        (None, None) => return Err(format!("no {what}: pass --token or --token-file")),
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        return Err(format!("the {what} is empty"));
    }
    Ok(token)
}

/// Resolves on SIGINT or SIGTERM, so every tier shuts down cleanly under systemd and Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
