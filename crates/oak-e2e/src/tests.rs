//! Tests of the support library against the real tools: they skip (or fail under `CI=true`)
//! without root, skopeo, docker-registry, containerd.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::images::{self, digest_of, ImageSpec, MEDIA_CONFIG, MEDIA_LAYER, REF_NAME};
use crate::netns::{cleanup_stale, Lab};
use crate::procs::wait_until;
use crate::registry::Registry;
use crate::{can_run, http, Need::*};

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    fs::read(layout.join("blobs/sha256").join(digest.strip_prefix("sha256:").unwrap())).unwrap()
}

/// (path → (entry type, mode, size, link target, contents)) of a layer tar, checking that every
/// entry has the fixed mtime and uid/gid 0.
type Entries = BTreeMap<String, (tar::EntryType, u32, u64, Option<String>, Vec<u8>)>;

fn tar_entries(layer: &[u8]) -> Entries {
    let mut out = BTreeMap::new();
    let mut archive = tar::Archive::new(layer);
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let h = e.header().clone();
        assert_eq!(h.mtime().unwrap(), 1_577_836_800);
        assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let link = e.link_name().unwrap().map(|l| l.to_string_lossy().into_owned());
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.insert(path, (h.entry_type(), h.mode().unwrap(), h.size().unwrap(), link, data));
    }
    out
}

#[test]
fn image_layout_has_valid_digests_config_and_layer() {
    let dir = tempfile::tempdir().unwrap();
    let layout = images::build_image(dir.path(), &images::http_server("hello e2e")).unwrap();
    assert_eq!(layout, dir.path().join("http-server"));
    assert_eq!(read_json(&layout.join("oci-layout"))["imageLayoutVersion"], "1.0.0");

    // Every blob is stored under its own digest.
    for f in fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let f = f.unwrap();
        let data = fs::read(f.path()).unwrap();
        assert_eq!(digest_of(&data), format!("sha256:{}", f.file_name().to_str().unwrap()));
    }

    let index = read_json(&layout.join("index.json"));
    let entry = &index["manifests"][0];
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(entry["annotations"][REF_NAME], "latest");
    let manifest_bytes = blob(&layout, entry["digest"].as_str().unwrap());
    assert_eq!(entry["size"], manifest_bytes.len());
    let manifest: Value = serde_json::from_slice(&manifest_bytes).unwrap();
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["config"]["mediaType"], MEDIA_CONFIG);
    assert_eq!(manifest["layers"][0]["mediaType"], MEDIA_LAYER);

    let config: Value = serde_json::from_slice(&blob(&layout, manifest["config"]["digest"].as_str().unwrap())).unwrap();
    assert_eq!(config["os"], "linux");
    assert_eq!(
        config["architecture"],
        match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        }
    );
    assert_eq!(config["config"]["Env"][0], "PATH=/bin");
    assert_eq!(config["config"]["Cmd"][0], "/bin/sh");
    assert!(config["config"]["Cmd"][2].as_str().unwrap().contains("echo http server starting"));
    assert_eq!(config["config"]["WorkingDir"], "/");
    assert!(config["config"].get("Entrypoint").is_none());
    assert!(config["config"]["ExposedPorts"].get("80/tcp").is_some());

    let layer_digest = manifest["layers"][0]["digest"].as_str().unwrap();
    let layer = blob(&layout, layer_digest);
    assert_eq!(manifest["layers"][0]["size"], layer.len());
    // Uncompressed layer: the diff id is the layer's own digest.
    assert_eq!(config["rootfs"]["diff_ids"][0], layer_digest);

    let entries = tar_entries(&layer);
    let busybox = fs::read(images::BUSYBOX).unwrap();
    let (kind, mode, size, _, data) = &entries["bin/busybox"];
    assert_eq!((*kind, *mode, *size), (tar::EntryType::Regular, 0o755, busybox.len() as u64));
    assert!(*data == busybox);
    for applet in ["sh", "echo", "sleep", "cat", "httpd", "nc", "wget", "head", "dd", "ls", "env"]
        .iter()
        .chain(&["hostname", "mkdir", "true", "false", "tr", "tail"])
    {
        let (kind, _, _, link, _) = &entries[&format!("bin/{applet}")];
        assert_eq!((*kind, link.as_deref()), (tar::EntryType::Symlink, Some("busybox")), "{applet}");
    }
    assert_eq!(entries["tmp/"].1, 0o1777);
    assert_eq!(entries["tmp/"].0, tar::EntryType::Directory);
    assert!(String::from_utf8_lossy(&entries["etc/passwd"].4).starts_with("root:x:0:0:"));
    assert_eq!(entries["www/index.html"].4, b"hello e2e");
    assert_eq!(entries["www/index.html"].1, 0o644);

    // Deterministic: the same spec elsewhere gives the same manifest digest.
    let dir2 = tempfile::tempdir().unwrap();
    let layout2 = images::build_image(dir2.path(), &images::http_server("hello e2e")).unwrap();
    assert_eq!(read_json(&layout2.join("index.json"))["manifests"][0]["digest"], entry["digest"]);

    // A second tag joins the same layout; rebuilding a tag replaces it.
    let v2 = images::http_server("v2").with_tag("v2");
    images::build_image(dir.path(), &v2).unwrap();
    images::build_image(dir.path(), &v2).unwrap();
    let index = read_json(&layout.join("index.json"));
    let tags: Vec<_> =
        index["manifests"].as_array().unwrap().iter().map(|m| m["annotations"][REF_NAME].clone()).collect();
    assert_eq!(tags, ["latest", "v2"]);
}

