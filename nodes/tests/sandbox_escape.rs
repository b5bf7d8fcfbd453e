//! Escape checks that need the host's view: the binary that creates containers is sealed
//! (CVE-2019-5736 class), and sandboxes of different namespaces never share a warm sandbox or a
//! `/tmp`, even for the same function id and version. Real supervisor, real containers: run as
//! root. Each test owns a temp dir and a random cgroup prefix `/fnmesh-test/<random>`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fnmesh_core::{
    Checksum, CodeInfo, Function, FunctionConfig, FunctionId, FunctionName, InvocationId,
    InvocationStatus, Namespace, Runtime,
};
use fnmesh_nodes::executor::{Executor, ExecutorConfig, Job};
use fnmesh_nodes::sandbox::cgroup::{hierarchies, CGROUP_ROOT};
use fnmesh_nodes::sandbox::rootfs::ensure_rootfs;
use fnmesh_nodes::sandbox::spec::{write_bundle, BundleRequest};
use fnmesh_nodes::sandbox::supervisor::SupervisorClient;
use fnmesh_nodes::sandbox::users::SandboxUser;
use fnmesh_nodes::sandbox::{ContainerRuntime, SandboxIo, SandboxSpec};
use serde_json::{json, Value};

const SUPERVISOR: &str = env!("CARGO_BIN_EXE_fnmesh-sandboxd");

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "sandbox_escape tests create real containers and must run as root"
    );
}

/// The errno of opening `path` for writing (without truncating), or `None` if it opened.
fn open_for_writing(path: &str) -> Option<nix::errno::Errno> {
    match fs::OpenOptions::new().write(true).open(path) {
        Ok(_) => None,
        Err(e) => Some(nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0))),
    }
}

fn is_read_only(path: &str) -> bool {
    nix::sys::statvfs::statvfs(path)
        .unwrap()
        .flags()
        .contains(nix::sys::statvfs::FsFlags::ST_RDONLY)
}

/// `exe` (a `/proc/<pid>/exe`) is on a read-only mount and cannot be opened for writing.
fn assert_sealed(exe: &str) {
    assert!(is_read_only(exe), "{exe} is not on a read-only mount");
    let errno = open_for_writing(exe);
    assert!(
        matches!(
            errno,
            Some(nix::errno::Errno::EROFS | nix::errno::Errno::ETXTBSY)
        ),
        "{exe} opened for writing: {errno:?}"
    );
}

