//! Two real gateways sharing one Redis enforce one combined per-function limit, and keep
//! answering (never a 500) when Redis goes away.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fnmesh_tests::servers::redis::TestRedis;
use fnmesh_tests::{unique, TestApp, ADMIN_KEY};
use serde_json::json;

#[derive(Default)]
struct Counts {
    admitted: AtomicU64,
    limited: AtomicU64,
    limited_without_retry_after: AtomicU64,
    other: AtomicU64,
}

async fn hammer(apps: &[&TestApp], name: &str, for_how_long: Duration, counts: Arc<Counts>) {
    let deadline = Instant::now() + for_how_long;
    let mut tasks = Vec::new();
    for app in apps {
        for _ in 0..6 {
            let url = format!("{}/v1/functions/{name}/invoke?async=true", app.base_url);
            let http = app.http.clone();
            let counts = counts.clone();
            tasks.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    let r = http
                        .post(&url)
                        .bearer_auth(ADMIN_KEY)
                        .body("{}")
                        .send()
                        .await;
                    match r.map(|r| (r.status().as_u16(), r.headers().contains_key("retry-after")))
                    {
                        Ok((202, _)) => counts.admitted.fetch_add(1, Ordering::Relaxed),
                        Ok((429, true)) => counts.limited.fetch_add(1, Ordering::Relaxed),
                        Ok((429, false)) => counts
                            .limited_without_retry_after
                            .fetch_add(1, Ordering::Relaxed),
                        _ => counts.other.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateways_share_one_limit_and_survive_redis_going_down() {
    let mut redis = TestRedis::start();
    let env = [
        ("FNMESH_REDIS_URL", redis.url()),
        ("FNMESH_RATE_LIMIT_FAILURE", "fail_open".to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = TestApp::start_with(&env).await;
    let b = TestApp::start_with(&env).await;
    let name = unique("limited");
    let config = json!({"rate_limit": {"per_second": 50, "burst": 10}});
    for app in [&a, &b] {
        app.deploy_with(
            &name,
            "python3",
            "main.handle",
            &[("main.py", "def handle(e, c):\n    return 1\n")],
            config.clone(),
        )
        .await;
    }

    let counts = Arc::new(Counts::default());
    let started = Instant::now();
    hammer(&[&a, &b], &name, Duration::from_secs(5), counts.clone()).await;
    let secs = started.elapsed().as_secs_f64();
    let admitted = counts.admitted.load(Ordering::Relaxed);
    let limited = counts.limited.load(Ordering::Relaxed);
    let ideal = 10.0 + 50.0 * secs;
    println!("admitted {admitted} of ideal {ideal:.0} over {secs:.2} s; {limited} got 429");
    // Tolerance: 5% plus one burst, for requests in flight when the clock started/stopped.
    assert!(
        (admitted as f64) <= ideal * 1.05 + 10.0,
        "admitted {admitted} > {ideal:.0} (+5%)"
    );
    assert!(
        (admitted as f64) >= ideal * 0.8,
        "admitted {admitted} is far below {ideal:.0}"
    );
    assert!(limited > 0);
    assert_eq!(
        counts.limited_without_retry_after.load(Ordering::Relaxed),
        0,
        "every 429 carries Retry-After"
    );
    assert_eq!(counts.other.load(Ordering::Relaxed), 0);

    // Redis goes away: fail_open falls back to local limits; nobody gets a 500.
    redis.stop();
    let counts = Arc::new(Counts::default());
    hammer(&[&a, &b], &name, Duration::from_secs(2), counts.clone()).await;
    assert_eq!(
        counts.other.load(Ordering::Relaxed),
        0,
        "no 5xx while Redis is down"
    );
    assert!(
        counts.admitted.load(Ordering::Relaxed) > 0,
        "fail_open still admits within local limits"
    );
    assert!(!a.log().contains(" 500 "), "{}", a.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_refuses_while_redis_is_down() {
    let mut redis = TestRedis::start();
    let url = redis.url();
    let app = TestApp::start_with(&[
        ("FNMESH_REDIS_URL", url.as_str()),
        ("FNMESH_RATE_LIMIT_FAILURE", "fail_closed"),
    ])
    .await;
    let name = unique("closed");
    app.deploy_with(
        &name,
        "python3",
        "main.handle",
        &[("main.py", "def handle(e, c):\n    return 1\n")],
        json!({"rate_limit": {"per_second": 100, "burst": 100}}),
    )
    .await;
    let r = app
        .call(
            "POST",
            &format!("/v1/functions/{name}/invoke?async=true"),
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, 202);
    redis.stop();
    let r = app
        .call(
            "POST",
            &format!("/v1/functions/{name}/invoke?async=true"),
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, 429, "{:?}", r.body);
    assert!(r.headers.contains_key("retry-after"));
}
