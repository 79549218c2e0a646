//! The QEMU command line of an instance, and the choice of kernel URL. Pure, table-tested.

use std::path::{Path, PathBuf};

use crate::extract::Unpacked;
use crate::Accel;

/// The kernel URL for `node_arch`: `code` is a comma-separated list aligned with `arch`; with
/// no `arch` a single URL is taken for every architecture.
pub fn kernel_url(code: &str, arch: Option<&[String]>, node_arch: &str) -> Result<String, String> {
    let urls: Vec<&str> = code.split(',').map(str::trim).collect();
    if urls.iter().any(|u| u.is_empty()) {
        return Err(format!("code {code:?} has an empty kernel url"));
    }
    match arch {
        None | Some([]) if urls.len() == 1 => Ok(urls[0].to_string()),
        None | Some([]) => Err("code lists several kernel urls but arch does not say which is for which".into()),
        Some(arches) => {
            let Some(i) = arches.iter().position(|a| a == node_arch) else {
                return Err(format!(
                    "no kernel for this node's architecture {node_arch} (arch lists {})",
                    arches.join(", ")
                ));
            };
            urls.get(i)
                .map(|u| u.to_string())
                .ok_or_else(|| format!("arch names {node_arch} at position {} but code has no url there", i + 1))
        }
    }
}

/// Where an instance's files are.
pub struct InstancePaths {
    pub log: PathBuf,
    pub qmp: PathBuf,
    pub pid: PathBuf,
}

/// The overlay's addresses for the guest (Unikraft's `netdev.*` arguments) and the tap the
/// guest's NIC is attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestNet {
    pub tap: String,
    pub mac: String,
    pub addr: String,
    pub gateway: String,
    pub mask: String,
}

/// QEMU's seccomp sandbox for a VM: obsolete system calls, spawning processes and changing
/// resource limits or scheduling are refused. (`elevateprivileges=deny` would also refuse the
/// set*id calls `-runas` makes.)
pub const SANDBOX: &str = "on,obsolete=deny,spawn=deny,resourcecontrol=deny";

/// The options confining a VM's QEMU: it gives up root for `uid` (and the same gid, with no
/// supplementary groups) before the guest runs, after it opened what needs root (tap, log,
/// QMP socket, pid file, kernel), and runs in the seccomp [`SANDBOX`].
pub fn confinement(uid: u32) -> [String; 4] {
    ["-runas".into(), format!("{uid}:{uid}"), "-sandbox".into(), SANDBOX.into()]
}

pub struct Launch<'a> {
    pub name: &'a str,
    /// The user QEMU runs the guest as ([`confinement`]); `None`: stays root.
    pub uid: Option<u32>,
    pub arch: &'a str,
    pub accel: Accel,
    pub memory_mb: u64,
    pub vcpus: u64,
    pub unpacked: &'a Unpacked,
    pub cmd: &'a [String],
    pub net: Option<&'a GuestNet>,
}

pub fn qemu_args(l: &Launch<'_>, paths: &InstancePaths) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(&["-name", &format!("{},debug-threads=on", l.name)]);
    if l.arch == "arm64" {
        push(&["-machine", "virt"]);
    }
    match l.accel {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => push(&["-accel", "tcg", "-cpu", "max"]),
    }
    push(&["-m", &l.memory_mb.to_string(), "-smp", &l.vcpus.max(1).to_string()]);
    push(&["-nographic", "-nodefaults", "-no-user-config", "-no-reboot"]);
    if let Some(uid) = l.uid {
        let [runas, user, sandbox, rules] = confinement(uid);
        push(&[&runas, &user, &sandbox, &rules]);
    }
    push(&["-chardev", &format!("file,id=console,path={},append=on", opt_path(&paths.log))]);
    push(&["-serial", "chardev:console"]);
    push(&["-qmp", &format!("unix:{},server=on,wait=off", opt_path(&paths.qmp))]);
    push(&["-pidfile", &paths.pid.display().to_string()]);
    push(&["-kernel", &l.unpacked.kernel.display().to_string()]);
    if let Some(initrd) = &l.unpacked.initrd {
        push(&["-initrd", &initrd.display().to_string()]);
    }
    if let Some(files) = &l.unpacked.files {
        push(&["-fsdev", &format!("local,id=fs0,path={},security_model=none,readonly=on", opt_path(files))]);
        push(&["-device", "virtio-9p-pci,fsdev=fs0,mount_tag=fs0"]);
    }
    if let Some(n) = l.net {
        push(&["-netdev", &format!("tap,id=net0,ifname={},script=no,downscript=no", n.tap)]);
        push(&["-device", &format!("virtio-net-pci,netdev=net0,mac={}", n.mac)]);
    }
    let mut append: Vec<String> = Vec::new();
    if let Some(n) = l.net {
        append.push(format!("netdev.ipv4_addr={}", n.addr));
        append.push(format!("netdev.ipv4_gw_addr={}", n.gateway));
        append.push(format!("netdev.ipv4_subnet_mask={}", n.mask));
    }
    if !l.unpacked.cmdline.is_empty() {
        append.push(l.unpacked.cmdline.clone());
    }
    if !l.cmd.is_empty() {
        append.push("--".into());
        append.extend(l.cmd.iter().cloned());
    }
    if !append.is_empty() {
        a.push("-append".into());
        a.push(append.join(" "));
    }
    a
}

