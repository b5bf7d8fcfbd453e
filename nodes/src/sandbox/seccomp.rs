//! The sandbox's seccomp profile: an allowlist in the spirit of Docker's default profile.
//!
//! Anything not listed fails with `EPERM` (`defaultAction: SCMP_ACT_ERRNO`, `defaultErrnoRet: 1`);
//! nothing is ever killed. Namespace, mount, keyring, bpf, perf, io_uring, ptrace, module, clock
//! and reboot syscalls are absent from the list and so fail with `EPERM`. `clone` is allowed only
//! without `CLONE_NEW*` flags, and `clone3` fails with `ENOSYS` so glibc falls back to `clone`
//! (seccomp cannot inspect `clone3`'s flags, which live in memory).
//!
//! libcontainer 0.7 reads the mask and datum of `SCMP_CMP_MASKED_EQ` the other way round from
//! the OCI spec (runc, crun), so the profile comes in two layouts ([`MaskedEqOrder`]);
//! `profile()` is libcontainer's. The sandbox tests check the clone rule in a real container.
//!
//! Every name here must be known to the installed libseccomp (2.5.4): libcontainer silently
//! skips unknown names, crun may not. A unit test checks this against the linked library.

use serde_json::{json, Value};

/// `EPERM`: what every syscall outside the allowlist returns.
const EPERM: u32 = 1;
/// `ENOSYS`: what `clone3` returns so that glibc falls back to `clone`.
const ENOSYS: u32 = 38;

/// `CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID |
/// CLONE_NEWNET`, as in Docker's profile.
pub const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// Socket families a function may open: `AF_UNIX`, `AF_INET`, `AF_INET6`, `AF_NETLINK` (glibc's
/// `getaddrinfo` and Node's `os.networkInterfaces` use netlink). The network namespace only has
/// `lo`, so this grants nothing beyond loopback.
const SOCKET_FAMILIES: [u64; 4] = [1, 2, 10, 16];

/// `personality(2)` arguments Docker allows: `PER_LINUX`, `PER_LINUX32`,
/// `PER_LINUX | UNAME26`, `PER_LINUX32 | UNAME26`, and the query `0xffffffff`.
const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// Syscalls allowed whatever their arguments, on every architecture.
pub const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "alarm",
    "arch_prctl",
    "bind",
    "brk",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_time64",
    "futex_waitv",
    "futimesat",
    "get_robust_list",
    "get_thread_area",
    "get_mempolicy",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "io_setup",
    "io_submit",
    "ioctl",
    "ioprio_get",
    "ioprio_set",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "mbind",
    "membarrier",
    "memfd_create",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "set_mempolicy",
    "set_robust_list",
    "set_thread_area",
    "set_tid_address",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "setsid",
    "setsockopt",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// Extra syscalls that only exist on the 64-bit ARM family.
#[cfg(target_arch = "aarch64")]
const ALLOWED_ARCH: &[&str] = &[
    "arm_fadvise64_64",
    "arm_sync_file_range",
    "sync_file_range2",
];
#[cfg(not(target_arch = "aarch64"))]
const ALLOWED_ARCH: &[&str] = &[];

/// Syscalls that must keep failing with `EPERM`; the unit tests check none of them is allowed.
pub const DENIED: &[&str] = &[
    "mount",
    "umount",
    "umount2",
    "pivot_root",
    "chroot",
    "unshare",
    "setns",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "open_by_handle_at",
    "name_to_handle_at",
    "fsopen",
    "fsmount",
    "fsconfig",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "lookup_dcookie",
    "syslog",
    "iopl",
    "ioperm",
    "settimeofday",
    "clock_settime",
    "clock_settime64",
    "clock_adjtime",
    "clock_adjtime64",
    "adjtimex",
    "stime",
    "sethostname",
    "setdomainname",
    "kcmp",
    "pidfd_getfd",
    "vhangup",
    "nfsservctl",
];