/// Direct children of `pid` (container inits are the supervisor's, by `CLONE_PARENT`).
fn children(pid: u32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn remove_cgroup_prefix(prefix: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for h in hierarchies(Path::new(CGROUP_ROOT)) {
        let dir = h.join(prefix.trim_start_matches('/'));
        // Deepest first; sandboxes are gone, so each rmdir succeeds soon.
        let mut dirs: Vec<_> = walk(&dir);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            while fs::remove_dir(&d).is_err() && d.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if dir.is_dir() {
        out.push(dir.to_path_buf());
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(walk(&e.path()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_supervisor_and_every_init_it_forks_run_from_a_sealed_binary() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let client = SupervisorClient::spawn(Path::new(SUPERVISOR), &[], &dir.path().join("state"))
        .await
        .unwrap();
    let pid = client.pid();
    // The supervisor does not run from the host file: its exe is on a read-only, detached
    // mount, so even root cannot open it for writing through /proc.
    let exe = format!("/proc/{pid}/exe");
    // (While any process executes the inode the kernel answers ETXTBSY first; once none does,
    // the read-only mount still answers EROFS.)
    assert_sealed(&exe);
    assert!(
        !is_read_only(SUPERVISOR),
        "the host binary itself is on a writable filesystem, so the seal is what protects it"
    );
    assert!(
        fs::read_dir(dir.path().join("state")).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".sealed")),
        "the temporary mount point is removed"
    );

    // A container that is created but not started: its init is still a fork of the
    // supervisor, i.e. the very binary a CVE-2019-5736 exploit would overwrite.
    let rootfs = ensure_rootfs(&dir.path().join("rootfs")).unwrap();
    let code_dir = dir.path().join("code");
    let runtime_dir = dir.path().join("runtime");
    fs::create_dir_all(&code_dir).unwrap();
    fs::create_dir_all(&runtime_dir).unwrap();
    let prefix = format!("/fnmesh-test/{:016x}", rand::random::<u64>());
    let id = "sealed-init".to_owned();
    let req = BundleRequest {
        sandbox_id: id.clone(),
        root: fnmesh_nodes::sandbox::spec::RootKind::Skeleton,
        rootfs,
        code_dir,
        runtime_dir,
        args: vec!["/bin/true".to_owned()],
        env: vec!["PATH=/usr/bin:/bin".to_owned()],
        cwd: "/var/task".to_owned(),
        memory_mb: 64,
        pids_limit: 16,
        cpu_millis: 500,
        cpu_shares: None,
        disk_io: None,
        tmp_mb: 4,
        cgroup_path: format!("{prefix}/{id}"),
        user: SandboxUser::Host {
            uid: 65534,
            gid: 65534,
        },
    };
    let bundle = dir.path().join("bundles").join(&id);
    write_bundle(&bundle, &req).unwrap();
    let spec = SandboxSpec {
        id: id.clone(),
        bundle,
    };
    let (in_r, _in_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let (_out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let (_err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let io = SandboxIo {
        stdin: in_r,
        stdout: out_w,
        stderr: err_w,
    };
    client.create(&spec, io).await.unwrap();
    let inits = children(pid);
    assert!(
        !inits.is_empty(),
        "the created init is the supervisor's child"
    );
    for init in inits {
        assert_sealed(&format!("/proc/{init}/exe"));
    }
    client.destroy(&id).await.unwrap();
    client.shutdown().await;
    remove_cgroup_prefix(&prefix);
}

const PROBE_PY: &str = r#"
import os, secrets

TOKEN = secrets.token_hex(8)
count = 0

def handle(event, context):
    global count
    count += 1
    before = sorted(os.listdir("/tmp"))
    try:
        with open("/tmp/owner") as f:
            seen = f.read()
    except FileNotFoundError:
        seen = None
    with open("/tmp/owner", "w") as f:
        f.write(event["namespace"])
    return {"token": TOKEN, "count": count, "seen": seen, "tmp": before}
"#;

fn function_in(namespace: &str, id: FunctionId) -> Function {
    Function {
        image: None,
        id,
        namespace: Namespace::parse(namespace).unwrap(),
        name: FunctionName::parse("same-name").unwrap(),
        version: 1,
        runtime: Runtime::Python3,
        handler: "main.handle".into(),
        code: CodeInfo {
            checksum: Checksum::of(PROBE_PY.as_bytes()),
            size: PROBE_PY.len() as u64,
            source_type: "inline".into(),
        },
        config: FunctionConfig::default(),
        metadata: Default::default(),
        created_at: chrono::Utc::now(),
        updated_at: chrono::Utc::now(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_never_share_a_warm_sandbox_or_tmp() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let client = Arc::new(
        SupervisorClient::spawn(Path::new(SUPERVISOR), &[], &dir.path().join("state"))
            .await
            .unwrap(),
    );
    let tag = format!("{:016x}", rand::random::<u64>());
    let prefix = format!("/fnmesh-test/{tag}");
    let runtime: Arc<dyn ContainerRuntime> = client.clone();
    let executor = Executor::new(
        ExecutorConfig {
            work_dir: dir.path().join("node"),
            node_id: format!("esc-{}", &tag[..8]),
            max_sandboxes: 8,
            max_memory_mb: 4096,
            cgroup_parent: prefix.clone(),
            ..ExecutorConfig::default()
        },
        runtime,
    )
    .await
    .unwrap();
    let code = dir.path().join("code");
    fs::create_dir_all(&code).unwrap();
    fs::write(code.join("main.py"), PROBE_PY).unwrap();

    // The same function id, version, name and code in two namespaces: the worst case for a
    // pool keyed on anything less than the namespace.
    let id = FunctionId::new();
    let a = function_in("tenant-a", id);
    let b = function_in("tenant-b", id);
    let run = |f: &Function| {
        let job = Job {
            invocation_id: InvocationId::new(),
            function: f.clone(),
            code_dir: code.clone(),
            payload: json!({"namespace": f.namespace.as_str()}),
            trace_id: None,
            secrets: None,
            registry_auth: None,
        };
        let executor = executor.clone();
        async move {
            let out = executor.execute(job).await;
            assert_eq!(out.status, InvocationStatus::Succeeded, "{out:?}");
            (out.result.unwrap(), out.cold_start)
        }
    };

    let (a1, cold) = run(&a).await;
    assert!(cold);
    assert_eq!(a1["seen"], Value::Null);
    let (a2, cold) = run(&a).await;
    assert!(!cold, "a is warm");
    assert_eq!(a2["token"], a1["token"]);
    assert_eq!(a2["seen"], "tenant-a", "a sees its own /tmp");

    let (b1, cold) = run(&b).await;
    assert!(cold, "b never reuses a's warm sandbox");
    assert_ne!(b1["token"], a1["token"]);
    assert_eq!(b1["count"], 1);
    assert_eq!(b1["seen"], Value::Null, "b never sees a's /tmp: {b1}");
    assert_eq!(b1["tmp"], json!([]), "b's /tmp starts empty: {b1}");

    let (a3, _) = run(&a).await;
    assert_eq!(a3["token"], a1["token"]);
    assert_eq!(a3["count"], 3);
    assert_eq!(a3["seen"], "tenant-a", "b never wrote into a's /tmp");
    let (b2, cold) = run(&b).await;
    assert!(!cold);
    assert_eq!(b2["token"], b1["token"]);
    assert_eq!(b2["seen"], "tenant-b");

    executor.shutdown(Duration::from_secs(10)).await;
    client.shutdown().await;
    remove_cgroup_prefix(&prefix);
}

/// Probes what a function can reach from inside its sandbox. Syscalls go through
/// `libc.syscall(nr, ...)` so glibc wrappers cannot hide the kernel's (seccomp's) answer; the
/// pointer arguments are NULL, so a syscall that got past the filter would fail with EFAULT or
/// EINVAL, never with EPERM.
const ESCAPE_PY: &str = r#"
import ctypes, errno, os, platform, subprocess, sys

NR = {
    "x86_64": {"unshare": 272, "mount": 165, "keyctl": 250, "bpf": 321,
               "perf_event_open": 298, "userfaultfd": 323, "io_uring_setup": 425},
    "aarch64": {"unshare": 97, "mount": 40, "keyctl": 219, "bpf": 280,
                "perf_event_open": 241, "userfaultfd": 282, "io_uring_setup": 425},
}[platform.machine()]

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

def sys_errno(name, *args):
    ctypes.set_errno(0)
    rc = libc.syscall(ctypes.c_long(NR[name]), *args)
    return "ok" if rc >= 0 else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))

def open_errno(path, flags):
    try:
        fd = os.open(path, flags)
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    os.close(fd)
    return "ok"

def read_result(path):
    try:
        with open(path, "rb") as f:
            return len(f.read(4096))
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))

def list_result(path):
    try:
        return sorted(os.listdir(path))
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))

def fds():
    # The listing's own descriptor is closed by the time we read the links: it alone is gone.
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[name] = os.readlink("/proc/self/fd/" + name)
        except FileNotFoundError:
            pass
    return out

def handle(event, context):
    NULL = ctypes.c_void_p(None)
    child = subprocess.run(
        [sys.executable, "-c",
         "import os; print(sorted(int(f) for f in os.listdir('/proc/self/fd') "
         "if os.path.exists('/proc/self/fd/' + f)))"],
        capture_output=True, text=True)
    return {
        "exe_self_wronly": open_errno("/proc/self/exe", os.O_WRONLY),
        "exe_1_wronly": open_errno("/proc/1/exe", os.O_WRONLY),
        "exe_self_rdwr": open_errno("/proc/self/exe", os.O_RDWR),
        "exe_1_target": os.readlink("/proc/1/exe"),
        "fds": fds(),
        "child_fds": child.stdout.strip(),
        "cwd": os.getcwd(),
        "cwd_link": os.readlink("/proc/self/cwd"),
        "cwd_1_link": os.readlink("/proc/1/cwd"),
        "root_link": os.readlink("/proc/self/root"),
        "cwd_parent": sorted(os.listdir("/proc/self/cwd/..")),
        "unshare_newuser": sys_errno("unshare", ctypes.c_long(0x10000000)),
        "mount": sys_errno("mount", ctypes.c_char_p(b"none"), ctypes.c_char_p(b"/tmp"),
                           ctypes.c_char_p(b"tmpfs"), ctypes.c_long(0), NULL),
        "keyctl": sys_errno("keyctl", ctypes.c_long(0), ctypes.c_long(-3), ctypes.c_long(0)),
        "bpf": sys_errno("bpf", ctypes.c_long(0), NULL, ctypes.c_long(0)),
        "perf_event_open": sys_errno("perf_event_open", NULL, ctypes.c_long(0),
                                     ctypes.c_long(-1), ctypes.c_long(-1), ctypes.c_long(0)),
        "userfaultfd": sys_errno("userfaultfd", ctypes.c_long(0)),
        "io_uring_setup": sys_errno("io_uring_setup", ctypes.c_long(1), NULL),
        "kcore": read_result("/proc/kcore"),
        "keys": read_result("/proc/keys"),
        "firmware": list_result("/sys/firmware"),
    }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_cannot_reach_the_runtime_binary_host_fds_or_forbidden_syscalls() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let client = Arc::new(
        SupervisorClient::spawn(Path::new(SUPERVISOR), &[], &dir.path().join("state"))
            .await
            .unwrap(),
    );
    let tag = format!("{:016x}", rand::random::<u64>());
    let prefix = format!("/fnmesh-test/{tag}");
    let runtime: Arc<dyn ContainerRuntime> = client.clone();
    let executor = Executor::new(
        ExecutorConfig {
            work_dir: dir.path().join("node"),
            node_id: format!("esc-{}", &tag[..8]),
            max_sandboxes: 4,
            max_memory_mb: 4096,
            cgroup_parent: prefix.clone(),
            ..ExecutorConfig::default()
        },
        runtime,
    )
    .await
    .unwrap();
    let code = dir.path().join("code");
    fs::create_dir_all(&code).unwrap();
    fs::write(code.join("main.py"), ESCAPE_PY).unwrap();
    let mut f = function_in("default", FunctionId::new());
    f.code.checksum = Checksum::of(ESCAPE_PY.as_bytes());
    let out = executor
        .execute(Job {
            invocation_id: InvocationId::new(),
            function: f,
            code_dir: code,
            payload: json!({}),
            trace_id: None,
            secrets: None,
            registry_auth: None,
        })
        .await;
    assert_eq!(out.status, InvocationStatus::Succeeded, "{out:?}");
    let v = out.result.unwrap();

    // CVE-2019-5736 class: neither the function's own binary nor pid 1's opens for writing.
    for key in ["exe_self_wronly", "exe_1_wronly", "exe_self_rdwr"] {
        assert_ne!(v[key], "ok", "{key}: {v}");
    }
    assert!(
        v["exe_1_target"].as_str().unwrap().starts_with("/usr/"),
        "pid 1 runs the runtime from the read-only /usr, not a host binary: {v}"
    );

    // CVE-2024-21626 class: only stdio and the bootstrap's two protocol pipes (fds 3 and 4,
    // moved off 0/1 by the python bootstrap and not inheritable), no host descriptor; children
    // get 0, 1, 2 only.
    let fds = v["fds"].as_object().unwrap();
    let numbers: Vec<&str> = {
        let mut n: Vec<&str> = fds.keys().map(String::as_str).collect();
        n.sort();
        n
    };
    assert_eq!(numbers, ["0", "1", "2", "3", "4"], "{fds:?}");
    assert_eq!(fds["0"], "/dev/null");
    for fd in ["1", "2", "3", "4"] {
        assert!(fds[fd].as_str().unwrap().starts_with("pipe:"), "{fds:?}");
    }
    assert_eq!(v["child_fds"], "[0, 1, 2]", "{v}");
    assert_eq!(v["cwd"], "/var/task");
    assert_eq!(v["cwd_link"], "/var/task", "cwd is inside the rootfs: {v}");
    assert_eq!(v["cwd_1_link"], "/var/task");
    assert_eq!(v["root_link"], "/");
    let parent: Vec<&str> = v["cwd_parent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(
        parent.contains(&"task") && !parent.contains(&"lib"),
        "/var/task/.. is the sandbox's /var: {parent:?}"
    );

    // Syscalls refused by seccomp with EPERM specifically (not ENOSYS, not a kill).
    for key in [
        "unshare_newuser",
        "mount",
        "keyctl",
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "io_uring_setup",
    ] {
        assert_eq!(v[key], "EPERM", "{key}: {v}");
    }

    // Masked kernel files: nothing to read.
    for key in ["kcore", "keys"] {
        assert!(v[key] == 0 || v[key].is_string(), "{key} readable: {v}");
    }
    assert!(
        v["firmware"] == json!([]) || v["firmware"].is_string(),
        "/sys/firmware listable: {v}"
    );

    executor.shutdown(Duration::from_secs(10)).await;
    client.shutdown().await;
    remove_cgroup_prefix(&prefix);
}