/// A path inside a QEMU option list, where `,` separates options (doubled to be literal).
fn opt_path(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn the_url_follows_the_nodes_architecture() {
        let arches = s(&["amd64", "arm64"]);
        let code = "http://k/x86.tar.gz, http://k/arm.tar.gz";
        assert_eq!(kernel_url(code, Some(&arches), "amd64").unwrap(), "http://k/x86.tar.gz");
        assert_eq!(kernel_url(code, Some(&arches), "arm64").unwrap(), "http://k/arm.tar.gz");
        assert!(kernel_url(code, Some(&arches), "riscv64")
            .unwrap_err()
            .contains("no kernel for this node's architecture riscv64"));
        assert!(kernel_url("http://k/x86.tar.gz", Some(&arches), "arm64").unwrap_err().contains("no url there"));
        assert_eq!(kernel_url("http://k/a.tar.gz", None, "arm64").unwrap(), "http://k/a.tar.gz");
        assert!(kernel_url(code, None, "amd64").is_err());
        assert!(kernel_url("http://k/a,", Some(&arches), "amd64").unwrap_err().contains("empty"));
    }

    #[test]
    fn the_command_line_carries_limits_console_qmp_network_and_arguments() {
        let unpacked = Unpacked {
            kernel: "/d/kernel".into(),
            initrd: Some("/d/initramfs.cpio".into()),
            cmdline: "console=ttyS0".into(),
            files: Some("/d/files".into()),
        };
        let net = GuestNet {
            tap: "oaktap0".into(),
            mac: "52:54:00:00:00:01".into(),
            addr: "10.18.0.5".into(),
            gateway: "10.18.0.1".into(),
            mask: "255.255.255.192".into(),
        };
        let cmd = s(&["hello", "world"]);
        let l = Launch {
            name: "a.b.c.d.instance.0",
            uid: Some(2_000_000_007),
            arch: "amd64",
            accel: Accel::Tcg,
            memory_mb: 64,
            vcpus: 0,
            unpacked: &unpacked,
            cmd: &cmd,
            net: Some(&net),
        };
        let paths = InstancePaths { log: "/l/x,y.log".into(), qmp: "/i/qmp".into(), pid: "/i/pid".into() };
        let a = qemu_args(&l, &paths).join(" ");
        for want in [
            "-accel tcg -cpu max",
            "-m 64 -smp 1",
            "-nographic -nodefaults -no-user-config",
            "-runas 2000000007:2000000007 -sandbox on,obsolete=deny,spawn=deny,resourcecontrol=deny",
            "-chardev file,id=console,path=/l/x,,y.log,append=on -serial chardev:console",
            "-qmp unix:/i/qmp,server=on,wait=off",
            "-kernel /d/kernel -initrd /d/initramfs.cpio",
            "readonly=on -device virtio-9p-pci,fsdev=fs0,mount_tag=fs0",
            "-netdev tap,id=net0,ifname=oaktap0,script=no,downscript=no -device virtio-net-pci,netdev=net0,mac=52:54:00:00:00:01",
            "-append netdev.ipv4_addr=10.18.0.5 netdev.ipv4_gw_addr=10.18.0.1 netdev.ipv4_subnet_mask=255.255.255.192 console=ttyS0 -- hello world",
        ] {
            assert!(a.contains(want), "{a}\nlacks {want}");
        }
        let bare = Unpacked { kernel: "/k".into(), initrd: None, cmdline: String::new(), files: None };
        let l = Launch { uid: None, arch: "arm64", accel: Accel::Kvm, unpacked: &bare, cmd: &[], net: None, ..l };
        let a = qemu_args(&l, &paths).join(" ");
        assert!(a.contains("-machine virt -accel kvm -cpu host"), "{a}");
        assert!(!a.contains("-runas") && !a.contains("-sandbox"), "{a}");
        assert!(!a.contains("-append") && !a.contains("-initrd") && !a.contains("-netdev"), "{a}");
    }
}
