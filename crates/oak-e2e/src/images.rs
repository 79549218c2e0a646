//! OCI image layouts built from the host's static busybox.
//!
//! End-to-end tests need small images with known behaviour (serve HTTP, exit, crash, eat memory)
//! and must not depend on Docker Hub. Debian's `busybox-static` gives one self-contained binary;
//! we pack it with applet symlinks into a single uncompressed layer and write a standard OCI
//! image layout, which `skopeo` can push to a local registry.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The busybox binary packed into every image (Debian package `busybox-static`).
pub const BUSYBOX: &str = "/bin/busybox";

/// Media types written into the layout.
pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// Annotation carrying the tag in `index.json` (what `oci:<layout>:<tag>` refers to).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Fixed mtime of every tar entry (2020-01-01T00:00:00Z): same spec, same digests.
const MTIME: u64 = 1_577_836_800;

/// Applets linked to `/bin/busybox`: what the ready-made specs and tests' `exec`s use.
pub const APPLETS: &[&str] = &[
    "sh", "ash", "echo", "sleep", "cat", "httpd", "nc", "wget", "head", "tail", "tr", "dd", "ls", "env", "hostname",
    "mkdir", "true", "false", "ping", "ps", "kill", "id", "grep", "sed", "wc", "seq", "printf", "test", "[", "ip",
    "ifconfig", "nslookup", "uname", "date", "rm", "touch",
];

/// A file added to the image on top of the busybox base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFile {
    /// Absolute path inside the image, e.g. `/www/index.html`; parent directories are created.
    pub path: String,
    pub contents: Vec<u8>,
    pub mode: u32,
}

