//! A test "unikernel": Debian's cloud kernel (`linux-image-cloud-amd64`, downloaded with
//! `apt-get download` and unpacked with `dpkg-deb -x` into a cache under `/var/tmp`, never
//! installed) with an initramfs whose `/init` is a static-busybox script. It prints
//! [`MARKER`], the kernel command line and its arguments to the console; with a NIC it loads the
//! virtio modules of the same package, configures `eth0` from the `netdev.*` arguments
//! (Unikraft's convention) and serves [`HTTP_BODY`] with `busybox httpd` on port 80.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

pub const MARKER: &str = "OAK-UNIKERNEL-UP";
pub const HTTP_BODY: &str = "hello from the unikernel";

/// Modules `virtio_net` needs, in load order.
const MODULES: [&str; 8] = [
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
];

/// Where Debian's cloud kernel is unpacked; shared by all runs.
pub fn kernel_cache() -> PathBuf {
    PathBuf::from("/var/tmp/oak-e2e-cache/linux-image-cloud-amd64")
}

/// The unpacked kernel package (`boot/vmlinuz-*`, `lib/modules/<version>/`), fetched once.
pub fn debian_kernel() -> Result<PathBuf> {
    let cache = kernel_cache();
    let root = cache.join("root");
    if vmlinuz(&root).is_ok() {
        return Ok(root);
    }
    fs::create_dir_all(&cache)?;
    let depends = Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]).output()?;
    let text = String::from_utf8_lossy(&depends.stdout);
    let package = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: linux-image-"))
        .map(|v| format!("linux-image-{v}"))
        .context("apt-cache depends linux-image-cloud-amd64 names no kernel package (apt-get update?)")?;
    let status = Command::new("apt-get").args(["download", &package]).current_dir(&cache).status()?;
    if !status.success() {
        bail!("apt-get download {package} failed ({status})");
    }
    let deb = fs::read_dir(&cache)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&package))
                && p.extension().is_some_and(|e| e == "deb")
        })
        .context("downloaded .deb not found")?;
    let tmp = cache.join(format!("root.tmp.{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let status = Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp).status()?;
    if !status.success() {
        bail!("dpkg-deb -x {} failed ({status})", deb.display());
    }
    fs::rename(&tmp, &root)?;
    let _ = fs::remove_file(&deb);
    vmlinuz(&root)?;
    Ok(root)
}

fn vmlinuz(root: &Path) -> Result<PathBuf> {
    fs::read_dir(root.join("boot"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        .context("no boot/vmlinuz-* in the kernel package")
}

const INIT: &str = r#"#!/bin/busybox sh
B=/bin/busybox
$B mkdir -p /proc /sys /dev /tmp /www
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
$B mount -t devtmpfs dev /dev 2>/dev/null
echo "OAK-UNIKERNEL-UP"
echo "cmdline: $($B cat /proc/cmdline)"
echo "args: $*"
# `exit` as the argument: init ends (the kernel panics; with panic=-1 and -no-reboot QEMU ends).
if [ "$1" = "exit" ]; then exit 0; fi
for w in $($B cat /proc/cmdline); do
  case "$w" in
    netdev.ipv4_addr=*) ADDR="${w#*=}" ;;
    netdev.ipv4_gw_addr=*) GW="${w#*=}" ;;
    netdev.ipv4_subnet_mask=*) MASK="${w#*=}" ;;
  esac
done
if [ -n "$ADDR" ]; then
  for m in MODULES; do $B insmod /lib/modules/$m.ko; done
  $B ifconfig lo 127.0.0.1 up
  $B ifconfig eth0 "$ADDR" netmask "$MASK" up
  $B route add default gw "$GW"
  echo "HTTP_BODY" > /www/index.html
  $B httpd -p 80 -h /www
  echo "network: eth0 $ADDR/$MASK via $GW, httpd on :80"
fi
while true; do $B sleep 3600; done
"#;

/// `initramfs.cpio` (newc) with `/init`, `/bin/busybox` and the virtio modules of `kernel_root`.
pub fn initramfs(kernel_root: &Path) -> Result<Vec<u8>> {
    let modules_dir = fs::read_dir(kernel_root.join("lib/modules"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .next()
        .context("no lib/modules/<version> in the kernel package")?;
    let init = INIT.replace("MODULES", &MODULES.join(" ")).replace("HTTP_BODY", HTTP_BODY);
    let mut cpio = Cpio::default();
    for dir in ["bin", "lib", "lib/modules", "proc", "sys", "dev", "tmp"] {
        cpio.dir(dir);
    }
    cpio.file("init", 0o755, init.as_bytes());
    cpio.file("bin/busybox", 0o755, &fs::read(crate::images::BUSYBOX)?);
    for m in MODULES {
        let found = find_file(&modules_dir, &format!("{m}.ko")).with_context(|| format!("module {m}.ko"))?;
        cpio.file(&format!("lib/modules/{m}.ko"), 0o644, &fs::read(found)?);
    }
    Ok(cpio.finish())
}

fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find_file(&path, name) {
                return Some(found);
            }
        } else if path.file_name().is_some_and(|n| n == name) {
            return Some(path);
        }
    }
    None
}

