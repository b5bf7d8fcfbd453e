//! Who a real sandbox runs as, and where its secrets are: every live sandbox has its own host
//! uid (through its own user namespace when the node's paths allow one, else directly), so one
//! sandbox's uid cannot read another's `/proc/<pid>/environ`; and a secret reaches the function
//! over the protocol pipe, never the bundle on disk or the process's initial environment.
//!
//! Real supervisor, real containers: run as root. Each test owns a temp dir and a random cgroup
//! prefix `/fnmesh-test/<random>`, and removes both.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "pool_support/mod.rs"]
mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fnmesh_core::secrets::{Keyring, SealedSecrets};
use fnmesh_core::{Function, InvocationId, InvocationStatus, Runtime};
use fnmesh_nodes::executor::{Executor, ExecutorConfig, Job};
use fnmesh_nodes::sandbox::cgroup::{hierarchies, CGROUP_ROOT};
use fnmesh_nodes::sandbox::supervisor::SupervisorClient;
use fnmesh_nodes::sandbox::users::{IdMode, BLOCK, DEFAULT_BASE, SANDBOX_UID};
use fnmesh_nodes::sandbox::ContainerRuntime;
use serde_json::{json, Value};
use support::{contains, files_under, function, keyring, sealed_secrets, write_code};
use tempfile::TempDir;

const SUPERVISOR: &str = env!("CARGO_BIN_EXE_fnmesh-sandboxd");

const SECRET: &str = "pl41n-s3cr3t-4c07aa";

/// Reports who it is and what it sees; stays warm.
const WHOAMI_PY: &str = r#"
import os
AT_IMPORT = os.environ.get("DB_PASSWORD")

def handle(event, context):
    return {
        "uid": os.getuid(),
        "gid": os.getgid(),
        "secret": os.environ.get("DB_PASSWORD"),
        "at_import": AT_IMPORT,
        "in_own_environ": b"DB_PASSWORD" in open("/proc/self/environ", "rb").read(),
    }
"#;

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "sandbox_users tests create real containers and must run as root"
    );
}

/// A node's executor over a real supervisor in a temp dir of its own.
struct World {
    dir: TempDir,
    client: Arc<SupervisorClient>,
    executor: Arc<Executor>,
    prefix: String,
    keyring: Arc<Keyring>,
}

impl World {
    /// `reachable`: whether the temp dir lets other uids through (`0711`), as a node's work
    /// dir must for user namespaces; a fresh temp dir is `0700`.
    async fn start(mode: IdMode, reachable: bool) -> Self {
        require_root();
        let dir = tempfile::tempdir().unwrap();
        let dir_mode = if reachable { 0o711 } else { 0o700 };
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(dir_mode)).unwrap();
        let client = Arc::new(
            SupervisorClient::spawn(Path::new(SUPERVISOR), &[], &dir.path().join("state"))
                .await
                .unwrap(),
        );
        let tag = format!("{:016x}", rand::random::<u64>());
        let prefix = format!("/fnmesh-test/{tag}");
        let keyring = keyring();
        let runtime: Arc<dyn ContainerRuntime> = client.clone();
        let executor = Executor::new(
            ExecutorConfig {
                work_dir: dir.path().join("node"),
                node_id: format!("usr-{}", &tag[..8]),
                max_sandboxes: 4,
                max_memory_mb: 4096,
                cgroup_parent: prefix.clone(),
                id_mode: mode,
                secrets_keyring: Some(keyring.clone()),
                ..ExecutorConfig::default()
            },
            runtime,
        )
        .await
        .unwrap();
        Self {
            dir,
            client,
            executor,
            prefix,
            keyring,
        }
    }

    fn code(&self, name: &str) -> PathBuf {
        let code = self.dir.path().join("code").join(name);
        write_code(&code, &[("main.py", WHOAMI_PY)]);
        code
    }

    async fn invoke(&self, f: &Function, code: &Path, secrets: Option<SealedSecrets>) -> Value {
        let job = Job {
            invocation_id: InvocationId::new(),
            function: f.clone(),
            code_dir: code.to_path_buf(),
            payload: json!({}),
            trace_id: None,
            secrets,
            registry_auth: None,
        };
        let out = self.executor.execute(job).await;
        assert_eq!(out.status, InvocationStatus::Succeeded, "{out:?}");
        out.result.unwrap()
    }

    /// The live sandboxes: (id, init pid), from their pids cgroups.
    fn sandboxes(&self) -> Vec<(String, u32)> {
        let parent = Path::new(CGROUP_ROOT)
            .join("pids")
            .join(self.prefix.trim_start_matches('/'));
        let mut out: Vec<(String, u32)> = fs::read_dir(&parent)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.path().is_dir())
            .map(|e| {
                let procs = fs::read_to_string(e.path().join("cgroup.procs")).unwrap();
                let pid = procs.lines().next().unwrap().parse().unwrap();
                (e.file_name().to_string_lossy().into_owned(), pid)
            })
            .collect();
        out.sort();
        out
    }

    async fn finish(self) {
        self.executor.shutdown(Duration::from_secs(10)).await;
        self.client.shutdown().await;
        for h in hierarchies(Path::new(CGROUP_ROOT)) {
            let dir = h.join(self.prefix.trim_start_matches('/'));
            if dir.exists() {
                fs::remove_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            }
            let _ = fs::remove_dir(h.join("fnmesh-test")); // shared with parallel runs
        }
    }
}

