//! Gateway settings. The CLI layers defaults, file, environment and flags into this.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use fnmesh_core::archive::ArchiveLimits;
use fnmesh_ratelimit::RateLimit;

/// Default body cap (6 MiB: a 4.5 MiB archive plus base64 overhead).
pub(crate) const DEFAULT_MAX_BODY_BYTES: usize = 6 * 1024 * 1024;

/// How the gateway serves.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Address to listen on (port 0 picks a free port; see [`crate::Gateway::local_addr`]).
    pub listen: SocketAddr,
    /// Largest accepted request body, enforced while reading.
    pub max_body_bytes: usize,
    /// Limits on uploaded code archives.
    pub archive: ArchiveLimits,
    /// How long a sync invocation waits beyond the function's `timeout_ms`.
    pub sync_grace: Duration,
    /// The limit applied to each API key; `None` disables rate limiting.
    pub default_rate_limit: Option<RateLimit>,
    /// How long in-flight requests may take to finish once shutdown starts.
    pub drain_timeout: Duration,
    /// Whether [`crate::Gateway::run`] also runs the recorder and the reconciler. A process
    /// that hosts a node too (`fnmesh up`) runs them itself, so they outlive the node's drain.
    pub background_workers: bool,
    /// How often the reconciler looks for stale `queued` invocations.
    pub reconcile_interval: Duration,
    /// How long an invocation may stay `queued` before the reconciler re-publishes it.
    pub reconcile_after: Duration,
    /// Access and refresh tokens: signing keys, issuer, audience, lifetimes.
    pub tokens: crate::auth::jwt::TokenConfig,
    /// Seals function secrets (`None`: the secrets API answers 503; invocations still carry
    /// secrets stored earlier, sealed, to nodes that can open them).
    pub secrets_keyring: Option<std::sync::Arc<fnmesh_core::secrets::Keyring>>,
    /// A token that may scrape `GET /metrics` besides admin credentials (`None`: admins only).
    pub metrics_token: Option<fnmesh_core::metrics::ScrapeToken>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            archive: ArchiveLimits::default(),
            sync_grace: Duration::from_secs(5),
            default_rate_limit: Some(RateLimit {
                per_second: 1000,
                burst: 2000,
            }),
            drain_timeout: Duration::from_secs(30),
            background_workers: true,
            reconcile_interval: Duration::from_secs(10),
            reconcile_after: Duration::from_secs(30),
            tokens: crate::auth::jwt::TokenConfig::default(),
            secrets_keyring: None,
            metrics_token: None,
        }
    }
}
