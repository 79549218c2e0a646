//! End to end, unikernels: the real `oakestra up -u --unikernel-accel tcg` runs a test kernel
//! (Debian's cloud kernel with a busybox initramfs, `oak_e2e::unikernel`) served from a local
//! HTTP server: RUNNING, the console's marker in the logs, usage reported, its HTTP server
//! reached from a container of another service through the service's round-robin IP over the
//! overlay, and after the undeploy no QEMU process, namespace (with its tap), instance directory
//! or log file. Bad input ends in a clear status: an archive without `kernel`, a URL answering
//! 404, an architecture no worker has.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use oak_e2e::{unikernel, wait_until, Workdir};
use serde_json::{json, Value};

#[allow(dead_code)] // `ctr` serves the container tests.
mod e2e;

struct Up(Child);

impl Up {
    fn alive(&mut self) -> Result<()> {
        match self.0.try_wait()? {
            Some(status) => Err(oak_e2e::procs::Hopeless(format!("oakestra up exited ({status})")).into()),
            None => Ok(()),
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = oak_e2e::procs::terminate(&mut self.0, Duration::from_secs(15));
    }
}

fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("0.0.0.0:0")).collect::<Result<_, _>>()?;
    Ok(listeners.iter().map(|l| l.local_addr().map(|a| a.port())).collect::<Result<_, _>>()?)
}

