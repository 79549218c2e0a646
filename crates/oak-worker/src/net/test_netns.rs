//! For tests that wire for real: they need root, and run in a network namespace of their own so
//! the machine's links stay out of reach.

use oak_testenv::Need::{Path, Root, Tool};

/// Whether the test can run (root, `ip`, `iptables`, `ebtables` and a TUN device), decided by
/// `oak_testenv::can_run`: skipped with a note on a developer machine, failed under `CI=true`.
pub fn root_or_skip(test: &str) -> bool {
    oak_testenv::can_run(
        test,
        &[Root, Tool("ip"), Tool("iptables"), Tool("ebtables"), Tool("ebtables-restore"), Path("/dev/net/tun")],
    )
}

/// Runs `f` on a thread of its own in a fresh network namespace (unshare moves only the calling
/// thread and what it starts); panics in `f` fail the caller.
pub fn in_own_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: unshare has no memory preconditions; the thread ends with the namespace.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare(CLONE_NEWNET)");
        f()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}