/// The four uids (real, effective, saved, fs) of `pid` as the host sees them.
fn host_uids(pid: u32) -> Vec<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace()
        .skip(1)
        .map(|n| n.parse().unwrap())
        .collect()
}

/// `/proc/<pid>/uid_map` as numbers.
fn uid_map(pid: u32) -> Vec<u64> {
    fs::read_to_string(format!("/proc/{pid}/uid_map"))
        .unwrap()
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect()
}

/// Reads `/proc/<pid>/environ` from a host process running as `uid`:`uid`.
fn read_environ_as(uid: u32, pid: u32) -> std::process::Output {
    std::process::Command::new("/bin/cat")
        .arg(format!("/proc/{pid}/environ"))
        .uid(uid)
        .gid(uid)
        .current_dir("/")
        .output()
        .unwrap()
}

/// Two functions invoked once each: two warm sandboxes alive at once. Returns their uids as
/// the functions saw them, and (id, pid, host uid) of each sandbox.
async fn two_live_sandboxes(w: &World) -> (Vec<Value>, Vec<(String, u32, u32)>) {
    let a = function("who-a", Runtime::Python3, "main.handle");
    let b = function("who-b", Runtime::Python3, "main.handle");
    let (code_a, code_b) = (w.code("a"), w.code("b"));
    let (ra, rb) = tokio::join!(w.invoke(&a, &code_a, None), w.invoke(&b, &code_b, None));
    let live = w.sandboxes();
    assert_eq!(live.len(), 2, "both sandboxes stay warm: {live:?}");
    let live = live
        .into_iter()
        .map(|(id, pid)| {
            let uids = host_uids(pid);
            assert!(uids.iter().all(|u| *u == uids[0]), "{uids:?}");
            (id, pid, uids[0])
        })
        .collect();
    (vec![ra, rb], live)
}

