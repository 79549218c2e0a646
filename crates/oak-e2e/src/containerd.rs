//! A containerd of the test's own (state, content and socket in a temporary directory), so
//! tests need no system service and cannot disturb one. Fault tests kill it (SIGKILL, its
//! shims and containers survive) and start it again on the same directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::procs::{terminate, wait_until};
use crate::require_tool;

pub struct Containerd {
    /// `None` after [`Containerd::kill`] until [`Containerd::restart`].
    child: Option<Child>,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Containerd {
    /// Starts containerd and waits until its socket accepts connections.
    pub fn start() -> Result<Containerd> {
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
        let mut me = Containerd { child: None, socket, _dir: dir };
        me.restart()?;
        Ok(me)
    }

    /// Starts containerd again on the same directory (after [`Containerd::kill`]) and waits
    /// for its socket; it finds the shims of the containers that kept running.
    pub fn restart(&mut self) -> Result<()> {
        anyhow::ensure!(self.child.is_none(), "containerd is still running");
        let binary = require_tool("containerd")?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path())?;
        // A killed containerd leaves its socket file behind: connecting to it must not pass.
        let _ = std::fs::remove_file(&self.socket);
        let child = Command::new(binary)
            .arg("--config")
            .arg(self._dir.path().join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting containerd")?;
        self.child = Some(child);
        wait_until("containerd's socket", Duration::from_secs(20), Duration::from_millis(50), || {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().transpose()).transpose()? {
                anyhow::bail!("containerd exited at start: {status}");
            }
            Ok(std::os::unix::net::UnixStream::connect(&self.socket).ok().map(|_| ()))
        })
    }

    /// SIGKILL, as a crash: no clean-up of its own; the shims keep the containers running.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
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
        if let Some(child) = &mut self.child {
            let _ = terminate(child, Duration::from_secs(10));
        }
    }
}
