//! What every handler shares: the backends, the settings and the authenticator.

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use fnmesh_bus::registry::NodeRegistry;
use fnmesh_bus::Bus;
use fnmesh_code::CodeStore;
use fnmesh_ratelimit::RateLimiter;
use fnmesh_store::MetadataStore;

use crate::auth::Authenticator;
use crate::config::GatewayConfig;
use crate::metrics::GatewayMetrics;
use crate::permits::KeyPermits;

/// The backends the gateway programs against.
#[derive(Clone)]
pub struct Backends {
    /// Functions, invocation records, logs, keys.
    pub store: Arc<dyn MetadataStore>,
    /// Code archives.
    pub code: Arc<dyn CodeStore>,
    /// Work queue, replies and node events.
    pub bus: Arc<dyn Bus>,
    /// Per-key rate limits.
    pub limiter: Arc<dyn RateLimiter>,
    /// The live worker nodes of the region (`GET /v1/admin/nodes`).
    pub registry: Arc<dyn NodeRegistry>,
}

/// Shared by every request.
pub(crate) struct AppState {
    /// Settings.
    pub config: GatewayConfig,
    /// Backends.
    pub backends: Backends,
    /// Turns credentials into principals.
    pub authenticator: Authenticator,
    /// Bounds concurrent code normalisations (each may stage up to the unpacked cap on disk).
    pub normalize_permits: tokio::sync::Semaphore,
    /// Open `logs?follow=true` streams: bounded, ended when the gateway drains.
    pub log_followers: Followers,
    /// Prometheus metrics (`GET /metrics`).
    pub metrics: Arc<GatewayMetrics>,
    /// Function versions and sealed secrets, cached for a second ([`crate::lookups`]).
    pub lookups: crate::lookups::Functions,
    /// The invocation path's writes, committed in shared batches ([`crate::writes`]).
    pub writes: crate::writes::Writes,
    /// Secrets re-sealed for the versions invoked.
    pub invocation_secrets: crate::secrets::invocation::InvocationSecrets,
    /// Open log streams per key lineage ([`GatewayConfig::max_log_streams_per_key`]).
    pub log_stream_permits: Arc<KeyPermits>,
    /// NATS requests in flight per key lineage ([`GatewayConfig::max_nats_requests_per_key`]).
    pub nats_request_permits: Arc<KeyPermits>,
    /// Whether this gateway publishes its region's catalog or follows a hub's ([`crate::catalog`]).
    pub catalog: crate::catalog::Catalog,
    /// Resolves the tags of image functions at deploy.
    pub registries: fnmesh_image::registry::Registries,
    /// The NATS connection destinations are published on, once the gateway has one
    /// ([`crate::Gateway::serve_nats_requests`]).
    pub destination_nats: Arc<std::sync::OnceLock<async_nats::Client>>,
}

/// Code normalisations run at once, at most.
pub(crate) const MAX_CONCURRENT_NORMALIZE: usize = 4;

/// The handle handlers receive.
pub(crate) type State = Arc<AppState>;

impl AppState {
    /// Builds the shared state and starts its store writer (within a Tokio runtime).
    pub(crate) fn new(
        config: GatewayConfig,
        backends: Backends,
        metrics: Arc<GatewayMetrics>,
    ) -> State {
        let authenticator = Authenticator::new(backends.store.clone(), config.tokens.clone());
        let log_stream_permits = KeyPermits::new(config.max_log_streams_per_key);
        let nats_request_permits = KeyPermits::new(config.max_nats_requests_per_key);
        let writes = crate::writes::Writes::start(
            backends.store.clone(),
            backends.bus.clone(),
            metrics.clone(),
        );
        let registries =
            fnmesh_image::registry::Registries::new(config.insecure_registries.clone());
        Arc::new(Self {
            config,
            backends,
            authenticator,
            normalize_permits: tokio::sync::Semaphore::new(MAX_CONCURRENT_NORMALIZE),
            log_followers: Default::default(),
            metrics,
            lookups: Default::default(),
            writes,
            invocation_secrets: Default::default(),
            log_stream_permits,
            nats_request_permits,
            catalog: Default::default(),
            registries,
            destination_nats: Default::default(),
        })
    }
}

/// Log streams (`GET /v1/functions/{name}/logs?follow=true`) open at once per gateway, at most.
pub(crate) const MAX_FOLLOWERS: usize = 256;

/// The open log streams of a gateway: bounded, and ended together at shutdown.
#[derive(Debug)]
pub(crate) struct Followers {
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) stop: CancellationToken,
}

impl Default for Followers {
    fn default() -> Self {
        Self {
            permits: Arc::new(Semaphore::new(MAX_FOLLOWERS)),
            stop: CancellationToken::new(),
        }
    }
}

impl Followers {
    /// Ends every open stream (and every later one at once): called when the gateway begins
    /// draining, so followers do not hold the drain up.
    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }
}
