//! The rate limiter conformance suite against the in-memory governor limiter.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use fnmesh_ratelimit::conformance;
use fnmesh_ratelimit::local::LocalRateLimiter;

macro_rules! cases {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $case() {
            conformance::$case(Arc::new(LocalRateLimiter::new())).await;
        }
    )*};
}

fnmesh_ratelimit::ratelimit_conformance_cases!(cases);

#[tokio::test]
async fn run_all_on_one_limiter() {
    conformance::run_all(Arc::new(LocalRateLimiter::new())).await;
}
