//! What `up`, `gateway` and `node` share: opening backends and the bus, the bootstrap admin
//! key, starting a node (supervisor, executor, work loop) and stopping it, and the signal that
//! starts the one shutdown path.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fnmesh_bus::jetstream::JetStreamBus;
use fnmesh_bus::memory::MemoryBus;
use fnmesh_bus::registry::jetstream::JetStreamRegistry;
use fnmesh_bus::registry::memory::MemoryRegistry;
use fnmesh_bus::registry::NodeRegistry;
use fnmesh_bus::{Bus, BusConfig};
use fnmesh_code::encrypted::Encrypted;
use fnmesh_code::mirror::Mirrored;
use fnmesh_code::nats::NatsCodeStore;
use fnmesh_code::CodeStore;
use fnmesh_core::metrics::ScrapeToken;
use fnmesh_core::nats::NatsOptions;
use fnmesh_core::secrets::Keyring;
use fnmesh_core::{ErrorKind, InvocationError, InvocationStatus, NodeId};
use fnmesh_gateway::destinations::{Allowlist, DestinationsConfig};
use fnmesh_gateway::{auth, Backends, GatewayConfig};
use fnmesh_nodes::node::{NodeConfig, SupervisorCommand};
use fnmesh_nodes::runtimes::protocol::result_cap;
use fnmesh_ratelimit::RateLimit;
use fnmesh_store::MetadataStore;

use crate::args::{CommonArgs, GatewayArgs, NodeArgs, SecretsArgs};
use crate::backends::{
    default_database, open_code_store, open_limiter, open_store, parse_failure_policy,
    CodeStoreLocation, DatabaseUrl,
};

/// The data dir as an absolute path, created if needed.
pub fn data_dir(common: &CommonArgs) -> Result<PathBuf> {
    let dir = absolute(&common.data_dir)?;
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create data dir {}", dir.display()))?;
    Ok(dir)
}

/// Fails unless running as root (sandboxes need cgroups and namespaces).
pub fn require_root(what: &str) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "fnmesh {what} runs functions in sandboxes (cgroups, namespaces) and must run as root"
        );
    }
    Ok(())
}

/// The bus of a process, and its NATS connection when it runs over NATS.
pub struct OpenBus {
    /// The bus.
    pub bus: Arc<dyn Bus>,
    /// The connection the JetStream bus uses (registry, code, request/reply share it).
    pub nats: Option<async_nats::Client>,
}

/// The in-process bus, or JetStream when NATS options are given.
pub async fn open_bus(
    nats: Option<NatsOptions>,
    region: &str,
    config: BusConfig,
) -> Result<OpenBus> {
    Ok(match nats {
        None => {
            tracing::info!(backend = "in-process", "bus");
            OpenBus {
                bus: Arc::new(MemoryBus::new(config)),
                nats: None,
            }
        }
        Some(options) => {
            tracing::info!(backend = "nats jetstream", nats.url = %crate::backends::redact(&options.url), region, "bus");
            let client = options
                .connect(&format!("fnmesh-{region}"))
                .await
                .context("connecting to NATS (FNMESH_NATS_URL)")?;
            let bus = JetStreamBus::connect_with_client(client.clone(), region, config)
                .await
                .with_context(|| format!("opening the JetStream bus of region {region:?}"))?;
            OpenBus {
                bus: Arc::new(bus),
                nats: Some(client),
            }
        }
    })
}

/// Where the code lives: the setting, or `<data dir>/code`.
pub fn code_location(setting: Option<&str>, data_dir: &Path) -> Result<CodeStoreLocation> {
    match setting {
        Some(loc) => CodeStoreLocation::parse(loc),
        None => Ok(CodeStoreLocation::Dir(data_dir.join("code"))),
    }
}

/// The code bucket of `region` on NATS (created if missing), when the process runs over NATS:
/// what nodes read code from, and where a gateway mirrors the code it stores.
pub async fn open_nats_code(
    nats: Option<&async_nats::Client>,
    region: &str,
    replicas: u8,
) -> Result<Option<Arc<dyn CodeStore>>> {
    let Some(client) = nats else {
        return Ok(None);
    };
    let store = NatsCodeStore::open_replicated(client.clone(), region, usize::from(replicas))
        .await
        .with_context(|| format!("opening the NATS code bucket of region {region:?}"))?;
    tracing::info!(
        backend = "nats object store",
        nats.bucket = store.bucket_name(),
        "code store (nodes)"
    );
    Ok(Some(Arc::new(store)))
}

