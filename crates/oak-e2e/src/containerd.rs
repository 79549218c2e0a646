//! A containerd of the test's own (state, content and socket in a temporary directory), so
//! tests need no system service and cannot disturb one.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::procs::{terminate, wait_until};
use crate::require_tool;

pub struct Containerd {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Containerd {
    /// Starts containerd and waits until its socket accepts connections.
    pub fn start() -> Result<Containerd> {
        let binary = require_tool("containerd")?;
        let dir = tempfile::Builder::new().prefix("oak-e2e-containerd-").tempdir_in("/var/tmp")?;
        let socket = dir.path().join("containerd.sock");
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n",
                root = dir.path().join("root").display(),
                state = dir.path().join("state").display(),
                sock = socket.display(),
            ),
        )?;
        let log = std::fs::File::create(dir.path().join("containerd.log"))?;
        let child = Command::new(binary)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting containerd")?;
        let mut me = Containerd { child, socket, _dir: dir };
        wait_until("containerd's socket", Duration::from_secs(20), Duration::from_millis(50), || {
            if let Some(status) = me.child.try_wait()? {
                anyhow::bail!("containerd exited at start: {status}");
            }
            Ok(std::os::unix::net::UnixStream::connect(&me.socket).ok().map(|_| ()))
        })?;
        Ok(me)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// containerd's own log (gone with the temporary directory on drop: copy it to keep it).
    pub fn log_path(&self) -> PathBuf {
        self._dir.path().join("containerd.log")
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = terminate(&mut self.child, Duration::from_secs(10));
    }
}