#[test]
fn unikernels_run_on_qemu_report_and_leave_nothing() -> Result<()> {
    use oak_e2e::Need::{Root, Tool};
    let needs = [
        Root,
        Tool("qemu-system-x86_64"),
        Tool("apt-get"),
        Tool("dpkg-deb"),
        Tool("busybox"),
        Tool("containerd"),
        Tool("runc"),
        Tool("ip"),
        Tool("ctr"),
        Tool("nsenter"),
        Tool("docker-registry"),
        Tool("skopeo"),
    ];
    if !oak_e2e::can_run("unikernels_run_on_qemu_report_and_leave_nothing", &needs) {
        return Ok(());
    }
    if std::env::consts::ARCH != "x86_64" {
        // The test kernel is Debian's amd64 cloud kernel.
        eprintln!("SKIPPED: unikernels_run_on_qemu_report_and_leave_nothing needs an amd64 host");
        return Ok(());
    }
    let mut work = Workdir::new("e2e-unikernel")?;
    // Unique per run: job names name QEMU processes, containers and files on this machine.
    let run = format!("u{}", std::process::id());
    let _cleanup = Cleanup { prefix: format!("uni.{run}."), overlay_state: work.join("data/worker/overlay.json") };
    let result = scenario(&work, &run);
    if result.is_err() {
        work.keep();
        let log = std::fs::read_to_string(work.join("up.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        eprintln!("--- up.log (last lines, newest first)\n{}", tail.join("\n"));
    }
    result
}

/// What outlives the worker by design (a restarted worker adopts it): QEMUs, containers and
/// their overlay namespaces. Whatever this run left, passed or failed, goes when the test ends
/// (after `oakestra up` stopped).
struct Cleanup {
    /// `uni.<run>.`: the prefix of this run's job names.
    prefix: String,
    overlay_state: std::path::PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Ok(dir) = std::fs::read_dir("/proc") else { return };
        let procs: Vec<(i32, Vec<u8>, i32)> = dir
            .flatten()
            .filter_map(|e| {
                let pid = e.file_name().to_str()?.parse::<i32>().ok()?;
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                let ppid = stat.get(stat.rfind(')')? + 2..)?.split_whitespace().nth(1)?.parse().ok()?;
                Some((pid, cmdline, ppid))
            })
            .collect();
        let prefix = self.prefix.as_bytes();
        for (pid, cmdline, _) in &procs {
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let qemu = args.iter().any(|a| a.starts_with(prefix) && a.ends_with(b",debug-threads=on"));
            let shim = args.windows(2).any(|w| w[0] == b"-id" && w[1].starts_with(prefix));
            if qemu || shim {
                if shim {
                    for (child, _, _) in procs.iter().filter(|(_, _, ppid)| ppid == pid) {
                        // SAFETY: kill(2) of a container process of this test run.
                        unsafe { libc::kill(*child, libc::SIGKILL) };
                    }
                }
                // SAFETY: kill(2) of a QEMU or container shim of this test run.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
        }
        // Namespaces the stopped worker kept for instances that were still running.
        let state = std::fs::read_to_string(&self.overlay_state).unwrap_or_default();
        let value: Value = serde_json::from_str(&state).unwrap_or(Value::Null);
        for entry in value.as_array().into_iter().flatten() {
            if let Some(ns) = entry.pointer("/wiring/netns").or(entry.get("netns")).and_then(Value::as_str) {
                let _ = Command::new("ip").args(["netns", "del", ns]).status();
            }
        }
    }
}

fn scenario(work: &Workdir, run: &str) -> Result<()> {
    let kernel = unikernel::debian_kernel()?;
    let mut files = HashMap::new();
    files.insert("/good.tar.gz".to_string(), unikernel::archive(&kernel, true)?);
    files.insert("/nokernel.tar.gz".to_string(), unikernel::archive(&kernel, false)?);
    let web = oak_e2e::http::serve_files(files)?;
    let registry = oak_e2e::Registry::start_local()?;
    let layout = oak_e2e::images::build_image(&work.join("images"), &oak_e2e::images::sleeper())?;
    let client_image = registry.push(&layout, "latest", "e2e/client")?;

    let data = work.join("data");
    let ports = free_ports(5)?;
    let start = || -> Result<Up> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(work.join("up.log"))?;
        Ok(Up(Command::new(env!("CARGO_BIN_EXE_oakestra"))
            .arg("up")
            .arg("--data-dir")
            .arg(&data)
            .args(["--api-port", &ports[0].to_string(), "--cluster-port", &ports[1].to_string()])
            .args(["--cluster-api-port", &ports[2].to_string(), "--mqtt-port", &ports[3].to_string()])
            .args(["--tunnel-port", &ports[4].to_string(), "-u", "--unikernel-accel", "tcg"])
            // The kernel server and the registry are on loopback: allowed, unlike the rest of it.
            .args(["--fetch-allow", web.trim_start_matches("http://"), "--fetch-allow", registry.addr()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?))
    };
    let mut up = start()?;
    let base = format!("http://127.0.0.1:{}", ports[0]);
    let password_file = data.join("root/admin-password");
    let token = wait_until("the root to log in", Duration::from_secs(30), Duration::from_millis(200), || {
        up.alive()?;
        let Ok(password) = std::fs::read_to_string(&password_file) else { return Ok(None) };
        Ok(e2e::try_login(&base, password.trim()))
    })?;
    let call = |method: reqwest::Method, path: &str, body: Option<Value>| e2e::api(&base, &token, method, path, body);
    wait_until("the worker to offer unikernel", Duration::from_secs(60), Duration::from_millis(500), || {
        up.alive()?;
        let clusters = call(reqwest::Method::GET, "/api/clusters/active", None)?;
        Ok(clusters
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["virtualization"].to_string().contains("unikernel")).cloned()))
    })?;

    let service = |name: &str, code: &str, arch: &[&str], cmd: &[&str]| {
        json!({
            "microserviceID": "", "microservice_name": name, "microservice_namespace": "uk",
            "virtualization": "unikernel", "cmd": cmd, "memory": 128, "vcpus": 0,
            "code": code, "arch": arch, "port": "", "constraints": []
        })
    };
    // Its init exits at once: the kernel panics, QEMU (-no-reboot) ends with 0.
    let mut oneshot = service("oneshot", &format!("{web}/good.tar.gz"), &["amd64"], &["exit"]);
    oneshot["one_shot"] = json!(true);
    let mut client = service("client", &client_image, &[], &[]);
    client["virtualization"] = json!("container");
    client["memory"] = json!(32);
    client.as_object_mut().context("client")?.remove("arch");
    let sla = json!({
        "sla_version": "v2.0", "customerID": "Admin",
        "applications": [{
            "applicationID": "", "application_name": "uni", "application_namespace": run, "application_desc": "",
            "microservices": [
                service("good", &format!("{web}/good.tar.gz,{web}/good-arm.tar.gz"), &["amd64", "arm64"], &["hello", "unikernel"]),
                service("nokernel", &format!("{web}/nokernel.tar.gz"), &["amd64"], &[]),
                service("missing", &format!("{web}/missing.tar.gz"), &["amd64"], &[]),
                service("armonly", &format!("{web}/good.tar.gz"), &["arm64"], &[]),
                // A cloud's metadata service: a worker fetches no internal address it was not told to.
                service("internal", "http://169.254.169.254/latest/meta-data/k.tar.gz", &["amd64"], &[]),
                oneshot,
                client,
            ]
        }]
    });
    call(reqwest::Method::POST, "/api/application/", Some(sla))?;
    let services = call(reqwest::Method::GET, "/api/services/", None)?;
    let ids: HashMap<String, (String, String)> = services
        .as_array()
        .context("services")?
        .iter()
        .map(|s| {
            let name = s["microservice_name"].as_str().unwrap_or_default().to_string();
            let id = s["microserviceID"].as_str().or(s["_id"].as_str()).unwrap_or_default().to_string();
            (name, (id, s["job_name"].as_str().unwrap_or_default().to_string()))
        })
        .collect();
    for (id, _) in ids.values() {
        call(reqwest::Method::POST, &format!("/api/service/{id}/instance"), None)?;
    }
    let instance = |name: &str| -> Result<Value> {
        let s = call(reqwest::Method::GET, &format!("/api/service/{}", ids[name].0), None)?;
        Ok(s["instance_list"][0].clone())
    };

    // The good one runs: RUNNING, its console in the logs, usage of its QEMU reported.
    let (good_id, good_job) = ids["good"].clone();
    wait_until("the unikernel to be RUNNING", Duration::from_secs(120), Duration::from_millis(300), || {
        up.alive()?;
        let inst = instance("good")?;
        if inst["status"] == "FAILED" || inst["status"] == "DEAD" {
            return Err(
                oak_e2e::procs::Hopeless(format!("unikernel {}: {}", inst["status"], inst["status_detail"])).into()
            );
        }
        Ok((inst["status"] == "RUNNING").then_some(inst))
    })?;
    let task = format!("{good_job}.instance.0");
    assert_eq!(oak_e2e::unikernel::qemu_pids(&task).len(), 1, "one QEMU runs the instance");
    // Not as root: a guest that escaped into QEMU is a user that owns nothing.
    let status = std::fs::read_to_string(format!("/proc/{}/status", oak_e2e::unikernel::qemu_pids(&task)[0]))?;
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap_or_default().split_whitespace().next();
    ensure!(uid.and_then(|u| u.parse::<u32>().ok()) >= Some(oak_qemu::VM_UID_BASE), "QEMU's status: {status}");
    let logs_path = format!("{base}/api/service/{good_id}/instance/0/logs");
    let console = wait_until("the marker in the logs", Duration::from_secs(60), Duration::from_millis(500), || {
        let text = e2e::http().get(&logs_path).bearer_auth(&token).send()?.text()?;
        Ok(text.contains("args: hello unikernel").then_some(text))
    })?;
    assert!(console.contains(unikernel::MARKER), "{console}");
    assert!(console.contains("console=ttyS0"), "the archive's cmdline reaches the kernel: {console}");
    let measured =
        wait_until("usage of the QEMU process", Duration::from_secs(20), Duration::from_millis(500), || {
            let inst = instance("good")?;
            Ok(inst["memory_bytes"].as_u64().is_some_and(|b| b > 0).then_some(inst))
        })?;
    assert!(measured["cpu_percent"].as_f64().is_some(), "{measured}");
    let instance_dir = data.join(format!("worker/unikernel/instances/{task}"));
    assert!(instance_dir.join("root/kernel").is_file());

    // Overlay: a container of another service reaches the VM's HTTP server at the RR IP.
    assert!(console.contains("netdev.ipv4_addr=10."), "the overlay's address reaches the guest: {console}");
    let good = call(reqwest::Method::GET, &format!("/api/service/{good_id}"), None)?;
    let rr = good["RR_ip"].as_str().filter(|ip| ip.starts_with("10.30.")).context("the RR IP")?.to_string();
    let client_job = ids["client"].1.clone();
    wait_until("the client container to be RUNNING", Duration::from_secs(90), Duration::from_millis(300), || {
        up.alive()?;
        Ok((instance("client")?["status"] == "RUNNING").then_some(()))
    })?;
    let socket = {
        let own = data.join("worker/containerd/containerd.sock");
        if own.exists() {
            own
        } else {
            "/run/containerd/containerd.sock".into()
        }
    };
    let tasks = e2e::ctr(&socket, "oakestra", &["tasks", "ls"])?;
    let client_pid: u32 = tasks
        .lines()
        .find(|l| l.starts_with(&format!("{client_job}.instance.0 ")))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .with_context(|| format!("the client's task in {tasks}"))?;
    let url = format!("http://{rr}/");
    let body = wait_until(
        "the VM to answer the client at its RR IP",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || {
            // `wget -T` of Debian's busybox 1.35 crashes; `timeout` bounds the request instead.
            let out = Command::new("timeout")
                .args(["5", "nsenter"])
                .arg(format!("--net=/proc/{client_pid}/ns/net"))
                .args(["busybox", "wget", "-q", "-O", "-", &url])
                .output()?;
            Ok(out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
        },
    )?;
    assert!(body.contains(unikernel::HTTP_BODY), "{body}");
    let netns =
        namespace_of(oak_e2e::unikernel::qemu_pids(&task)[0]).context("the VM's network namespace under /run/netns")?;

    // A restarted worker adopts the running VM: same QEMU, still RUNNING, still reachable.
    let pid_before = oak_e2e::unikernel::qemu_pids(&task);
    drop(up);
    assert_eq!(oak_e2e::unikernel::qemu_pids(&task), pid_before, "QEMU outlives the worker");
    up = start()?;
    wait_until("the restarted root to answer", Duration::from_secs(30), Duration::from_millis(200), || {
        up.alive()?;
        Ok(call(reqwest::Method::GET, "/api/clusters/active", None)
            .ok()
            .filter(|c| c.to_string().contains("unikernel"))
            .map(|_| ()))
    })?;
    wait_until(
        "the adopted VM to answer the client again",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || {
            up.alive()?;
            let out = Command::new("timeout")
                .args(["5", "nsenter"])
                .arg(format!("--net=/proc/{client_pid}/ns/net"))
                .args(["busybox", "wget", "-q", "-O", "-", &url])
                .output()?;
            Ok((out.status.success() && String::from_utf8_lossy(&out.stdout).contains(unikernel::HTTP_BODY))
                .then_some(()))
        },
    )?;
    assert_eq!(instance("good")?["status"], "RUNNING");
    assert_eq!(oak_e2e::unikernel::qemu_pids(&task), pid_before, "the same QEMU runs the instance");
    let text = e2e::http().get(&logs_path).bearer_auth(&token).send()?.text()?;
    assert!(text.contains(unikernel::MARKER), "the adopted VM's logs: {text}");

    // one_shot: a guest that ends with QEMU exiting 0 is COMPLETED.
    wait_until("the one-shot unikernel to complete", Duration::from_secs(90), Duration::from_millis(300), || {
        let inst = instance("oneshot")?;
        Ok((inst["status"] == "COMPLETED").then_some(()))
    })?;

    // Bad input: each a clear reason in the instance's status detail.
    for (name, want) in [
        ("nokernel", "no file named \"kernel\""),
        ("missing", "HTTP 404"),
        ("armonly", "no active cluster offering \"unikernel\" has a worker of architecture arm64"),
        ("internal", "refused by this worker: 169.254.169.254:80 is a link-local address"),
    ] {
        let last = std::cell::RefCell::new(Value::Null);
        wait_until(&format!("{name} to say why"), Duration::from_secs(60), Duration::from_millis(300), || {
            let inst = instance(name)?;
            let found = inst["status_detail"].as_str().is_some_and(|d| d.contains(want));
            *last.borrow_mut() = inst;
            Ok(found.then_some(()))
        })
        .with_context(|| format!("last seen: {}", last.borrow()))?;
    }

    // Undeploy leaves nothing: no QEMU, no instance directory, no log file.
    call(reqwest::Method::DELETE, &format!("/api/service/{good_id}/instance/0"), None)?;
    wait_until("QEMU to be gone", Duration::from_secs(30), Duration::from_millis(300), || {
        Ok(oak_e2e::unikernel::qemu_pids(&task).is_empty().then_some(()))
    })?;
    wait_until("the files to be gone", Duration::from_secs(10), Duration::from_millis(200), || {
        let log = data.join(format!("worker/logs/{task}.log"));
        Ok((!instance_dir.exists() && !log.exists() && !netns.exists()).then_some(()))
    })?;
    assert_no_leftovers(&data.join("worker/unikernel/instances"), &good_job)?;
    for (id, _) in ids.values() {
        call(reqwest::Method::DELETE, &format!("/api/service/{id}"), None)?;
    }
    wait_until("the client container to be removed", Duration::from_secs(30), Duration::from_millis(300), || {
        let tasks = e2e::ctr(&socket, "oakestra", &["tasks", "ls", "-q"])?;
        Ok((!tasks.contains(&client_job)).then_some(()))
    })?;
    Ok(())
}

/// The `/run/netns` entry of the network namespace `pid` runs in.
fn namespace_of(pid: u32) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let ns = std::fs::metadata(format!("/proc/{pid}/ns/net")).ok()?;
    std::fs::read_dir("/run/netns")
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.ino() == ns.ino() && m.dev() == ns.dev()))
}

fn assert_no_leftovers(dir: &Path, job: &str) -> Result<()> {
    let left: Vec<String> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(job))
        .collect();
    anyhow::ensure!(left.is_empty(), "left behind: {left:?}");
    Ok(())
}
