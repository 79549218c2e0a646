//! The runtime against real QEMU (TCG) and the test unikernel of `oak_e2e::unikernel`, without
//! the overlay: deploy, RUNNING, console in the logs, usage, a second runtime on the same
//! directory adopting the VM, a guest ending by itself (exit event, code 0), undeploy leaving
//! no process, socket or file.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::time::Duration;

use oak_api::node::DeployCommand;
use oak_qemu::{Accel, QemuConfig, QemuRuntime};
use oak_runtime::{InstanceStatus, Runtime, RuntimeError, RuntimeEvent};

fn serve(files: HashMap<String, Vec<u8>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut line = String::new();
            let _ = BufReader::new(&stream).read_line(&mut line);
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let _ = match files.get(&path) {
                Some(body) => stream
                    .write_all(format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes())
                    .and_then(|_| stream.write_all(body)),
                None => stream.write_all(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
            };
        }
    });
    format!("http://{addr}")
}

fn deploy_command(job: &str, url: &str, cmd: &[&str]) -> DeployCommand {
    serde_json::from_value(serde_json::json!({
        "_id": "s1", "job_name": job, "image": url, "instance_number": 0,
        "microservice_name": "k", "microservice_namespace": "t", "virtualization": "unikernel",
        "code": url, "arch": ["amd64"], "memory": 128, "vcpus": 1, "cmd": cmd
    }))
    .unwrap()
}

async fn wait_for<T>(what: &str, secs: u64, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn qemu_running(id: &str) -> bool {
    let name = format!("{id},debug-threads=on");
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == name.as_bytes()))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_runs_is_adopted_ends_and_leaves_nothing() {
    use oak_e2e::Need::Tool;
    let needs = [Tool("qemu-system-x86_64"), Tool("apt-get"), Tool("dpkg-deb"), Tool("busybox")];
    if !oak_e2e::can_run("a_vm_runs_is_adopted_ends_and_leaves_nothing", &needs) || std::env::consts::ARCH != "x86_64" {
        return;
    }
    let kernel = oak_e2e::unikernel::debian_kernel().unwrap();
    let mut files = HashMap::new();
    files.insert("/k.tar.gz".to_string(), oak_e2e::unikernel::archive(&kernel, true).unwrap());
    let web = serve(files);
    let dir = tempfile::tempdir().unwrap();
    let mut config = QemuConfig::new(
        dir.path().join("uk"),
        dir.path().join("logs"),
        "qemu-system-x86_64".into(),
        Accel::Tcg,
        "amd64".into(),
    );
    config.socket_dir = dir.path().join("s");
    // The kernel server is on loopback, where a worker fetches from only when allowed.
    config.egress =
        std::sync::Arc::new(oak_core::egress::EgressPolicy::parse([web.trim_start_matches("http://")]).unwrap());
    let run = format!("rt{}", std::process::id());
    let job = format!("{run}.t.k.t");
    let id = format!("{job}.instance.0");

    let rt = QemuRuntime::open(config.clone()).await.unwrap();
    let cmd = deploy_command(&job, &format!("{web}/k.tar.gz"), &["hello", "runtime"]);
    rt.deploy(&cmd).await.unwrap();
    assert!(matches!(rt.deploy(&cmd).await, Err(RuntimeError::AlreadyDeployed(_))));
    let listed = rt.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, InstanceStatus::Running);
    let logs = wait_for("the console", 60, async || {
        rt.logs(&job, 0, 4096).await.ok().filter(|l| l.contains("args: hello runtime"))
    })
    .await;
    assert!(logs.contains(oak_e2e::unikernel::MARKER), "{logs}");
    // The guest runs under a QEMU that gave up root and runs in its seccomp sandbox.
    let pids = oak_e2e::unikernel::qemu_pids(&id);
    assert_eq!(pids.len(), 1, "{pids:?}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", pids[0])).unwrap();
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).unwrap_or_default().trim().to_string();
    let uid = oak_qemu::VM_UID_BASE.to_string();
    assert_eq!(field("Uid:").split_whitespace().collect::<Vec<_>>(), [uid.as_str(); 4], "{status}");
    assert_eq!(field("Gid:").split_whitespace().next(), Some(uid.as_str()), "{status}");
    assert_eq!(field("CapEff:"), "0000000000000000", "{status}");
    assert_eq!(field("Seccomp:"), "2", "{status}");
    let stats = rt.stats().await.unwrap();
    assert!(stats[0].memory_bytes.parse::<u64>().unwrap() > 0, "{stats:?}");
    assert_eq!(stats[0].virtualization, "unikernel");

    // A second runtime on the same directory (a restarted worker) adopts the VM.
    drop(rt);
    let rt = QemuRuntime::open(config.clone()).await.unwrap();
    assert_eq!(rt.list().await.unwrap()[0].state, InstanceStatus::Running);
    rt.undeploy(&job, 0).await.unwrap();
    assert!(!qemu_running(&id), "QEMU is gone");
    assert!(rt.list().await.unwrap().is_empty());
    assert!(matches!(rt.undeploy(&job, 0).await, Err(RuntimeError::NotFound(_))));
    assert_eq!(std::fs::read_dir(config.dir.join("instances")).unwrap().count(), 0, "no instance dir");
    assert_eq!(std::fs::read_dir(&config.socket_dir).unwrap().count(), 0, "no QMP socket");
    assert!(!config.log_dir.join(format!("{id}.log")).exists(), "no log file");

    // A guest whose init ends: QEMU exits 0, reported as an exit event and listed as exited.
    let mut events = rt.events();
    rt.deploy(&deploy_command(&job, &format!("{web}/k.tar.gz"), &["exit"])).await.unwrap();
    let code = tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            if let Ok(RuntimeEvent::Exited { code, .. }) = events.recv().await {
                return code;
            }
        }
    })
    .await
    .expect("an exit event");
    assert_eq!(code, 0);
    assert_eq!(rt.list().await.unwrap()[0].state, InstanceStatus::Exited { code: 0 });
    rt.undeploy(&job, 0).await.unwrap();
    assert_eq!(std::fs::read_dir(config.dir.join("instances")).unwrap().count(), 0);
}