/// `store` sealed with `keyring` when `FNMESH_ENCRYPT_CODE` is on (each store of a mirror is
/// sealed on its own); as is otherwise.
pub fn seal_code(
    store: Arc<dyn CodeStore>,
    secrets: &SecretsArgs,
    keyring: &Arc<Keyring>,
) -> Arc<dyn CodeStore> {
    if !secrets.encrypt_code {
        return store;
    }
    tracing::info!(
        secrets.key_id = keyring.current_id(),
        "function code is encrypted at rest"
    );
    Arc::new(Encrypted::new(store, keyring.clone()))
}

/// A gateway's backends plus its bootstrap admin key, ready to serve.
pub struct GatewayParts {
    pub backends: Backends,
    pub config: GatewayConfig,
    pub admin: AdminKey,
}

/// Opens the gateway's store, code store and limiter, stores the admin key. With a
/// `code_replica` (the NATS code bucket), code is written to both and re-copied to the replica
/// when an invocation finds it missing there.
pub async fn open_gateway(
    args: &GatewayArgs,
    common: &CommonArgs,
    data_dir: &Path,
    bus: Arc<dyn Bus>,
    code_replica: Option<Arc<dyn CodeStore>>,
    registry: Arc<dyn NodeRegistry>,
) -> Result<GatewayParts> {
    let backends = &args.backends;
    let database = match &backends.database_url {
        Some(url) => DatabaseUrl::parse(url)?,
        None => default_database(data_dir),
    };
    let policy = parse_failure_policy(&backends.rate_limit_failure)?;
    let namespace_rate_limit = fnmesh_gateway::namespace_rate_limit(
        backends.namespace_rate_per_second,
        backends.namespace_rate_burst,
    )?;
    let store = open_store(&database, backends.migrate).await?;
    let keyring = crate::secrets_key::keyring(&common.secrets, data_dir)?;
    let sealed = |store| seal_code(store, &common.secrets, &keyring);
    let mut code =
        sealed(open_code_store(&code_location(backends.code_store.as_deref(), data_dir)?).await?);
    if let Some(replica) = code_replica {
        code = Arc::new(Mirrored::new(code, sealed(replica)));
    }
    let limiter = open_limiter(backends.redis_url.as_deref(), policy).await?;
    let admin = admin_key(args.admin_key.as_deref(), data_dir)?;
    auth::ensure_admin_key(store.as_ref(), &admin.key)
        .await
        .context("storing the admin key")?;
    let config = GatewayConfig {
        listen: args.listen,
        max_body_bytes: args.max_body_bytes,
        max_archive_bytes: args.max_archive_bytes,
        archive: fnmesh_core::archive::ArchiveLimits {
            max_unpacked_bytes: args.max_unpacked_bytes,
            ..Default::default()
        },
        drain_timeout: Duration::from_secs(common.drain_secs),
        default_rate_limit: (backends.key_rate_per_second > 0).then(|| RateLimit {
            per_second: backends.key_rate_per_second,
            burst: backends.key_rate_burst.max(1),
        }),
        namespace_rate_limit,
        audit_failure_window: Duration::from_secs(args.audit_failure_window_secs),
        retention: (args.retention_hours > 0)
            .then(|| Duration::from_secs(args.retention_hours.saturating_mul(3600))),
        tokens: crate::jwt_keys::token_config(&args.tokens, data_dir)?,
        secrets_keyring: Some(keyring),
        metrics_token: metrics_token(common)?,
        insecure_registries: common.insecure_registries.clone(),
        destinations: DestinationsConfig {
            allowlist: Allowlist::parse(&args.webhook_allowlist)?,
            max_attempts: args.destination_max_attempts,
            retry_base: Duration::from_millis(args.destination_retry_base_ms),
            ..DestinationsConfig::default()
        },
        ..GatewayConfig::default()
    };
    Ok(GatewayParts {
        backends: Backends {
            store,
            code,
            bus,
            limiter,
            registry,
        },
        config,
        admin,
    })
}

/// The node registry of `region`: its JetStream KV bucket when the process runs over NATS,
/// else an in-process one, which `fnmesh up` shares between its gateway and its node.
pub async fn open_registry(
    nats: Option<&async_nats::Client>,
    region: &str,
    replicas: u8,
) -> Result<Arc<dyn NodeRegistry>> {
    let Some(client) = nats else {
        tracing::info!(backend = "in-process", "node registry");
        return Ok(Arc::new(MemoryRegistry::new()));
    };
    let registry =
        JetStreamRegistry::open_replicated(client.clone(), region, usize::from(replicas))
            .await
            .with_context(|| format!("opening the node registry of region {region:?}"))?;
    tracing::info!(backend = "nats kv", ?registry, "node registry");
    Ok(Arc::new(registry))
}