#[test]
fn image_files_get_parent_directories_and_bad_paths_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ImageSpec::new("files", &["/bin/true"]).with_file("/a/b/c.sh", "#!/bin/sh\n", 0o755);
    let layout = images::build_image(dir.path(), &spec).unwrap();
    let index = read_json(&layout.join("index.json"));
    let manifest: Value =
        serde_json::from_slice(&blob(&layout, index["manifests"][0]["digest"].as_str().unwrap())).unwrap();
    let entries = tar_entries(&blob(&layout, manifest["layers"][0]["digest"].as_str().unwrap()));
    assert_eq!(entries["a/"].0, tar::EntryType::Directory);
    assert_eq!(entries["a/b/"].0, tar::EntryType::Directory);
    assert_eq!(entries["a/b/c.sh"].1, 0o755);

    let bad = ImageSpec::new("bad", &["/bin/true"]).with_file("/../etc/x", "", 0o644);
    assert!(images::build_image(dir.path(), &bad).is_err());
}

#[test]
fn http_get_reads_status_and_body() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.ends_with(b"\r\n\r\n") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "client closed before the request ended");
            req.extend_from_slice(&buf[..n]);
        }
        assert!(String::from_utf8_lossy(&req).starts_with("GET /x HTTP/1.0\r\n"));
        s.write_all(b"HTTP/1.0 404 Not Found\r\nContent-Length: 4\r\n\r\nnope").unwrap();
    });
    let r = http::get(&addr, "/x").unwrap();
    server.join().unwrap();
    assert_eq!((r.status, r.body.as_str()), (404, "nope"));
}

