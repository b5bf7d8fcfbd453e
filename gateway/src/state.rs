//! What every handler shares: the backends, the settings and the authenticator.

use std::sync::Arc;

use fnmesh_bus::registry::NodeRegistry;
use fnmesh_bus::Bus;
use fnmesh_code::CodeStore;
use fnmesh_ratelimit::RateLimiter;
use fnmesh_store::MetadataStore;

use crate::auth::Authenticator;
use crate::config::GatewayConfig;
use crate::metrics::GatewayMetrics;

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
pub struct AppState {
    /// Settings.
    pub config: GatewayConfig,
    /// Backends.
    pub backends: Backends,
    /// Turns credentials into principals.
    pub authenticator: Authenticator,
    /// Bounds concurrent code normalisations (each may stage up to the unpacked cap on disk).
    pub normalize_permits: tokio::sync::Semaphore,
    /// Open `logs?follow=true` streams: bounded, ended when the gateway drains.
    pub log_followers: crate::functions::logs::Followers,
    /// Prometheus metrics (`GET /metrics`).
    pub metrics: Arc<GatewayMetrics>,
}

/// Code normalisations run at once, at most.
pub const MAX_CONCURRENT_NORMALIZE: usize = 4;

/// The handle handlers receive.
pub type State = Arc<AppState>;

impl AppState {
    /// Builds the shared state.
    pub fn new(config: GatewayConfig, backends: Backends, metrics: Arc<GatewayMetrics>) -> State {
        let authenticator = Authenticator::new(backends.store.clone(), config.tokens.clone());
        Arc::new(Self {
            config,
            backends,
            authenticator,
            normalize_permits: tokio::sync::Semaphore::new(MAX_CONCURRENT_NORMALIZE),
            log_followers: Default::default(),
            metrics,
        })
    }
}
