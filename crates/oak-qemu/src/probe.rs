//! What the worker checks before it offers `unikernel`: the QEMU binary of its architecture
//! runs, and the accelerator initialises.
//!
//! `auto` uses TCG and says so: on some hosts `/dev/kvm` opens and KVM initialises, yet guests
//! hang after the firmware, and proving KVM would need a probe guest this crate does not ship.
//! Pass `kvm` to use KVM (checked to initialise at start-up).

use std::path::PathBuf;
use std::process::Stdio;
use std::str::FromStr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::Accel;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelChoice {
    Kvm,
    Tcg,
    Auto,
}

impl FromStr for AccelChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kvm" => Ok(Self::Kvm),
            "tcg" => Ok(Self::Tcg),
            "auto" => Ok(Self::Auto),
            other => Err(format!("{other:?} is not an accelerator (kvm, tcg, auto)")),
        }
    }
}

/// A usable QEMU: its binary, the accelerator and a warning to log, if any.
#[derive(Debug, Clone)]
pub struct Probed {
    pub binary: PathBuf,
    pub accel: Accel,
    pub warning: Option<String>,
}

/// The QEMU binary for a node architecture (`amd64`, `arm64`).
pub fn binary_for(arch: &str) -> Result<&'static str, String> {
    match arch {
        "amd64" => Ok("qemu-system-x86_64"),
        "arm64" => Ok("qemu-system-aarch64"),
        other => Err(format!("no QEMU system emulator is known for architecture {other:?}")),
    }
}

/// Checks the QEMU of `arch` and the accelerator; the error says why unikernels cannot run.
pub async fn probe(arch: &str, choice: AccelChoice) -> Result<Probed, String> {
    let name = binary_for(arch)?;
    let binary = find_in_path(name).ok_or_else(|| format!("{name} is not installed (not found in PATH)"))?;
    let accel = match choice {
        AccelChoice::Tcg | AccelChoice::Auto => Accel::Tcg,
        AccelChoice::Kvm => Accel::Kvm,
    };
    if accel == Accel::Kvm {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .map_err(|e| format!("--unikernel-accel kvm: cannot open /dev/kvm: {e}"))?;
    }
    start_and_quit(&binary, accel).await.map_err(|e| format!("{name} -accel {}: {e}", accel.as_str()))?;
    let warning = (choice == AccelChoice::Auto).then(|| {
        "unikernels run with TCG (emulation, slow): --unikernel-accel auto does not trust KVM without a \
         probe guest; pass --unikernel-accel kvm to use it"
            .to_string()
    });
    Ok(Probed { binary, accel, warning })
}

/// Starts QEMU with no machine and quits it through the monitor on stdin.
async fn start_and_quit(binary: &std::path::Path, accel: Accel) -> Result<(), String> {
    let mut cmd = Command::new(binary);
    cmd.args([
        "-machine",
        "none",
        "-accel",
        accel.as_str(),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-S",
        "-monitor",
        "stdio",
    ])
    // The confinement every VM gets: a QEMU without `-runas` or the seccomp sandbox is refused here.
    .args(crate::command::confinement(crate::runtime::VM_UID_BASE))
    .stdin(Stdio::piped())
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| format!("cannot start: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"quit\n").await;
    }
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .map_err(|_| "did not start and quit within 20 s".to_string())?
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(format!("exited with {}: {}", out.status, err.trim()))
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accelerator_names() {
        assert_eq!("kvm".parse::<AccelChoice>(), Ok(AccelChoice::Kvm));
        assert_eq!("auto".parse::<AccelChoice>(), Ok(AccelChoice::Auto));
        assert!("hvf".parse::<AccelChoice>().unwrap_err().contains("kvm, tcg, auto"));
        assert!(binary_for("riscv64").is_err());
    }

    #[tokio::test]
    async fn an_unknown_architecture_is_refused_with_the_reason() {
        let err = probe("s390x", AccelChoice::Tcg).await.unwrap_err();
        assert!(err.contains("s390x"), "{err}");
    }
}
