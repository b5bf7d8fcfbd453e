//! Gateway settings. The CLI layers defaults, file, environment and flags into this.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use fnmesh_core::archive::ArchiveLimits;
use fnmesh_ratelimit::RateLimit;

/// Default cap of a code archive uploaded raw or as a form (50 MiB, as Lambda's zipped limit).
pub const DEFAULT_MAX_ARCHIVE_BYTES: usize = 50 * 1024 * 1024;
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
    /// Largest code archive uploaded raw or in a multipart form (spooled to disk, never held
    /// in memory); the JSON body keeps `max_body_bytes`.
    pub max_archive_bytes: usize,
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
    /// How long finished invocations (records and logs) are kept before the pruner removes
    /// them; `None` keeps them forever.
    pub retention: Option<Duration>,
    /// How often the pruner looks for finished invocations past the retention.
    pub prune_interval: Duration,
    /// Access and refresh tokens: signing keys, issuer, audience, lifetimes.
    pub tokens: crate::auth::jwt::TokenConfig,
    /// Seals function secrets (`None`: the secrets API answers 503; invocations still carry
    /// secrets stored earlier, sealed, to nodes that can open them).
    pub secrets_keyring: Option<std::sync::Arc<fnmesh_core::secrets::Keyring>>,
    /// A token that may scrape `GET /metrics` besides admin credentials (`None`: admins only).
    pub metrics_token: Option<fnmesh_core::metrics::ScrapeToken>,
    /// The limit on invocations of each namespace (HTTP and NATS), counted besides the per-key
    /// one; `None` disables it (`FNMESH_NAMESPACE_RATE_LIMIT`, `FNMESH_NAMESPACE_RATE_BURST`).
    pub namespace_rate_limit: Option<RateLimit>,
    /// Open `logs?follow=true` streams per lineage of API keys, at most.
    pub max_log_streams_per_key: usize,
    /// NATS requests in flight per lineage of API keys, at most.
    pub max_nats_requests_per_key: usize,
    /// How often an open log stream checks that its key is still live (not revoked or expired).
    pub key_recheck_interval: Duration,
    /// How long authentication failures (401) of one source and action are summed before
    /// their audit entry is written.
    pub audit_failure_window: Duration,
    /// Registries (`host[:port]`) reached over plain HTTP to resolve image tags at deploy;
    /// every other registry over HTTPS (`FNMESH_INSECURE_REGISTRIES`).
    pub insecure_registries: Vec<String>,
    /// How the destinations of finished async invocations are delivered (webhook allowlist,
    /// retries).
    pub destinations: crate::destinations::DestinationsConfig,
}

/// Default [`GatewayConfig::retention`]: 7 days.
pub(crate) const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            archive: ArchiveLimits::default(),
            max_archive_bytes: DEFAULT_MAX_ARCHIVE_BYTES,
            sync_grace: Duration::from_secs(5),
            default_rate_limit: Some(RateLimit {
                per_second: 1000,
                burst: 2000,
            }),
            drain_timeout: Duration::from_secs(30),
            background_workers: true,
            reconcile_interval: Duration::from_secs(10),
            reconcile_after: Duration::from_secs(30),
            retention: Some(DEFAULT_RETENTION),
            prune_interval: Duration::from_secs(60),
            tokens: crate::auth::jwt::TokenConfig::default(),
            secrets_keyring: None,
            metrics_token: None,
            namespace_rate_limit: Some(RateLimit {
                per_second: DEFAULT_NAMESPACE_RATE,
                burst: DEFAULT_NAMESPACE_BURST,
            }),
            max_log_streams_per_key: 16,
            max_nats_requests_per_key: 64,
            key_recheck_interval: Duration::from_secs(15),
            audit_failure_window: Duration::from_secs(10),
            insecure_registries: Vec::new(),
            destinations: Default::default(),
        }
    }
}

/// Default of `FNMESH_NAMESPACE_RATE_LIMIT`: invocations per second of one namespace.
pub const DEFAULT_NAMESPACE_RATE: u32 = 5000;
/// Default of `FNMESH_NAMESPACE_RATE_BURST`.
pub const DEFAULT_NAMESPACE_BURST: u32 = 10_000;

/// An invalid gateway setting, named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A burst of 0 with a rate that is not 0.
    #[error("{burst_setting} must be at least 1 while {rate_setting} is {per_second} (set {rate_setting}=0 to disable the limit)")]
    ZeroBurst {
        /// The rate's setting, e.g. `FNMESH_NAMESPACE_RATE_LIMIT`.
        rate_setting: &'static str,
        /// The burst's setting.
        burst_setting: &'static str,
        /// The rate given.
        per_second: u32,
    },
}

/// A rate limit from its two settings: a rate of 0 disables it (`None`); otherwise the burst
/// must be at least 1.
pub fn rate_limit_setting(
    rate_setting: &'static str,
    per_second: u32,
    burst_setting: &'static str,
    burst: u32,
) -> Result<Option<RateLimit>, ConfigError> {
    if per_second == 0 {
        return Ok(None);
    }
    if burst == 0 {
        return Err(ConfigError::ZeroBurst {
            rate_setting,
            burst_setting,
            per_second,
        });
    }
    Ok(Some(RateLimit { per_second, burst }))
}

/// [`rate_limit_setting`] of `FNMESH_NAMESPACE_RATE_LIMIT` and `FNMESH_NAMESPACE_RATE_BURST`.
pub fn namespace_rate_limit(per_second: u32, burst: u32) -> Result<Option<RateLimit>, ConfigError> {
    rate_limit_setting(
        "FNMESH_NAMESPACE_RATE_LIMIT",
        per_second,
        "FNMESH_NAMESPACE_RATE_BURST",
        burst,
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn namespace_limits_are_validated_and_zero_disables() {
        assert_eq!(
            namespace_rate_limit(5000, 10_000).unwrap(),
            Some(RateLimit {
                per_second: 5000,
                burst: 10_000
            })
        );
        assert_eq!(namespace_rate_limit(0, 0).unwrap(), None);
        assert_eq!(namespace_rate_limit(0, 7).unwrap(), None);
        let err = namespace_rate_limit(10, 0).unwrap_err().to_string();
        assert!(
            err.contains("FNMESH_NAMESPACE_RATE_BURST")
                && err.contains("FNMESH_NAMESPACE_RATE_LIMIT"),
            "{err}"
        );
        assert_eq!(
            GatewayConfig::default().namespace_rate_limit,
            Some(RateLimit {
                per_second: DEFAULT_NAMESPACE_RATE,
                burst: DEFAULT_NAMESPACE_BURST
            })
        );
    }
}