/// Each sandbox's host uid is its block's, and another sandbox's uid cannot read its environ.
///
/// Without a user namespace the same read as the sandbox's own uid works (the control: the
/// refusal is the uid's). In a user namespace even that is refused: the kernel's capability
/// check on `/proc/<pid>/environ` (`cap_ptrace_access_check`) wants the reader in the target's
/// user namespace or holding `CAP_SYS_PTRACE` over it, so only host root reads it.
fn check_distinct_and_private(live: &[(String, u32, u32)], userns: bool) {
    let (uid_a, uid_b) = (live[0].2, live[1].2);
    assert_ne!(
        uid_a, uid_b,
        "two live sandboxes share a host uid: {live:?}"
    );
    for (_, _, uid) in live {
        assert_ne!(*uid, 65_534, "a sandbox runs as the host's nobody");
        assert!(*uid >= DEFAULT_BASE, "{uid} is outside the sandbox range");
        assert_eq!((uid - DEFAULT_BASE) % BLOCK, SANDBOX_UID, "{uid}");
    }
    let pid_b = live[1].1;
    let denied = read_environ_as(uid_a, pid_b);
    assert!(
        !denied.status.success(),
        "sandbox a's uid read sandbox b's environ: {denied:?}"
    );
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("Permission denied"),
        "{denied:?}"
    );
    let own = read_environ_as(uid_b, pid_b);
    if userns {
        assert!(!own.status.success(), "{own:?}");
    } else {
        assert!(own.status.success(), "{own:?}");
        assert!(contains(&own.stdout, "FUNCTION_NAME=who-"), "{own:?}");
    }
    // Host root reads it (and finds no secret there: see the secrets test).
    let root = fs::read(format!("/proc/{pid_b}/environ")).unwrap();
    assert!(contains(&root, "FUNCTION_NAME=who-"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_sandboxes_run_as_distinct_host_uids_in_their_own_user_namespaces() {
    let w = World::start(IdMode::UserNamespace, true).await;
    let (seen, live) = two_live_sandboxes(&w).await;
    for r in &seen {
        assert_eq!(r["uid"], 65_534, "nobody inside: {r}");
        assert_eq!(r["gid"], 65_534, "{r}");
    }
    for (_, pid, uid) in &live {
        // Container ids 0..65536 are the sandbox's block of host ids.
        assert_eq!(
            uid_map(*pid),
            [0, u64::from(uid - SANDBOX_UID), u64::from(BLOCK)]
        );
    }
    check_distinct_and_private(&live, true);
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_reachable_paths_auto_mode_runs_each_sandbox_as_its_host_uid_directly() {
    // A 0700 work dir: the root of a user namespace could not mount the code, so Auto falls
    // back to plain host uids, still one per sandbox.
    let w = World::start(IdMode::Auto, false).await;
    let (seen, live) = two_live_sandboxes(&w).await;
    for (r, (_, pid, uid)) in seen.iter().zip(&live) {
        assert_eq!(uid_map(*pid), [0, 0, u64::from(u32::MAX)], "host user ns");
        assert_eq!(r["uid"], *uid, "{r}");
    }
    let mut inside: Vec<u64> = seen.iter().map(|r| r["uid"].as_u64().unwrap()).collect();
    inside.sort_unstable();
    inside.dedup();
    assert_eq!(inside.len(), 2, "{seen:?}");
    check_distinct_and_private(&live, false);
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_mode_picks_a_user_namespace_when_the_paths_allow_one() {
    let w = World::start(IdMode::Auto, true).await;
    let f = function("who-auto", Runtime::Python3, "main.handle");
    let r = w.invoke(&f, &w.code("auto"), None).await;
    assert_eq!(r["uid"], 65_534, "{r}");
    let live = w.sandboxes();
    let pid = live[0].1;
    assert_eq!(uid_map(pid)[1], u64::from(host_uids(pid)[0] - SANDBOX_UID));
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_reaches_the_function_but_not_the_bundle_or_the_initial_environment() {
    let w = World::start(IdMode::UserNamespace, true).await;
    let f = function("secretive", Runtime::Python3, "main.handle");
    let code = w.code("secretive");
    let sealed = sealed_secrets(&w.keyring, &f, &[("DB_PASSWORD", SECRET)]);
    let r = w.invoke(&f, &code, Some(sealed)).await;
    assert_eq!(r["secret"], SECRET, "{r}");
    assert_eq!(
        r["at_import"], SECRET,
        "set before the handler's module loaded: {r}"
    );
    assert_eq!(r["in_own_environ"], false, "{r}");

    // The sandbox is warm: its bundle and the supervisor's state are on disk now.
    let live = w.sandboxes();
    assert_eq!(live.len(), 1);
    let (id, pid) = live[0].clone();
    let environ = fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(contains(&environ, "FUNCTION_NAME=secretive"));
    assert!(
        !contains(&environ, SECRET) && !contains(&environ, "DB_PASSWORD"),
        "the initial environment block holds the secret"
    );

    let bundle = w.dir.path().join("node/bundles").join(&id);
    let config = bundle.join("config.json");
    let text = fs::read_to_string(&config).unwrap();
    assert!(text.contains("FUNCTION_NAME=secretive"), "{text}");
    assert!(!text.contains(SECRET), "config.json holds the secret");
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&bundle), 0o700);
    assert_eq!(mode(&config), 0o600);
    assert_eq!(mode(&w.dir.path().join("node/bundles")), 0o700);
    let on_disk: Vec<PathBuf> = [
        files_under(&w.dir.path().join("node")),
        files_under(&w.dir.path().join("state")),
    ]
    .concat();
    assert!(on_disk.iter().any(|p| p == &config), "{on_disk:?}");
    for file in &on_disk {
        let bytes = fs::read(file).unwrap_or_default();
        assert!(
            !contains(&bytes, SECRET),
            "{} holds the secret",
            file.display()
        );
    }
    w.finish().await;
}
