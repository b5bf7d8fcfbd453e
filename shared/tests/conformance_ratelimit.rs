//! The rate limiter conformance suite against the in-memory governor limiter.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use fnmesh_shared::ratelimit::conformance;
use fnmesh_shared::ratelimit::local::LocalRateLimiter;

macro_rules! cases {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $case() {
            conformance::$case(Arc::new(LocalRateLimiter::new())).await;
        }
    )*};
}

cases!(
    invalid_limits_are_refused,
    burst_is_admitted_then_refused,
    remaining_counts_down,
    keys_are_independent,
    a_token_returns_after_one_period,
    sustained_rate_is_burst_plus_rate,
);

#[tokio::test]
async fn run_all_on_one_limiter() {
    conformance::run_all(Arc::new(LocalRateLimiter::new())).await;
}
