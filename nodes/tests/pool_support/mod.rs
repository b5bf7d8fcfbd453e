//! Shared helpers of the pool and runtime tests: an executor over the fake runtime in a temp dir,
//! functions, code directories and jobs.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fnmesh_core::secrets::{Keyring, SealedSecret, SealedSecrets, SecretName};
use fnmesh_core::{
    Checksum, CodeInfo, Execution, Function, FunctionConfig, FunctionId, FunctionName,
    InvocationId, Namespace, Runtime,
};
use fnmesh_nodes::executor::{Executor, ExecutorConfig, Job};
use fnmesh_nodes::sandbox::fake::FakeRuntime;
use tempfile::TempDir;

/// An executor over a [`FakeRuntime`] working in its own temp dir.
pub struct Harness {
    pub dir: TempDir,
    pub fake: Arc<FakeRuntime>,
    pub executor: Arc<Executor>,
}

impl Harness {
    pub async fn new() -> Self {
        Self::with(|_| {}).await
    }

    pub async fn with(tweak: impl FnOnce(&mut ExecutorConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ExecutorConfig {
            work_dir: dir.path().join("work"),
            node_id: "test-node".into(),
            max_memory_mb: 64 * 1024,
            cgroup_parent: "/fnmesh/test-node".into(),
            ..ExecutorConfig::default()
        };
        tweak(&mut config);
        let fake = Arc::new(FakeRuntime::new());
        let executor = Executor::new(config, fake.clone()).await.unwrap();
        Self {
            dir,
            fake,
            executor,
        }
    }

    /// A directory holding `files` (`name`, `contents`); names ending in `.sh` or without a dot
    /// are made executable.
    pub fn code(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = self.dir.path().join("code").join(name);
        write_code(&dir, files);
        dir
    }

    pub async fn run(
        &self,
        function: &Function,
        code: &Path,
        payload: serde_json::Value,
    ) -> Execution {
        self.executor.execute(job(function, code, payload)).await
    }

    /// Polls `check` every 10 ms until it holds or `within` passes.
    pub async fn eventually(&self, within: Duration, mut check: impl FnMut() -> bool) -> bool {
        let until = Instant::now() + within;
        loop {
            if check() {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

pub fn write_code(dir: &Path, files: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, contents) in files {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, contents).unwrap();
        let file_name = path.file_name().unwrap().to_string_lossy().into_owned();
        if file_name.ends_with(".sh") || !file_name.contains('.') {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
}

pub fn function(name: &str, runtime: Runtime, handler: &str) -> Function {
    Function {
        image: None,
        id: FunctionId::new(),
        namespace: Namespace::default(),
        name: FunctionName::parse(name).unwrap(),
        version: 1,
        runtime,
        handler: handler.into(),
        code: CodeInfo {
            checksum: Checksum::of(name.as_bytes()),
            size: 0,
            source_type: "inline".into(),
        },
        config: FunctionConfig::default(),
        metadata: Default::default(),
        created_at: chrono::Utc::now(),
        updated_at: chrono::Utc::now(),
    }
}

pub fn job(function: &Function, code: &Path, payload: serde_json::Value) -> Job {
    Job {
        invocation_id: InvocationId::new(),
        function: function.clone(),
        code_dir: code.to_path_buf(),
        payload,
        trace_id: None,
        secrets: None,
        registry_auth: None,
    }
}

/// A keyring as gateways and nodes share it.
pub fn keyring() -> Arc<Keyring> {
    Arc::new(Keyring::new("test-key", &[7; 32]).unwrap())
}

/// `pairs` sealed as a gateway seals them for invocations of `function`.
pub fn sealed_secrets(
    keyring: &Keyring,
    function: &Function,
    pairs: &[(&str, &str)],
) -> SealedSecrets {
    let stored = pairs
        .iter()
        .map(|(name, value)| {
            let name = SecretName::parse(name).unwrap();
            let value = keyring
                .seal_secret(&function.namespace, &function.name, &name, value)
                .unwrap();
            SealedSecret { name, value }
        })
        .collect();
    keyring
        .seal_for_invocation(function, &SealedSecrets(stored))
        .unwrap()
}

/// Every file under `dir`, recursively (symlinks are not followed).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => out.extend(files_under(&path)),
            Ok(meta) if meta.is_file() => out.push(path),
            _ => {}
        }
    }
    out
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// A python handler with a module-level counter: returns `{"count": n, "event": event}`.
pub const COUNTER_PY: &str = "\
count = 0

def handle(event, context):
    global count
    count += 1
    return {\"count\": count, \"event\": event}
";

/// A python handler that sleeps `event["sleep"]` seconds, then returns `event`.
pub const SLEEPY_PY: &str = "\
import time

def handle(event, context):
    time.sleep(event.get(\"sleep\", 0))
    return event
";
