//! The `unikernel` virtualization of a worker: a kernel archive (`.tar.gz` with `kernel`,
//! optionally `initramfs.cpio`, `cmdline` and `files/`) downloaded per node architecture from the
//! descriptor's `code`, run by `qemu-system-x86_64` / `qemu-system-aarch64` with KVM or TCG.
//! The serial console is the instance's log file; QMP stops it cleanly.

pub mod command;
pub mod extract;
pub mod fetch;
pub mod net;
mod probe;
pub mod qmp;
mod runtime;

pub use probe::{probe, AccelChoice, Probed};
pub use runtime::{QemuConfig, QemuRuntime, VM_UID_BASE};

/// How QEMU executes guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization (`/dev/kvm`).
    Kvm,
    /// QEMU's own translator: slower, runs everywhere.
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}