#[test]
fn registry_serves_pushed_image_tags() -> Result<()> {
    if !can_run("registry_serves_pushed_image_tags", &[Root, Tool("docker-registry"), Tool("skopeo")]) {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let layout = images::build_image(dir.path(), &images::http_server("pushed"))?;
    let registry = Registry::start_local()?;
    let reference = registry.push(&layout, "latest", "oak-e2e/http-server")?;
    assert_eq!(reference, format!("{}/oak-e2e/http-server:latest", registry.addr()));
    let explicit = registry.push(&layout, "latest", "oak-e2e/http-server:other")?;
    assert_eq!(explicit, format!("{}/oak-e2e/http-server:other", registry.addr()));
    let mut tags = registry.tags("oak-e2e/http-server")?;
    tags.sort();
    assert_eq!(tags, ["latest", "other"]);

    let addr = registry.addr().to_string();
    drop(registry);
    assert!(http::get(&addr, "/v2/").is_err(), "registry still answers after drop");
    Ok(())
}

fn netns_names() -> String {
    String::from_utf8(Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).unwrap()
}

fn link_names() -> String {
    String::from_utf8(Command::new("ip").args(["-o", "link", "show"]).output().unwrap().stdout).unwrap()
}

#[test]
fn lab_hosts_reach_each_other_and_the_bridge_and_drop_removes_everything() -> Result<()> {
    if !can_run(
        "lab_hosts_reach_each_other_and_the_bridge_and_drop_removes_everything",
        &[Root, Tool("ip"), Tool("busybox"), Tool("docker-registry")],
    ) {
        return Ok(());
    }
    let logs = tempfile::tempdir()?;
    let mut lab = Lab::new("oake2elab", 231)?;
    let a = lab.add_host("a")?;
    let b = lab.add_host("b")?;
    assert_eq!(a.ip().to_string(), "10.99.231.2");
    assert_eq!(b.ip().to_string(), "10.99.231.3");
    assert_eq!(a.netns(), "oake2elab-a");
    assert!(lab.add_host("a").is_err(), "duplicate host name");

    for (from, to) in [(&a, b.ip()), (&b, a.ip()), (&a, lab.gateway())] {
        from.run_ok("busybox", &["ping", "-c1", "-W2", &to.to_string()])
            .with_context(|| format!("ping {to} from {}", from.name()))?;
    }
    let ifaces = a.run_ok("ip", &["-o", "addr", "show", "dev", "eth0"])?;
    assert!(ifaces.contains("10.99.231.2/24"), "{ifaces}");
    // Hosts keep the machine's mounts: a worker in one reads its containers' cgroups.
    let cgroups = a.run_ok("busybox", &["ls", "/sys/fs/cgroup"])?;
    assert!(!cgroups.trim().is_empty(), "/sys/fs/cgroup is empty inside a lab host");

    // A service in the root namespace on the bridge address is reachable from the hosts.
    let port = crate::registry::free_port(lab.gateway().into())?;
    let registry = Registry::start(&format!("{}:{port}", lab.gateway()))?;
    let body = b.run_ok("busybox", &["wget", "-q", "-O", "-", &format!("http://{}/v2/", registry.addr())])?;
    assert_eq!(body.trim(), "{}");

    // A server in one host answers another, and its output lands in the log.
    let log = logs.path().join("nc.log");
    let server = a.spawn(
        "busybox",
        &["sh", "-c", "echo listening $GREETING; busybox nc -l -p 7000 -e echo pong"],
        &[("GREETING", "from-a")],
        &log,
    )?;
    let server_pid = server.id();
    let answer = wait_until("nc in host a to answer", Duration::from_secs(10), Duration::from_millis(100), || {
        let out = b.run("busybox", &["nc", "-w", "2", &a.ip().to_string(), "7000"])?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok((text == "pong").then_some(text))
    })?;
    assert_eq!(answer, "pong");
    assert!(fs::read_to_string(&log)?.contains("listening from-a"));

    // Long-running children, dropped without waiting, are stopped by the lab.
    let sleeper = b.spawn("busybox", &["sleep", "1000"], &[], &logs.path().join("sleep.log"))?;
    let sleeper_pid = sleeper.id();
    drop((server, sleeper));
    assert!(Path::new(&format!("/proc/{sleeper_pid}")).exists());
    let started = std::time::Instant::now();
    drop(lab);
    assert!(started.elapsed() < Duration::from_secs(8), "drop took {:?}", started.elapsed());
    for pid in [server_pid, sleeper_pid] {
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "process {pid} survived the lab");
    }
    assert!(!netns_names().contains("oake2elab-"), "{}", netns_names());
    assert!(!link_names().contains("oake2elab-"), "{}", link_names());
    drop(registry);
    Ok(())
}

