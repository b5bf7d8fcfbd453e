//! `fnmesh up`: a gateway and a node in one process on the embedded backends (SQLite, a local
//! code directory, the in-process bus, in-memory rate limits) and real sandboxes.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fnmesh_gateway::reconciler::Reconciler;
use fnmesh_gateway::recorder::Recorder;
use fnmesh_gateway::{auth, Backends, Gateway, GatewayConfig};
use fnmesh_nodes::code_cache::CodeCache;
use fnmesh_nodes::executor::{Executor, ExecutorConfig};
use fnmesh_nodes::sandbox::cgroup::{hierarchies, SandboxCgroup, CGROUP_ROOT};
use fnmesh_nodes::sandbox::supervisor::SupervisorClient;
use fnmesh_nodes::sandbox::ContainerRuntime;
use fnmesh_nodes::worker::{Worker, WorkerConfig};
use fnmesh_shared::bus::memory::MemoryBus;
use fnmesh_shared::bus::{Bus, BusConfig};
use fnmesh_shared::ratelimit::RateLimit;
use fnmesh_shared::store::{InvocationFilter, MetadataStore};
use fnmesh_shared::{ErrorKind, InvocationError, InvocationStatus, Namespace};
use tokio_util::sync::CancellationToken;

use crate::args::UpArgs;
use crate::backends::{
    default_database, open_code_store, open_limiter, open_store, parse_failure_policy,
    CodeStoreLocation, DatabaseUrl,
};

pub async fn run(args: UpArgs) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("fnmesh up runs functions in sandboxes (cgroups, namespaces) and must run as root");
    }
    let data_dir = absolute(&args.data_dir)?;
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;

    let backends = &args.backends;
    let database = match &backends.database_url {
        Some(url) => DatabaseUrl::parse(url)?,
        None => default_database(&data_dir),
    };
    let code_location = match &backends.code_store {
        Some(loc) => CodeStoreLocation::parse(loc)?,
        None => CodeStoreLocation::Dir(data_dir.join("code")),
    };
    let policy = parse_failure_policy(&backends.rate_limit_failure)?;
    let store = open_store(&database, backends.migrate).await?;
    let code = open_code_store(&code_location).await?;
    let limiter = open_limiter(backends.redis_url.as_deref(), policy).await?;
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new(BusConfig::default()));
    tracing::info!(backend = "in-process", "bus");
    let key_limit = (backends.key_rate_per_second > 0).then(|| RateLimit {
        per_second: backends.key_rate_per_second,
        burst: backends.key_rate_burst.max(1),
    });

    let admin = admin_key(&args, &data_dir)?;
    auth::ensure_admin_key(store.as_ref(), &admin.key)
        .await
        .context("storing the admin key")?;
    fail_interrupted_invocations(store.as_ref()).await?;

    let node_id = std::env::var("FNMESH_NODE_ID")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("node-{:08x}", rand::random::<u32>()));
    let sandbox_dir = data_dir.join("sandboxes");
    let exe = std::env::current_exe().context("locating the fnmesh binary")?;
    let supervisor = Arc::new(
        SupervisorClient::spawn(&exe, &["__supervisor"], &sandbox_dir.join("state"))
            .await
            .context("starting the sandbox supervisor")?,
    );
    let runtime: Arc<dyn ContainerRuntime> = supervisor.clone();
    remove_empty_node_cgroups();
    let cgroup_parent = format!("/fnmesh/{node_id}");
    let executor = Executor::new(
        ExecutorConfig {
            work_dir: sandbox_dir.clone(),
            node_id: node_id.clone(),
            max_sandboxes: args.max_sandboxes,
            keep_alive: Duration::from_secs(args.keep_alive_secs),
            cgroup_parent: cgroup_parent.clone(),
            ..ExecutorConfig::default()
        },
        runtime,
    )
    .await
    .context("preparing the sandbox executor")?;
    let cache = Arc::new(CodeCache::new(
        &data_dir.join("node").join("code"),
        code.clone(),
        Default::default(),
    )?);

    let gateway = Gateway::bind(
        GatewayConfig {
            listen: args.listen,
            max_body_bytes: args.max_body_bytes,
            drain_timeout: Duration::from_secs(args.drain_secs),
            default_rate_limit: key_limit,
            // Run here instead, so they outlive the node's drain.
            background_workers: false,
            ..GatewayConfig::default()
        },
        Backends {
            store: store.clone(),
            code: code.clone(),
            bus: bus.clone(),
            limiter,
        },
    )
    .await
    .with_context(|| format!("starting the HTTP API on {}", args.listen))?;
    let addr = gateway.local_addr();

    println!("fnmesh is up: http://{addr}");
    println!("  data dir:  {}", data_dir.display());
    println!("  admin key: {}", admin.describe());
    println!("  node:      {node_id}");
    println!("stop with Ctrl-C");
    let _ = std::io::stdout().flush();

    let gateway_stop = CancellationToken::new();
    let node_stop = CancellationToken::new();
    let background_stop = CancellationToken::new();
    let defaults = GatewayConfig::default();
    let reconciler = Reconciler::new(
        store.clone(),
        bus.clone(),
        defaults.reconcile_interval,
        defaults.reconcile_after,
    );
    // The in-process bus did not survive the previous run: re-publish what it still owed.
    reconciler.pass(chrono::Utc::now()).await;
    let background = [
        tokio::spawn(Recorder::new(store.clone(), bus.clone()).run(background_stop.clone())),
        tokio::spawn(reconciler.run(background_stop.clone())),
    ];
    let worker = Worker::new(
        WorkerConfig {
            node_id: node_id.clone(),
            slots: args.slots,
            drain_timeout: Duration::from_secs(args.drain_secs),
            ..WorkerConfig::default()
        },
        bus.clone(),
        cache,
        executor.clone(),
    );
    let node_task = tokio::spawn(worker.run(node_stop.clone()));
    let gateway_task = tokio::spawn(gateway.run(gateway_stop.clone()));

    shutdown_signal().await;
    tracing::info!("shutting down: no new requests; draining in-flight work");
    // The gateway drains first (its in-flight sync calls need the node), then the node.
    gateway_stop.cancel();
    match gateway_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "gateway stopped with an error"),
        Err(e) => tracing::warn!(error = %e, "gateway task failed"),
    }
    node_stop.cancel();
    let _ = node_task.await;
    background_stop.cancel();
    for task in background {
        let _ = task.await;
    }
    executor.shutdown(Duration::from_secs(5)).await;
    supervisor.shutdown().await;
    // The node's parent cgroup is empty now that every sandbox is gone.
    let leftovers = SandboxCgroup::new(&cgroup_parent).remove_leftovers();
    if !leftovers.is_empty() {
        tracing::warn!(?leftovers, "cgroup directories could not be removed");
    }
    tracing::info!("fnmesh stopped");
    Ok(())
}