/// The node's config from its arguments: the supervisor is this binary's hidden
/// `__supervisor` command; results are capped to fit the NATS server's `max_payload` when
/// the node runs over NATS (`nats`).
pub fn node_config(
    args: &NodeArgs,
    common: &CommonArgs,
    data_dir: &Path,
    region: &str,
    nats: Option<&async_nats::Client>,
) -> Result<NodeConfig> {
    if args.max_result_bytes == 0 {
        bail!("FNMESH_MAX_RESULT_BYTES must be positive");
    }
    let max_payload = nats.map(|client| client.server_info().max_payload);
    let max_result_bytes = result_cap(args.max_result_bytes, max_payload);
    if max_result_bytes < args.max_result_bytes {
        tracing::warn!(
            configured_bytes = args.max_result_bytes,
            max_result_bytes,
            nats.max_payload_bytes = max_payload,
            "FNMESH_MAX_RESULT_BYTES lowered to fit the NATS server's max_payload"
        );
    }
    let node_id = match args.node_id.as_deref().filter(|s| !s.is_empty()) {
        Some(id) => NodeId::parse(id).with_context(|| format!("FNMESH_NODE_ID={id:?}"))?,
        None => NodeId::generate(),
    };
    Ok(NodeConfig {
        node_id,
        region: region.to_owned(),
        data_dir: data_dir.to_path_buf(),
        supervisor: SupervisorCommand {
            program: std::env::current_exe().context("locating the fnmesh binary")?,
            args: vec!["__supervisor".to_owned()],
        },
        supervisors: args.sandbox_supervisors,
        slots: args.slots,
        max_sandboxes: args.max_sandboxes,
        keep_alive: Duration::from_secs(args.keep_alive_secs),
        drain_timeout: Duration::from_secs(common.drain_secs),
        heartbeat_interval: Duration::from_secs(args.heartbeat_secs),
        metrics_listen: args.metrics_listen,
        metrics_token: metrics_token(common)?,
        max_result_bytes,
        code_cache_bytes: args.code_cache_bytes,
        image_cache_bytes: args.image_cache_bytes,
        prepull_concurrency: args.image_prepull_concurrency,
        prepull_bytes_per_sec: args.image_prepull_bytes_per_sec,
        insecure_registries: common.insecure_registries.clone(),
        image_bootstrap: Some(SupervisorCommand {
            program: std::env::current_exe().context("locating the fnmesh binary")?,
            args: vec!["__imageboot".to_owned()],
        }),
        secrets_keyring: Some(crate::secrets_key::keyring(&common.secrets, data_dir)?),
        sandbox_id_mode: args.sandbox_users,
        sandbox_id_base: args.sandbox_id_base,
    })
}

/// The metrics scrape token, from `FNMESH_METRICS_TOKEN` or `FNMESH_METRICS_TOKEN_FILE`.
fn metrics_token(common: &CommonArgs) -> Result<Option<ScrapeToken>> {
    let text = match (&common.metrics_token, &common.metrics_token_file) {
        (Some(_), Some(_)) => {
            bail!("set FNMESH_METRICS_TOKEN or FNMESH_METRICS_TOKEN_FILE, not both")
        }
        (Some(token), None) => token.clone(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("FNMESH_METRICS_TOKEN_FILE: reading {}", file.display()))?,
        (None, None) => return Ok(None),
    };
    let token = ScrapeToken::parse(&text).context("FNMESH_METRICS_TOKEN")?;
    Ok(Some(token))
}

/// Where the bootstrap admin key came from.
pub struct AdminKey {
    key: String,
    file: Option<PathBuf>,
    generated: bool,
}

impl AdminKey {
    pub fn describe(&self) -> String {
        match (&self.file, self.generated) {
            (Some(p), true) => format!("generated and written to {} (mode 0600)", p.display()),
            (Some(p), false) => format!("{}", p.display()),
            (None, _) => "from FNMESH_ADMIN_KEY".to_owned(),
        }
    }
}

fn admin_key(configured: Option<&str>, data_dir: &Path) -> Result<AdminKey> {
    if let Some(k) = configured.filter(|k| !k.is_empty()) {
        if k.len() < 16 {
            bail!("FNMESH_ADMIN_KEY must be at least 16 characters");
        }
        return Ok(AdminKey {
            key: k.to_owned(),
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
    crate::private_file::create(&path, &key)?;
    Ok(AdminKey {
        key,
        file: Some(path),
        generated: true,
    })
}

/// Invocations that were running when the previous process died are marked failed: they may
/// have had effects, so they are not silently run again. (Queued ones are re-published by the
/// reconciler: their requests are stored with them.)
pub async fn fail_interrupted_invocations(store: &dyn MetadataStore) -> Result<()> {
    let mut failed = 0usize;
    loop {
        let page = store.running_invocations(500).await?;
        let mut applied = 0usize;
        for mut rec in page {
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

pub async fn shutdown_signal() {
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
