//! The executor: runs one invocation on a warm or new sandbox and reports how it went.
//!
//! [`Executor::new`] claims blocks of host ids for its sandboxes (see `sandbox::users`), writes
//! the runtime bootstraps to `<work_dir>/runtime`, ensures the shared rootfs skeleton at
//! `<work_dir>/rootfs`, clears stale bundles under `<work_dir>/bundles` (a `0700` directory)
//! and starts the reaper. [`Executor::execute`] checks a sandbox out of the [`Pool`] (a warm
//! one, or capacity for a new one which it launches with a block of ids of its own, held until
//! it is destroyed), sends the invocation and gives the sandbox back (or destroys it when it
//! was killed).
//!
//! Every invocation has one deadline, `timeout_ms` after `execute` was called: waiting for a
//! sandbox, creating it and loading the handler count against it, and it is the `deadline_ms`
//! the handler sees in its context. `execute` never fails: infrastructure problems become a
//! `failed` [`Execution`] with kind `crashed`.
//!
//! The [`Execution`] is made by the [`Instance`] (or by a launch that failed) and completed
//! here with `cold_start` and `init_us` (measured around the launch); the worker turns it into
//! the record with `InvocationOutcome::finished`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fnmesh_core::invocation::DEFAULT_LOG_CAP_BYTES;
use fnmesh_core::secrets::{Keyring, SealedSecrets, SealedValue, SecretEnv};
use fnmesh_core::{
    ErrorKind, Execution, Function, InvocationError, InvocationId, InvocationStatus,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::code_cache::CodePins;
use crate::instance::{Instance, LaunchPlan};
use crate::pool::{Checkout, CheckoutError, KeyLimits, Pool, PoolKey, PoolLimits};
use crate::runtimes::image::{self, ImageBootstrap};
use crate::runtimes::ProcessSpec;
use crate::runtimes::{self, protocol, RuntimeRegistry};
use crate::sandbox::rootfs;
use crate::sandbox::spec::{self, BundleRequest, DiskThrottle, RootKind};
use crate::sandbox::users::{self, IdAllocator, IdClaim, IdMode, UsersError};
use crate::sandbox::{ContainerRuntime, SandboxError};
use fnmesh_image::cache::Lease as ImageLease;

pub use crate::pool::PoolStats;

/// Settings of the executor.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// Rootfs skeleton, runtime bootstraps and bundles live under here.
    pub work_dir: PathBuf,
    /// This node's id (names sandboxes).
    pub node_id: String,
    /// Node-wide cap on live sandboxes.
    pub max_sandboxes: usize,
    /// Node-wide cap on the sum of live sandboxes' `memory_mb`.
    pub max_memory_mb: u64,
    /// Idle sandboxes are reaped after this.
    pub keep_alive: Duration,
    /// Max processes/threads per sandbox.
    pub pids_limit: u32,
    /// CPU quota per sandbox in millicores.
    pub cpu_millis: u32,
    /// Size of each sandbox's `/tmp`.
    pub tmp_mb: u32,
    /// Cap on captured logs per invocation.
    pub log_cap_bytes: usize,
    /// Cap on a result's JSON: a longer one is `invalid_result`, and a response frame longer
    /// than this plus [`protocol::RESPONSE_OVERHEAD_BYTES`] is never read (see
    /// [`protocol::result_cap`] for fitting it under NATS's `max_payload`).
    pub max_result_bytes: usize,
    /// First host id the sandboxes' ids are claimed from: `2 * max_sandboxes` blocks of 65536
    /// ids (sandboxes being destroyed still hold theirs), skipping blocks of host accounts,
    /// `/etc/sub[ug]id` ranges and other executors (see `sandbox::users`).
    pub id_base: u32,
    /// Host-wide lock directory of id claims (`None`: this executor does not coordinate with
    /// others on the host). Defaults to `/run/fnmesh/sandbox-ids` when running as root.
    pub id_lock_dir: Option<PathBuf>,
    /// Whether sandboxes get a user namespace over their ids or run as a host uid directly.
    pub id_mode: IdMode,
    /// Parent cgroup of the sandboxes, e.g. `/fnmesh/<node id>`.
    pub cgroup_parent: String,
    /// Opens the secrets invocations carry (`None`: an invocation with secrets fails).
    pub secrets_keyring: Option<Arc<Keyring>>,
    /// Holds the code each sandbox mounts in the node's code cache while the sandbox lives
    /// (`None`: code dirs are not the cache's).
    pub code_pins: Option<CodePins>,
    /// Image functions' cache and bootstrap (`None`: an image function fails to start).
    pub images: Option<crate::runtimes::image::ImageSupport>,
}