/// Where the bootstrap admin key came from.
struct AdminKey {
    key: String,
    file: Option<PathBuf>,
    generated: bool,
}

impl AdminKey {
    fn describe(&self) -> String {
        match (&self.file, self.generated) {
            (Some(p), true) => format!("generated and written to {} (mode 0600)", p.display()),
            (Some(p), false) => format!("{}", p.display()),
            (None, _) => "from FNMESH_ADMIN_KEY".to_owned(),
        }
    }
}

fn admin_key(args: &UpArgs, data_dir: &Path) -> Result<AdminKey> {
    if let Some(k) = args.admin_key.as_ref().filter(|k| !k.is_empty()) {
        if k.len() < 16 {
            bail!("FNMESH_ADMIN_KEY must be at least 16 characters");
        }
        return Ok(AdminKey {
            key: k.clone(),
            file: None,
            generated: false,
        });
    }
    let path = data_dir.join("admin.key");
    if path.exists() {
        let key = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim()
            .to_owned();
        if key.is_empty() {
            bail!(
                "{} is empty; delete it to generate a new key",
                path.display()
            );
        }
        return Ok(AdminKey {
            key,
            file: Some(path),
            generated: false,
        });
    }
    let key = auth::generate_key();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(f, "{key}")?;
    f.sync_all()?;
    Ok(AdminKey {
        key,
        file: Some(path),
        generated: true,
    })
}

/// Invocations that were running when the previous process died are marked failed: they may
/// have had effects, so they are not silently run again. (Queued ones are re-published by the
/// reconciler: their requests are stored with them.)
async fn fail_interrupted_invocations(store: &dyn MetadataStore) -> Result<()> {
    let ns = Namespace::default_ns();
    let mut failed = 0usize;
    loop {
        let page = store
            .list_invocations(
                &ns,
                &InvocationFilter {
                    function: None,
                    status: Some(InvocationStatus::Running),
                },
                500,
                None,
            )
            .await?;
        let mut applied = 0usize;
        for mut rec in page.items {
            rec.status = InvocationStatus::Failed;
            rec.attempt = rec.attempt.saturating_add(1);
            rec.completed_at = Some(chrono::Utc::now());
            rec.error = Some(InvocationError {
                kind: ErrorKind::Crashed,
                message: "fnmesh restarted while this invocation was running".into(),
            });
            if store.update_invocation(&rec).await? {
                applied += 1;
            }
        }
        failed += applied;
        if applied == 0 {
            break;
        }
    }
    if failed > 0 {
        tracing::warn!(
            invocations = failed,
            "marked invocations interrupted by the previous run as failed"
        );
    }
    Ok(())
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

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}

fn absolute(p: &Path) -> Result<PathBuf> {
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    };
    // Drop `.` components so printed paths read naturally.
    Ok(joined
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect())
}
