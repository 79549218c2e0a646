//! The runtime against a real containerd (one of the test's own, started through the
//! supervisor), a local `docker-registry` and images built from busybox-static: pull, run, logs,
//! metrics, exits, limits, adoption, and that undeploy leaves nothing behind; and that an
//! unprivileged container can neither mount, nor unshare, nor fork past its pids limit.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use oak_api::node::{DeployCommand, JobSpec};
use oak_containerd::supervise::{self, OwnContainerd};
use oak_containerd::{ContainerdConfig, ContainerdRuntime};
use oak_core::egress::{Allow, EgressPolicy};
use oak_e2e::{images, Registry, Workdir};
use oak_runtime::{InstanceStatus, Runtime, RuntimeError, RuntimeEvent};

fn command(job: &str, instance: u32, image: &str, memory: u64) -> DeployCommand {
    let spec = serde_json::from_value(serde_json::json!({
        "microservice_name": "svc", "microservice_namespace": "test", "virtualization": "container",
        "code": image, "memory": memory,
    }))
    .unwrap();
    DeployCommand {
        job: JobSpec { id: "0".repeat(24), job_name: job.to_string(), image: image.to_string(), spec },
        instance_number: instance,
        instance_ip: None,
        netns: None,
    }
}

/// A namespace of this run's own: a crashed earlier run's leftovers (shims outlive a killed
/// containerd) cannot collide with it.
fn namespace() -> String {
    format!("oak-rt-test-{}", std::process::id())
}

