//! The OCI runtime spec of an instance's container, built from the image's configuration and
//! the descriptor. Pure: no file system, no clock, so every rule is table-tested.
//!
//! Rules: the descriptor's `cmd`, when given, replaces the whole process (entrypoint and cmd of
//! the image), as in the original; the environment is the image's, then `HOSTNAME=instance-<n>`,
//! then the descriptor's entries (later ones win per variable); `memory` (MB, or
//! [`oak_api::sla::DEFAULT_MEMORY_MB`] when left out) and `vcpus` become cgroup limits (the
//! original sets none), and so does the worker's pids limit; unprivileged containers get the
//! default capabilities, masked paths, `noNewPrivileges` and the [`crate::seccomp`] profile;
//! `privileged` gives every capability and device and no seccomp filter.

use oak_api::sla::Microservice;
use serde::Deserialize;
use serde_json::{json, Value};

/// The parts of an image's configuration (`config` of the OCI image config) a container uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ImageConfig {
    #[serde(rename = "Entrypoint", deserialize_with = "null_as_empty")]
    pub entrypoint: Vec<String>,
    #[serde(rename = "Cmd", deserialize_with = "null_as_empty")]
    pub cmd: Vec<String>,
    #[serde(rename = "Env", deserialize_with = "null_as_empty")]
    pub env: Vec<String>,
    #[serde(rename = "WorkingDir")]
    pub working_dir: String,
    #[serde(rename = "User")]
    pub user: String,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// How this worker sets containers up (not per instance).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSetup {
    /// Share the node's network namespace (no overlay network yet, or `--no-overlay`).
    pub host_network: bool,
    /// The network namespace to join when `host_network`: the worker's own (`/proc/<pid>/ns/net`),
    /// which is not containerd's when the worker runs in a namespace of its own (tests, or a
    /// node whose containerd is shared). `None`: the runtime's (containerd's) namespace.
    pub host_netns_path: Option<String>,
    /// Cgroup the container gets, e.g. `/oakestra/<container id>`.
    pub cgroup_path: String,
    /// Host file bind-mounted read-only as `/etc/resolv.conf`, if any.
    pub resolv_conf: Option<String>,
    /// Host file bind-mounted read-only as `/etc/hosts`, if any.
    pub hosts: Option<String>,
    /// Most processes and threads the container may have at once (`pids.max`); `None`: no limit.
    pub pids_limit: Option<u32>,
    /// The capabilities the worker itself may pass on (its `CapBnd`, bit n = capability n): a
    /// privileged container gets every capability in it, since runc refuses to start a process
    /// asking for one the host has dropped.
    pub bounding_caps: u64,
}

