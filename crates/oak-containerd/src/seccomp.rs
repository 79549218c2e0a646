//! The seccomp profile of unprivileged containers (OCI `linux.seccomp`). Pure data and a
//! builder, table-tested.
//!
//! Shape: everything is allowed except a deny-list answered with `EPERM`, the usual container
//! default. Capabilities already stop most of these calls; the filter is the second wall, and
//! the only one for calls that need no capability at all (`unshare(CLONE_NEWUSER)` and, inside
//! the new user namespace, `mount`; `bpf`, `userfaultfd`, `io_uring`, keyrings).
//!
//! Decisions on calls left allowed: `ptrace`, `process_vm_readv/writev`, `kcmp` (since Linux 4.8
//! a traced process cannot bypass seccomp, and they only reach processes of the container's own
//! pid namespace with the same uid); `personality` (its flags only change how the caller's own
//! programs are loaded; `MMAP_PAGE_ZERO` is still bounded by `vm.mmap_min_addr` without
//! `CAP_SYS_RAWIO`; an allow-list of values cannot be written as deny rules, because runc ORs
//! conditions on the same argument); `chroot`, `sethostname` (confined by the container's
//! capabilities and its own mount and UTS namespaces).
//!
//! runc skips names its libseccomp does not know (older kernels' tables), so listing new calls
//! is safe; libseccomp skips calls an architecture lacks (`iopl` on aarch64).

use serde_json::{json, Value};

/// `EPERM`: what denied calls answer.
pub const EPERM: u32 = 1;
/// `ENOSYS`: what `clone3` answers, so the C library falls back to `clone`, whose flags the
/// filter can see (`clone3` passes them in memory, out of a filter's reach).
pub const ENOSYS: u32 = 38;

/// Calls answered with `EPERM`, grouped by what they would let a container do to its node.
pub const DENIED: &[(&str, &[&str])] = &[
    (
        "mount file systems or change the root (also from inside a new user namespace)",
        &[
            "mount",
            "umount",
            "umount2",
            "pivot_root",
            "move_mount",
            "open_tree",
            "fsopen",
            "fsmount",
            "fsconfig",
            "fspick",
            "mount_setattr",
        ],
    ),
    ("create or enter namespaces (a user namespace gives every capability inside it)", &["unshare", "setns"]),
    (
        "load, replace or reboot the kernel, or touch I/O ports",
        &[
            "kexec_load",
            "kexec_file_load",
            "init_module",
            "finit_module",
            "delete_module",
            "create_module",
            "get_kernel_syms",
            "query_module",
            "reboot",
            "iopl",
            "ioperm",
            "modify_ldt",
            "vm86",
            "vm86old",
        ],
    ),
    ("change the node's swap", &["swapon", "swapoff"]),
    (
        "set the node's clock (not namespaced)",
        &["settimeofday", "stime", "clock_settime", "clock_settime64", "clock_adjtime", "clock_adjtime64", "adjtimex"],
    ),
    (
        "node-wide accounting, quotas, kernel log and obsolete interfaces",
        &[
            "acct",
            "quotactl",
            "quotactl_fd",
            "syslog",
            "lookup_dcookie",
            "nfsservctl",
            "_sysctl",
            "sysfs",
            "ustat",
            "uselib",
            "vhangup",
        ],
    ),
    ("use the kernel's keyrings (not namespaced: keys of other containers)", &["keyctl", "add_key", "request_key"]),
    (
        "reach the kernel's largest attack surfaces",
        &["bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register"],
    ),
    ("open files by handle, past the mount namespace", &["open_by_handle_at", "name_to_handle_at"]),
];

/// `clone` flags that create namespaces: a `clone` carrying any of them is denied like
/// `unshare`. One rule per flag, because rules OR and the conditions of one rule AND.
pub const CLONE_NAMESPACE_FLAGS: &[(&str, u64)] = &[
    ("CLONE_NEWNS", 0x0002_0000),
    ("CLONE_NEWCGROUP", 0x0200_0000),
    ("CLONE_NEWUTS", 0x0400_0000),
    ("CLONE_NEWIPC", 0x0800_0000),
    ("CLONE_NEWUSER", 0x1000_0000),
    ("CLONE_NEWPID", 0x2000_0000),
    ("CLONE_NEWNET", 0x4000_0000),
];