fn ctr(socket: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("ctr")
        .arg("-a")
        .arg(socket)
        .args(["-n", &namespace()])
        .args(args)
        .output()
        .context("running ctr")?;
    if !out.status.success() {
        bail!("ctr {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn next_exit(events: &mut tokio::sync::broadcast::Receiver<RuntimeEvent>, job: &str) -> i32 {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(RuntimeEvent::Exited { job_name, code, .. }) if job_name == job => return code,
                Ok(_) => continue,
                Err(e) => panic!("event channel: {e}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), wait).await.expect("no exit event within 60 s")
}

async fn state_of(rt: &ContainerdRuntime, job: &str) -> Option<InstanceStatus> {
    rt.list().await.unwrap().into_iter().find(|i| i.job_name == job).map(|i| i.state)
}

/// What a scenario runs against: the runtime on a containerd of the test's own, that
/// containerd, a local registry, the test's work dir.
struct Env {
    rt: Arc<ContainerdRuntime>,
    config: ContainerdConfig,
    own: OwnContainerd,
    registry: Registry,
    work: PathBuf,
}

impl Env {
    /// Builds `spec` and pushes it to the registry as `repo`; returns its reference.
    fn image(&self, spec: &images::ImageSpec, repo: &str) -> Result<String> {
        let layout = images::build_image(&self.work.join("images"), spec)?;
        self.registry.push(&layout, &spec.tag, repo)
    }
}

/// Runs `scenario` on a containerd started for it (work dir `name`), with the runtime's
/// configuration adjusted by `configure`; whatever happens, removes what the scenario left so
/// no shim outlives the test. `Ok(())` without running when root or a tool is missing outside
/// CI (an error under `CI=true`).
async fn with_containerd<F, Fut>(name: &str, configure: impl FnOnce(&mut ContainerdConfig), scenario: F) -> Result<()>
where
    F: FnOnce(Env) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    use oak_e2e::Need::{Root, Tool};
    let needs = [Root, Tool("containerd"), Tool("runc"), Tool("ctr"), Tool("docker-registry"), Tool("skopeo")];
    if !oak_e2e::can_run(name, &needs) {
        return Ok(());
    }
    let work = Workdir::new(name)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let own = OwnContainerd::under(work.path());
    let supervisor = supervise::start(own.clone(), stop_rx).await.map_err(anyhow::Error::msg)?;

    let registry = Registry::start_local()?;
    let mut config = ContainerdConfig::new(own.socket.clone(), namespace(), work.join("logs"));
    // The test registry is on loopback, where a worker pulls from only when allowed.
    config.egress = Arc::new(EgressPolicy::parse([registry.addr()]).map_err(anyhow::Error::msg)?);
    configure(&mut config);
    let rt = Arc::new(ContainerdRuntime::connect(config.clone()).await?);
    let env = Env { rt: rt.clone(), config, own, registry, work: work.path().to_path_buf() };
    let outcome = tokio::spawn(scenario(env)).await;
    for leftover in rt.list().await? {
        let _ = rt.undeploy(&leftover.job_name, leftover.instance).await;
    }
    let _ = stop_tx.send(true);
    supervisor.await?;
    match outcome {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(e.into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_instances_on_real_containerd() -> Result<()> {
    let port = oak_e2e::registry::free_port("127.0.0.1".parse()?)?;
    // Port 1 of loopback, allowed so that its refused connection shows as "unreachable".
    let also_port_1 = |c: &mut ContainerdConfig| {
        let mut allow = c.egress.allowances().to_vec();
        allow.push(Allow::parse("127.0.0.1:1").unwrap());
        c.egress = Arc::new(EgressPolicy::new(allow));
    };
    with_containerd("containerd-runtime", also_port_1, move |env| scenario(env, port)).await
}

async fn scenario(env: Env, port: u16) -> Result<()> {
    let Env { rt, config, own, registry, work } = env;
    let build = |spec: &images::ImageSpec, repo: &str| -> Result<String> {
        let layout = images::build_image(&work.join("images"), spec)?;
        registry.push(&layout, &spec.tag, repo)
    };
    let web = build(&images::http_server_on("hello from oakestra", port), "test/web")?;
    let once = build(&images::one_shot("one shot done"), "test/once")?;
    let crash = build(&images::crasher(), "test/crash")?;
    let hog = build(&images::memory_hog(64), "test/hog")?;
    let mut events = rt.events();

    // An HTTP server: pulled, started, answering, logging, measured.
    let job = "t.test.web.w";
    rt.deploy(&command(job, 0, &web, 0)).await?;
    assert_eq!(state_of(&rt, job).await, Some(InstanceStatus::Running));
    let mut progress = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let RuntimeEvent::Progress { job_name, detail, .. } = event {
            assert_eq!(job_name, job);
            progress.push(detail);
        }
    }
    assert!(progress.iter().any(|d| d.starts_with("pulling image")), "{progress:?}");
    assert!(progress.iter().any(|d| d.starts_with("unpacking image")), "{progress:?}");
    let addr = format!("127.0.0.1:{port}");
    let body =
        oak_e2e::wait_until("the server to answer", Duration::from_secs(20), Duration::from_millis(100), || {
            Ok(oak_e2e::http::get(&addr, "/").ok().filter(|r| r.status == 200).map(|r| r.body))
        })?;
    assert!(body.contains("hello from oakestra"), "{body}");
    let hostname = oak_e2e::http::get(&addr, "/hostname")?.body;
    assert_eq!(hostname.trim(), "instance-0");
    let logs = rt.logs(job, 0, 4096).await?;
    assert!(logs.contains("http server starting"), "{logs}");
    let stats = rt.stats().await?;
    let usage = stats.iter().find(|s| s.job_name == job).context("no stats for the server")?;
    assert!(usage.memory_percent.parse::<f64>()? > 0.0, "{usage:?}");
    assert!(usage.disk.parse::<u64>().is_ok(), "{usage:?}");
    assert!(usage.logs.contains("http server starting"));
    assert!(matches!(rt.deploy(&command(job, 0, &web, 0)).await, Err(RuntimeError::AlreadyDeployed(_))));

    // A second runtime on the same namespace (a restarted worker) sees it running.
    let adopted = ContainerdRuntime::connect(config.clone()).await?;
    assert_eq!(state_of(&adopted, job).await, Some(InstanceStatus::Running));
    drop(adopted);

    // Undeploy removes task, container, snapshot and logs.
    rt.undeploy(job, 0).await?;
    assert_eq!(state_of(&rt, job).await, None);
    assert_eq!(ctr(&own.socket, &["containers", "ls", "-q"])?.trim(), "");
    assert_eq!(ctr(&own.socket, &["tasks", "ls", "-q"])?.trim(), "");
    let snapshots = ctr(&own.socket, &["snapshots", "ls"])?;
    assert!(!snapshots.contains(job), "{snapshots}");
    assert!(!work.join("logs").join(format!("{job}.instance.0.log")).exists());
    assert!(matches!(rt.undeploy(job, 0).await, Err(RuntimeError::NotFound(_))));
    assert!(oak_e2e::http::get_timeout(&addr, "/", Duration::from_millis(500)).is_err(), "server still answers");

    // Exits: 0, 3, and 137 when a memory limit is passed.
    rt.deploy(&command("t.test.once.w", 0, &once, 0)).await?;
    assert_eq!(next_exit(&mut events, "t.test.once.w").await, 0);
    assert_eq!(state_of(&rt, "t.test.once.w").await, Some(InstanceStatus::Exited { code: 0 }));
    assert!(rt.logs("t.test.once.w", 0, 100).await?.contains("one shot done"));
    rt.undeploy("t.test.once.w", 0).await?;

    rt.deploy(&command("t.test.crash.w", 1, &crash, 0)).await?;
    assert_eq!(next_exit(&mut events, "t.test.crash.w").await, 3);
    rt.undeploy("t.test.crash.w", 1).await?;

    rt.deploy(&command("t.test.hog.w", 0, &hog, 32)).await?;
    assert_eq!(next_exit(&mut events, "t.test.hog.w").await, 137, "a 64 MiB allocation under a 32 MB limit is killed");
    rt.undeploy("t.test.hog.w", 0).await?;
    rt.deploy(&command("t.test.hog.w", 1, &hog, 128)).await?;
    assert_eq!(next_exit(&mut events, "t.test.hog.w").await, 0, "within its limit it completes");
    rt.undeploy("t.test.hog.w", 1).await?;

    // Failures name the reason and leave nothing behind.
    let missing = format!("{}/test/missing:1", registry.addr());
    let err = rt.deploy(&command("t.test.missing.w", 0, &missing, 0)).await.unwrap_err();
    assert!(matches!(err, RuntimeError::Image { .. }) && err.to_string().contains("not found"), "{err}");
    let err = rt.deploy(&command("t.test.bad.w", 0, "Not A Reference", 0)).await.unwrap_err();
    assert!(matches!(err, RuntimeError::InvalidSpec(_)), "{err}");
    let err = rt.deploy(&command("t.test.unreach.w", 0, "127.0.0.1:1/x:1", 0)).await.unwrap_err();
    assert!(err.to_string().contains("unreachable"), "{err}");
    assert_eq!(ctr(&own.socket, &["containers", "ls", "-q"])?.trim(), "");

    // An image present locally is not pulled again: it deploys with the registry gone.
    drop(registry);
    rt.deploy(&command("t.test.once.w", 2, &once, 0)).await?;
    assert_eq!(next_exit(&mut events, "t.test.once.w").await, 0);
    rt.undeploy("t.test.once.w", 2).await?;
    Ok(())
}

/// The pids limit of the confinement test: low, so a handful of forks reach it.
const TEST_PIDS_LIMIT: u32 = 16;

/// Prints its seccomp and no-new-privileges state, then tries to mount a tmpfs directly and
/// from inside a new user and mount namespace (which would need no capability at all without
/// the seccomp filter), printing each outcome.
/// The instance's log once it holds `last` (or after 10 s, whatever it holds then): an exit event
/// can come before the last output is copied into the log.
/// A tenant names the image, and so the registry a worker sends requests to: one on an internal
/// address the worker's operator did not allow is refused before anything is sent, by address
/// or by a name resolving there, and also once the image is already in containerd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_on_internal_addresses_are_refused_unless_allowed() -> Result<()> {
    with_containerd("containerd-egress", |_| {}, egress).await
}

async fn egress(env: Env) -> Result<()> {
    let image = env.image(&images::one_shot("pulled"), "test/egress")?;
    let job = "t.test.egress.w";
    // Allowed (the test registry's address): pulled and run.
    env.rt.deploy(&command(job, 0, &image, 0)).await?;
    env.rt.undeploy(job, 0).await?;

    // The same containerd, the image in it, the allowance gone.
    let mut closed = env.config.clone();
    closed.egress = Arc::default();
    let rt = ContainerdRuntime::connect(closed).await?;
    let refused = async |n: u32, image: &str| -> String {
        match rt.deploy(&command(job, n, image, 0)).await {
            Ok(()) => panic!("{image} was deployed"),
            Err(e) => e.to_string(),
        }
    };
    let e = refused(1, &image).await;
    assert!(e.contains("refused by this worker") && e.contains("is a loopback address"), "{e}");
    let by_name = image.replacen("127.0.0.1", "localhost", 1);
    let e = refused(2, &by_name).await;
    assert!(e.contains("refused by this worker") && e.contains("localhost resolves to 127.0.0.1"), "{e}");
    let e = refused(3, "169.254.169.254/latest/meta-data:1").await;
    assert!(e.contains("169.254.169.254:443 is a link-local address"), "{e}");
    assert!(e.contains("--fetch-allow"), "the refusal says how to allow it: {e}");
    assert_eq!(ctr(&env.own.socket, &["containers", "ls", "-q"])?.trim(), "", "nothing was created");
    Ok(())
}

async fn logs_with(rt: &ContainerdRuntime, job: &str, last: &str) -> Result<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let logs = rt.logs(job, 0, 8192).await?;
        if logs.contains(last) || tokio::time::Instant::now() >= deadline {
            return Ok(logs);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Both probes send their errors to standard output (`exec 2>&1`), so the errors are in the log
/// before the last line checked: the two pipes are copied separately, and the exit event may
/// come before stderr's last line is.
fn escape_probe() -> images::ImageSpec {
    images::ImageSpec::shell(
        "escape-probe",
        "exec 2>&1; grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status; mkdir -p /mnt; \
         if busybox mount -t tmpfs none /mnt; then echo 'mount: allowed'; else echo 'mount: refused'; fi; \
         if busybox unshare -U -r -m busybox mount -t tmpfs none /mnt; then echo 'userns mount: allowed'; \
         else echo 'userns mount: refused'; fi; echo probe done",
    )
}

/// Prints its pids limit, then starts `sleep`s in the background until 40 run or a fork fails
/// (the shell then stops with `can't fork`), printing the count after each.
fn fork_bomb() -> images::ImageSpec {
    images::ImageSpec::shell(
        "fork-bomb",
        "exec 2>&1; echo \"pids.max $(cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max)\"; \
         i=0; while [ $i -lt 40 ]; do sleep 600 & i=$((i+1)); echo \"forked $i\"; done; echo forked all",
    )
}

/// Unprivileged containers run under the seccomp filter and with no new privileges, cannot
/// mount (not even through a user namespace of their own), and cannot fork past the worker's
/// pids limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unprivileged_containers_cannot_take_the_node() -> Result<()> {
    with_containerd("containerd-confinement", |c| c.pids_limit = Some(TEST_PIDS_LIMIT), confinement).await
}

async fn confinement(env: Env) -> Result<()> {
    let probe = env.image(&escape_probe(), "test/probe")?;
    let bomb = env.image(&fork_bomb(), "test/bomb")?;
    let rt = env.rt.clone();
    let mut events = rt.events();

    let job = "t.test.probe.w";
    rt.deploy(&command(job, 0, &probe, 0)).await?;
    assert_eq!(next_exit(&mut events, job).await, 0);
    let logs = logs_with(&rt, job, "probe done").await?;
    eprintln!("escape probe:\n{logs}");
    assert!(logs.contains("probe done"), "{logs}");
    assert!(logs.contains("Seccomp:\t2"), "the seccomp filter is not active: {logs}");
    assert!(logs.contains("NoNewPrivs:\t1"), "{logs}");
    assert!(logs.contains("mount: refused"), "{logs}");
    assert!(logs.contains("userns mount: refused"), "{logs}");
    assert!(logs.contains("Operation not permitted"), "unshare must fail with EPERM: {logs}");
    rt.undeploy(job, 0).await?;

    let job = "t.test.bomb.w";
    rt.deploy(&command(job, 0, &bomb, 0)).await?;
    let code = next_exit(&mut events, job).await;
    let logs = logs_with(&rt, job, "can't fork").await?;
    eprintln!("fork bomb (exit {code}):\n{logs}");
    assert_ne!(code, 0, "the fork bomb ran to its end: {logs}");
    assert!(logs.contains(&format!("pids.max {TEST_PIDS_LIMIT}")), "{logs}");
    assert!(logs.contains("can't fork"), "{logs}");
    assert!(!logs.contains("forked all"), "{logs}");
    let forked = logs.lines().filter_map(|l| l.strip_prefix("forked ")?.trim().parse::<u32>().ok()).max();
    assert!(forked.is_some_and(|n| n < TEST_PIDS_LIMIT), "more processes than the limit: {forked:?} in {logs}");
    rt.undeploy(job, 0).await?;

    // What only an Admin may ask for still works: a privileged container starts (with the
    // capabilities the host can pass on: asking for one it dropped made runc refuse) and mounts.
    let job = "t.test.privileged.w";
    let mut privileged = command(job, 0, &probe, 0);
    privileged.job.spec.privileged = true;
    rt.deploy(&privileged).await?;
    assert_eq!(next_exit(&mut events, job).await, 0);
    let logs = logs_with(&rt, job, "probe done").await?;
    eprintln!("privileged probe:\n{logs}");
    assert!(logs.contains("Seccomp:\t0") && logs.contains("mount: allowed"), "{logs}");
    rt.undeploy(job, 0).await?;
    Ok(())
}
