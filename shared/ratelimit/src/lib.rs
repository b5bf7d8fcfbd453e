//! Rate limiting: GCRA decisions per key.
//!
//! [`RateLimiter`] is implemented by [`local::LocalRateLimiter`] (`governor`, in memory, one
//! gateway) and by [`redis::RedisRateLimiter`] (GCRA in Redis, shared by every gateway); both
//! pass [`conformance`].

use std::time::Duration;

use async_trait::async_trait;

pub mod local;
pub mod redis;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

// A limit: a sustained rate plus a burst. It lives in `fnmesh_core` (a function's config
// carries one) and is re-exported here.
pub use fnmesh_core::function::RateLimit;

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    /// Whether the request is admitted.
    pub allowed: bool,
    /// The limit's burst (for `RateLimit-Limit`).
    pub limit: u32,
    /// Requests that could still be admitted right now.
    pub remaining: u32,
    /// When the bucket is full again (for `RateLimit-Reset`).
    pub reset_after: Duration,
    /// When to retry, if refused (for `Retry-After`).
    pub retry_after: Option<Duration>,
}

/// Errors of a rate limiter backend.
#[derive(Debug, thiserror::Error)]
pub enum RateLimitError {
    /// A limit with a zero rate or burst.
    #[error("invalid rate limit: per_second and burst must be at least 1")]
    InvalidLimit,
    /// The backend failed.
    #[error("rate limiter: {0}")]
    Backend(String),
}

/// Decides whether a request under `key` is admitted by `limit`.
#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// Counts one request against `key` and decides.
    async fn check(&self, key: &str, limit: RateLimit) -> Result<RateDecision, RateLimitError>;

    /// Failures of a shared backend since start (checks decided by the failure policy
    /// instead); 0 for limiters without one.
    fn backend_errors(&self) -> u64 {
        0
    }
}
