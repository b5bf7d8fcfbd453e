//! The conformance suite every [`RateLimiter`] must pass (in memory now, Redis later).
//!
//! Each case is a `pub async fn` taking the limiter under test; [`run_all`] runs every case.
//! Keys carry a random suffix, so cases can share one backend. Timing assertions allow some
//! slack (a remote backend adds round trips), but the shape of GCRA must hold.
//!
//! ```text
//! let limiter: Arc<dyn RateLimiter> = Arc::new(RedisRateLimiter::connect(&url).await?);
//! fnmesh_ratelimit::conformance::run_all(limiter).await;
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{RateLimit, RateLimitError, RateLimiter};

/// The limiter under test.
pub type Limiter = Arc<dyn RateLimiter>;

/// Slack allowed on durations for clock granularity and backend round trips.
const SLACK: Duration = Duration::from_millis(50);

/// Every case of this suite, in the order [`run_all`] runs them. An engine's test file
/// generates one test per case from this one list (`fnmesh_ratelimit::ratelimit_conformance_cases!(cases);` with its own
/// `cases!` macro), so no engine can miss a case.
#[macro_export]
macro_rules! ratelimit_conformance_cases {
    ($callback:ident) => {
        $callback!(
            invalid_limits_are_refused,
            burst_is_admitted_then_refused,
            remaining_counts_down,
            keys_are_independent,
            a_token_returns_after_one_period,
            sustained_rate_is_burst_plus_rate
        );
    };
}

/// Runs every case, one after the other.
pub async fn run_all(limiter: Limiter) {
    macro_rules! run {
        ($($case:ident),* $(,)?) => { $( $case(limiter.clone()).await; )* };
    }
    crate::ratelimit_conformance_cases!(run);
}

/// A key no other case or run uses.
pub fn fresh_key(label: &str) -> String {
    format!("conformance:{label}:{:016x}", rand::random::<u64>())
}

/// A zero rate or burst is `InvalidLimit`.
pub async fn invalid_limits_are_refused(limiter: Limiter) {
    let key = fresh_key("invalid");
    for limit in [
        RateLimit {
            per_second: 0,
            burst: 1,
        },
        RateLimit {
            per_second: 1,
            burst: 0,
        },
        RateLimit {
            per_second: 0,
            burst: 0,
        },
    ] {
        let err = limiter.check(&key, limit).await.unwrap_err();
        assert!(
            matches!(err, RateLimitError::InvalidLimit),
            "{limit:?} must be InvalidLimit, got {err:?}"
        );
    }
}

/// From idle, `burst` requests are admitted; the next is refused with a retry-after of at
/// most one period.
pub async fn burst_is_admitted_then_refused(limiter: Limiter) {
    let key = fresh_key("burst");
    let limit = RateLimit {
        per_second: 10,
        burst: 5,
    };
    let period = Duration::from_millis(100);
    for i in 0..limit.burst {
        let d = limiter.check(&key, limit).await.unwrap();
        assert!(d.allowed, "request {} of the burst is admitted", i + 1);
        assert_eq!(d.limit, limit.burst, "limit is the burst");
        assert_eq!(
            d.retry_after, None,
            "an admitted request has no retry-after"
        );
        assert!(
            d.reset_after <= period * limit.burst + SLACK,
            "reset_after {:?} is at most burst periods",
            d.reset_after
        );
    }
    let refused = limiter.check(&key, limit).await.unwrap();
    assert!(!refused.allowed, "the request after the burst is refused");
    assert_eq!(refused.remaining, 0, "nothing remains when refused");
    assert_eq!(refused.limit, limit.burst);
    let retry = refused.retry_after.expect("a refusal has a retry-after");
    assert!(
        retry > Duration::ZERO && retry <= period + SLACK,
        "retry_after {retry:?} is in (0, one period]"
    );
    assert!(
        refused.reset_after >= retry && refused.reset_after <= period * limit.burst + SLACK,
        "reset_after {:?} is between retry_after and burst periods",
        refused.reset_after
    );
}

/// `remaining` counts down by one per admitted request.
pub async fn remaining_counts_down(limiter: Limiter) {
    let key = fresh_key("remaining");
    // One token per second: no refill during the test.
    let limit = RateLimit {
        per_second: 1,
        burst: 5,
    };
    let mut remaining = Vec::new();
    for _ in 0..limit.burst {
        remaining.push(limiter.check(&key, limit).await.unwrap().remaining);
    }
    assert_eq!(
        remaining,
        vec![4, 3, 2, 1, 0],
        "remaining after each request"
    );
    let first_reset = Duration::from_secs(5);
    let d = limiter.check(&key, limit).await.unwrap();
    assert!(!d.allowed);
    assert!(
        d.reset_after <= first_reset + SLACK
            && d.reset_after >= first_reset - Duration::from_millis(500),
        "after a full burst the bucket refills in about burst/rate, got {:?}",
        d.reset_after
    );
}

/// Exhausting one key leaves others untouched.
pub async fn keys_are_independent(limiter: Limiter) {
    let a = fresh_key("a");
    let b = fresh_key("b");
    let limit = RateLimit {
        per_second: 1,
        burst: 2,
    };
    for _ in 0..2 {
        assert!(limiter.check(&a, limit).await.unwrap().allowed);
    }
    assert!(
        !limiter.check(&a, limit).await.unwrap().allowed,
        "a is exhausted"
    );
    let d = limiter.check(&b, limit).await.unwrap();
    assert!(d.allowed, "b is independent of a");
    assert_eq!(d.remaining, 1);
}

/// After waiting one period (1 / per_second), one more request is admitted.
pub async fn a_token_returns_after_one_period(limiter: Limiter) {
    let key = fresh_key("refill");
    let limit = RateLimit {
        per_second: 20,
        burst: 1,
    };
    assert!(limiter.check(&key, limit).await.unwrap().allowed);
    let refused = limiter.check(&key, limit).await.unwrap();
    assert!(!refused.allowed);
    let retry = refused.retry_after.unwrap();
    assert!(
        retry <= Duration::from_millis(50) + SLACK,
        "retry_after {retry:?}"
    );
    tokio::time::sleep(retry + Duration::from_millis(5)).await;
    let again = limiter.check(&key, limit).await.unwrap();
    assert!(
        again.allowed,
        "a request after retry_after is admitted, got {again:?}"
    );
    assert!(
        !limiter.check(&key, limit).await.unwrap().allowed,
        "but only one"
    );
}

/// Hammered for about a second, a limit admits about burst + per_second requests.
pub async fn sustained_rate_is_burst_plus_rate(limiter: Limiter) {
    let key = fresh_key("sustained");
    let limit = RateLimit {
        per_second: 50,
        burst: 10,
    };
    let start = Instant::now();
    let mut admitted = 0u32;
    while start.elapsed() < Duration::from_secs(1) {
        if limiter.check(&key, limit).await.unwrap().allowed {
            admitted += 1;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let max = f64::from(limit.burst) + f64::from(limit.per_second) * elapsed + 1.0;
    let min = f64::from(limit.burst) + f64::from(limit.per_second) * 0.8 * 1.0 - 1.0;
    let got = f64::from(admitted);
    assert!(
        got <= max && got >= min,
        "admitted {admitted} in {elapsed:.3}s, expected within [{min:.0}, {max:.0}]"
    );
}