/// What to build: the image's name (layout directory), tag, process and extra files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// Repository-style name; also the layout's directory name under `build_image`'s `dir`.
    pub name: String,
    pub tag: String,
    /// Omitted from the config when empty, so a descriptor's command replaces the whole process.
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=value` entries; `PATH=/bin` comes first unless the spec sets its own `PATH`.
    pub env: Vec<String>,
    pub working_dir: String,
    /// Ports recorded as `ExposedPorts` (`<port>/tcp`), informational only.
    pub exposed_ports: Vec<u16>,
    pub files: Vec<ImageFile>,
}

impl ImageSpec {
    /// A spec running `cmd` with no extra files, tag `latest`.
    pub fn new(name: &str, cmd: &[&str]) -> Self {
        ImageSpec {
            name: name.to_string(),
            tag: "latest".to_string(),
            entrypoint: Vec::new(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            working_dir: "/".to_string(),
            exposed_ports: Vec::new(),
            files: Vec::new(),
        }
    }

    /// A spec running `script` with `/bin/sh -c`.
    pub fn shell(name: &str, script: &str) -> Self {
        Self::new(name, &["/bin/sh", "-c", script])
    }

    pub fn with_tag(mut self, tag: &str) -> Self {
        self.tag = tag.to_string();
        self
    }

    pub fn with_file(mut self, path: &str, contents: impl Into<Vec<u8>>, mode: u32) -> Self {
        self.files.push(ImageFile { path: path.to_string(), contents: contents.into(), mode });
        self
    }

    pub fn with_env(mut self, entry: &str) -> Self {
        self.env.push(entry.to_string());
        self
    }
}

/// HTTP server on port 80; see [`http_server_on`].
pub fn http_server(message: &str) -> ImageSpec {
    http_server_on(message, 80)
}

/// busybox `httpd` on `port` serving `/www`: `GET /` answers `message`, `GET /hostname` the
/// container's hostname (written at start, so tests can tell instances apart).
///
/// It logs `http server starting` first, so tests can wait for the start in the logs. The shell
/// stays PID 1 with a TERM trap: `httpd` as PID 1 would ignore SIGTERM and every stop would wait
/// for the runtime's kill timeout.
pub fn http_server_on(message: &str, port: u16) -> ImageSpec {
    let script = format!(
        "trap 'exit 0' TERM INT; hostname > /www/hostname; echo http server starting; \
         httpd -f -v -p {port} -h /www & wait"
    );
    let mut spec = ImageSpec::shell("http-server", &script).with_file("/www/index.html", message.as_bytes(), 0o644);
    spec.exposed_ports.push(port);
    spec
}

/// Prints `message` and exits 0.
pub fn one_shot(message: &str) -> ImageSpec {
    ImageSpec::new("one-shot", &["/bin/echo", message])
}

/// Prints `crasher starting`, exits with status 3 after a second.
pub fn crasher() -> ImageSpec {
    ImageSpec::shell("crasher", "echo crasher starting; sleep 1; echo crasher exiting 3; exit 3")
}

/// Allocates `mb` MiB, then prints `memory hog done` and exits 0; under a lower memory limit it
/// is OOM-killed (exit 137).
///
/// `tail -c N` keeps the last N bytes of its input in one buffer, so it really touches N bytes
/// (measured: peak cgroup usage ≈ N). `dd | cat` only streams (2 MiB peak), and the shell's
/// `x=$(…)` reallocates while growing (peak ≈ 2 N), so neither gives a predictable amount.
pub fn memory_hog(mb: u64) -> ImageSpec {
    let bytes = mb * 1024 * 1024;
    let script = format!(
        "echo memory hog allocating {mb} MiB; head -c {bytes} /dev/zero | tail -c {bytes} > /dev/null \
         && echo memory hog done"
    );
    ImageSpec::shell("memory-hog", &script)
}

/// Holds about `mb` MiB until stopped (for usage reports): `tail` keeps its buffer while blocked
/// writing to a `sleep` that never reads. Prints `memory holder starting`; the memory is held a
/// moment later (poll the usage rather than trusting the line).
pub fn memory_holder(mb: u64) -> ImageSpec {
    let bytes = mb * 1024 * 1024;
    let script = format!(
        "trap 'exit 0' TERM INT; echo memory holder starting; \
         head -c {bytes} /dev/zero | tail -c {bytes} | sleep 2147483647 & wait"
    );
    ImageSpec::shell("memory-holder", &script)
}

/// Runs until stopped; exits 0 promptly on SIGTERM (the shell traps it as PID 1).
pub fn sleeper() -> ImageSpec {
    ImageSpec::shell("sleeper", "trap 'exit 0' TERM INT; echo sleeper starting; while true; do sleep 1 & wait $!; done")
}

/// `amd64`/`arm64`/… for the host, as OCI platforms name them.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// `sha256:<hex>` of `data`.
pub fn digest_of(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Writes an OCI image layout for `spec` at `dir/<spec.name>` and returns that path.
///
/// Blobs are content addressed and the tar is deterministic, so building the same spec twice
/// yields identical digests. If the layout already exists, the tag is added to (or replaced in)
/// its `index.json`, so one layout can hold several tags.
pub fn build_image(dir: &Path, spec: &ImageSpec) -> Result<PathBuf> {
    if spec.name.is_empty() || spec.name.contains('/') || spec.tag.is_empty() {
        bail!("invalid image name {:?} or tag {:?}", spec.name, spec.tag);
    }
    let layout = dir.join(&spec.name);
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;

    let layer = layer_tar(spec)?;
    let layer_digest = write_blob(&blobs, &layer)?;

    let mut env = spec.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, "PATH=/bin".to_string());
    }
    let mut config = json!({
        "Env": env,
        "Cmd": spec.cmd,
        "WorkingDir": spec.working_dir,
    });
    if !spec.entrypoint.is_empty() {
        config["Entrypoint"] = json!(spec.entrypoint);
    }
    if !spec.exposed_ports.is_empty() {
        let ports: serde_json::Map<String, Value> =
            spec.exposed_ports.iter().map(|p| (format!("{p}/tcp"), json!({}))).collect();
        config["ExposedPorts"] = Value::Object(ports);
    }
    let image_config = json!({
        "created": "2020-01-01T00:00:00Z",
        "architecture": host_architecture(),
        "os": "linux",
        "config": config,
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
        "history": [{ "created": "2020-01-01T00:00:00Z", "created_by": "oak-e2e build_image" }],
    });
    let config_bytes = serde_json::to_vec(&image_config)?;
    let config_digest = write_blob(&blobs, &config_bytes)?;

    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": { "mediaType": MEDIA_CONFIG, "digest": config_digest, "size": config_bytes.len() },
        "layers": [{ "mediaType": MEDIA_LAYER, "digest": layer_digest, "size": layer.len() }],
    });
    let manifest_bytes = serde_json::to_vec(&manifest)?;
    let manifest_digest = write_blob(&blobs, &manifest_bytes)?;

    write_file(&layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;

    let index_path = layout.join("index.json");
    let mut manifests: Vec<Value> = match fs::read(&index_path) {
        Ok(bytes) => {
            let index: Value =
                serde_json::from_slice(&bytes).with_context(|| format!("parsing existing {}", index_path.display()))?;
            index["manifests"].as_array().cloned().unwrap_or_default()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", index_path.display())),
    };
    manifests.retain(|m| m["annotations"][REF_NAME] != spec.tag.as_str());
    manifests.push(json!({
        "mediaType": MEDIA_MANIFEST,
        "digest": manifest_digest,
        "size": manifest_bytes.len(),
        "annotations": { REF_NAME: spec.tag },
        "platform": { "architecture": host_architecture(), "os": "linux" },
    }));
    let index = json!({ "schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": manifests });
    write_file(&index_path, &serde_json::to_vec_pretty(&index)?)?;
    Ok(layout)
}

fn write_blob(blobs: &Path, data: &[u8]) -> Result<String> {
    let digest = digest_of(data);
    let path = blobs.join(digest.trim_start_matches("sha256:"));
    write_file(&path, data)?;
    Ok(digest)
}

fn write_file(path: &Path, data: &[u8]) -> Result<()> {
    let mut f = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(data).with_context(|| format!("writing {}", path.display()))
}

/// The single layer: base directories, busybox with its applet links, `/etc` files, `spec.files`.
fn layer_tar(spec: &ImageSpec) -> Result<Vec<u8>> {
    let busybox = fs::read(BUSYBOX)
        .with_context(|| format!("reading {BUSYBOX} (install it with `apt-get install -y busybox-static`)"))?;
    let mut files: Vec<(String, Vec<u8>, u32)> = vec![
        ("etc/passwd".into(), b"root:x:0:0:root:/root:/bin/sh\n".to_vec(), 0o644),
        ("etc/group".into(), b"root:x:0:\n".to_vec(), 0o644),
    ];
    for f in &spec.files {
        let rel = f.path.trim_start_matches('/');
        if rel.is_empty() || rel.split('/').any(|c| c == ".." || c.is_empty()) {
            bail!("invalid image file path {:?}", f.path);
        }
        files.retain(|(p, _, _)| p != rel);
        files.push((rel.to_string(), f.contents.clone(), f.mode));
    }

    let mut dirs: Vec<(String, u32)> =
        ["bin", "dev", "etc", "proc", "root", "sys", "www"].iter().map(|d| (d.to_string(), 0o755)).collect();
    dirs.push(("tmp".into(), 0o1777));
    for (path, _, _) in &files {
        for parent in Path::new(path).ancestors().skip(1) {
            let parent = parent.to_string_lossy().into_owned();
            if !parent.is_empty() && !dirs.iter().any(|(d, _)| *d == parent) {
                dirs.push((parent, 0o755));
            }
        }
    }
    dirs.sort();

    let mut tar = tar::Builder::new(Vec::new());
    for (dir, mode) in &dirs {
        let mut h = header(tar::EntryType::Directory, *mode, 0);
        tar.append_data(&mut h, format!("{dir}/"), std::io::empty())
            .with_context(|| format!("adding directory {dir} to the layer"))?;
    }
    let mut h = header(tar::EntryType::Regular, 0o755, busybox.len() as u64);
    tar.append_data(&mut h, "bin/busybox", busybox.as_slice()).context("adding busybox")?;
    for applet in APPLETS {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        tar.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .with_context(|| format!("adding applet link {applet}"))?;
    }
    for (path, contents, mode) in &files {
        let mut h = header(tar::EntryType::Regular, *mode, contents.len() as u64);
        tar.append_data(&mut h, path, contents.as_slice()).with_context(|| format!("adding {path} to the layer"))?;
    }
    tar.into_inner().context("finishing the layer tar")
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(MTIME);
    h.set_uid(0);
    h.set_gid(0);
    let _ = h.set_username("root");
    let _ = h.set_groupname("root");
    h
}
