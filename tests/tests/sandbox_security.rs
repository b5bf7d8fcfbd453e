//! What a function sees from inside its sandbox, and how the platform holds limits: run
//! through the real platform (`fnmesh up` → libcontainer sandboxes).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use fnmesh_tests::{unique, TestApp};
use serde_json::{json, Value};

const INSPECT: &str = r#"
import ctypes, errno, os, socket

def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))

def write(path):
    with open(path, "w") as f:
        f.write("x")

def tmp_cap():
    written = 0
    try:
        with open("/tmp/fill", "wb") as f:
            chunk = b"\0" * (1 << 20)
            while written < (512 << 20):
                f.write(chunk)
                f.flush()
                written += len(chunk)
    except OSError as e:
        return {"mb": written >> 20, "err": errno.errorcode.get(e.errno)}
    finally:
        try:
            os.unlink("/tmp/fill")
        except OSError:
            pass
    return {"mb": written >> 20, "err": None}

def connect(host, port):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((host, port))
        return "connected"
    except OSError as e:
        return type(e).__name__ + ":" + str(e.errno)
    finally:
        s.close()

def loopback_works():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    c = socket.create_connection(srv.getsockname(), timeout=2)
    c.close()
    srv.close()
    return True

def libc_call(name, *args):
    libc = ctypes.CDLL(None, use_errno=True)
    rc = getattr(libc, name)(*args)
    return errno.errorcode.get(ctypes.get_errno(), "ok") if rc != 0 else "ok"

def kcore_bytes():
    try:
        with open("/proc/kcore", "rb") as f:
            return len(f.read(16))
    except OSError:
        return 0

