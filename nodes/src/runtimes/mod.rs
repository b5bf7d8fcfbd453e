//! Language runtimes: how a sandbox's process is built for a function.
//!
//! A [`RuntimeRegistry`] maps a runtime name (`python3`, `nodejs`, `exec`; later OCI images) to
//! a [`RuntimeAdapter`] that turns a function into the argv, environment and working directory
//! of the sandbox's process. The pool never looks at runtimes itself, so a new one plugs in here.
//!
//! Every built-in runtime is a small bootstrap, embedded in the binary and written to
//! `<work_dir>/runtime` at startup ([`install_bootstraps`]), mounted read-only at
//! [`RUNTIME_DIR`]. It takes the function's secrets from the node's first frame, loads the
//! handler once and serves invocations one at a time over the framed protocol of [`protocol`].
//! The function's code is mounted read-only at [`TASK_DIR`].

pub mod image;
pub mod imageboot;
pub mod protocol;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use fnmesh_core::function::ConfigError;
use fnmesh_core::secrets::SecretEnv;
use fnmesh_core::Function;

/// Where the function's code is inside a sandbox.
pub const TASK_DIR: &str = "/var/task";
/// Where the bootstraps are inside a sandbox.
pub const RUNTIME_DIR: &str = "/var/runtime";
/// The host's Python inside a sandbox (`/usr` is the host's).
pub const PYTHON: &str = "/usr/bin/python3";
/// The host's Node.js inside a sandbox.
pub const NODE: &str = "/usr/bin/node";

/// The bootstraps: file name in [`RUNTIME_DIR`] and contents.
pub const BOOTSTRAPS: &[(&str, &str)] = &[
    ("python_bootstrap.py", include_str!("python_bootstrap.py")),
    ("node_bootstrap.js", include_str!("node_bootstrap.js")),
    ("exec_bootstrap.py", include_str!("exec_bootstrap.py")),
];

/// Environment every sandbox gets (the function's own variables may override these).
const BASE_ENV: &[(&str, &str)] = &[
    ("PATH", "/usr/local/bin:/usr/bin:/bin"),
    ("HOME", "/tmp"),
    ("LANG", "C.UTF-8"),
    ("PYTHONDONTWRITEBYTECODE", "1"),
];

/// Why a function cannot be turned into a sandbox process.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No adapter for the function's runtime on this node.
    #[error("runtime {0:?} is not available on this node")]
    Unknown(String),
    /// The handler does not fit the runtime.
    #[error(transparent)]
    Handler(#[from] ConfigError),
}

/// The process of a sandbox, as `config.json` wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    /// argv, absolute path first.
    pub args: Vec<String>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    /// Working directory inside the sandbox.
    pub cwd: String,
}

/// One runtime: builds the sandbox process of a function.
pub trait RuntimeAdapter: Send + Sync + 'static {
    /// The runtime's wire name (`Function::runtime`).
    fn name(&self) -> &'static str;

    /// The process that serves `function`'s invocations over the framed protocol.
    fn process(&self, function: &Function) -> Result<ProcessSpec, RuntimeError>;
}

/// Runtime name → adapter.
#[derive(Clone)]
pub struct RuntimeRegistry {
    adapters: HashMap<&'static str, Arc<dyn RuntimeAdapter>>,
}

impl std::fmt::Debug for RuntimeRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.adapters.keys().collect();
        names.sort();
        f.debug_struct("RuntimeRegistry")
            .field("runtimes", &names)
            .finish()
    }
}

impl RuntimeRegistry {
    /// An empty registry.
    pub fn empty() -> Self {
        Self {
            adapters: HashMap::new(),
        }
    }

    /// `python3`, `nodejs` and `exec`.
    pub fn builtin() -> Self {
        let mut registry = Self::empty();
        registry.register(Arc::new(Python3));
        registry.register(Arc::new(Nodejs));
        registry.register(Arc::new(Exec));
        registry
    }

    /// Adds (or replaces) the adapter for `adapter.name()`.
    pub fn register(&mut self, adapter: Arc<dyn RuntimeAdapter>) {
        self.adapters.insert(adapter.name(), adapter);
    }

    /// The adapter of a runtime name.
    pub fn get(&self, name: &str) -> Result<&Arc<dyn RuntimeAdapter>, RuntimeError> {
        self.adapters
            .get(name)
            .ok_or_else(|| RuntimeError::Unknown(name.chars().take(40).collect()))
    }

    /// The runtime names this registry serves, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.adapters.keys().copied().collect();
        names.sort_unstable();
        names
    }

    /// The sandbox process of `function`.
    pub fn process(&self, function: &Function) -> Result<ProcessSpec, RuntimeError> {
        self.get(function.runtime.as_str())?.process(function)
    }
}

