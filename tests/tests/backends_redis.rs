//! The Redis rate limiter against a real `redis-server`: the conformance suite, key expiry,
//! one combined limit across two limiters ("gateways") sharing a Redis, and the failure
//! policies when Redis goes away mid-test. Each test starts its own `redis-server`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fnmesh_ratelimit::conformance;
use fnmesh_ratelimit::redis::{
    bucket_key, FailurePolicy, RedisRateLimiter, FAIL_CLOSED_RETRY_AFTER,
};
use fnmesh_ratelimit::{RateLimit, RateLimiter};
use fnmesh_tests::servers::redis::TestRedis;

async fn limiter(redis: &TestRedis, policy: FailurePolicy) -> Arc<RedisRateLimiter> {
    let limiter = RedisRateLimiter::connect(&redis.url(), policy)
        .await
        .unwrap();
    assert_eq!(limiter.redis_errors(), 0, "redis is up: no error");
    Arc::new(limiter)
}

macro_rules! cases {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $case() {
            let redis = TestRedis::start();
            let limiter = limiter(&redis, FailurePolicy::FailClosed).await;
            conformance::$case(limiter.clone()).await;
            assert_eq!(limiter.redis_errors(), 0, "every decision came from redis");
        }
    )*};
}

mod conformance_suite {
    use super::*;

    fnmesh_ratelimit::ratelimit_conformance_cases!(cases);

    #[tokio::test]
    async fn run_all_on_one_limiter() {
        let redis = TestRedis::start();
        conformance::run_all(limiter(&redis, FailurePolicy::FailClosed).await).await;
    }
}