/// The kernel archive the `unikernel` runtime takes: `kernel` (left out with `with_kernel`
/// false, for the bad-input case), `initramfs.cpio` and `cmdline`.
pub fn archive(kernel_root: &Path, with_kernel: bool) -> Result<Vec<u8>> {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    if with_kernel {
        files.push(("kernel".into(), fs::read(vmlinuz(kernel_root)?)?));
    }
    files.push(("initramfs.cpio".into(), initramfs(kernel_root)?));
    files.push(("cmdline".into(), b"console=ttyS0 panic=-1 quiet".to_vec()));
    tar_gz(&files)
}

pub fn tar_gz(files: &[(String, Vec<u8>)]) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        builder.append_data(&mut h, name, data.as_slice())?;
    }
    Ok(builder.into_inner()?.finish()?)
}

/// A newc ("070701") cpio archive writer.
#[derive(Default)]
pub struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let nlink = if mode & 0o040000 != 0 { 2 } else { 1 };
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            nlink,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    pub fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[]);
    }

    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | perm, data);
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.ino = 0;
        self.entry("TRAILER!!!", 0, &[]);
        self.out
    }
}

/// Pids of QEMU processes started for the task `task_id` (the runtime names each VM
/// `-name <task id>,debug-threads=on`): how tests and benchmarks find a VM from outside.
pub fn qemu_pids(task_id: &str) -> Vec<u32> {
    let name = format!("{task_id},debug-threads=on");
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == name.as_bytes()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_pids_of_an_unknown_task_are_none() {
        assert!(super::qemu_pids("no-such-task.instance.0").is_empty());
    }

    #[test]
    fn cpio_entries_are_newc_and_aligned() {
        let mut c = Cpio::default();
        c.file("init", 0o755, b"#!/bin/sh\n");
        let out = c.finish();
        assert!(out.starts_with(b"070701"));
        assert_eq!(out.len() % 4, 0);
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("init\0") && text.contains("TRAILER!!!\0"));
        // mode of the first entry: regular file 0755.
        assert_eq!(&out[14..22], b"000081ed");
    }

    /// The test unikernel itself boots under QEMU (TCG) and prints the marker and its arguments.
    #[test]
    fn the_test_unikernel_boots_and_prints_its_marker() -> Result<()> {
        use crate::Need::Tool;
        let needs = [Tool("qemu-system-x86_64"), Tool("apt-get"), Tool("dpkg-deb"), Tool("busybox")];
        if !crate::can_run("the_test_unikernel_boots_and_prints_its_marker", &needs) {
            return Ok(());
        }
        let root = debian_kernel()?;
        let dir = tempfile::tempdir()?;
        fs::write(dir.path().join("initramfs.cpio"), initramfs(&root)?)?;
        let log = dir.path().join("console.log");
        let mut child = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-m", "256", "-nographic", "-nodefaults", "-no-user-config", "-no-reboot"])
            .arg("-kernel")
            .arg(vmlinuz(&root)?)
            .arg("-initrd")
            .arg(dir.path().join("initramfs.cpio"))
            .args(["-append", "console=ttyS0 panic=-1 quiet netdev.ipv4_addr=10.0.2.15 netdev.ipv4_gw_addr=10.0.2.2 netdev.ipv4_subnet_mask=255.255.255.0 -- one two"])
            .args(["-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"])
            .arg("-serial")
            .arg(format!("file:{}", log.display()))
            .stdin(std::process::Stdio::null())
            .spawn()?;
        let seen = crate::wait_until(
            "the marker on the console",
            std::time::Duration::from_secs(120),
            std::time::Duration::from_millis(300),
            || Ok(fs::read_to_string(&log).ok().filter(|l| l.contains("network: eth0"))),
        );
        let _ = child.kill();
        let _ = child.wait();
        let console = seen?;
        assert!(console.contains(MARKER), "{console}");
        assert!(console.contains("cmdline: console=ttyS0"), "{console}");
        assert!(console.contains("args: one two"), "{console}");
        assert!(!console.contains("insmod:") && !console.contains("SIOC"), "the NIC comes up: {console}");
        Ok(())
    }
}
