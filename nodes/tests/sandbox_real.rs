//! Real containers through the real supervisor (`fnmesh-sandboxd`) and libcontainer.
//!
//! These tests need root (cgroups, namespaces, mounts) and fail loudly without it. Each test
//! owns a temp dir (state, bundles, rootfs, code) and a unique cgroup prefix
//! `/fnmesh-test/<random>`, and removes both when it ends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fnmesh_nodes::sandbox::cgroup::{hierarchies, SandboxCgroup, CGROUP_ROOT};
use fnmesh_nodes::sandbox::rootfs::ensure_rootfs;
use fnmesh_nodes::sandbox::spec::{write_bundle, BundleRequest};
use fnmesh_nodes::sandbox::supervisor::SupervisorClient;
use fnmesh_nodes::sandbox::users::SandboxUser;
use fnmesh_nodes::sandbox::{ContainerRuntime, ExitReport, SandboxError, SandboxIo, SandboxSpec};
use serde_json::Value;
use tempfile::TempDir;

const SUPERVISOR: &str = env!("CARGO_BIN_EXE_fnmesh-sandboxd");
const NOBODY: u32 = 65534;
/// Upper bound for any single container run in these tests.
const RUN_TIMEOUT: Duration = Duration::from_secs(20);

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "sandbox_real tests create real containers and must run as root \
         (run `sudo -E cargo test -p fnmesh-nodes --test sandbox_real`)"
    );
}

/// One test's world: a supervisor, a rootfs skeleton, a code dir and a cgroup prefix.
struct Harness {
    dir: TempDir,
    /// `None` once [`Harness::finish`] or `drop` has stopped the supervisor.
    client: Option<SupervisorClient>,
    rootfs: PathBuf,
    code_dir: PathBuf,
    runtime_dir: PathBuf,
    cgroup_prefix: String,
}

/// What a finished container produced.
#[derive(Debug)]
struct Run {
    stdout: String,
    stderr: String,
    report: ExitReport,
}

/// The read ends we keep, and the container ends we hand over.
struct Pipes {
    stdin: Option<OwnedFd>,
    stdout: OwnedFd,
    stderr: OwnedFd,
}

fn pipes() -> (Pipes, SandboxIo) {
    let (in_r, in_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    (
        Pipes {
            stdin: Some(in_w),
            stdout: out_r,
            stderr: err_r,
        },
        SandboxIo {
            stdin: in_r,
            stdout: out_w,
            stderr: err_w,
        },
    )
}

async fn read_to_end(fd: OwnedFd) -> String {
    let read = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        fs::File::from(fd).read_to_string(&mut text).map(|_| text)
    });
    tokio::time::timeout(RUN_TIMEOUT, read)
        .await
        .expect("container output did not end in time")
        .unwrap()
        .unwrap()
}

impl Harness {
    async fn start() -> Self {
        require_root();
        let dir = tempfile::tempdir().unwrap();
        let rootfs = ensure_rootfs(&dir.path().join("rootfs")).unwrap();
        let code_dir = dir.path().join("code");
        let runtime_dir = dir.path().join("runtime");
        fs::create_dir_all(&code_dir).unwrap();
        fs::create_dir_all(&runtime_dir).unwrap();
        fs::write(code_dir.join("probe.py"), PROBE_PY).unwrap();
        fs::write(runtime_dir.join("bootstrap.txt"), "runtime\n").unwrap();
        let client = SupervisorClient::spawn(Path::new(SUPERVISOR), &[], &dir.path().join("state"))
            .await
            .unwrap();
        let cgroup_prefix = format!("/fnmesh-test/{:016x}", rand::random::<u64>());
        Self {
            dir,
            client: Some(client),
            rootfs,
            code_dir,
            runtime_dir,
            cgroup_prefix,
        }
    }

    /// Lets the root of a user namespace (an unprivileged host uid) reach the rootfs, code
    /// and runtime dirs, as a node's work dir must be for user namespaces.
    fn open_to_userns(&self) {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(self.dir.path(), fs::Permissions::from_mode(0o711)).unwrap();
    }

