//! A whole worker node, assembled: the sandbox supervisor, the executor with its warm pool,
//! the code cache, the work loop, the node's registration and its metrics.
//!
//! [`Node::start`] brings one up from a [`NodeConfig`] and the backends it talks to
//! ([`NodeBackends`]: the bus, the code store and the node registry — a node needs nothing
//! else); [`Node::stop`] is its one shutdown path. The binary only maps its arguments to the
//! config (`cli/src/commands/node.rs`, and `up.rs` for a node beside a gateway).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fnmesh_bus::placements::Placements;
use fnmesh_bus::registry::NodeRegistry;
use fnmesh_bus::Bus;
use fnmesh_code::CodeStore;
use fnmesh_core::metrics::{Registry, ScrapeToken};
use fnmesh_core::secrets::Keyring;
use fnmesh_core::NodeId;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::code_cache::CodeCache;
use crate::executor::{ExecError, Executor, ExecutorConfig};
use crate::metrics::{LoadCollector, MetricsError, MetricsServer, NodeMetrics};
use crate::registration::{Load, LoadSampler, Registration, RegistrationConfig};
use crate::runtimes::image::ImageSupport;
use crate::runtimes::RuntimeRegistry;
use crate::sandbox::cgroup::{hierarchies, SandboxCgroup, CGROUP_ROOT};
use crate::sandbox::supervisor::SupervisorPool;
use crate::sandbox::users::IdMode;
use crate::sandbox::{ContainerRuntime, SandboxError};
use crate::worker::{Worker, WorkerConfig};
use fnmesh_image::cache::ImageCache;