/// The seccomp architectures (`SCMP_ARCH_*`) of a host of Rust's `arch`: the native one and
/// those its processes may also use (32-bit x86 and x32 on x86_64, arm on aarch64), so that a
/// 32-bit program is filtered alike instead of killed as a foreign architecture. Others: none
/// listed, runc then filters the native architecture only.
pub fn architectures(arch: &str) -> &'static [&'static str] {
    match arch {
        "x86_64" => &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "x86" => &["SCMP_ARCH_X86"],
        "aarch64" => &["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        "arm" => &["SCMP_ARCH_ARM"],
        _ => &[],
    }
}

/// The profile for a host of Rust's `arch` (`std::env::consts::ARCH`).
pub fn profile(arch: &str) -> Value {
    let denied: Vec<&str> = DENIED.iter().flat_map(|(_, names)| names.iter().copied()).collect();
    let mut syscalls = vec![json!({"names": denied, "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM})];
    for (_, flag) in CLONE_NAMESPACE_FLAGS {
        // MASKED_EQ: (arg0 & value) == valueTwo; clone's flags are its first argument on the
        // architectures above.
        syscalls.push(json!({
            "names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM,
            "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
        }));
    }
    syscalls.push(json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS}));
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": architectures(arch),
        "syscalls": syscalls,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn names(rule: &Value) -> Vec<&str> {
        rule["names"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect()
    }

    #[test]
    fn architectures_cover_the_compat_abis() {
        let cases: &[(&str, &[&str])] = &[
            ("x86_64", &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]),
            ("aarch64", &["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]),
            ("arm", &["SCMP_ARCH_ARM"]),
            ("x86", &["SCMP_ARCH_X86"]),
            ("riscv64", &[]),
        ];
        for (arch, expected) in cases {
            assert_eq!(architectures(arch), *expected, "{arch}");
            assert_eq!(profile(arch)["architectures"], json!(expected), "{arch}");
        }
    }

    #[test]
    fn everything_is_allowed_but_the_deny_list_which_answers_eperm() {
        let p = profile("x86_64");
        assert_eq!(p["defaultAction"], "SCMP_ACT_ALLOW");
        let first = &p["syscalls"][0];
        assert_eq!((first["action"].as_str(), first["errnoRet"].as_u64()), (Some("SCMP_ACT_ERRNO"), Some(1)));
        assert!(first.get("args").is_none(), "the deny-list is unconditional");
        let denied = names(first);
        for escape in [
            "mount",
            "umount2",
            "pivot_root",
            "move_mount",
            "open_tree",
            "fsopen",
            "fsmount",
            "fsconfig",
            "fspick",
            "unshare",
            "setns",
            "kexec_load",
            "kexec_file_load",
            "init_module",
            "finit_module",
            "delete_module",
            "reboot",
            "swapon",
            "swapoff",
            "acct",
            "settimeofday",
            "clock_settime",
            "clock_adjtime",
            "adjtimex",
            "stime",
            "iopl",
            "ioperm",
            "create_module",
            "get_kernel_syms",
            "query_module",
            "lookup_dcookie",
            "nfsservctl",
            "perf_event_open",
            "bpf",
            "keyctl",
            "add_key",
            "request_key",
            "quotactl",
            "userfaultfd",
            "open_by_handle_at",
            "name_to_handle_at",
            "vhangup",
            "uselib",
            "ustat",
            "sysfs",
            "_sysctl",
            "syslog",
            "io_uring_setup",
        ] {
            assert!(denied.contains(&escape), "{escape} is not denied");
        }
        for needed in ["clone", "fork", "execve", "ptrace", "personality", "chroot", "seccomp", "prctl"] {
            assert!(!denied.contains(&needed), "{needed} must stay allowed");
        }
        let unique: HashSet<&str> = denied.iter().copied().collect();
        assert_eq!(unique.len(), denied.len(), "a name is listed twice");
        assert!(denied
            .iter()
            .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')));
    }

    #[test]
    fn clone_with_a_namespace_flag_is_denied_and_clone3_falls_back() {
        let p = profile("aarch64");
        let rules = p["syscalls"].as_array().unwrap();
        let clone: Vec<&Value> = rules.iter().filter(|r| names(r) == ["clone"]).collect();
        assert_eq!(clone.len(), CLONE_NAMESPACE_FLAGS.len());
        let mut mask = 0;
        for rule in &clone {
            assert_eq!(rule["errnoRet"], EPERM);
            let args = rule["args"].as_array().unwrap();
            assert_eq!(args.len(), 1, "one condition per rule: conditions of a rule AND");
            let a = &args[0];
            assert_eq!((a["index"].as_u64(), a["op"].as_str()), (Some(0), Some("SCMP_CMP_MASKED_EQ")));
            assert_eq!(a["value"], a["valueTwo"], "denied when the flag is set");
            mask |= a["value"].as_u64().unwrap();
        }
        // Docker's CLONE_NEW* mask: NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET.
        assert_eq!(mask, 0x7E02_0000);
        let clone3: Vec<&Value> = rules.iter().filter(|r| names(r) == ["clone3"]).collect();
        assert_eq!(clone3.len(), 1);
        assert_eq!((clone3[0]["action"].as_str(), clone3[0]["errnoRet"].as_u64()), (Some("SCMP_ACT_ERRNO"), Some(38)));
    }
}