/// 75% of the host's RAM in MiB (4 GiB when unknown).
fn default_max_memory_mb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(4096, |kb| kb / 1024 * 3 / 4)
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        let node_id = "node".to_owned();
        Self {
            work_dir: PathBuf::from("/var/lib/fnmesh/node"),
            cgroup_parent: format!("/fnmesh/{node_id}"),
            node_id,
            max_sandboxes: 64,
            max_memory_mb: default_max_memory_mb(),
            keep_alive: Duration::from_secs(300),
            pids_limit: 64,
            cpu_millis: 1000,
            tmp_mb: 64,
            log_cap_bytes: DEFAULT_LOG_CAP_BYTES,
            max_result_bytes: protocol::DEFAULT_MAX_RESULT_BYTES,
            id_base: users::DEFAULT_BASE,
            id_lock_dir: nix::unistd::geteuid()
                .is_root()
                .then(|| PathBuf::from(users::DEFAULT_LOCK_DIR)),
            id_mode: IdMode::Auto,
            secrets_keyring: None,
            code_pins: None,
            images: None,
        }
    }
}

/// Why the executor could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// A directory under the work dir could not be prepared.
    #[error("preparing {path}: {source}")]
    WorkDir {
        /// The directory.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The rootfs skeleton could not be built.
    #[error("preparing the rootfs: {0}")]
    Rootfs(#[from] SandboxError),
    /// A setting is unusable.
    #[error("invalid executor config: {0}")]
    Config(String),
    /// No blocks of host ids could be claimed for the sandboxes.
    #[error("sandbox ids: {0}")]
    Ids(#[from] UsersError),
}

/// One invocation to run.
#[derive(Debug, Clone)]
pub struct Job {
    /// Its id.
    pub invocation_id: InvocationId,
    /// The function version to run.
    pub function: Function,
    /// The function's unpacked code on the host.
    pub code_dir: PathBuf,
    /// The event.
    pub payload: serde_json::Value,
    /// W3C trace id, when traced.
    pub trace_id: Option<String>,
    /// The function's secrets, sealed as the invocation carried them; opened with
    /// [`ExecutorConfig::secrets_keyring`] into the environment of the sandbox only.
    pub secrets: Option<SealedSecrets>,
    /// The namespace's credential for the function's image registry, sealed as the invocation
    /// carried it; opened into the image support's credential book for pulls.
    pub registry_auth: Option<SealedValue>,
}

/// A `Failed`/`crashed` (or `Timeout`) execution that never reached a sandbox.
fn failed(status: InvocationStatus, kind: ErrorKind, message: String) -> Execution {
    Execution::failed(status, InvocationError { kind, message })
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Runs invocations in pooled sandboxes. See the module docs.
pub struct Executor {
    inner: Arc<Inner>,
    reaper: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("node_id", &self.inner.config.node_id)
            .field("pool", &self.inner.pool)
            .finish()
    }
}

struct Inner {
    config: ExecutorConfig,
    runtime: Arc<dyn ContainerRuntime>,
    registry: RuntimeRegistry,
    pool: Arc<Pool>,
    rootfs: PathBuf,
    runtime_dir: PathBuf,
    bundles_dir: PathBuf,
    /// The disk holding the work dir (rootfs, bundles; the code cache sits beside it), for
    /// `disk_io_bps` throttles; `None` when it is not a block device.
    disk: Option<(u64, u64)>,
    /// Where the image bootstrap is installed, on the first image function.
    image_boot_dir: PathBuf,
    image_boot: tokio::sync::OnceCell<Result<ImageBootstrap, String>>,
    /// The sandboxes' host ids.
    ids: Arc<IdAllocator>,
    /// Whether the kernel allows user namespaces and the rootfs and bootstraps are reachable
    /// from one (`IdMode::Auto` then also needs the code dir to be).
    userns_possible: bool,
    id_prefix: String,
    counter: AtomicU64,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

fn work_dir_error(path: &Path) -> impl FnOnce(std::io::Error) -> ExecError + '_ {
    move |source| ExecError::WorkDir {
        path: path.to_path_buf(),
        source,
    }
}

/// The node id reduced to a short `[a-z0-9]+` sandbox id prefix.
fn id_prefix(node_id: &str) -> String {
    let prefix: String = node_id
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        .take(12)
        .collect();
    if prefix.is_empty() {
        "node".to_owned()
    } else {
        prefix
    }
}

fn unix_ms_at(deadline: Instant) -> u64 {
    let now_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let remaining = deadline.saturating_duration_since(Instant::now());
    u64::try_from((now_unix + remaining).as_millis()).unwrap_or(u64::MAX)
}

/// Sandboxes of one function version, its code and one set of secrets: a sandbox started with
/// other code or other secrets (or none) is never reused.
fn key_of(function: &Function, secrets: &SecretEnv) -> PoolKey {
    PoolKey {
        namespace: function.namespace.clone(),
        function_id: function.id,
        version: function.version,
        checksum: function.code.checksum.clone(),
        secrets_digest: secrets.digest().map(str::to_owned),
    }
}

fn limits_of(function: &Function) -> KeyLimits {
    KeyLimits {
        max_concurrency: function.config.max_concurrency,
        min_warm: function.config.min_warm,
        memory_mb: function.config.memory_mb,
    }
}

impl Executor {
    /// Prepares the work dir (bootstraps, rootfs skeleton, bundles) and starts the reaper.
    pub async fn new(
        config: ExecutorConfig,
        runtime: Arc<dyn ContainerRuntime>,
    ) -> Result<Arc<Self>, ExecError> {
        if config.max_sandboxes == 0 || config.max_memory_mb == 0 {
            return Err(ExecError::Config(
                "max_sandboxes and max_memory_mb must be positive".to_owned(),
            ));
        }
        if config.keep_alive.is_zero() {
            return Err(ExecError::Config("keep_alive must be positive".to_owned()));
        }
        if config.max_result_bytes == 0 || config.max_result_bytes > protocol::MAX_FRAME_BYTES {
            return Err(ExecError::Config(format!(
                "max_result_bytes must be between 1 and {}",
                protocol::MAX_FRAME_BYTES
            )));
        }
        let slots = u32::try_from(config.max_sandboxes)
            .ok()
            .and_then(|n| n.checked_mul(2))
            .ok_or_else(|| ExecError::Config("max_sandboxes is too large".to_owned()))?;
        let claim = IdClaim {
            base: config.id_base,
            slots,
            lock_dir: config.id_lock_dir.clone(),
            etc_dir: PathBuf::from("/etc"),
        };
        let ids = tokio::task::spawn_blocking(move || IdAllocator::claim(&claim))
            .await
            .map_err(|e| ExecError::Config(format!("claiming sandbox ids panicked: {e}")))??;
        let (ids_from, ids_to) = ids.span();
        let work_dir = if config.work_dir.is_absolute() {
            config.work_dir.clone()
        } else {
            std::env::current_dir()
                .map_err(work_dir_error(&config.work_dir))?
                .join(&config.work_dir)
        };
        let runtime_dir = work_dir.join("runtime");
        let bundles_dir = work_dir.join("bundles");
        let rootfs_dir = work_dir.join("rootfs");
        let prepared = {
            let (runtime_dir, bundles_dir) = (runtime_dir.clone(), bundles_dir.clone());
            tokio::task::spawn_blocking(move || -> Result<PathBuf, ExecError> {
                runtimes::install_bootstraps(&runtime_dir).map_err(work_dir_error(&runtime_dir))?;
                // Bundles of a previous run are stale: their sandboxes died with it.
                match std::fs::remove_dir_all(&bundles_dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(work_dir_error(&bundles_dir)(e)),
                }
                {
                    use std::os::unix::fs::DirBuilderExt as _;
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(crate::sandbox::spec::BUNDLE_DIR_MODE)
                        .create(&bundles_dir)
                        .map_err(work_dir_error(&bundles_dir))?;
                }
                Ok(rootfs::ensure_rootfs(&rootfs_dir)?)
            })
            .await
            .map_err(|e| ExecError::Config(format!("preparing the work dir panicked: {e}")))??
        };

        let userns_possible = {
            let (rootfs, runtime_dir) = (prepared.clone(), runtime_dir.clone());
            tokio::task::spawn_blocking(move || {
                users::kernel_allows_userns()
                    && users::reachable_by_others(&rootfs)
                    && users::reachable_by_others(&runtime_dir)
            })
            .await
            .unwrap_or(false)
        };
        match (config.id_mode, userns_possible) {
            (IdMode::UserNamespace, false) => tracing::warn!(
                work_dir = %work_dir.display(),
                "user namespaces are required but the kernel refuses them or the work dir is \
                 not searchable by others: sandboxes will fail to start"
            ),
            (IdMode::Auto, false) => tracing::info!(
                work_dir = %work_dir.display(),
                "no user namespaces for sandboxes (kernel or work dir permissions): each runs \
                 as its own host uid directly"
            ),
            _ => {}
        }
        let pool = Pool::new(PoolLimits {
            max_sandboxes: config.max_sandboxes,
            max_memory_mb: config.max_memory_mb,
            keep_alive: config.keep_alive,
        });
        let inner = Arc::new(Inner {
            id_prefix: id_prefix(&config.node_id),
            config,
            runtime,
            registry: RuntimeRegistry::builtin(),
            pool,
            rootfs: prepared,
            runtime_dir,
            bundles_dir,
            disk: spec::block_device_of(&work_dir),
            image_boot_dir: work_dir.join("image-runtime"),
            image_boot: tokio::sync::OnceCell::new(),
            ids,
            userns_possible,
            counter: AtomicU64::new(0),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        let reaper = tokio::spawn(reap_loop(Arc::clone(&inner)));
        tracing::info!(
            node.id = %inner.config.node_id,
            max_sandboxes = inner.config.max_sandboxes,
            sandbox.ids_from = ids_from,
            sandbox.ids_to = ids_to,
            sandbox.userns = inner.userns_possible,
            max_memory_mb = inner.config.max_memory_mb,
            keep_alive_ms = u64::try_from(inner.config.keep_alive.as_millis()).unwrap_or(u64::MAX),
            "executor started"
        );
        Ok(Arc::new(Self {
            inner,
            reaper: std::sync::Mutex::new(Some(reaper)),
        }))
    }

    /// Runs one invocation. Never panics; infrastructure failures are `Failed`/`crashed`.
    pub async fn execute(&self, job: Job) -> Execution {
        self.execute_cancellable(job, &CancellationToken::new())
            .await
    }

    /// [`Executor::execute`], killing the sandbox if `cancel` fires while the handler runs
    /// (the execution is then `cancelled`).
    pub async fn execute_cancellable(&self, job: Job, cancel: &CancellationToken) -> Execution {
        let started = Instant::now();
        // Bounded even for a config that skipped validation: a huge `timeout_ms` cannot
        // overflow the clock.
        let timeout_ms = job
            .function
            .config
            .timeout_ms
            .min(fnmesh_core::function::MAX_TIMEOUT_MS);
        let deadline = started + Duration::from_millis(timeout_ms);
        let execution = self.inner.run(&job, deadline, cancel).await;
        tracing::debug!(
            invocation.id = %job.invocation_id,
            function.name = %job.function.name,
            function.version = job.function.version,
            status = execution.status.as_str(),
            cold_start = execution.cold_start,
            init_us = execution.init_us,
            exec_us = execution.exec_us,
            total_us = micros(started.elapsed()),
            "invocation finished"
        );
        execution
    }

    /// Counters of the pool.
    pub fn stats(&self) -> PoolStats {
        self.inner.pool.stats()
    }

    /// Tops `function` up to its `min_warm` idle sandboxes, in the background, using only free
    /// capacity (it never evicts or waits).
    pub async fn prewarm(&self, function: &Function, code_dir: &Path) {
        self.prewarm_with_secrets(function, code_dir, None).await;
    }

    /// [`Executor::prewarm`] for the sandboxes of `function` with these `secrets` (the ones
    /// its invocations carry).
    pub async fn prewarm_with_secrets(
        &self,
        function: &Function,
        code_dir: &Path,
        secrets: Option<&SealedSecrets>,
    ) {
        if function.config.min_warm == 0 || self.inner.cancel.is_cancelled() {
            return;
        }
        let secrets = match self.inner.open_secrets(function, secrets) {
            Ok(secrets) => secrets,
            Err(message) => {
                tracing::warn!(function.name = %function.name, error.message = %message, "prewarming skipped");
                return;
            }
        };
        let inner = Arc::clone(&self.inner);
        let function = function.clone();
        let code_dir = code_dir.to_path_buf();
        // Held from here, before the caller lets its own hold go, until prewarming ends.
        let code_pin = inner
            .config
            .code_pins
            .as_ref()
            .map(|pins| pins.pin(&code_dir));
        self.inner.tasks.spawn(async move {
            let _code_pin = code_pin;
            let key = key_of(&function, &secrets);
            let limits = limits_of(&function);
            while let Some(reservation) = inner.pool.reserve_prewarm(&key, limits) {
                let budget = Duration::from_millis(function.config.timeout_ms.min(fnmesh_core::function::MAX_TIMEOUT_MS)).max(Duration::from_secs(30));
                let launching = Instant::now();
                let launch = inner.launch(&function, &code_dir, &secrets, launching + budget);
                let launched = tokio::select! {
                    () = inner.cancel.cancelled() => return,
                    launched = launch => launched,
                };
                match launched {
                    Ok((instance, _)) => {
                        tracing::debug!(function.name = %function.name, function.version = function.version, init_us = micros(launching.elapsed()), "prewarmed a sandbox");
                        reservation.fill(instance).release().await;
                    }
                    Err(failure) => {
                        let error = failure.error.unwrap_or(InvocationError {
                            kind: ErrorKind::Crashed,
                            message: String::new(),
                        });
                        tracing::warn!(
                            function.name = %function.name,
                            function.version = function.version,
                            error.kind = error.kind.as_str(),
                            error.message = %error.message,
                            "prewarming failed"
                        );
                        return;
                    }
                }
            }
        });
    }

    /// Stops the reaper and prewarming, waits up to `deadline` for busy sandboxes, then destroys
    /// every sandbox.
    pub async fn shutdown(&self, deadline: Duration) {
        let until = Instant::now() + deadline;
        self.inner.cancel.cancel();
        self.inner.tasks.close();
        let reaper = self
            .reaper
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .take();
        if let Some(reaper) = reaper {
            let _ = reaper.await;
        }
        let idle = self.inner.pool.begin_shutdown();
        futures::future::join_all(idle.into_iter().map(|i| i.destroy())).await;
        let _ = tokio::time::timeout_at(until, self.inner.tasks.wait()).await;
        let leftover = self.inner.pool.wait_idle(until).await;
        for id in &leftover {
            if let Err(e) = self.inner.runtime.destroy(id).await {
                tracing::warn!(sandbox.id = %id, error = %e, "destroying a busy sandbox at shutdown failed");
            }
        }
        tracing::info!(killed_busy = leftover.len(), "executor stopped");
    }
}

async fn reap_loop(inner: Arc<Inner>) {
    let period =
        (inner.config.keep_alive / 4).clamp(Duration::from_millis(10), Duration::from_secs(10));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = inner.cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let expired = inner.pool.reap(Instant::now());
        if !expired.is_empty() {
            tracing::debug!(reaped = expired.len(), "reaping idle sandboxes");
            futures::future::join_all(expired.into_iter().map(|i| i.destroy())).await;
        }
    }
}

impl Inner {
    /// The block I/O throttle of `function`'s sandboxes, if it sets one; a node whose work
    /// dir is on no block device cannot throttle it (logged).
    fn disk_throttle(&self, function: &Function) -> Option<DiskThrottle> {
        let rate = function.config.disk_io_bps?;
        match self.disk {
            Some((major, minor)) => Some(DiskThrottle { major, minor, rate }),
            None => {
                tracing::warn!(function.name = %function.name, "disk_io_bps is set but this node's work dir is on no block device: not throttled");
                None
            }
        }
    }

    fn next_sandbox_id(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}-{:04x}", self.id_prefix, rand::random::<u16>())
    }

    /// The secrets of an invocation of `function`, opened (empty when it carries none).
    fn open_secrets(
        &self,
        function: &Function,
        sealed: Option<&SealedSecrets>,
    ) -> Result<SecretEnv, String> {
        let Some(sealed) = sealed.filter(|s| !s.is_empty()) else {
            return Ok(SecretEnv::default());
        };
        let Some(keyring) = self.config.secrets_keyring.as_deref() else {
            return Err(
                "the function has secrets but this node has no secrets keyring \
                         (FNMESH_SECRETS_KEY)"
                    .to_owned(),
            );
        };
        keyring
            .open_invocation_secrets(function, sealed)
            .map_err(|e| format!("opening the function's secrets: {e}"))
    }

    /// Records what an invocation of an image function says of its namespace's credential
    /// for the image's registry (opened, or none) in the image support's book.
    fn note_registry_auth(
        &self,
        function: &Function,
        sealed: Option<&SealedValue>,
    ) -> Result<(), String> {
        let Some(support) = self.config.images.as_ref() else {
            return Ok(());
        };
        let Some((_, host)) = image::registry_of(function) else {
            return Ok(());
        };
        let credentials = match sealed {
            None => None,
            Some(sealed) => {
                let keyring = self.config.secrets_keyring.as_deref().ok_or(
                    "the invocation carries a registry credential but this node has no \
                     secrets keyring (FNMESH_SECRETS_KEY)",
                )?;
                let opened = keyring
                    .open_invocation_registry(function, &host, sealed)
                    .map_err(|e| format!("opening the registry credential for {host}: {e}"))?;
                Some(fnmesh_image::registry::Credentials {
                    username: opened.username,
                    password: opened.password,
                })
            }
        };
        support
            .credentials
            .set(&function.namespace, &host, credentials);
        Ok(())
    }

    async fn launch(
        &self,
        function: &Function,
        code_dir: &Path,
        secrets: &SecretEnv,
        deadline: Instant,
    ) -> Result<(Instance, ImagePhases), Execution> {
        let crashed =
            |message: String| failed(InvocationStatus::Failed, ErrorKind::Crashed, message);
        let code_dir = if code_dir.is_absolute() {
            code_dir.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|e| crashed(format!("resolving the code dir: {e}")))?
                .join(code_dir)
        };
        let mut phases = ImagePhases::default();
        let (process, root, rootfs, runtime_dir, image_lease) =
            if function.runtime == fnmesh_core::Runtime::Image {
                let image = self
                    .image_root(function, &code_dir)
                    .await
                    .map_err(crashed)?;
                phases = image.phases;
                (
                    image.process,
                    image.root,
                    image.tree,
                    image.boot_dir,
                    Some(image.lease),
                )
            } else {
                let process = self
                    .registry
                    .process(function)
                    .map_err(|e| crashed(e.to_string()))?;
                (
                    process,
                    RootKind::Skeleton,
                    self.rootfs.clone(),
                    self.runtime_dir.clone(),
                    None,
                )
            };
        let code_pin = self
            .config
            .code_pins
            .as_ref()
            .map(|pins| pins.pin(&code_dir));
        let Some(ids) = self.ids.allocate() else {
            return Err(crashed(format!(
                "every one of the {} sandbox id blocks is in use",
                self.ids.slots()
            )));
        };
        let userns = match self.config.id_mode {
            IdMode::UserNamespace => true,
            IdMode::HostIds => false,
            // What the sandbox mounts besides what `userns_possible` checked: the code, or an
            // image's tree and the image bootstrap (no code is mounted beside an image).
            IdMode::Auto => {
                self.userns_possible
                    && match root {
                        RootKind::Skeleton => users::reachable_by_others(&code_dir),
                        RootKind::Image { .. } => {
                            users::reachable_by_others(&rootfs)
                                && users::reachable_by_others(&runtime_dir)
                        }
                    }
            }
        };
        let id = self.next_sandbox_id();
        tracing::debug!(
            sandbox.id = %id,
            sandbox.host_uid = ids.user(userns).host_uid(),
            sandbox.userns = userns,
            "launching a sandbox"
        );
        let plan = LaunchPlan {
            bundle_dir: self.bundles_dir.join(&id),
            bundle: BundleRequest {
                sandbox_id: id.clone(),
                root,
                rootfs,
                code_dir,
                runtime_dir,
                args: process.args,
                env: runtimes::without_secret_names(process.env, secrets),
                cwd: process.cwd,
                memory_mb: function.config.memory_mb,
                pids_limit: self.config.pids_limit,
                cpu_millis: self.config.cpu_millis,
                cpu_shares: function.config.cpu_shares,
                disk_io: self.disk_throttle(function),
                tmp_mb: self.config.tmp_mb,
                cgroup_path: format!("{}/{id}", self.config.cgroup_parent.trim_end_matches('/')),
                user: ids.user(userns),
            },
            id,
            secrets: secrets.clone(),
            ids: Some(ids),
            log_cap_bytes: self.config.log_cap_bytes,
            code_pin,
            image_lease,
        };
        Instance::launch(Arc::clone(&self.runtime), plan, deadline)
            .await
            .map(|instance| (instance, phases))
            .map_err(|failure| Execution {
                pull_us: phases.pull_us,
                unpack_us: phases.unpack_us,
                ..failure
            })
    }

    /// The process, root, rootfs and bootstrap dir of an image function's sandbox, with the
    /// lease that keeps its tree.
    async fn image_root(&self, function: &Function, code_dir: &Path) -> Result<ImageRoot, String> {
        let support = self
            .config
            .images
            .as_ref()
            .ok_or("this node does not run image functions")?;
        let boot = self
            .image_boot
            .get_or_init(|| {
                let (dir, program, args) = (
                    self.image_boot_dir.clone(),
                    support.program.clone(),
                    support.args.clone(),
                );
                async move {
                    tokio::task::spawn_blocking(move || {
                        ImageBootstrap::install(&dir, &program, &args).map_err(|e| {
                            format!(
                                "installing the image bootstrap from {}: {e}",
                                program.display()
                            )
                        })
                    })
                    .await
                    .unwrap_or_else(|e| Err(format!("installing the image bootstrap: {e}")))
                }
            })
            .await
            .clone()?;
        let prepared = image::prepare(support, function, code_dir).await?;
        if !prepared.pull.is_zero() || !prepared.unpack.is_zero() {
            tracing::info!(
                function.name = %function.name,
                image.pull_ms = u64::try_from(prepared.pull.as_millis()).unwrap_or(u64::MAX),
                image.unpack_ms = u64::try_from(prepared.unpack.as_millis()).unwrap_or(u64::MAX),
                "image prepared"
            );
        }
        let mode = image::mode_of(function, &prepared.process);
        let valid = |id: u32| (1..users::BLOCK).contains(&id);
        let (uid, gid) = match (prepared.process.uid, prepared.process.gid) {
            (uid, gid) if valid(uid) && valid(gid) => (uid, gid),
            _ => (users::SANDBOX_UID, users::SANDBOX_UID),
        };
        let process = ProcessSpec {
            args: boot.argv(&mode),
            env: image::image_env(function, &prepared.process),
            cwd: "/".to_owned(),
        };
        Ok(ImageRoot {
            process,
            root: RootKind::Image { uid, gid },
            tree: prepared.tree,
            boot_dir: boot.dir().to_path_buf(),
            lease: prepared.lease,
            phases: ImagePhases {
                pull_us: micros(prepared.pull),
                unpack_us: micros(prepared.unpack),
            },
        })
    }

    async fn run(&self, job: &Job, deadline: Instant, cancel: &CancellationToken) -> Execution {
        let function = &job.function;
        let secrets = match self.open_secrets(function, job.secrets.as_ref()) {
            Ok(secrets) => secrets,
            Err(message) => {
                tracing::warn!(invocation.id = %job.invocation_id, error.message = %message, "secrets unavailable");
                return failed(InvocationStatus::Failed, ErrorKind::Crashed, message);
            }
        };
        let key = key_of(function, &secrets);
        let checkout = self
            .pool
            .checkout(&key, limits_of(function), deadline)
            .await;
        let launched = Instant::now();
        let mut phases = ImagePhases::default();
        let (mut lease, cold_start, init_us) = match checkout {
            Ok(Checkout::Warm(lease)) => (*lease, false, 0),
            Ok(Checkout::Cold(reservation)) => {
                // Only a cold start may pull: a warm invocation never opens the credential.
                if let Err(message) = self.note_registry_auth(function, job.registry_auth.as_ref())
                {
                    tracing::warn!(invocation.id = %job.invocation_id, error.message = %message, "registry credential unavailable");
                    return failed(InvocationStatus::Failed, ErrorKind::Crashed, message);
                }
                let launch = self
                    .launch(function, &job.code_dir, &secrets, deadline)
                    .instrument(tracing::info_span!("sandbox.launch"));
                match launch.await {
                    Ok((instance, image)) => {
                        phases = image;
                        (reservation.fill(instance), true, micros(launched.elapsed()))
                    }
                    Err(failure) => {
                        return Execution {
                            cold_start: true,
                            init_us: micros(launched.elapsed()),
                            ..failure
                        }
                    }
                }
            }
            Err(CheckoutError::Timeout) => {
                return failed(
                    InvocationStatus::Timeout,
                    ErrorKind::Timeout,
                    format!(
                        "no sandbox became free within the timeout of {} ms",
                        function.config.timeout_ms
                    ),
                )
            }
            Err(e) => return failed(InvocationStatus::Failed, ErrorKind::Crashed, e.to_string()),
        };

        let invocation_id = job.invocation_id.to_string();
        let request = protocol::Request {
            id: &invocation_id,
            payload: &job.payload,
            max_result_bytes: self.config.max_result_bytes,
            context: protocol::RequestContext {
                invocation_id: &invocation_id,
                function_name: function.name.as_str(),
                function_version: function.version,
                memory_limit_mb: function.config.memory_mb,
                deadline_ms: unix_ms_at(deadline),
                trace_id: job.trace_id.as_deref(),
            },
        };
        let Some(instance) = lease.instance() else {
            return failed(
                InvocationStatus::Failed,
                ErrorKind::Crashed,
                "lease without a sandbox".to_owned(),
            );
        };
        let (execution, reusable) = instance
            .invoke(&request, deadline, cancel)
            .instrument(tracing::info_span!(
                "handler",
                sandbox.cold_start = cold_start
            ))
            .await;
        if reusable {
            lease.release().await;
        } else {
            lease.discard().await;
        }
        Execution {
            cold_start,
            init_us,
            pull_us: phases.pull_us,
            unpack_us: phases.unpack_us,
            ..execution
        }
    }
}

/// What an image function's cold start spent on its image, in µs (zeros when cached).
#[derive(Debug, Clone, Copy, Default)]
struct ImagePhases {
    pull_us: u64,
    unpack_us: u64,
}

/// An image function's sandbox root and process, ready to launch.
struct ImageRoot {
    process: ProcessSpec,
    root: RootKind,
    tree: PathBuf,
    boot_dir: PathBuf,
    /// Keeps the tree from eviction while the sandbox lives.
    lease: ImageLease,
    phases: ImagePhases,
}
