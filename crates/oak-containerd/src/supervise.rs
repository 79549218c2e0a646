//! A containerd of the worker's own, for nodes where none runs: started from the installed
//! `containerd` binary with its state, config and socket under the worker's data directory, and
//! restarted if it dies. Stopping it leaves running containers alone (their shims keep them), so
//! a restarted worker adopts them through the new containerd.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::watch;

/// Paths of an own containerd under `<data_dir>/containerd`.
#[derive(Debug, Clone)]
pub struct OwnContainerd {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl OwnContainerd {
    pub fn under(data_dir: &Path) -> Self {
        let dir = data_dir.join("containerd");
        Self {
            socket: dir.join("containerd.sock"),
            config: dir.join("config.toml"),
            log: dir.join("containerd.log"),
            dir,
        }
    }

    /// The configuration: everything under `dir`, CRI off (a worker does not need Kubernetes').
    pub fn config_text(&self) -> String {
        let q = |p: &Path| p.display().to_string().replace('\\', "\\\\").replace('"', "\\\"");
        format!(
            "version = 2\nroot = \"{}\"\nstate = \"{}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\n[grpc]\n  address = \"{}\"\n\n[ttrpc]\n  address = \"{}\"\n",
            q(&self.dir.join("root")),
            q(&self.dir.join("state")),
            q(&self.socket),
            q(&self.dir.join("containerd.sock.ttrpc")),
        )
    }
}

/// Whether a containerd binary is on the PATH.
pub fn containerd_installed() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join("containerd").is_file()))
}

/// Starts the own containerd and keeps it running until `stop` turns true; returns once its
/// socket answers (or with the reason it does not).
pub async fn start(own: OwnContainerd, mut stop: watch::Receiver<bool>) -> Result<tokio::task::JoinHandle<()>, String> {
    std::fs::create_dir_all(&own.dir).map_err(|e| format!("cannot create {}: {e}", own.dir.display()))?;
    std::fs::write(&own.config, own.config_text())
        .map_err(|e| format!("cannot write {}: {e}", own.config.display()))?;
    let mut child = spawn(&own)?;
    wait_for_socket(&own.socket, &mut child).await.map_err(|e| format!("{e} (see {})", own.log.display()))?;
    tracing::info!(socket = %own.socket.display(), "started the worker's own containerd");
    Ok(tokio::spawn(async move {
        let mut backoff = Duration::from_millis(500);
        loop {
            tokio::select! {
                status = child.wait() => {
                    tracing::warn!(?status, log = %own.log.display(), "containerd exited; restarting it");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    match spawn(&own) {
                        Ok(c) => child = c,
                        Err(e) => tracing::error!(error = %e, "cannot restart containerd"),
                    }
                }
                _ = stop.changed() => {
                    terminate(&mut child).await;
                    return;
                }
            }
        }
    }))
}

fn spawn(own: &OwnContainerd) -> Result<Child, String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&own.log)
        .map_err(|e| format!("cannot open {}: {e}", own.log.display()))?;
    let err = log.try_clone().map_err(|e| e.to_string())?;
    Command::new("containerd")
        .arg("--config")
        .arg(&own.config)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start containerd: {e}"))
}

async fn wait_for_socket(socket: &Path, child: &mut Child) -> Result<(), String> {
    for _ in 0..200 {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("containerd exited at start ({status})"));
        }
        if tokio::net::UnixStream::connect(socket).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("containerd did not open {} within 10 s", socket.display()))
}

async fn terminate(child: &mut Child) {
    if let Some(pid) = child.id() {
        // SAFETY: signalling a child process we own by its pid.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = child.kill().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_everything_under_the_data_dir() {
        let own = OwnContainerd::under(Path::new("/var/lib/oakestra/worker"));
        let text = own.config_text();
        assert!(text.contains("root = \"/var/lib/oakestra/worker/containerd/root\""));
        assert!(text.contains("address = \"/var/lib/oakestra/worker/containerd/containerd.sock\""));
        assert!(text.contains("io.containerd.grpc.v1.cri"));
    }
}