#[test]
fn cleanup_stale_removes_leftovers_of_a_crashed_run() -> Result<()> {
    if !can_run("cleanup_stale_removes_leftovers_of_a_crashed_run", &[Root, Tool("ip")]) {
        return Ok(());
    }
    let ip = |args: &[&str]| {
        let ok = Command::new("ip").args(args).status().unwrap().success();
        assert!(ok, "ip {args:?}");
    };
    // What a killed test leaves: a bridge, a namespace with a veth peer, a process inside.
    ip(&["link", "add", "oakstale-br", "type", "bridge"]);
    ip(&["netns", "add", "oakstale-x"]);
    ip(&["link", "add", "oakstale-v2", "type", "veth", "peer", "name", "eth0", "netns", "oakstale-x"]);
    let mut inside = Command::new("ip").args(["netns", "exec", "oakstale-x", "busybox", "sleep", "1000"]).spawn()?;
    wait_until("the process to enter the netns", Duration::from_secs(5), Duration::from_millis(20), || {
        let out = Command::new("ip").args(["netns", "pids", "oakstale-x"]).output()?;
        Ok((!out.stdout.is_empty()).then_some(()))
    })?;

    let removed = cleanup_stale("oakstale")?;
    assert!(removed >= 2, "removed {removed}");
    assert!(!netns_names().contains("oakstale-"), "{}", netns_names());
    assert!(!link_names().contains("oakstale-"), "{}", link_names());
    let status = inside.wait()?;
    assert!(!status.success(), "the process inside was killed");
    assert_eq!(cleanup_stale("oakstale")?, 0);
    Ok(())
}

/// `ctr -n oak-e2e-test <args>`, stdout on success.
fn ctr(args: &[&str]) -> Result<std::process::Output> {
    let socket = CTR_SOCKET.get().context("no containerd started")?;
    Command::new("ctr")
        .arg("-a")
        .arg(socket)
        .arg("-n")
        .arg(CTR_NS)
        .args(args)
        .output()
        .with_context(|| format!("ctr {args:?}"))
}