/// The bounding set of the process whose `/proc/<pid>/status` is `status` (`CapBnd:` in hex).
pub fn bounding_caps(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapBnd:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

const CFS_PERIOD_US: u64 = 100_000;

/// Capabilities an unprivileged container keeps (the set Docker and containerd default to).
const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability Linux 5.9+ knows, for privileged containers, in the kernel's numbering
/// (index n is capability n).
const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The process arguments: the descriptor's `cmd` if given, else the image's entrypoint + cmd.
pub fn process_args(image: &ImageConfig, service: &Microservice) -> Result<Vec<String>, String> {
    let args: Vec<String> = if service.cmd.is_empty() {
        image.entrypoint.iter().chain(&image.cmd).cloned().collect()
    } else {
        service.cmd.clone()
    };
    if args.is_empty() || args[0].is_empty() {
        return Err("the image defines no entrypoint or cmd and the descriptor gives no cmd".into());
    }
    Ok(args)
}

/// The environment: image, then `HOSTNAME`, then the descriptor; one entry per variable.
pub fn environment(image: &ImageConfig, service: &Microservice, instance: u32) -> Result<Vec<String>, String> {
    let hostname = format!("HOSTNAME={}", hostname(instance));
    let mut env: Vec<String> = Vec::new();
    for entry in image.env.iter().chain(std::iter::once(&hostname)).chain(&service.environment) {
        let Some((key, _)) = entry.split_once('=') else {
            return Err(format!("environment entry {entry:?} is not of the form NAME=value"));
        };
        if key.is_empty() || key.contains('\0') || entry.contains('\0') {
            return Err(format!("environment entry {entry:?} is not of the form NAME=value"));
        }
        let prefix = format!("{key}=");
        env.retain(|e| !e.starts_with(&prefix));
        env.push(entry.clone());
    }
    Ok(env)
}

/// `instance-<n>`, the container's host name (as in the original).
pub fn hostname(instance: u32) -> String {
    format!("instance-{instance}")
}

/// The image's `User` as numeric uid and gid. Named users would need the image's `/etc/passwd`,
/// which the worker does not mount; they are refused with a clear message rather than run as
/// root.
pub fn user(image_user: &str) -> Result<(u32, u32), String> {
    let spec = image_user.trim();
    if spec.is_empty() || spec == "root" || spec == "root:root" {
        return Ok((0, 0));
    }
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let uid = if u == "root" { Ok(0) } else { u.parse::<u32>() };
    let gid = match g {
        None => uid.clone(),
        Some("root") => Ok(0),
        Some(g) => g.parse::<u32>(),
    };
    match (uid, gid) {
        (Ok(uid), Ok(gid)) => Ok((uid, gid)),
        _ => Err(format!("the image's user {spec:?} is not numeric (uid[:gid]); named users are not supported")),
    }
}

/// The whole runtime spec (OCI runtime-spec 1.0) as JSON.
pub fn build(image: &ImageConfig, service: &Microservice, instance: u32, host: &HostSetup) -> Result<Value, String> {
    let args = process_args(image, service)?;
    let env = environment(image, service, instance)?;
    let (uid, gid) = user(&image.user)?;
    let cwd = if image.working_dir.is_empty() { "/".to_string() } else { image.working_dir.clone() };
    if !cwd.starts_with('/') {
        return Err(format!("the image's working directory {cwd:?} is not absolute"));
    }
    let privileged = service.privileged;
    let caps: Vec<&str> = if privileged {
        ALL_CAPS.iter().enumerate().filter(|(n, _)| host.bounding_caps & (1 << n) != 0).map(|(_, c)| *c).collect()
    } else {
        DEFAULT_CAPS.to_vec()
    };

    let mut namespaces =
        vec![json!({"type": "pid"}), json!({"type": "ipc"}), json!({"type": "uts"}), json!({"type": "mount"})];
    match (&host.host_network, &host.host_netns_path) {
        (false, _) => namespaces.push(json!({"type": "network"})),
        (true, Some(path)) => namespaces.push(json!({"type": "network", "path": path})),
        (true, None) => {}
    }

    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", if privileged { "rw" } else { "ro" }]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    ];
    for (file, target) in [(&host.resolv_conf, "/etc/resolv.conf"), (&host.hosts, "/etc/hosts")] {
        if let Some(source) = file {
            mounts.push(json!({"destination": target, "type": "bind", "source": source, "options": ["rbind", "ro"]}));
        }
    }

    let mut resources = json!({
        "devices": [{"allow": privileged, "access": "rwm"}],
    });
    // Always limited (the default when the descriptor leaves `memory` out): the schedulers
    // count the same amount. Swap limited to the same amount: the limit is on memory, not
    // memory + swap.
    let bytes = service.memory_mb().saturating_mul(1024 * 1024);
    resources["memory"] = json!({"limit": bytes, "swap": bytes});
    // A fork bomb must not take the node's pids.
    if let Some(limit) = host.pids_limit {
        resources["pids"] = json!({"limit": limit});
    }
    if service.vcpus > 0 {
        resources["cpu"] = json!({"quota": service.vcpus.saturating_mul(CFS_PERIOD_US), "period": CFS_PERIOD_US});
    }

    let mut linux = json!({
        "namespaces": namespaces,
        "resources": resources,
        "cgroupsPath": host.cgroup_path,
    });
    if !privileged {
        linux["maskedPaths"] = json!([
            "/proc/acpi",
            "/proc/asound",
            "/proc/kcore",
            "/proc/keys",
            "/proc/latency_stats",
            "/proc/timer_list",
            "/proc/timer_stats",
            "/proc/sched_debug",
            "/proc/scsi",
            "/sys/firmware"
        ]);
        linux["readonlyPaths"] = json!(["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]);
        linux["seccomp"] = crate::seccomp::profile(std::env::consts::ARCH);
    }

    Ok(json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": false,
            "user": {"uid": uid, "gid": gid},
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": !privileged,
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": hostname(instance),
        "mounts": mounts,
        "linux": linux,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(cmd: &[&str], env: &[&str]) -> Microservice {
        let mut ms: Microservice = serde_json::from_value(json!({
            "microservice_name": "web", "microservice_namespace": "test",
            "virtualization": "container", "code": "docker.io/library/nginx:latest",
        }))
        .unwrap();
        ms.cmd = cmd.iter().map(|s| s.to_string()).collect();
        ms.environment = env.iter().map(|s| s.to_string()).collect();
        ms
    }

    fn image(entrypoint: &[&str], cmd: &[&str], env: &[&str]) -> ImageConfig {
        ImageConfig {
            entrypoint: entrypoint.iter().map(|s| s.to_string()).collect(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|s| s.to_string()).collect(),
            ..ImageConfig::default()
        }
    }

    fn host() -> HostSetup {
        HostSetup {
            host_network: true,
            host_netns_path: None,
            cgroup_path: "/oakestra/x.instance.0".into(),
            resolv_conf: Some("/etc/resolv.conf".into()),
            hosts: None,
            pids_limit: Some(1024),
            bounding_caps: u64::MAX,
        }
    }

    fn strings(v: &Value) -> Vec<String> {
        v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
    }

    #[test]
    fn process_args_follow_the_descriptor_then_the_image() {
        type Case<'a> = (&'a [&'a str], &'a [&'a str], &'a [&'a str], Result<&'a [&'a str], &'a str>);
        let cases: &[Case] = &[
            (
                &["/docker-entrypoint.sh"],
                &["nginx", "-g", "daemon off;"],
                &[],
                Ok(&["/docker-entrypoint.sh", "nginx", "-g", "daemon off;"]),
            ),
            (&[], &["sh"], &[], Ok(&["sh"])),
            (&["/entry"], &[], &[], Ok(&["/entry"])),
            // `cmd` replaces entrypoint and cmd, as in the original.
            (&["/entry"], &["a"], &["/bin/echo", "hi"], Ok(&["/bin/echo", "hi"])),
            (&[], &[], &["x"], Ok(&["x"])),
            (&[], &[], &[], Err("no entrypoint or cmd")),
            (&[""], &[], &[], Err("no entrypoint or cmd")),
        ];
        for (entry, cmd, desc_cmd, expected) in cases {
            let got = process_args(&image(entry, cmd, &[]), &service(desc_cmd, &[]));
            match expected {
                Ok(args) => assert_eq!(got.unwrap(), args.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
                Err(msg) => assert!(got.unwrap_err().contains(msg)),
            }
        }
    }

    #[test]
    fn environment_merges_image_hostname_and_descriptor() {
        let env = environment(
            &image(&[], &["x"], &["PATH=/bin", "A=1", "HOSTNAME=img"]),
            &service(&[], &["A=2", "B=x=y", "EMPTY="]),
            3,
        )
        .unwrap();
        assert_eq!(env, vec!["PATH=/bin", "HOSTNAME=instance-3", "A=2", "B=x=y", "EMPTY="]);
        // The descriptor may even override HOSTNAME.
        let env = environment(&image(&[], &["x"], &[]), &service(&[], &["HOSTNAME=mine"]), 0).unwrap();
        assert_eq!(env, vec!["HOSTNAME=mine"]);
        for bad in ["NOVALUE", "=x", "A=\0"] {
            let err = environment(&image(&[], &["x"], &[]), &service(&[], &[bad]), 0).unwrap_err();
            assert!(err.contains("NAME=value"), "{bad}: {err}");
        }
    }

    #[test]
    fn users_are_numeric_or_root() {
        type Case<'a> = (&'a str, Option<(u32, u32)>);
        let cases: &[Case] = &[
            ("", Some((0, 0))),
            ("root", Some((0, 0))),
            ("0", Some((0, 0))),
            ("1000", Some((1000, 1000))),
            ("1000:50", Some((1000, 50))),
            ("101:root", Some((101, 0))),
            ("nginx", None),
            ("1000:staff", None),
            ("-1", None),
        ];
        for (input, expected) in cases {
            match expected {
                Some(ids) => assert_eq!(user(input).unwrap(), *ids, "{input}"),
                None => assert!(user(input).unwrap_err().contains("not numeric"), "{input}"),
            }
        }
    }

    #[test]
    fn limits_come_from_memory_and_vcpus() {
        let mut ms = service(&[], &[]);
        ms.memory = 64;
        ms.vcpus = 2;
        let spec = build(&image(&[], &["sh"], &[]), &ms, 0, &host()).unwrap();
        let r = &spec["linux"]["resources"];
        assert_eq!(r["memory"]["limit"], 64 * 1024 * 1024);
        assert_eq!(r["memory"]["swap"], 64 * 1024 * 1024);
        assert_eq!(r["cpu"]["quota"], 200_000);
        assert_eq!(r["cpu"]["period"], 100_000);
        assert_eq!(r["pids"]["limit"], 1024);
        ms.memory = 0;
        ms.vcpus = 0;
        let spec = build(&image(&[], &["sh"], &[]), &ms, 0, &HostSetup { pids_limit: Some(16), ..host() }).unwrap();
        let r = &spec["linux"]["resources"];
        // No `memory` in the descriptor: still limited, to the default the schedulers count.
        assert_eq!(r["memory"]["limit"], 256 * 1024 * 1024);
        assert_eq!(r["memory"]["swap"], 256 * 1024 * 1024);
        assert_eq!(oak_api::sla::DEFAULT_MEMORY_MB, 256);
        assert!(r.get("cpu").is_none());
        assert_eq!(r["pids"]["limit"], 16);
        // `--pids-limit 0`: no pids limit.
        let spec = build(&image(&[], &["sh"], &[]), &ms, 0, &HostSetup { pids_limit: None, ..host() }).unwrap();
        assert!(spec["linux"]["resources"].get("pids").is_none());
    }

    #[test]
    fn privileged_containers_get_only_what_the_host_may_pass_on() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapBnd:\t000001fffeffffff\nCapAmb:\t0\n";
        let bounding = bounding_caps(status).unwrap();
        assert_eq!(bounding, 0x1fffeffffff);
        assert_eq!(bounding_caps("Name:\tx\n"), None);
        let mut ms = service(&[], &[]);
        ms.privileged = true;
        let spec = build(&image(&[], &["sh"], &[]), &ms, 0, &HostSetup { bounding_caps: bounding, ..host() }).unwrap();
        let caps = strings(&spec["process"]["capabilities"]["bounding"]);
        // Bit 24 (CAP_SYS_RESOURCE) is not in this host's set; everything else is passed on.
        assert!(!caps.contains(&"CAP_SYS_RESOURCE".to_string()));
        assert!(caps.contains(&"CAP_SYS_ADMIN".to_string()) && caps.contains(&"CAP_CHECKPOINT_RESTORE".to_string()));
        assert_eq!(caps.len(), ALL_CAPS.len() - 1);
        assert_eq!(ALL_CAPS[24], "CAP_SYS_RESOURCE");
    }

    #[test]
    fn privileged_or_not_every_container_is_limited() {
        let mut ms = service(&[], &[]);
        ms.privileged = true;
        let spec = build(&image(&[], &["sh"], &[]), &ms, 0, &host()).unwrap();
        let r = &spec["linux"]["resources"];
        assert_eq!(r["memory"]["limit"], 256 * 1024 * 1024);
        assert_eq!(r["pids"]["limit"], 1024);
    }

    #[test]
    fn unprivileged_containers_are_confined() {
        let spec = build(&image(&[], &["sh"], &[]), &service(&[], &[]), 7, &host()).unwrap();
        assert_eq!(spec["hostname"], "instance-7");
        assert_eq!(spec["process"]["noNewPrivileges"], true);
        assert_eq!(spec["linux"]["seccomp"], crate::seccomp::profile(std::env::consts::ARCH));
        assert_eq!(spec["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
        assert_eq!(spec["process"]["cwd"], "/");
        let caps = strings(&spec["process"]["capabilities"]["bounding"]);
        assert!(!caps.contains(&"CAP_SYS_ADMIN".to_string()));
        assert!(caps.contains(&"CAP_NET_BIND_SERVICE".to_string()));
        assert_eq!(spec["linux"]["resources"]["devices"][0]["allow"], false);
        assert!(strings(&spec["linux"]["maskedPaths"]).contains(&"/proc/kcore".to_string()));
        assert_eq!(spec["linux"]["cgroupsPath"], "/oakestra/x.instance.0");
        assert_eq!(spec["root"]["path"], "rootfs");
        let ns: Vec<&str> =
            spec["linux"]["namespaces"].as_array().unwrap().iter().map(|n| n["type"].as_str().unwrap()).collect();
        assert_eq!(ns, ["pid", "ipc", "uts", "mount"], "host network: no network namespace");
        let mounts: Vec<&str> =
            spec["mounts"].as_array().unwrap().iter().map(|m| m["destination"].as_str().unwrap()).collect();
        assert!(mounts.contains(&"/etc/resolv.conf"));
        assert!(!mounts.contains(&"/etc/hosts"));

        let joined = build(
            &image(&[], &["sh"], &[]),
            &service(&[], &[]),
            7,
            &HostSetup { host_netns_path: Some("/proc/42/ns/net".into()), ..host() },
        )
        .unwrap();
        let net = joined["linux"]["namespaces"].as_array().unwrap().iter().find(|n| n["type"] == "network").cloned();
        assert_eq!(net.unwrap()["path"], "/proc/42/ns/net", "host network of the worker: join its namespace");
    }

    #[test]
    fn privileged_containers_get_everything() {
        let mut ms = service(&[], &[]);
        ms.privileged = true;
        let spec = build(&image(&[], &["sh"], &[]), &ms, 0, &HostSetup { host_network: false, ..host() }).unwrap();
        assert!(strings(&spec["process"]["capabilities"]["bounding"]).contains(&"CAP_SYS_ADMIN".to_string()));
        assert_eq!(spec["process"]["noNewPrivileges"], false);
        assert_eq!(spec["linux"]["resources"]["devices"][0]["allow"], true);
        assert!(spec["linux"].get("maskedPaths").is_none());
        assert!(spec["linux"].get("seccomp").is_none(), "privileged: no seccomp filter");
        let ns: Vec<&str> =
            spec["linux"]["namespaces"].as_array().unwrap().iter().map(|n| n["type"].as_str().unwrap()).collect();
        assert!(ns.contains(&"network"));
    }

    #[test]
    fn image_config_parses_nulls_and_working_dir() {
        let cfg: ImageConfig = serde_json::from_value(
            json!({"Entrypoint": null, "Cmd": ["nginx"], "Env": null, "WorkingDir": "/srv", "User": "101"}),
        )
        .unwrap();
        assert_eq!(
            cfg,
            ImageConfig {
                cmd: vec!["nginx".into()],
                working_dir: "/srv".into(),
                user: "101".into(),
                ..ImageConfig::default()
            }
        );
        let spec = build(&cfg, &service(&[], &[]), 0, &host()).unwrap();
        assert_eq!(spec["process"]["cwd"], "/srv");
        assert_eq!(spec["process"]["user"]["uid"], 101);
        let bad = ImageConfig { working_dir: "srv".into(), ..cfg };
        assert!(build(&bad, &service(&[], &[]), 0, &host()).unwrap_err().contains("not absolute"));
    }
}