#[tokio::test]
async fn keys_expire_when_the_bucket_is_full_again() {
    let redis = TestRedis::start();
    let limiter = limiter(&redis, FailurePolicy::FailClosed).await;
    let limit = RateLimit {
        per_second: 1,
        burst: 5,
    };
    assert!(limiter.check("expiry", limit).await.unwrap().allowed);
    let key = bucket_key("expiry", limit);
    let pttl: i64 = redis.command(&["PTTL", &key]).parse().unwrap();
    assert!(
        pttl > 0 && pttl <= 1000,
        "after one request the bucket is full again within one period (1 s): PTTL {pttl}"
    );
    for _ in 0..4 {
        assert!(limiter.check("expiry", limit).await.unwrap().allowed);
    }
    let pttl: i64 = redis.command(&["PTTL", &key]).parse().unwrap();
    assert!(
        pttl > 4000 && pttl <= 5000,
        "after the whole burst it refills in about 5 s: PTTL {pttl}"
    );
    // A refusal writes nothing: the expiry does not move.
    assert!(!limiter.check("expiry", limit).await.unwrap().allowed);
    let after: i64 = redis.command(&["PTTL", &key]).parse().unwrap();
    assert!(after <= pttl, "a refusal does not extend the key");

    // A fast limit: the key disappears on its own.
    let fast = RateLimit {
        per_second: 20,
        burst: 1,
    };
    assert!(limiter.check("gone", fast).await.unwrap().allowed);
    let key = bucket_key("gone", fast);
    let deadline = Instant::now() + Duration::from_secs(2);
    while redis.command(&["EXISTS", &key]) != "0" {
        assert!(Instant::now() < deadline, "{key} did not expire");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn different_limits_on_one_subject_do_not_share_a_bucket() {
    let redis = TestRedis::start();
    let limiter = limiter(&redis, FailurePolicy::FailClosed).await;
    let a = RateLimit {
        per_second: 1,
        burst: 1,
    };
    let b = RateLimit {
        per_second: 2,
        burst: 1,
    };
    assert!(limiter.check("subject", a).await.unwrap().allowed);
    assert!(!limiter.check("subject", a).await.unwrap().allowed);
    assert!(limiter.check("subject", b).await.unwrap().allowed);
}

/// Hammers `limiters` concurrently (`tasks_each` tasks per limiter, each at most
/// `max_per_task` checks) on one key for `run_for`; returns (admitted, refused, elapsed).
async fn hammer(
    limiters: &[Arc<RedisRateLimiter>],
    key: &str,
    limit: RateLimit,
    run_for: Duration,
) -> (u32, u32, Duration) {
    const TASKS_EACH: usize = 8;
    const MAX_PER_TASK: u32 = 1_000_000;
    let admitted = Arc::new(AtomicU32::new(0));
    let refused = Arc::new(AtomicU32::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for limiter in limiters {
        for _ in 0..TASKS_EACH {
            let (limiter, key) = (limiter.clone(), key.to_owned());
            let (admitted, refused) = (admitted.clone(), refused.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = 0;
                while start.elapsed() < run_for && n < MAX_PER_TASK {
                    n += 1;
                    let d = limiter.check(&key, limit).await.unwrap();
                    if d.allowed {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    } else {
                        let retry = d.retry_after.expect("a refusal has a retry-after");
                        assert!(
                            retry > Duration::ZERO && retry <= Duration::from_secs(1),
                            "{d:?}"
                        );
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::task::yield_now().await;
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    (
        admitted.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        start.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateways_sharing_redis_enforce_one_combined_limit() {
    let redis = TestRedis::start();
    let gateways = [
        limiter(&redis, FailurePolicy::FailClosed).await,
        limiter(&redis, FailurePolicy::FailClosed).await,
    ];
    let limit = RateLimit {
        per_second: 50,
        burst: 10,
    };
    let (admitted, refused, elapsed) =
        hammer(&gateways, "combined", limit, Duration::from_secs(5)).await;
    assert!(
        elapsed >= Duration::from_secs(3),
        "the flood lasted {elapsed:?}: raise MAX_PER_TASK"
    );
    let ideal = 10.0 + 50.0 * elapsed.as_secs_f64();
    let max = ideal * 1.05;
    let min = ideal * 0.9;
    eprintln!(
        "two gateways, 50/s burst 10: admitted {admitted}, refused {refused} in {:.3}s \
         (ideal {ideal:.0}, accepted range [{min:.0}, {max:.0}])",
        elapsed.as_secs_f64()
    );
    assert!(
        f64::from(admitted) <= max && f64::from(admitted) >= min,
        "admitted {admitted}, expected within [{min:.0}, {max:.0}]"
    );
    assert!(refused > admitted, "the flood was mostly refused");
    for g in &gateways {
        assert_eq!(g.redis_errors(), 0);
    }
}

#[tokio::test]
async fn fail_open_decides_locally_while_redis_is_down() {
    let mut redis = TestRedis::start();
    let limiter = limiter(&redis, FailurePolicy::FailOpen).await;
    let limit = RateLimit {
        per_second: 1,
        burst: 3,
    };
    assert!(limiter.check("before", limit).await.unwrap().allowed);
    redis.stop();

    // A fresh subject: the local limiter admits its burst (plus its slack), then refuses.
    let local = limiter.local_limit(limit);
    let mut decisions = Vec::new();
    for _ in 0..local.burst + 2 {
        decisions.push(limiter.check("during", limit).await.unwrap());
    }
    let admitted = decisions.iter().filter(|d| d.allowed).count();
    assert_eq!(
        admitted, local.burst as usize,
        "fail open admits what the local limiter admits: {decisions:?}"
    );
    let last = decisions.last().unwrap();
    assert!(!last.allowed && last.retry_after.is_some());
    assert!(
        last.limit == limit.burst,
        "the limit shown is the global one"
    );
    assert!(limiter.redis_errors() >= 1, "the failure is counted");

    // Back up: decisions come from Redis again (a bucket key appears for a fresh subject).
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    for i in 0.. {
        let key = format!("after-{i}");
        limiter.check(&key, limit).await.unwrap();
        if redis.command(&["EXISTS", &bucket_key(&key, limit)]) == "1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "redis was not used again after restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn fail_closed_refuses_while_redis_is_down_and_recovers() {
    let mut redis = TestRedis::start();
    let limiter = limiter(&redis, FailurePolicy::FailClosed).await;
    let limit = RateLimit {
        per_second: 100,
        burst: 100,
    };
    assert!(limiter.check("closed", limit).await.unwrap().allowed);
    redis.stop();
    for _ in 0..20 {
        let d = limiter.check("closed", limit).await.unwrap();
        assert!(!d.allowed, "fail closed refuses while redis is down");
        assert_eq!(d.retry_after, Some(FAIL_CLOSED_RETRY_AFTER));
        assert_eq!(d.remaining, 0);
    }
    assert!(limiter.redis_errors() >= 1);

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !limiter.check("closed", limit).await.unwrap().allowed {
        assert!(
            Instant::now() < deadline,
            "still refusing after redis came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_limiter_started_while_redis_is_down_connects_later() {
    let mut redis = TestRedis::start();
    let url = redis.url();
    redis.stop();
    let limiter = RedisRateLimiter::connect(&url, FailurePolicy::FailClosed)
        .await
        .expect("a down redis does not stop the limiter from starting");
    let limit = RateLimit {
        per_second: 10,
        burst: 10,
    };
    assert!(!limiter.check("late", limit).await.unwrap().allowed);
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !limiter.check("late", limit).await.unwrap().allowed {
        assert!(
            Instant::now() < deadline,
            "never connected after redis came up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