impl Default for RuntimeRegistry {
    fn default() -> Self {
        Self::builtin()
    }
}

/// The environment of `function`'s sandbox: [`BASE_ENV`], then the function's own variables,
/// then `FUNCTION_NAME`, `FUNCTION_VERSION`, `FUNCTION_MEMORY_MB`. Nothing of the node's own
/// environment, and never a `FNMESH_*` name (refused by validation, dropped here again).
pub fn sandbox_env(function: &Function) -> Vec<String> {
    let mut env: BTreeMap<&str, String> = BASE_ENV
        .iter()
        .map(|(k, v)| (*k, (*v).to_owned()))
        .collect();
    for (key, value) in &function.config.environment {
        let reserved =
            key.to_ascii_uppercase().starts_with("FNMESH_") || key.starts_with("FUNCTION_");
        let malformed = key.is_empty() || key.contains(['=', '\0']) || value.contains('\0');
        if !reserved && !malformed {
            env.insert(key, value.clone());
        }
    }
    env.insert("FUNCTION_NAME", function.name.as_str().to_owned());
    env.insert("FUNCTION_VERSION", function.version.to_string());
    env.insert("FUNCTION_MEMORY_MB", function.config.memory_mb.to_string());
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// `env` without the variables the function's secrets replace: what goes into `config.json`.
///
/// The secrets themselves never do: the node sends them to the bootstrap in the protocol's
/// first frame ([`protocol::Init`]), and the bootstrap sets them in the function's environment
/// before loading its code, so a secret still wins over a variable of the same name. Secret
/// names are validated (`[A-Z_][A-Z0-9_]*`, never `FNMESH_*` or `FUNCTION_*`), so they cannot
/// shadow the runtime's own variables.
pub fn without_secret_names(env: Vec<String>, secrets: &SecretEnv) -> Vec<String> {
    if secrets.is_empty() {
        return env;
    }
    env.into_iter()
        .filter(|entry| {
            let name = entry.split_once('=').map_or(entry.as_str(), |(k, _)| k);
            !secrets.iter().any(|(k, _)| k == name)
        })
        .collect()
}

fn runtime_file(name: &str) -> String {
    format!("{RUNTIME_DIR}/{name}")
}

/// `python3 -I -u <bootstrap> /var/task <handler>`: how both python-hosted bootstraps start.
fn python_bootstrap_process(
    function: &Function,
    bootstrap: &str,
) -> Result<ProcessSpec, RuntimeError> {
    function.runtime.handler_file(&function.handler)?;
    Ok(ProcessSpec {
        args: vec![
            PYTHON.to_owned(),
            "-I".to_owned(),
            "-u".to_owned(),
            runtime_file(bootstrap),
            TASK_DIR.to_owned(),
            function.handler.clone(),
        ],
        env: sandbox_env(function),
        cwd: TASK_DIR.to_owned(),
    })
}

/// `python3`: `handle(event, context)` of a module, served by `python_bootstrap.py`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Python3;

impl RuntimeAdapter for Python3 {
    fn name(&self) -> &'static str {
        "python3"
    }

    fn process(&self, function: &Function) -> Result<ProcessSpec, RuntimeError> {
        python_bootstrap_process(function, "python_bootstrap.py")
    }
}

/// `nodejs`: an export of a CommonJS module, sync or async, served by `node_bootstrap.js`.
///
/// Node cannot `dup` descriptors, so a `/bin/sh` wrapper moves the protocol to fds 3 and 4
/// before exec'ing node.
#[derive(Debug, Clone, Copy, Default)]
pub struct Nodejs;

/// The wrapper script of [`Nodejs`]: protocol on fds 3/4, fd 0 from /dev/null, fd 1 to logs.
pub const NODE_WRAPPER: &str = "exec 3<&0 4>&1 </dev/null 1>&2; exec \"$@\"";

impl RuntimeAdapter for Nodejs {
    fn name(&self) -> &'static str {
        "nodejs"
    }

    fn process(&self, function: &Function) -> Result<ProcessSpec, RuntimeError> {
        function.runtime.handler_file(&function.handler)?;
        Ok(ProcessSpec {
            args: vec![
                "/bin/sh".to_owned(),
                "-c".to_owned(),
                NODE_WRAPPER.to_owned(),
                "sh".to_owned(),
                NODE.to_owned(),
                runtime_file("node_bootstrap.js"),
                TASK_DIR.to_owned(),
                function.handler.clone(),
            ],
            env: sandbox_env(function),
            cwd: TASK_DIR.to_owned(),
        })
    }
}

/// `exec`: one process of an executable per invocation, spawned by the warm `exec_bootstrap.py`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Exec;