    fn client(&self) -> &SupervisorClient {
        self.client.as_ref().expect("supervisor already stopped")
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn request(&self, id: &str, args: &[&str]) -> BundleRequest {
        BundleRequest {
            sandbox_id: id.to_owned(),
            root: fnmesh_nodes::sandbox::spec::RootKind::Skeleton,
            rootfs: self.rootfs.clone(),
            code_dir: self.code_dir.clone(),
            runtime_dir: self.runtime_dir.clone(),
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            env: vec![
                "PATH=/usr/local/bin:/usr/bin:/bin".to_owned(),
                "PYTHONDONTWRITEBYTECODE=1".to_owned(),
            ],
            cwd: "/var/task".to_owned(),
            memory_mb: 256,
            pids_limit: 64,
            cpu_millis: 1000,
            cpu_shares: None,
            disk_io: None,
            tmp_mb: 16,
            cgroup_path: format!("{}/{id}", self.cgroup_prefix),
            user: SandboxUser::Host {
                uid: NOBODY,
                gid: NOBODY,
            },
        }
    }

    fn bundle(&self, req: &BundleRequest) -> SandboxSpec {
        let bundle = self.dir.path().join("bundles").join(&req.sandbox_id);
        write_bundle(&bundle, req).unwrap();
        SandboxSpec {
            id: req.sandbox_id.clone(),
            bundle,
        }
    }

    /// Creates and starts `req` with stdin closed, waits for its output to end, destroys it.
    async fn run(&self, req: &BundleRequest) -> Run {
        let spec = self.bundle(req);
        let (mut ours, io) = pipes();
        self.client().create(&spec, io).await.unwrap();
        drop(ours.stdin.take());
        self.client().start(&spec.id).await.unwrap();
        let (stdout, stderr) = tokio::join!(read_to_end(ours.stdout), read_to_end(ours.stderr));
        let report = self.client().destroy(&spec.id).await.unwrap();
        Run {
            stdout,
            stderr,
            report,
        }
    }

    fn cgroup(&self, id: &str) -> SandboxCgroup {
        SandboxCgroup::new(&format!("{}/{id}", self.cgroup_prefix))
    }

    /// Shuts the supervisor down and checks it left nothing behind.
    async fn finish(mut self) {
        if let Some(client) = self.client.take() {
            client.shutdown().await;
        }
        let state: Vec<_> = fs::read_dir(self.state_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(state.is_empty(), "state left behind: {state:?}");
        remove_prefix(&self.cgroup_prefix);
    }
}

impl Drop for Harness {
    /// A failed test never reaches `finish`: dropping the client closes the socket, the
    /// supervisor destroys its containers, and the cgroup prefix can go once they are gone.
    fn drop(&mut self) {
        if self.client.take().is_none() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !try_remove_prefix(&self.cgroup_prefix).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Removes `/fnmesh-test/<random>` from every hierarchy; returns the directories still there.
fn try_remove_prefix(prefix: &str) -> Vec<PathBuf> {
    let mut stuck = Vec::new();
    for h in hierarchies(Path::new(CGROUP_ROOT)) {
        let dir = h.join(prefix.trim_start_matches('/'));
        if dir.exists() && fs::remove_dir(&dir).is_err() {
            stuck.push(dir);
        }
        let _ = fs::remove_dir(h.join("fnmesh-test")); // shared with parallel runs: best effort
    }
    stuck
}

/// Removes `/fnmesh-test/<random>` from every hierarchy; it must be empty by now.
fn remove_prefix(prefix: &str) {
    let stuck = try_remove_prefix(prefix);
    assert!(stuck.is_empty(), "cgroups left behind: {stuck:?}");
}

/// Pids of processes whose command line is exactly `argv`.
fn processes_with_cmdline(argv: &[&str]) -> Vec<i32> {
    let wanted: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| fs::read(format!("/proc/{pid}/cmdline")).ok().as_deref() == Some(&wanted))
        .collect()
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + RUN_TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reports identity, confinement and syscall results as one JSON line (x86_64 syscall numbers).
const PROBE_PY: &str = r#"
import ctypes, errno, json, os, socket
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
out = {"pid": os.getpid(), "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups()}
out["uid_map"] = open("/proc/self/uid_map").read()
out["gid_map"] = open("/proc/self/gid_map").read()
status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines())
for key in ("CapEff", "CapPrm", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp"):
    out[key] = status[key].strip()

def write(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
out["writes"] = {p: write(p) for p in ("/usr/x", "/x", "/var/task/x", "/etc/x", "/var/runtime/x", "/tmp/x", "/dev/shm/x")}
out["runtime"] = open("/var/runtime/bootstrap.txt").read().strip()
out["ifaces"] = sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").read().splitlines()[2:])
out["hostname"] = socket.gethostname()
out["sys"] = os.listdir("/sys")
out["devices"] = sorted(os.listdir("/dev"))

server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(1)
client = socket.create_connection(server.getsockname(), timeout=2)
conn, _ = server.accept()
client.sendall(b"ping")
out["loopback"] = conn.recv(4).decode()
try:
    socket.create_connection(("1.1.1.1", 53), timeout=2)
    out["internet"] = "reachable"
except OSError as e:
    out["internet"] = errno.errorcode.get(e.errno, str(e))

def call(fn, *args):
    ctypes.set_errno(0)
    r = fn(*args)
    if r == 0 and fn is libc.syscall and args[0] == 56:
        os._exit(0)  # a clone that should have failed: the child must not report
    return "ok" if r >= 0 else errno.errorcode[ctypes.get_errno()]
out["unshare_user"] = call(libc.unshare, 0x10000000)
out["mount"] = call(libc.mount, b"none", b"/tmp", b"tmpfs", 0, None)
out["clone_newuser"] = call(libc.syscall, 56, 0x10000000 | 17, 0, 0, 0, 0)
out["clone3"] = call(libc.syscall, 435, None, 0)
out["keyctl"] = call(libc.syscall, 250, 0, 0, 0, 0, 0)
out["io_uring_setup"] = call(libc.syscall, 425, 1, None)
out["bpf"] = call(libc.syscall, 321, 0, None, 0)
out["personality_query"] = call(libc.syscall, 135, ctypes.c_ulong(0xffffffff))
pid = os.fork()
if pid == 0:
    os._exit(7)
out["fork"] = os.waitpid(pid, 0)[1] >> 8
print(json.dumps(out))
"#;

#[tokio::test]
async fn echo_reaches_stdout_and_the_exit_code_is_reported() {
    let h = Harness::start().await;
    let req = h.request("echo", &["/bin/sh", "-c", "echo hi; echo oops >&2; exit 3"]);
    let spec = h.bundle(&req);

    let (mut ours, io) = pipes();
    let t0 = Instant::now();
    h.client().create(&spec, io).await.unwrap();
    let create = t0.elapsed();
    drop(ours.stdin.take());
    let t1 = Instant::now();
    h.client().start(&spec.id).await.unwrap();
    let start = t1.elapsed();
    let (stdout, stderr) = tokio::join!(read_to_end(ours.stdout), read_to_end(ours.stderr));
    let t2 = Instant::now();
    let report = h.client().destroy(&spec.id).await.unwrap();
    let destroy = t2.elapsed();
    eprintln!("latency: create {create:?}, start {start:?}, destroy {destroy:?}");

    assert_eq!(stdout, "hi\n", "stderr: {stderr:?}, {report:?}");
    assert_eq!(
        stderr, "oops\n",
        "no runtime noise in the function's stderr"
    );
    assert_eq!(report.exit_code, Some(3));
    assert_eq!(report.signal, None);
    assert!(!report.oom_killed && !report.pids_limit_hit);

    // Destroy is idempotent.
    assert_eq!(
        h.client().destroy(&spec.id).await.unwrap(),
        ExitReport::default()
    );
    h.finish().await;
}

#[tokio::test]
async fn process_is_unprivileged_and_confined() {
    let h = Harness::start().await;
    let req = h.request("probe", &["/usr/bin/python3", "/var/task/probe.py"]);
    check_confined(&h, &req).await;
    h.finish().await;
}

/// A first host id for the user-namespace tests: above the executor's default range, so it
/// never meets a node's sandboxes running beside the tests.
const TEST_HOST_BASE: u32 = 0x7400_0000;

#[tokio::test]
async fn a_sandbox_in_its_own_user_namespace_is_as_confined() {
    let h = Harness::start().await;
    h.open_to_userns();
    let host_base = TEST_HOST_BASE + (rand::random::<u32>() % 64) * 65_536;
    let mut req = h.request("probe-userns", &["/usr/bin/python3", "/var/task/probe.py"]);
    req.user = SandboxUser::Mapped { host_base };
    let p = check_confined(&h, &req).await;
    // Container ids 0..65536 are the host ids from `host_base`: the process, nobody inside,
    // is host uid `host_base + 65534`, and host root is nobody's root here.
    let map: Vec<u64> = p["uid_map"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(map, [0, u64::from(host_base), 65_536], "{p}");
    assert_eq!(p["gid_map"], p["uid_map"]);
    h.finish().await;
}

/// Runs the probe as `req` and checks what every sandbox must hold; returns its report.
async fn check_confined(h: &Harness, req: &BundleRequest) -> Value {
    let run = h.run(req).await;
    assert_eq!(run.report.exit_code, Some(0), "{run:?}");
    assert_eq!(run.stderr, "", "{run:?}");
    let p: Value =
        serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {run:?}"));

    assert_eq!(p["pid"], 1);
    assert_eq!(p["uid"], NOBODY);
    assert_eq!(p["gid"], NOBODY);
    assert_eq!(
        p["groups"],
        serde_json::json!([NOBODY]),
        "no inherited root group"
    );
    for cap in ["CapEff", "CapPrm", "CapBnd", "CapAmb"] {
        assert_eq!(p[cap], "0000000000000000", "{cap}");
    }
    assert_eq!(p["NoNewPrivs"], "1");
    assert_eq!(p["Seccomp"], "2");

    let w = &p["writes"];
    for path in ["/usr/x", "/x", "/var/task/x", "/etc/x", "/var/runtime/x"] {
        assert_eq!(w[path], "EROFS", "{path}");
    }
    assert_eq!(w["/tmp/x"], "ok");
    assert_eq!(w["/dev/shm/x"], "ok");
    assert_eq!(p["runtime"], "runtime");

    assert_eq!(p["ifaces"], serde_json::json!(["lo"]));
    assert_eq!(p["loopback"], "ping", "lo is up");
    assert_eq!(p["internet"], "ENETUNREACH");
    assert_eq!(p["hostname"], "fnmesh");
    assert_eq!(p["sys"], serde_json::json!([]), "/sys is not mounted");
    for dev in [
        "null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "mqueue",
    ] {
        assert!(
            p["devices"].as_array().unwrap().contains(&Value::from(dev)),
            "/dev/{dev} missing: {}",
            p["devices"]
        );
    }

    assert_eq!(p["unshare_user"], "EPERM");
    assert_eq!(p["mount"], "EPERM");
    assert_eq!(p["clone_newuser"], "EPERM");
    assert_eq!(p["clone3"], "ENOSYS");
    assert_eq!(p["keyctl"], "EPERM");
    assert_eq!(p["io_uring_setup"], "EPERM");
    assert_eq!(p["bpf"], "EPERM");
    assert_eq!(p["personality_query"], "ok");
    assert_eq!(
        p["fork"], 7,
        "plain fork (clone without namespace flags) works"
    );
    p
}

#[tokio::test]
async fn memory_limit_oom_kills_and_is_reported() {
    let h = Harness::start().await;
    let mut req = h.request(
        "oom",
        &[
            "/usr/bin/python3",
            "-c",
            "b = b'x' * (512 << 20); print('survived')",
        ],
    );
    req.memory_mb = 128;
    let run = h.run(&req).await;
    assert!(run.report.oom_killed, "{run:?}");
    assert!(!run.stdout.contains("survived"));
    assert_eq!(run.report.signal, Some(libc::SIGKILL), "{run:?}");
    assert!(run.report.memory_peak_bytes >= 100 << 20, "{run:?}");
    assert!(run.report.memory_peak_bytes <= 128 << 20, "{run:?}");
    h.finish().await;
}

#[tokio::test]
async fn fork_bomb_hits_the_pids_limit_and_the_supervisor_survives() {
    let h = Harness::start().await;
    let bomb = "import os, time\n\
                n = 0\n\
                try:\n    \
                    while True:\n        \
                        if os.fork() == 0:\n            \
                            time.sleep(100)\n            \
                            os._exit(0)\n        \
                        n += 1\n\
                except OSError as e:\n    \
                    print(n, e.errno, flush=True)\n";
    let mut req = h.request("bomb", &["/usr/bin/python3", "-c", bomb]);
    req.pids_limit = 16;
    let run = h.run(&req).await;
    assert!(run.report.pids_limit_hit, "{run:?}");
    let fields: Vec<&str> = run.stdout.split_whitespace().collect();
    assert_eq!(
        fields.get(1),
        Some(&"11"),
        "fork fails with EAGAIN: {run:?}"
    );
    let forked: u32 = fields[0].parse().unwrap();
    assert!(forked < 16, "{run:?}");

    // The supervisor still works.
    let after = h
        .run(&h.request("after-bomb", &["/bin/sh", "-c", "echo alive"]))
        .await;
    assert_eq!(after.stdout, "alive\n");
    h.finish().await;
}

#[tokio::test]
async fn destroy_kills_daemons_and_removes_cgroups_and_state() {
    let h = Harness::start().await;
    // A duration no other process uses, to find the daemon in `ps`.
    let secs = format!("{}", 100_000 + rand::random::<u32>() % 100_000);
    let script = format!("(sleep {secs} &) ; sleep {secs}");
    let req = h.request("daemon", &["/bin/sh", "-c", &script]);
    let spec = h.bundle(&req);
    let (mut ours, io) = pipes();
    h.client().create(&spec, io).await.unwrap();
    drop(ours.stdin.take());

    let cg = h.cgroup("daemon");
    let memory_dir = cg.controller_dir("memory");
    let pids_dir = cg.controller_dir("pids");
    assert!(memory_dir.is_dir() && pids_dir.is_dir());
    assert!(h.state_dir().join("daemon").is_dir());

    h.client().start(&spec.id).await.unwrap();
    let sleeper = ["sleep", secs.as_str()];
    wait_until("the double-forked daemon", || {
        processes_with_cmdline(&sleeper).len() == 2
    })
    .await;

    let report = h.client().destroy(&spec.id).await.unwrap();
    assert_eq!(report.signal, Some(libc::SIGKILL));
    assert!(
        processes_with_cmdline(&sleeper).is_empty(),
        "a sleeper survived destroy"
    );
    assert!(!memory_dir.exists(), "{} left", memory_dir.display());
    assert!(!pids_dir.exists(), "{} left", pids_dir.display());
    assert!(cg.existing_dirs().is_empty(), "{:?}", cg.existing_dirs());
    assert!(!h.state_dir().join("daemon").exists());
    // stdout reaches end of file: nothing in the sandbox holds it any more.
    assert_eq!(read_to_end(ours.stdout).await, "");
    h.finish().await;
}

#[tokio::test]
async fn two_sandboxes_created_concurrently_both_work() {
    let h = Harness::start().await;
    let a = h.request("con-a", &["/bin/sh", "-c", "echo a"]);
    let b = h.request("con-b", &["/usr/bin/id", "-u"]);
    let (ra, rb) = tokio::join!(h.run(&a), h.run(&b));
    assert_eq!(ra.stdout, "a\n");
    assert_eq!(rb.stdout, format!("{NOBODY}\n"));
    assert_eq!(
        (ra.report.exit_code, rb.report.exit_code),
        (Some(0), Some(0))
    );
    h.finish().await;
}

#[tokio::test]
async fn memory_peak_is_read_and_reset_while_running() {
    let h = Harness::start().await;
    let script = "import sys\n\
                  a = b'x' * (64 << 20)\n\
                  del a\n\
                  print('ready', flush=True)\n\
                  sys.stdin.read()\n";
    let req = h.request("peak", &["/usr/bin/python3", "-c", script]);
    let spec = h.bundle(&req);
    let (mut ours, io) = pipes();
    h.client().create(&spec, io).await.unwrap();
    h.client().start(&spec.id).await.unwrap();

    // Wait for "ready" on stdout.
    let stdout = ours.stdout;
    let (line, stdout) = tokio::task::spawn_blocking(move || {
        let mut file = fs::File::from(stdout);
        let mut buf = [0u8; 6];
        file.read_exact(&mut buf).unwrap();
        (String::from_utf8_lossy(&buf).into_owned(), file)
    })
    .await
    .unwrap();
    assert_eq!(line, "ready\n");

    let t = Instant::now();
    let peak = h.client().memory_peak(&spec.id, true).await.unwrap();
    let round_trip = t.elapsed();
    let after_reset = h.client().memory_peak(&spec.id, false).await.unwrap();
    eprintln!("latency: memory_peak {round_trip:?}");
    assert!(peak >= 64 << 20, "peak {peak}");
    assert!(after_reset < 48 << 20, "peak after reset {after_reset}");

    // Errors name the sandbox.
    match h.client().start("no-such-sandbox").await {
        Err(SandboxError::Container { id, .. }) => assert_eq!(id, "no-such-sandbox"),
        other => panic!("unexpected {other:?}"),
    }

    drop(ours.stdin.take()); // EOF on stdin: the function returns
                             // Its stdout ends when it exits; destroy then reaps its real exit status.
    let rest = read_to_end(stdout.into()).await;
    assert_eq!(rest, "");
    let report = h.client().destroy(&spec.id).await.unwrap();
    assert_eq!(report.exit_code, Some(0), "{report:?}");
    h.finish().await;
}

#[tokio::test]
async fn start_round_trips_are_fast() {
    let h = Harness::start().await;
    let req = h.request("fast", &["/bin/sh", "-c", "read x"]);
    let spec = h.bundle(&req);
    let (_ours, io) = pipes();
    h.client().create(&spec, io).await.unwrap();
    h.client().start(&spec.id).await.unwrap();
    let mut times = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        h.client().memory_peak(&spec.id, false).await.unwrap();
        times.push(t.elapsed());
    }
    times.sort();
    eprintln!(
        "latency: memory_peak p50 {:?} max {:?}",
        times[25], times[49]
    );
    assert!(times[25] < Duration::from_millis(1), "p50 {:?}", times[25]);
    h.client().destroy(&spec.id).await.unwrap();
    h.finish().await;
}

#[tokio::test]
async fn create_errors_are_reported_and_cleaned_up() {
    let h = Harness::start().await;
    let req = h.request("missing", &["/usr/bin/does-not-exist"]);
    let spec = h.bundle(&req);
    let (_ours, io) = pipes();
    match h.client().create(&spec, io).await {
        Err(SandboxError::Container { id, message }) => {
            assert_eq!(id, "missing");
            assert!(message.contains("does-not-exist"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(h.cgroup("missing").existing_dirs().is_empty());

    let (_ours, io) = pipes();
    let bad = SandboxSpec {
        id: "Bad/Id".to_owned(),
        bundle: spec.bundle.clone(),
    };
    assert!(matches!(
        h.client().create(&bad, io).await,
        Err(SandboxError::Container { .. })
    ));
    h.finish().await;
}

#[tokio::test]
async fn a_dead_supervisor_fails_calls_and_its_leftovers_are_removed_by_the_next() {
    let h = Harness::start().await;
    let req = h.request("orphan", &["/bin/sh", "-c", "sleep 1000"]);
    let spec = h.bundle(&req);
    let (_ours, io) = pipes();
    h.client().create(&spec, io).await.unwrap();
    h.client().start(&spec.id).await.unwrap();
    let cg = h.cgroup("orphan");
    assert!(!cg.existing_dirs().is_empty());

    // Crash the supervisor: its container is orphaned.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(h.client().pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let call = tokio::time::timeout(Duration::from_secs(5), h.client().start(&spec.id)).await;
    assert!(
        matches!(call, Ok(Err(SandboxError::Supervisor(_)))),
        "{call:?}"
    );
    let again = tokio::time::timeout(Duration::from_secs(5), h.client().destroy(&spec.id)).await;
    assert!(
        matches!(again, Ok(Err(SandboxError::Supervisor(_)))),
        "{again:?}"
    );
    assert!(!cg.existing_dirs().is_empty(), "the orphan is still there");

    // The next supervisor on the same state dir removes it.
    let next = SupervisorClient::spawn(Path::new(SUPERVISOR), &[], &h.state_dir())
        .await
        .unwrap();
    assert!(cg.existing_dirs().is_empty(), "{:?}", cg.existing_dirs());
    assert!(!h.state_dir().join("orphan").exists());
    next.shutdown().await;
    h.finish().await;
}

const IMAGEBOOT: &str = env!("CARGO_BIN_EXE_fnmesh-imageboot");

/// A busybox-only image tree, as `fnmesh_image::tree` leaves one: the image's files and the
/// sandbox's mount points, nothing of the host's.
fn busybox_tree(dir: &Path) -> PathBuf {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let tree = dir.join("image-tree");
    for d in [
        "bin",
        "proc",
        "dev",
        "sys",
        "tmp",
        "etc",
        "var/runtime",
        "srv",
    ] {
        fs::create_dir_all(tree.join(d)).unwrap();
    }
    fs::set_permissions(tree.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    assert!(
        Path::new("/bin/busybox").exists(),
        "/bin/busybox is missing: install it with `apt-get install busybox-static`"
    );
    fs::copy("/bin/busybox", tree.join("bin/busybox")).unwrap();
    for applet in ["sh", "cat", "test", "echo", "id", "true", "sleep"] {
        symlink("busybox", tree.join("bin").join(applet)).unwrap();
    }
    fs::write(tree.join("etc/image-release"), "busybox image\n").unwrap();
    tree
}

fn frame(value: &Value) -> Vec<u8> {
    let body = serde_json::to_vec(value).unwrap();
    [(body.len() as u32).to_be_bytes().to_vec(), body].concat()
}

fn frames(mut bytes: &[u8]) -> Vec<Value> {
    let mut out = Vec::new();
    while bytes.len() >= 4 {
        let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        out.push(serde_json::from_slice(&bytes[4..4 + len]).unwrap());
        bytes = &bytes[4 + len..];
    }
    out
}

/// Creates and starts `req`, writes `input` to its stdin and closes it, and returns its raw
/// stdout, its stderr and its exit report.
async fn run_with_input(
    h: &Harness,
    req: &BundleRequest,
    input: Vec<u8>,
) -> (Vec<u8>, String, ExitReport) {
    let spec = h.bundle(req);
    let (mut ours, io) = pipes();
    h.client().create(&spec, io).await.unwrap();
    h.client().start(&spec.id).await.unwrap();
    let stdin = ours.stdin.take().unwrap();
    let writer = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        fs::File::from(stdin).write_all(&input).unwrap();
    });
    let stdout = ours.stdout;
    let raw = tokio::task::spawn_blocking(move || {
        let mut bytes = Vec::new();
        fs::File::from(stdout)
            .read_to_end(&mut bytes)
            .map(|_| bytes)
    });
    let (raw, stderr) = tokio::join!(
        async {
            tokio::time::timeout(RUN_TIMEOUT, raw)
                .await
                .expect("container output did not end in time")
                .unwrap()
                .unwrap()
        },
        read_to_end(ours.stderr)
    );
    writer.await.unwrap();
    let report = h.client().destroy(&spec.id).await.unwrap();
    (raw, stderr, report)
}

#[tokio::test]
async fn an_image_root_runs_the_image_bootstrap_with_nothing_of_the_hosts() {
    use fnmesh_nodes::runtimes::image::ImageBootstrap;
    use fnmesh_nodes::runtimes::imageboot::Mode;
    use fnmesh_nodes::sandbox::spec::RootKind;

    let h = Harness::start().await;
    h.open_to_userns();
    let tree = busybox_tree(h.dir.path());
    let boot = ImageBootstrap::install(&h.dir.path().join("imageboot"), Path::new(IMAGEBOOT), &[])
        .unwrap();
    // Each run also leaves an orphan behind (reparented to pid 1, the bootstrap) and counts
    // the zombies it finds: the bootstrap reaps them between invocations.
    let script = r#"read -r payload
if test -e /usr/bin/python3; then host=true; else host=false; fi
z=0
for stat in /proc/[0-9]*/stat; do
  read -r line < "$stat" 2>/dev/null || continue
  case "$line" in *") Z "*) z=$((z+1)) ;; esac
done
(true &)
sleep 0.1
echo "from the handler" >&2
echo "{\"payload\":$payload,\"host_usr\":$host,\"release\":\"$(cat /etc/image-release)\",\"uid\":$(id -u),\"env\":\"$FROM_IMAGE\",\"secret\":\"$SECRET\",\"cwd\":\"$(pwd)\",\"zombies\":$z}""#;
    for (label, user) in [
        (
            "host-uid",
            SandboxUser::Host {
                uid: NOBODY,
                gid: NOBODY,
            },
        ),
        (
            "userns",
            SandboxUser::Mapped {
                host_base: TEST_HOST_BASE + (rand::random::<u32>() % 64) * 65_536,
            },
        ),
    ] {
        let mut req = h.request(&format!("image-root-{label}"), &["/bin/true"]);
        req.root = RootKind::Image {
            uid: fnmesh_nodes::sandbox::users::SANDBOX_UID,
            gid: fnmesh_nodes::sandbox::users::SANDBOX_UID,
        };
        req.rootfs = tree.clone();
        req.runtime_dir = boot.dir().to_path_buf();
        req.cwd = "/srv".to_owned();
        req.env = vec!["PATH=/bin".to_owned(), "FROM_IMAGE=yes".to_owned()];
        req.user = user;
        req.args = boot.argv(&Mode::Exec {
            cwd: "/srv".to_owned(),
            argv: vec!["/bin/sh".to_owned(), "-c".to_owned(), script.to_owned()],
        });
        let input = [
            frame(&serde_json::json!({"env": {"SECRET": "s3cr3t"}})),
            frame(
                &serde_json::json!({"id": "inv-1", "payload": {"x": 1}, "max_result_bytes": 65536}),
            ),
            frame(&serde_json::json!({"id": "inv-2", "payload": 2, "max_result_bytes": 65536})),
        ]
        .concat();
        let (stdout, stderr, report) = run_with_input(&h, &req, input).await;
        assert_eq!(report.exit_code, Some(0), "{label}: {stderr}");
        let answers = frames(&stdout);
        assert_eq!(answers.len(), 3, "{label}: {answers:?} {stderr}");
        assert_eq!(answers[0], serde_json::json!({"ready": true}));
        let ok = &answers[1]["ok"];
        assert_eq!(
            ok["payload"],
            serde_json::json!({"x": 1}),
            "{label}: {answers:?}"
        );
        assert_eq!(
            ok["host_usr"], false,
            "{label}: the host's /usr is not there"
        );
        assert_eq!(
            ok["release"], "busybox image",
            "{label}: the image's files are"
        );
        assert_eq!(ok["uid"], NOBODY, "{label}");
        assert_eq!(ok["env"], "yes", "{label}");
        assert_eq!(ok["secret"], "s3cr3t", "{label}");
        assert_eq!(ok["cwd"], "/srv", "{label}");
        assert_eq!(answers[2]["ok"]["payload"], 2, "{label}: {answers:?}");
        assert_eq!(
            answers[2]["ok"]["zombies"], 0,
            "{label}: the first run's orphan was reaped: {answers:?}"
        );
        assert!(
            stderr.contains("from the handler\n\n\0fnmesh-end:inv-1\0\n"),
            "{label}: {stderr:?}"
        );
    }
    h.finish().await;
}
