//! Whether a test that needs the machine (root, system tools, devices) can run here.
//!
//! Every such test asks [`can_run`] first. On a developer machine a missing prerequisite skips the
//! test with a `SKIPPED: <reason>` line on stderr; under `CI=true` (which `.ci/run` exports) it
//! fails the test instead, so a broken CI setup can never pass by skipping.

use std::path::{Path, PathBuf};

/// Something a test needs from the machine it runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need<'a> {
    /// Effective user id 0 (network namespaces, iptables, containerd, TUN devices).
    Root,
    /// A program on `PATH` (or in the sbin directories), e.g. `containerd` or `mosquitto`.
    Tool(&'a str),
    /// A file or device that must exist, e.g. `/dev/net/tun`.
    Path(&'a str),
}

/// True when the environment says this is a CI run (`CI=true` or `CI=1`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Decides whether the calling test can run. All of `needs` present → `true`. Otherwise under
/// CI this panics naming everything missing (the test fails), elsewhere it prints
/// `SKIPPED: <test>: <reason>` and answers `false`, and the test returns early.
pub fn can_run(test: &str, needs: &[Need<'_>]) -> bool {
    match verdict(test, &missing(needs), in_ci()) {
        Ok(run) => run,
        Err(message) => panic!("{message}"),
    }
}

/// What of `needs` this machine lacks, each with how to fix it.
pub fn missing(needs: &[Need<'_>]) -> Vec<String> {
    let mut out = Vec::new();
    for need in needs {
        match *need {
            // SAFETY: geteuid has no preconditions.
            Need::Root if unsafe { libc::geteuid() } != 0 => out.push("needs root".to_string()),
            Need::Tool(tool) if which(tool).is_none() => {
                out.push(format!("`{tool}` missing (apt-get install -y {})", debian_package(tool)))
            }
            Need::Path(path) if !Path::new(path).exists() => out.push(format!("{path} does not exist")),
            _ => {}
        }
    }
    out
}

/// The decision itself: run (`Ok(true)`), skip (`Ok(false)`, after printing why) or fail in CI
/// (`Err` with the message).
pub fn verdict(test: &str, missing: &[String], ci: bool) -> Result<bool, String> {
    if missing.is_empty() {
        return Ok(true);
    }
    let reason = missing.join("; ");
    if ci {
        return Err(format!("{test}: prerequisites missing under CI=true: {reason} (run scripts/test.sh as root)"));
    }
    eprintln!("SKIPPED: {test}: {reason}");
    Ok(false)
}

/// `tool`'s path: as given if it contains `/`, else the first match on `PATH` or in the sbin
/// directories (which a non-login root shell may lack on `PATH`).
pub fn which(tool: &str) -> Option<PathBuf> {
    if tool.contains('/') {
        let p = PathBuf::from(tool);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The Debian package providing `tool`, for messages that say how to fix the machine.
pub fn debian_package(tool: &str) -> &str {
    match tool {
        "busybox" => "busybox-static",
        "ip" => "iproute2",
        "ctr" | "containerd" | "containerd-shim-runc-v2" => "containerd",
        "ping" => "iputils-ping",
        "nsenter" | "unshare" => "util-linux",
        "timeout" => "coreutils",
        "mosquitto_pub" | "mosquitto_sub" => "mosquitto-clients",
        "mosquitto_passwd" => "mosquitto",
        "promtool" => "prometheus",
        // Debian's iptables ships the nf_tables ebtables.
        "ebtables" | "ebtables-restore" => "iptables",
        other => other,
    }
}

/// Runs `promtool check metrics` (lints of the Prometheus text format and naming) on `text`.
/// `None` when promtool cannot run here (skipped as by [`can_run`]; under CI that panics), else
/// whether it passed, with promtool's complaints.
pub fn promtool_check_metrics(test: &str, text: &str) -> Option<Result<(), String>> {
    use std::io::Write;
    if !can_run(test, &[Need::Tool("promtool")]) {
        return None;
    }
    let mut child = std::process::Command::new(which("promtool")?)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{test}: cannot start promtool: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(text.as_bytes()).unwrap_or_else(|e| panic!("{test}: cannot feed promtool: {e}"));
    }
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("{test}: promtool failed to run: {e}"));
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Some(if out.status.success() { Ok(()) } else { Err(said) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_when_nothing_is_missing() {
        assert_eq!(verdict("t", &[], true), Ok(true));
        assert_eq!(verdict("t", &[], false), Ok(true));
        assert!(missing(&[Need::Tool("sh"), Need::Path("/")]).is_empty());
    }

    #[test]
    fn skips_locally_and_fails_in_ci() {
        let gone = missing(&[Need::Tool("no-such-tool-oak"), Need::Path("/no/such/path-oak")]);
        assert_eq!(gone.len(), 2, "{gone:?}");
        assert_eq!(verdict("t", &gone, false), Ok(false));
        let err = verdict("my_test", &gone, true).unwrap_err();
        assert!(
            err.contains("my_test") && err.contains("no-such-tool-oak") && err.contains("/no/such/path-oak"),
            "{err}"
        );
    }

    #[test]
    fn missing_tools_name_their_package() {
        assert!(missing(&[Need::Tool("mosquitto_sub-nope")])[0].contains("apt-get install -y mosquitto_sub-nope"));
        assert_eq!(debian_package("ctr"), "containerd");
        assert_eq!(debian_package("promtool"), "prometheus");
    }

    #[test]
    fn promtool_tells_good_metrics_from_bad() {
        let good = "# HELP oak_things_total Things.\n# TYPE oak_things_total counter\noak_things_total 3\n";
        let Some(verdict) = promtool_check_metrics("promtool_tells_good_metrics_from_bad", good) else { return };
        assert_eq!(verdict, Ok(()));
        // A counter without `_total` and a family without HELP are what promtool lints.
        let bad = "# TYPE oak_things counter\noak_things 3\n";
        let verdict = promtool_check_metrics("promtool_tells_good_metrics_from_bad", bad).unwrap();
        assert!(verdict.is_err(), "{verdict:?}");
    }
}