def handle(event, context):
    status = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            status[k] = v.strip()
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds[fd] = os.readlink("/proc/self/fd/" + fd)
        except OSError:
            pass
    with open("/proc/net/dev") as f:
        ifaces = [l.split(":")[0].strip() for l in f.readlines()[2:]]
    return {
        "uid": os.getuid(), "gid": os.getgid(),
        "cap_eff": status["CapEff"], "cap_bnd": status["CapBnd"],
        "no_new_privs": status["NoNewPrivs"], "seccomp": status["Seccomp"],
        "write_usr": attempt(lambda: write("/usr/x")),
        "write_root": attempt(lambda: write("/x")),
        "write_task": attempt(lambda: write("/var/task/x")),
        "write_tmp": attempt(lambda: write("/tmp/x")),
        "tmp_cap": tmp_cap(),
        "ifaces": ifaces,
        "loopback": loopback_works(),
        "internet": connect("1.1.1.1", 80),
        "gateway": connect("127.0.0.1", event["gateway_port"]),
        "fds": fds,
        "env": dict(os.environ),
        "unshare_user": libc_call("unshare", 0x10000000),
        "mount": libc_call("mount", b"none", b"/tmp", b"tmpfs", 0, None),
        "kcore_bytes": kcore_bytes(),
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
    }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_denies_by_default() {
    let app = TestApp::start_with(&[
        ("AWS_SECRET_ACCESS_KEY", "host-secret"),
        ("FNMESH_SECRET_THING", "host-secret"),
    ])
    .await;
    let name = unique("inspect");
    app.deploy_with(
        &name,
        "python3",
        "main.handle",
        &[("main.py", INSPECT)],
        json!({"memory_mb": 256, "environment": {"MY_SETTING": "visible"}}),
    )
    .await;
    let r = app
        .invoke_ok(&name, json!({"gateway_port": app.port}))
        .await;
    assert_eq!(r["status"], "succeeded", "{r}");
    let v = &r["result"];
    assert_ne!(v["uid"], 0, "{v}");
    assert_ne!(v["gid"], 0, "{v}");
    assert_eq!(v["cap_eff"], "0000000000000000");
    assert_eq!(v["cap_bnd"], "0000000000000000");
    assert_eq!(v["no_new_privs"], "1");
    assert_eq!(v["seccomp"], "2");
    assert_eq!(v["write_usr"], "EROFS");
    assert_eq!(v["write_root"], "EROFS");
    assert_eq!(v["write_task"], "EROFS");
    assert_eq!(v["write_tmp"], "ok");
    let tmp_mb = v["tmp_cap"]["mb"].as_u64().unwrap();
    assert_eq!(v["tmp_cap"]["err"], "ENOSPC", "{v}");
    assert!(tmp_mb <= 64, "/tmp is size-capped: wrote {tmp_mb} MiB");
    assert_eq!(v["ifaces"], json!(["lo"]), "only lo exists");
    assert_eq!(v["loopback"], true, "lo is up inside the sandbox");
    assert_ne!(v["internet"], "connected");
    assert_ne!(
        v["gateway"], "connected",
        "the host's gateway port is unreachable"
    );
    assert_eq!(v["unshare_user"], "EPERM");
    assert_eq!(v["mount"], "EPERM");
    assert_eq!(v["kcore_bytes"], 0, "/proc/kcore is masked");
    assert!(
        v["pid"].as_u64().unwrap() < 10,
        "own pid namespace: {}",
        v["pid"]
    );

    // Only the expected fds: stdio and the runtime's protocol pipes (plus the listdir itself).
    let fds = v["fds"].as_object().unwrap();
    assert!(fds.len() <= 6, "unexpected fds: {fds:?}");
    for (fd, target) in fds {
        let target = target.as_str().unwrap();
        assert!(
            target.starts_with("pipe:") || target == "/dev/null" || target.starts_with("/proc/"),
            "fd {fd} -> {target} is not one of the sandbox's own"
        );
    }

    // Only the function's variables plus runtime ones.
    let env = v["env"].as_object().unwrap();
    assert_eq!(env["MY_SETTING"], "visible");
    for key in env.keys() {
        assert!(!key.starts_with("FNMESH"), "{key} leaked into the sandbox");
        assert!(!key.starts_with("AWS_"), "{key} leaked into the sandbox");
    }
    let env_text = serde_json::to_string(env).unwrap();
    assert!(!env_text.contains("host-secret"));
    assert!(!env_text.contains(fnmesh_tests::ADMIN_KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_gives_oom() {
    let app = TestApp::start().await;
    let name = unique("oom");
    app.deploy_with(&name, "python3", "main.handle", &[("main.py", "def handle(event, context):\n    b = bytearray(512 * 1024 * 1024)\n    return len(b)\n")], json!({"memory_mb": 128})).await;
    let r = app.invoke_ok(&name, json!({})).await;
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(r["error"]["kind"], "oom", "{r}");
    // The node keeps serving.
    let ok = unique("after-oom");
    app.deploy(
        &ok,
        "python3",
        "main.handle",
        &[("main.py", "def handle(e, c):\n    return 'fine'\n")],
    )
    .await;
    assert_eq!(app.invoke_ok(&ok, json!({})).await["result"], "fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_is_held_and_the_node_keeps_serving() {
    let app = TestApp::start().await;
    let bomb = unique("bomb");
    app.deploy_with(
        &bomb,
        "exec",
        "bomb.sh",
        &[(
            "bomb.sh",
            "#!/bin/sh\nbomb() { bomb | bomb & }\nbomb\nsleep 2\necho '\"survived\"'\n",
        )],
        json!({"timeout_ms": 4000}),
    )
    .await;
    let r = app.invoke_ok(&bomb, json!({})).await;
    // Whatever the bomb's own fate, the limit held it and the platform answered.
    assert!(r["status"].is_string(), "{r}");
    let ok = unique("after-bomb");
    app.deploy(
        &ok,
        "python3",
        "main.handle",
        &[("main.py", "def handle(e, c):\n    return 'fine'\n")],
    )
    .await;
    let started = Instant::now();
    assert_eq!(app.invoke_ok(&ok, json!({})).await["result"], "fine");
    assert!(started.elapsed() < Duration::from_secs(20));
}

fn processes_matching(marker: &str) -> Vec<String> {
    let out = std::process::Command::new("ps")
        .args(["-eo", "pid,args"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(marker) && !l.contains("ps -eo"))
        .map(str::to_owned)
        .collect()
}

fn sandbox_cgroups(node_id: &str) -> Vec<String> {
    let mut found = Vec::new();
    for ctl in ["memory", "pids", "cpu"] {
        let dir = format!("/sys/fs/cgroup/{ctl}/fnmesh/{node_id}");
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    found.push(format!("{dir}/{}", e.file_name().to_string_lossy()));
                }
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_the_whole_sandbox_promptly() {
    let app = TestApp::start().await;
    let name = unique("sleepy");
    // A double-forked daemon plus a long sleep; both must die with the sandbox.
    app.deploy_with(
        &name,
        "exec",
        "slow.sh",
        &[(
            "slow.sh",
            "#!/bin/sh\n(sleep 271.828 &)\nexec sleep 314.159\n",
        )],
        json!({"timeout_ms": 1000}),
    )
    .await;
    let started = Instant::now();
    let r = app.invoke_ok(&name, json!({})).await;
    let elapsed = started.elapsed();
    assert_eq!(r["status"], "timeout", "{r}");
    assert_eq!(r["error"]["kind"], "timeout");
    // Cold start + 1 s timeout; reported within a second of the deadline.
    let init_ms = r["metrics"]["init_ms"].as_u64().unwrap_or(0);
    assert!(
        elapsed < Duration::from_millis(1000 + init_ms + 1000),
        "timeout reported after {elapsed:?} (init {init_ms} ms)"
    );
    assert!(
        processes_matching("sleep 314.159").is_empty(),
        "{:?}",
        processes_matching("sleep 314.159")
    );
    assert!(
        processes_matching("sleep 271.828").is_empty(),
        "the daemon outlived its sandbox"
    );
    let node_id = r["node_id"].as_str().unwrap();
    assert!(
        sandbox_cgroups(node_id).is_empty(),
        "{:?}",
        sandbox_cgroups(node_id)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_state_persists_per_version_and_never_leaks() {
    let app = TestApp::start().await;
    let counter = "count = 0\ndef handle(event, context):\n    global count\n    count += 1\n    return count\n";
    let a = unique("count-a");
    app.deploy(&a, "python3", "main.handle", &[("main.py", counter)])
        .await;
    let first = app.invoke_ok(&a, json!({})).await;
    assert_eq!(first["result"], 1);
    assert_eq!(first["metrics"]["cold_start"], true);
    assert!(first["metrics"]["init_ms"].as_u64().unwrap() > 0);
    let second = app.invoke_ok(&a, json!({})).await;
    assert_eq!(second["metrics"]["cold_start"], false, "{second}");
    assert_eq!(second["metrics"]["init_ms"], 0);
    assert_eq!(
        second["result"], 2,
        "module state persists across warm invocations"
    );
    assert!(second["metrics"]["memory_peak_bytes"].as_u64().unwrap() > 0);
    assert_eq!(app.invoke_ok(&a, json!({})).await["result"], 3);

    // A new version starts from scratch.
    let mut update = fnmesh_tests::function_body(
        &a,
        "python3",
        "main.handle",
        &[("main.py", counter)],
        json!({}),
    );
    update.as_object_mut().unwrap().remove("name");
    let v2 = app
        .call("PUT", &format!("/v1/functions/{a}"), Some(update))
        .await;
    assert_eq!(v2.status, 200);
    let r: Value = app.invoke_ok(&a, json!({})).await;
    assert_eq!(r["version"], 2);
    assert_eq!(
        r["result"], 1,
        "a new version never reuses an old version's sandbox"
    );
    assert_eq!(r["metrics"]["cold_start"], true);
    // The old version still has its own state.
    let old = app
        .call(
            "POST",
            &format!("/v1/functions/{a}/invoke?version=1"),
            Some(json!({})),
        )
        .await;
    assert_eq!(old.body["result"], 4);

    // Another function with the same code never shares state.
    let b = unique("count-b");
    app.deploy(&b, "python3", "main.handle", &[("main.py", counter)])
        .await;
    assert_eq!(app.invoke_ok(&b, json!({})).await["result"], 1);
}