/// The seccomp architectures for the build target: the native one plus its compat ABIs.
fn architectures() -> Vec<&'static str> {
    if cfg!(target_arch = "aarch64") {
        vec!["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    } else {
        vec!["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    }
}

/// One rule allowing `name` when argument `index` equals `value`.
fn allow_if_eq(name: &str, index: u32, value: u64) -> Value {
    json!({
        "names": [name],
        "action": "SCMP_ACT_ALLOW",
        "args": [{ "index": index, "value": value, "op": "SCMP_CMP_EQ" }],
    })
}

/// How a runtime reads `value`/`valueTwo` of an `SCMP_CMP_MASKED_EQ` argument rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskedEqOrder {
    /// libcontainer 0.7: `valueTwo` is the mask, `value` the datum.
    Libcontainer,
    /// The OCI spec, runc and crun: `value` is the mask, `valueTwo` the datum.
    Oci,
}

/// The `linux.seccomp` object of the sandbox's `config.json`, for libcontainer.
pub fn profile() -> Value {
    profile_for(MaskedEqOrder::Libcontainer)
}

/// The `linux.seccomp` object for a runtime reading masked comparisons in `order`.
///
/// The clone rule cannot be written once for both orders: libseccomp normalises the datum to
/// `datum & mask`, so the swapped reading of `(flags & M) == 0` becomes `(flags & 0) == 0`,
/// which allows every clone. A profile for one order given to a runtime of the other order
/// therefore allows `clone` with namespace flags (everything else is unaffected).
pub fn profile_for(order: MaskedEqOrder) -> Value {
    let mut syscalls = vec![json!({
        "names": ALLOWED.iter().chain(ALLOWED_ARCH).collect::<Vec<_>>(),
        "action": "SCMP_ACT_ALLOW",
    })];

    // clone: allowed only when `flags & CLONE_NAMESPACE_FLAGS == 0`, as in Docker's profile.
    let (value, value_two) = match order {
        MaskedEqOrder::Libcontainer => (0, CLONE_NAMESPACE_FLAGS),
        MaskedEqOrder::Oci => (CLONE_NAMESPACE_FLAGS, 0),
    };
    syscalls.push(json!({
        "names": ["clone"],
        "action": "SCMP_ACT_ALLOW",
        "args": [{
            "index": 0,
            "value": value,
            "valueTwo": value_two,
            "op": "SCMP_CMP_MASKED_EQ",
        }],
    }));
    syscalls.push(json!({
        "names": ["clone3"],
        "action": "SCMP_ACT_ERRNO",
        "errnoRet": ENOSYS,
    }));
    // One entry per value: rules with several conditions on one argument are ANDed by some
    // runtimes and ORed by others.
    for family in SOCKET_FAMILIES {
        syscalls.push(allow_if_eq("socket", 0, family));
    }
    for persona in PERSONALITIES {
        syscalls.push(allow_if_eq("personality", 0, persona));
    }

    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "architectures": architectures(),
        "syscalls": syscalls,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::HashSet;

    use libseccomp::{
        ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
    };

    use super::*;

    fn all_rule_names(profile: &Value) -> Vec<String> {
        profile["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|rule| rule["names"].as_array().unwrap().iter())
            .map(|name| name.as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn default_action_is_eperm_never_kill() {
        let p = profile();
        assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(p["defaultErrnoRet"], 1);
        let text = p.to_string();
        assert!(!text.contains("KILL"), "no rule may kill: {text}");
    }

    #[test]
    fn dangerous_syscalls_are_not_allowed() {
        let p = profile();
        let allowed: HashSet<String> = p["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|rule| rule["action"] == "SCMP_ACT_ALLOW")
            .flat_map(|rule| rule["names"].as_array().unwrap().iter())
            .map(|n| n.as_str().unwrap().to_owned())
            .collect();
        for name in DENIED {
            assert!(!allowed.contains(*name), "{name} must not be allowed");
        }
        assert!(!allowed.contains("clone3"));
    }

    #[test]
    fn no_duplicate_unconditional_names() {
        let mut seen = HashSet::new();
        for name in ALLOWED.iter().chain(ALLOWED_ARCH) {
            assert!(seen.insert(*name), "{name} listed twice");
        }
    }

    #[test]
    fn every_name_is_known_to_the_installed_libseccomp() {
        let p = profile();
        let unknown: Vec<String> = all_rule_names(&p)
            .into_iter()
            .chain(DENIED.iter().map(|s| (*s).to_owned()))
            .filter(|name| ScmpSyscall::from_name(name).is_err())
            .collect();
        assert!(unknown.is_empty(), "unknown to libseccomp: {unknown:?}");
    }

    #[test]
    fn parses_as_an_oci_seccomp_object() {
        let parsed: libcontainer::oci_spec::runtime::LinuxSeccomp =
            serde_json::from_value(profile()).unwrap();
        assert_eq!(parsed.default_errno_ret(), Some(1));
    }

    #[test]
    fn clone_mask_follows_the_runtime_order() {
        let clone_arg = |order| {
            profile_for(order)["syscalls"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["names"] == json!(["clone"]))
                .unwrap()["args"][0]
                .clone()
        };
        let lc = clone_arg(MaskedEqOrder::Libcontainer);
        assert_eq!(
            (lc["value"].as_u64(), lc["valueTwo"].as_u64()),
            (Some(0), Some(CLONE_NAMESPACE_FLAGS))
        );
        let oci = clone_arg(MaskedEqOrder::Oci);
        assert_eq!(
            (oci["value"].as_u64(), oci["valueTwo"].as_u64()),
            (Some(CLONE_NAMESPACE_FLAGS), Some(0))
        );
    }

    /// Builds the filter the way libcontainer does (without loading it into the kernel), so a
    /// rule libseccomp rejects fails here rather than at container creation.
    #[test]
    fn filter_builds_with_libseccomp() {
        let mut ctx = ScmpFilterContext::new(ScmpAction::Errno(1)).unwrap();
        for arch in [ScmpArch::X8664, ScmpArch::X86, ScmpArch::X32] {
            if cfg!(target_arch = "x86_64") {
                ctx.add_arch(arch).unwrap();
            }
        }
        for rule in profile()["syscalls"].as_array().unwrap() {
            let action = match rule["action"].as_str().unwrap() {
                "SCMP_ACT_ALLOW" => ScmpAction::Allow,
                "SCMP_ACT_ERRNO" => ScmpAction::Errno(rule["errnoRet"].as_i64().unwrap() as i32),
                other => panic!("unexpected action {other}"),
            };
            let cmps: Vec<ScmpArgCompare> = rule["args"]
                .as_array()
                .map(|args| {
                    args.iter()
                        .map(|a| {
                            let op = match a["op"].as_str().unwrap() {
                                "SCMP_CMP_EQ" => ScmpCompareOp::Equal,
                                "SCMP_CMP_MASKED_EQ" => {
                                    ScmpCompareOp::MaskedEqual(a["valueTwo"].as_u64().unwrap_or(0))
                                }
                                other => panic!("unexpected op {other}"),
                            };
                            ScmpArgCompare::new(
                                a["index"].as_u64().unwrap() as u32,
                                op,
                                a["value"].as_u64().unwrap(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            for name in rule["names"].as_array().unwrap() {
                let sc = ScmpSyscall::from_name(name.as_str().unwrap()).unwrap();
                if cmps.is_empty() {
                    ctx.add_rule(action, sc).unwrap();
                } else {
                    ctx.add_rule_conditional(action, sc, &cmps).unwrap();
                }
            }
        }
    }
}
