//! The command-line client against a real root: `oakestra root` on a free local port, driven by
//! the `oakestra` binary exactly as a user would run it.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_oakestra");
/// The root refuses admin passwords shorter than 8 characters.
const ADMIN_PASSWORD: &str = "secret123";

/// A running root, killed when dropped so a failing assertion never leaves it behind.
struct RootProcess {
    child: Child,
    log: PathBuf,
}

impl Drop for RootProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RootProcess {
    fn start(dir: &Path) -> (Self, String) {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = dir.join("root.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            .args(["root", "--api-port", &port.to_string(), "--api-addr", "127.0.0.1", "--data-dir"])
            .arg(dir.join("data"))
            .args([
                "--cluster-port",
                &TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string(),
            ])
            .args(["--admin-password", ADMIN_PASSWORD])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap();
        let mut root = Self { child, log };
        root.wait_for_port(port);
        (root, format!("http://127.0.0.1:{port}"))
    }

    fn wait_for_port(&mut self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("root exited with {status}: {}", std::fs::read_to_string(&self.log).unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("root did not listen on {port} within 20 s: {}", std::fs::read_to_string(&self.log).unwrap_or_default());
    }
}

/// Runs the client with its own config directory, isolated from the user's environment.
struct Cli {
    config_dir: PathBuf,
    /// `--url`, or none: the saved login's root.
    url: Option<String>,
}

impl Cli {
    fn run(&self, args: &[&str]) -> Output {
        self.run_with_stdin(args, "")
    }

    fn run_with_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let mut command = Command::new(BIN);
        if let Some(url) = &self.url {
            command.arg("--url").arg(url);
        }
        let mut child = command
            .args(args)
            .env("OAKESTRA_CONFIG_DIR", &self.config_dir)
            .env_remove("OAKESTRA_URL")
            .env_remove("OAKESTRA_PASSWORD")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A command that exits without reading its input must fail on its own terms, not here.
        let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
        child.wait_with_output().unwrap()
    }

    /// Stdout of a command that must succeed.
    fn ok(&self, args: &[&str]) -> String {
        self.ok_with_stdin(args, "")
    }

    fn ok_with_stdin(&self, args: &[&str], stdin: &str) -> String {
        let out = self.run_with_stdin(args, stdin);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "oakestra {args:?} failed ({}): {stderr}", out.status);
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        let text = self.ok(&full);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("oakestra {full:?} printed no JSON ({e}): {text}"))
    }

    /// The single `error: …` line of a command that must fail with exit code 1.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(1), "oakestra {args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "oakestra {args:?} must print one line: {stderr:?}");
        assert!(stderr.starts_with("error: "), "{stderr}");
        stderr.trim_end().to_string()
    }
}

fn rows(table: &str) -> Vec<&str> {
    table.lines().skip(1).collect()
}