/// How long stopping waits for the executor to destroy its sandboxes.
const SANDBOX_TEARDOWN: Duration = Duration::from_secs(5);

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The sandbox supervisor did not start.
    #[error("starting the sandbox supervisor: {0}")]
    Supervisor(#[source] SandboxError),
    /// The executor could not prepare its work dir.
    #[error("preparing the sandbox executor: {0}")]
    Executor(#[source] ExecError),
    /// The code cache directory could not be created.
    #[error("creating the code cache in {path}: {source}")]
    CodeCache {
        /// The cache directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The image cache could not be opened.
    #[error("opening the image cache in {path}: {source}")]
    ImageCache {
        /// The cache directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: fnmesh_image::ImageError,
    },
    /// The metrics could not be registered or served.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

/// How the supervisor process is started: this binary again, usually, with a hidden command.
#[derive(Debug, Clone)]
pub struct SupervisorCommand {
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
}

/// What a node is.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node's id (in the registry, on every result, in its cgroup parent's name).
    pub node_id: NodeId,
    /// The region it serves.
    pub region: String,
    /// Where it keeps sandboxes (`sandboxes/`) and cached code (`node/code/`).
    pub data_dir: PathBuf,
    /// How to start the sandbox supervisor.
    pub supervisor: SupervisorCommand,
    /// Sandbox supervisors (1..=16): creates are spread over them (see
    /// [`crate::sandbox::supervisor::pool`]).
    pub supervisors: usize,
    /// Invocations run at once.
    pub slots: usize,
    /// Sandboxes alive at once (warm or busy).
    pub max_sandboxes: usize,
    /// How long an idle sandbox is kept warm.
    pub keep_alive: Duration,
    /// How long stopping waits for in-flight invocations (then they are redelivered).
    pub drain_timeout: Duration,
    /// Interval of the node's registry heartbeats.
    pub heartbeat_interval: Duration,
    /// Where to serve `GET /metrics`, if anywhere (needs `metrics_token`).
    pub metrics_listen: Option<SocketAddr>,
    /// The Bearer token a scrape of `metrics_listen` must present.
    pub metrics_token: Option<ScrapeToken>,
    /// Disk space the unpacked code cache may take (least recently used code nothing holds
    /// is evicted beyond it; see [`crate::code_cache`]).
    pub code_cache_bytes: u64,
    /// Disk space the image cache (`node/images/`) may take: beyond it, the least recently
    /// used images no sandbox uses are evicted (see [`fnmesh_image::cache`]).
    pub image_cache_bytes: u64,
    /// Registries pulled from over plain HTTP; every other one over HTTPS only.
    pub insecure_registries: Vec<String>,
    /// How the image bootstrap is started inside sandboxes (`None`: image functions fail).
    pub image_bootstrap: Option<SupervisorCommand>,
    /// Images pre-pulled at once (0: no pre-pulling; see [`crate::prepull`]).
    pub prepull_concurrency: usize,
    /// Bytes per second all pre-pulls take together at most (0: unbounded).
    pub prepull_bytes_per_sec: u64,
    /// Longest result (JSON bytes) a function may return (see
    /// [`crate::runtimes::protocol::result_cap`] to fit it under NATS's `max_payload`).
    pub max_result_bytes: usize,
    /// Opens the functions' sealed secrets.
    pub secrets_keyring: Option<Arc<Keyring>>,
    /// Whether sandboxes get a user namespace over their host ids (see
    /// [`crate::sandbox::users`]).
    pub sandbox_id_mode: IdMode,
    /// First host id the sandboxes' id blocks are claimed from.
    pub sandbox_id_base: u32,
}

/// What a node talks to.
#[derive(Clone)]
pub struct NodeBackends {
    /// Where work comes from and results go.
    pub bus: Arc<dyn Bus>,
    /// Where code is read from (by checksum; verified and cached on disk).
    pub code: Arc<dyn CodeStore>,
    /// Where the node announces itself.
    pub registry: Arc<dyn NodeRegistry>,
    /// What is placed in its region (`None`: nothing is pre-pulled).
    pub placements: Option<Arc<dyn Placements>>,
}

/// A running node.
pub struct Node {
    id: NodeId,
    task: JoinHandle<()>,
    registration: Registration,
    stop: CancellationToken,
    executor: Arc<Executor>,
    supervisor: Arc<SupervisorPool>,
    cgroup_parent: String,
    metrics_server: Option<(MetricsServer, CancellationToken)>,
    prepull: Option<JoinHandle<()>>,
}

impl Node {
    /// Starts the supervisor, the executor, the work loop and the node's registration. The
    /// node's metrics go to `metrics` (the process's registry), served on
    /// `config.metrics_listen` when set.
    pub async fn start(
        config: NodeConfig,
        backends: NodeBackends,
        metrics: &Registry,
    ) -> Result<Self, NodeError> {
        let node_id = config.node_id.to_string();
        let report_key = backends.bus.report_key();
        let metrics_listen = match (config.metrics_listen, config.metrics_token.clone()) {
            (Some(addr), Some(token)) => Some((addr, token)),
            (Some(_), None) => return Err(MetricsError::NoToken.into()),
            (None, _) => None,
        };
        let sandbox_dir = config.data_dir.join("sandboxes");
        let args: Vec<&str> = config.supervisor.args.iter().map(String::as_str).collect();
        let supervisor = Arc::new(
            SupervisorPool::spawn(
                &config.supervisor.program,
                &args,
                &sandbox_dir,
                config.supervisors,
            )
            .await
            .map_err(NodeError::Supervisor)?,
        );
        let runtime: Arc<dyn ContainerRuntime> = supervisor.clone();
        remove_empty_node_cgroups();
        let cgroup_parent = format!("/fnmesh/{node_id}");
        let cache_dir = config.data_dir.join("node").join("code");
        let cache = CodeCache::new(
            &cache_dir,
            backends.code,
            Default::default(),
            config.code_cache_bytes,
        )
        .map_err(|source| NodeError::CodeCache {
            path: cache_dir.clone(),
            source,
        })?;
        let runs_images = config.image_bootstrap.is_some();
        let mut image_cache = None;
        let images = match &config.image_bootstrap {
            Some(bootstrap) => {
                let dir = config.data_dir.join("node").join("images");
                let registries =
                    fnmesh_image::registry::Registries::new(config.insecure_registries.clone());
                let cache = ImageCache::open(
                    &dir,
                    registries,
                    fnmesh_image::Limits::default(),
                    config.image_cache_bytes,
                )
                .map_err(|source| NodeError::ImageCache {
                    path: dir.clone(),
                    source,
                })?;
                let cache = Arc::new(cache);
                image_cache = Some(cache.clone());
                Some(ImageSupport {
                    cache,
                    program: bootstrap.program.clone(),
                    args: bootstrap.args.clone(),
                    credentials: Default::default(),
                })
            }
            None => None,
        };
        let stop = CancellationToken::new();
        let prepull = match (&images, backends.placements.clone()) {
            (Some(support), Some(feed)) => crate::prepull::start(
                crate::prepull::PrepullConfig {
                    region: config.region.clone(),
                    concurrency: config.prepull_concurrency,
                    bytes_per_sec: config.prepull_bytes_per_sec,
                },
                support.clone(),
                config.secrets_keyring.clone(),
                feed,
                stop.clone(),
            ),
            _ => None,
        };
        let executor = Executor::new(
            ExecutorConfig {
                work_dir: sandbox_dir,
                node_id: node_id.clone(),
                max_sandboxes: config.max_sandboxes,
                keep_alive: config.keep_alive,
                cgroup_parent: cgroup_parent.clone(),
                secrets_keyring: config.secrets_keyring,
                max_result_bytes: config.max_result_bytes,
                code_pins: Some(cache.pins()),
                images,
                id_mode: config.sandbox_id_mode,
                id_base: config.sandbox_id_base,
                ..ExecutorConfig::default()
            },
            runtime,
        )
        .await
        .map_err(NodeError::Executor)?;
        let worker = Worker::new(
            WorkerConfig {
                node_id,
                slots: config.slots,
                drain_timeout: config.drain_timeout,
                ..WorkerConfig::default()
            },
            backends.bus,
            Arc::new(cache),
            executor.clone(),
        )
        .with_metrics(NodeMetrics::register(metrics)?);
        let load = worker.load();
        let task = tokio::spawn(worker.run(stop.clone()));
        let sample: LoadSampler = {
            let executor = executor.clone();
            Arc::new(move || Load {
                slots_total: load.slots(),
                slots_free: load.free_slots(),
                warm_sandboxes: executor.stats().idle,
                images: image_cache.as_ref().map(listed_images).unwrap_or_default(),
            })
        };
        LoadCollector::register(metrics, sample.clone())?;
        let metrics_server = match metrics_listen {
            Some((addr, token)) => {
                let stop = CancellationToken::new();
                let server =
                    MetricsServer::start(addr, metrics.clone(), token, stop.clone()).await?;
                Some((server, stop))
            }
            None => None,
        };
        let registration = Registration::start(
            backends.registry,
            RegistrationConfig {
                node_id: config.node_id.clone(),
                region: config.region,
                runtimes: RuntimeRegistry::builtin()
                    .names()
                    .into_iter()
                    .chain(runs_images.then_some("image"))
                    .map(str::to_owned)
                    .collect(),
                interval: config.heartbeat_interval.max(Duration::from_secs(1)),
                signing_key: report_key,
            },
            sample,
        )
        .await;
        Ok(Self {
            id: config.node_id,
            task,
            registration,
            stop,
            executor,
            supervisor,
            cgroup_parent,
            metrics_server,
            prepull,
        })
    }

    /// The node's id.
    pub fn id(&self) -> &NodeId {
        &self.id
    }

    /// Stops pulling (announcing `draining` in the registry), drains in-flight invocations
    /// (within the config's `drain_timeout`), leaves the registry, destroys every sandbox,
    /// stops the supervisor and removes the node's cgroup parent.
    pub async fn stop(self) {
        self.stop.cancel();
        self.registration.set_draining();
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "the work loop failed");
        }
        if let Some(prepull) = self.prepull {
            if let Err(e) = prepull.await {
                tracing::warn!(error = %e, "pre-pulling failed");
            }
        }
        self.registration.leave().await;
        self.executor.shutdown(SANDBOX_TEARDOWN).await;
        self.supervisor.shutdown().await;
        let leftovers = SandboxCgroup::new(&self.cgroup_parent).remove_leftovers();
        if !leftovers.is_empty() {
            tracing::warn!(?leftovers, "cgroup directories could not be removed");
        }
        if let Some((server, stop)) = self.metrics_server {
            stop.cancel();
            server.stopped().await;
        }
    }
}

/// Removes the empty per-node parents (`/fnmesh/<node id>`) that nodes which died without
/// shutting down left behind. `rmdir` only succeeds on a cgroup without tasks or children, so a
/// live node's sandboxes are never touched.
fn remove_empty_node_cgroups() {
    for hierarchy in hierarchies(Path::new(CGROUP_ROOT)) {
        let Ok(entries) = std::fs::read_dir(hierarchy.join("fnmesh")) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                let _ = std::fs::remove_dir(entry.path());
            }
        }
    }
}

/// The images of `cache` as the registry entry lists them: largest first, at most
/// [`fnmesh_bus::registry::MAX_LISTED_IMAGES`].
fn listed_images(cache: &Arc<ImageCache>) -> Vec<fnmesh_bus::registry::CachedImage> {
    let mut images: Vec<_> = cache
        .images()
        .into_iter()
        .map(|image| fnmesh_bus::registry::CachedImage {
            digest: image.digest,
            bytes: image.bytes,
            in_use: image.in_use,
        })
        .collect();
    images.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.digest.cmp(&b.digest)));
    images.truncate(fnmesh_bus::registry::MAX_LISTED_IMAGES);
    images
}