fn ctr_ok(args: &[&str]) -> Result<String> {
    let out = ctr(args)?;
    if !out.status.success() {
        bail!("ctr {args:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

const CTR_NS: &str = "oak-e2e-test";
/// The socket of the test's own containerd.
static CTR_SOCKET: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Removes the test namespace's containers, images and then the namespace.
fn ctr_cleanup() {
    if let Ok(list) = ctr_ok(&["containers", "list", "-q"]) {
        for id in list.lines() {
            let _ = ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
            let _ = ctr(&["tasks", "delete", "-f", id]);
            let _ = ctr(&["containers", "delete", id]);
        }
    }
    if let Ok(list) = ctr_ok(&["images", "list", "-q"]) {
        for r in list.lines() {
            let _ = ctr(&["images", "rm", "--sync", r]);
        }
    }
    // Snapshots and content go with the image's garbage collection, which may lag a moment.
    let _ =
        wait_until("the ctr namespace to be removable", Duration::from_secs(10), Duration::from_millis(200), || {
            let socket = CTR_SOCKET.get().context("no containerd started")?;
            let _ = Command::new("ctr").arg("-a").arg(socket).args(["namespaces", "rm", CTR_NS]).output();
            let out = Command::new("ctr").arg("-a").arg(socket).args(["namespaces", "list", "-q"]).output()?;
            Ok((!String::from_utf8_lossy(&out.stdout).lines().any(|l| l == CTR_NS)).then_some(()))
        });
}

/// Memory in use by a ctr task, from its cgroup (`/<namespace>/<id>`, v1 or v2 layout).
fn task_memory_bytes(id: &str) -> Result<u64> {
    let v1 = format!("/sys/fs/cgroup/memory/{CTR_NS}/{id}/memory.usage_in_bytes");
    let v2 = format!("/sys/fs/cgroup/{CTR_NS}/{id}/memory.current");
    let text = fs::read_to_string(&v1)
        .or_else(|_| fs::read_to_string(&v2))
        .with_context(|| format!("reading {v1} or {v2}"))?;
    Ok(text.trim().parse()?)
}

#[test]
fn containerd_pulls_and_runs_the_images() -> Result<()> {
    if !can_run(
        "containerd_pulls_and_runs_the_images",
        &[Root, Tool("docker-registry"), Tool("skopeo"), Tool("ctr"), Tool("containerd"), Tool("runc")],
    ) {
        return Ok(());
    }
    let containerd = crate::containerd::Containerd::start()?;
    CTR_SOCKET.set(containerd.socket().to_path_buf()).ok();
    ctr_cleanup();
    let result = containerd_checks();
    ctr_cleanup();
    result
}

fn containerd_checks() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let registry = Registry::start_local()?;
    let push = |spec: &ImageSpec| -> Result<String> {
        let layout = images::build_image(dir.path(), spec)?;
        let reference = registry.push(&layout, &spec.tag, &format!("oak-e2e/{}", spec.name))?;
        ctr_ok(&["images", "pull", "--plain-http", &reference])?;
        Ok(reference)
    };
    let tag = std::process::id();
    let run = |reference: &str, name: &str, extra: &[&str]| -> Result<std::process::Output> {
        let id = format!("oak-e2e-{name}-{tag}");
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[reference, &id]);
        ctr(&args)
    };

    let one_shot = push(&images::one_shot("hello from one-shot"))?;
    let out = run(&one_shot, "t1", &[])?;
    assert!(out.status.success(), "one-shot: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello from one-shot");

    let crasher = push(&images::crasher())?;
    let out = run(&crasher, "crash", &[])?;
    assert_eq!(out.status.code(), Some(3), "crasher: {out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("crasher starting"));

    let hog = push(&images::memory_hog(64))?;
    let out = run(&hog, "t2", &["--memory-limit", "33554432"])?;
    assert!(!out.status.success(), "memory hog survived a 32 MiB limit: {out:?}");
    eprintln!("memory hog under 32 MiB limit: {:?}", out.status.code());
    let out = run(&hog, "t3", &[])?;
    assert!(out.status.success(), "memory hog without limit: {out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("memory hog done"), "{out:?}");

    // The holder keeps its memory while running: the task's cgroup shows it.
    let holder = push(&images::memory_holder(48))?;
    let id = format!("oak-e2e-hold-{tag}");
    ctr_ok(&["run", "-d", &holder, &id])?;
    let usage =
        wait_until("the memory holder to hold 48 MiB", Duration::from_secs(10), Duration::from_millis(100), || {
            let mb = task_memory_bytes(&id)? / (1024 * 1024);
            Ok((mb >= 48).then_some(mb))
        })?;
    std::thread::sleep(Duration::from_millis(500));
    let still = task_memory_bytes(&id)? / (1024 * 1024);
    assert!(still >= 48, "memory holder let go: {still} MiB after {usage} MiB");
    eprintln!("memory holder: {still} MiB");
    ctr_ok(&["tasks", "kill", &id])?;

    // The HTTP server on the host network: index.html is the message, /hostname the hostname.
    let port = crate::registry::free_port([127, 0, 0, 1].into())?;
    let http = push(&images::http_server_on("served", port))?;
    let id = format!("oak-e2e-http-{tag}");
    ctr_ok(&["run", "-d", "--net-host", &http, &id])?;
    let addr = format!("127.0.0.1:{port}");
    let body =
        wait_until("the http server image to answer", Duration::from_secs(10), Duration::from_millis(100), || {
            Ok(http::get(&addr, "/").ok().filter(|r| r.status == 200).map(|r| r.body))
        })?;
    assert_eq!(body, "served");
    let hostname = http::get(&addr, "/hostname")?;
    assert_eq!(hostname.status, 200);
    assert!(!hostname.body.trim().is_empty());
    // SIGTERM stops it promptly (the shell traps it as PID 1).
    let started = std::time::Instant::now();
    ctr_ok(&["tasks", "kill", &id])?;
    wait_until("the http server to stop on SIGTERM", Duration::from_secs(5), Duration::from_millis(100), || {
        let list = ctr_ok(&["tasks", "list"])?;
        Ok((!list.lines().any(|l| l.starts_with(&id) && l.contains("RUNNING"))).then_some(()))
    })?;
    eprintln!("http server stopped {:?} after SIGTERM", started.elapsed());
    Ok(())
}