#[test]
fn client_commands_against_a_running_root() {
    let dir = tempfile::tempdir().unwrap();
    let (_root, url) = RootProcess::start(dir.path());
    let cli = Cli { config_dir: dir.path().join("config"), url: Some(url.clone()) };
    let sla = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/sla/clientsrvr.json");
    let sla = sla.to_str().unwrap();

    // Nothing works before logging in.
    let err = cli.fails(&["app", "list"]);
    assert!(err.contains("not logged in"), "{err}");

    let err = cli.fails(&["login", "-u", "Admin", "-p", "wrong-password"]);
    assert!(err.contains("401"), "{err}");
    // Without --password the password is the first line of stdin.
    let out = cli.ok_with_stdin(&["login", "-u", "Admin"], &format!("{ADMIN_PASSWORD}\n"));
    assert_eq!(out.trim(), format!("logged in to {url} as Admin"));
    let creds_path = cli.config_dir.join("credentials.json");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&creds_path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    // Applications.
    let out = cli.ok_with_stdin(&["app", "create", "-f", "-"], &std::fs::read_to_string(sla).unwrap());
    assert!(out.starts_with("ID "), "{out}");
    assert!(out.contains("clientsrvr"), "{out}");
    let out = cli.ok(&["app", "list"]);
    assert_eq!(rows(&out).len(), 1, "{out}");
    assert!(rows(&out)[0].contains("clientsrvr"), "{out}");
    let apps = cli.json(&["app", "list"]);
    assert_eq!(apps.as_array().map(Vec::len), Some(1), "{apps}");
    let app_id = apps[0]["_id"].as_str().unwrap().to_string();
    let out = cli.ok(&["app", "show", &app_id]);
    assert!(out.contains("clientsrvr"), "{out}");

    // Services.
    let out = cli.ok(&["service", "list"]);
    assert!(out.contains("clientsrvr.test.curl.test"), "{out}");
    assert!(out.contains("clientsrvr.test.nginx.test"), "{out}");
    let services = cli.json(&["service", "list", &app_id]);
    let id_of = |job: &str| {
        services.as_array().unwrap().iter().find(|s| s["job_name"] == job).unwrap()["_id"].as_str().unwrap().to_string()
    };
    let (nginx, curl) = (id_of("clientsrvr.test.nginx.test"), id_of("clientsrvr.test.curl.test"));

    let out = cli.ok(&["service", "scale", &nginx]);
    assert!(out.contains("instance 0"), "{out}");
    assert!(out.contains("TargetClusterNotActive"), "{out}");
    let out = cli.ok(&["service", "show", &nginx]);
    assert!(out.contains("clientsrvr.test.nginx.test"), "{out}");
    let instance_table = out.split("\n\n").nth(1).unwrap_or_else(|| panic!("no instance table: {out}"));
    assert!(instance_table.starts_with("NUMBER "), "{out}");
    assert!(rows(instance_table).iter().any(|r| r.starts_with("0 ")), "{out}");
    cli.ok(&["service", "undeploy", &nginx, "0"]);
    let service = cli.json(&["service", "show", &nginx]);
    assert_eq!(service["instance_list"], serde_json::json!([]), "{service}");
    cli.ok(&["service", "undeploy", &curl]);
    let err = cli.fails(&["service", "show", &curl]);
    assert!(err.contains("404"), "{err}");

    // Clusters: none have joined.
    let out = cli.ok(&["clusters"]);
    assert!(out.starts_with("NAME "), "{out}");
    assert!(rows(&out).is_empty(), "{out}");
    assert_eq!(cli.ok(&["clusters", "--all", "--json"]).trim(), "[]");

    // Errors carry the status and the root's message on one line.
    let err = cli.fails(&["app", "create", "-f", sla]);
    assert!(err.contains("409"), "{err}");
    let err = cli.fails(&["app", "show", "no-such-app"]);
    assert!(err.contains("404"), "{err}");

    cli.ok(&["app", "delete", &app_id]);
    assert_eq!(cli.json(&["app", "list"]), serde_json::json!([]));
    let out = cli.ok(&["app", "list"]);
    assert!(rows(&out).is_empty(), "{out}");

    // A saved login for another root is not used there.
    let other = Cli { config_dir: cli.config_dir.clone(), url: Some("http://127.0.0.1:1".into()) };
    let err = other.fails(&["app", "list"]);
    assert!(err.contains("not logged in to http://127.0.0.1:1"), "{err}");
    // Without --url the commands talk to the root of the saved login.
    let saved = Cli { config_dir: cli.config_dir.clone(), url: None };
    assert_eq!(saved.json(&["app", "list"]), serde_json::json!([]));

    // An expired access token is renewed with the refresh token, and the new one is saved.
    let mut creds: Value = serde_json::from_str(&std::fs::read_to_string(&creds_path).unwrap()).unwrap();
    creds["token"] = "garbage".into();
    std::fs::write(&creds_path, creds.to_string()).unwrap();
    cli.ok(&["app", "list"]);
    let renewed: Value = serde_json::from_str(&std::fs::read_to_string(&creds_path).unwrap()).unwrap();
    assert_ne!(renewed["token"], "garbage");

    // Without a valid refresh token the user is told to log in again.
    creds["refresh_token"] = "garbage".into();
    std::fs::write(&creds_path, creds.to_string()).unwrap();
    let err = cli.fails(&["app", "list"]);
    assert!(err.contains("401") && err.contains("oakestra login"), "{err}");
}
