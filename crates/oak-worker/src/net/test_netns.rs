//! For tests that wire for real: they need root, and run in a network namespace of their own so
//! the machine's links stay out of reach.

/// Whether the test can run (as root). Otherwise it is skipped with a note, except under
/// `CI=true`, where a missing privilege fails it.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let msg = format!("skipped {test}: needs root");
    assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "{msg}");
    eprintln!("{msg}");
    false
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