impl RuntimeAdapter for Exec {
    fn name(&self) -> &'static str {
        "exec"
    }

    fn process(&self, function: &Function) -> Result<ProcessSpec, RuntimeError> {
        python_bootstrap_process(function, "exec_bootstrap.py")
    }
}

/// Writes the [`BOOTSTRAPS`] into `dir` (created `0755`, files `0644`), replacing stale copies
/// atomically and leaving identical ones untouched.
pub fn install_bootstraps(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    for (name, contents) in BOOTSTRAPS {
        let path = dir.join(name);
        if fs::read(&path).is_ok_and(|current| current == contents.as_bytes()) {
            continue;
        }
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(contents.as_bytes())?;
            file.set_permissions(fs::Permissions::from_mode(0o644))?;
        }
        fs::rename(&tmp, &path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use fnmesh_core::{
        Checksum, CodeInfo, FunctionConfig, FunctionId, FunctionName, Namespace, Runtime,
    };

    fn function(runtime: Runtime, handler: &str) -> Function {
        let mut config = FunctionConfig::default();
        config.environment.insert("GREETING".into(), "hi".into());
        config.environment.insert("PATH".into(), "/custom".into());
        config
            .environment
            .insert("FNMESH_SECRET".into(), "x".into());
        config
            .environment
            .insert("FUNCTION_NAME".into(), "spoof".into());
        Function {
            image: None,
            id: FunctionId::new(),
            namespace: Namespace::default(),
            name: FunctionName::parse("hello").unwrap(),
            version: 2,
            runtime,
            handler: handler.into(),
            code: CodeInfo {
                checksum: Checksum::of(b""),
                size: 0,
                source_type: "inline".into(),
            },
            config,
            metadata: Default::default(),
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn env_holds_only_runtime_and_function_variables() {
        let env = sandbox_env(&function(Runtime::Python3, "main.handle"));
        assert_eq!(
            env,
            vec![
                "FUNCTION_MEMORY_MB=128",
                "FUNCTION_NAME=hello",
                "FUNCTION_VERSION=2",
                "GREETING=hi",
                "HOME=/tmp",
                "LANG=C.UTF-8",
                "PATH=/custom",
                "PYTHONDONTWRITEBYTECODE=1",
            ]
        );
    }

    #[test]
    fn secrets_leave_the_bundle_env_and_drop_the_variables_they_replace() {
        let name = |s: &str| fnmesh_core::secrets::SecretName::parse(s).unwrap();
        let secrets = SecretEnv::from_pairs(
            [
                (name("GREETING"), "secret hi".to_owned()),
                (name("DB_PASSWORD"), "pw".to_owned()),
            ],
            Some("digest".to_owned()),
        );
        let env = without_secret_names(
            sandbox_env(&function(Runtime::Python3, "main.handle")),
            &secrets,
        );
        assert!(
            !env.iter()
                .any(|e| e.starts_with("GREETING=") || e.starts_with("DB_PASSWORD=")),
            "{env:?}"
        );
        assert!(!env
            .iter()
            .any(|e| e.contains("pw") || e.contains("secret hi")));
        assert!(env.contains(&"FUNCTION_NAME=hello".to_owned()), "{env:?}");
        assert!(env.contains(&"LANG=C.UTF-8".to_owned()), "{env:?}");
        let plain = sandbox_env(&function(Runtime::Python3, "main.handle"));
        assert_eq!(
            without_secret_names(plain.clone(), &SecretEnv::default()),
            plain
        );
    }

    #[test]
    fn builtin_runtimes_build_processes() {
        let registry = RuntimeRegistry::builtin();
        let p = registry
            .process(&function(Runtime::Python3, "main.handle"))
            .unwrap();
        assert_eq!(p.args[0], "/usr/bin/python3");
        assert!(p
            .args
            .contains(&"/var/runtime/python_bootstrap.py".to_owned()));
        assert_eq!(p.cwd, "/var/task");
        let n = registry
            .process(&function(Runtime::Nodejs, "index.handler"))
            .unwrap();
        assert_eq!(n.args[0], "/bin/sh");
        assert!(n
            .args
            .contains(&"/var/runtime/node_bootstrap.js".to_owned()));
        assert!(registry
            .process(&function(Runtime::Exec, "../escape"))
            .is_err());
        assert!(RuntimeRegistry::empty()
            .process(&function(Runtime::Exec, "run"))
            .is_err());
    }

    #[test]
    fn bootstraps_install_idempotently() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("runtime");
        install_bootstraps(&target).unwrap();
        install_bootstraps(&target).unwrap();
        for (name, contents) in BOOTSTRAPS {
            assert_eq!(fs::read_to_string(target.join(name)).unwrap(), *contents);
        }
    }
}
