//! Keep-alive reaping, `min_warm`, prewarming and shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "pool_support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use fnmesh_core::{InvocationStatus, Runtime};
use serde_json::json;
use support::{function, Harness, COUNTER_PY, SLEEPY_PY};

const KEEP_ALIVE: Duration = Duration::from_millis(200);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sandboxes_are_reaped_after_keep_alive() {
    let h = Harness::with(|c| c.keep_alive = KEEP_ALIVE).await;
    let code = h.code("counter", &[("main.py", COUNTER_PY)]);
    let f = function("counter", Runtime::Python3, "main.handle");

    let out = h.run(&f, &code, json!(null)).await;
    assert_eq!(out.status, InvocationStatus::Succeeded, "{out:?}");
    let idle_at = Instant::now();
    assert_eq!(h.executor.stats().idle, 1);

    let executor = h.executor.clone();
    assert!(
        h.eventually(Duration::from_secs(5), || executor.stats().live == 0)
            .await,
        "the idle sandbox was reaped"
    );
    assert!(idle_at.elapsed() >= KEEP_ALIVE);
    let fake = h.fake.clone();
    assert!(
        h.eventually(Duration::from_secs(2), || fake.live_ids().is_empty())
            .await
    );
    assert_eq!(h.executor.stats().memory_mb_reserved, 0);

    assert!(h.run(&f, &code, json!(null)).await.cold_start);
    h.executor.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_keeps_min_warm_sandboxes() {
    let h = Harness::with(|c| c.keep_alive = KEEP_ALIVE).await;
    let code = h.code("sleepy", &[("main.py", SLEEPY_PY)]);
    let mut f = function("sleepy", Runtime::Python3, "main.handle");
    f.config.min_warm = 1;

    let (a, b) = tokio::join!(
        h.run(&f, &code, json!({"sleep": 0.2})),
        h.run(&f, &code, json!({"sleep": 0.2}))
    );
    assert!(a.cold_start && b.cold_start);
    assert_eq!(h.executor.stats().live, 2);

    let executor = h.executor.clone();
    assert!(
        h.eventually(Duration::from_secs(5), || executor.stats().live == 1)
            .await
    );
    // Several keep-alive periods later the last one is still there.
    tokio::time::sleep(KEEP_ALIVE * 3).await;
    assert_eq!(h.executor.stats().live, 1);
    assert!(!h.run(&f, &code, json!({})).await.cold_start);

    // Once a newer version is seen, the old version's warm sandbox is reaped too.
    let mut v2 = f.clone();
    v2.version = 2;
    v2.config.min_warm = 0;
    assert!(h.run(&v2, &code, json!({})).await.cold_start);
    let executor = h.executor.clone();
    assert!(
        h.eventually(Duration::from_secs(5), || executor.stats().live == 0)
            .await
    );
    h.executor.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prewarm_tops_up_to_min_warm_idle_sandboxes() {
    let h = Harness::new().await;
    let code = h.code("counter", &[("main.py", COUNTER_PY)]);
    let mut f = function("counter", Runtime::Python3, "main.handle");
    f.config.min_warm = 2;

    h.executor.prewarm(&f, &code).await;
    let executor = h.executor.clone();
    assert!(
        h.eventually(Duration::from_secs(10), || executor.stats().idle == 2)
            .await
    );
    // Prewarming again does not overshoot.
    h.executor.prewarm(&f, &code).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.fake.created(), 2);

    let out = h.run(&f, &code, json!(null)).await;
    assert_eq!(out.status, InvocationStatus::Succeeded, "{out:?}");
    assert!(!out.cold_start);
    assert_eq!(out.init_us, 0);
    h.executor.shutdown(Duration::from_secs(5)).await;
    assert!(h.fake.live_ids().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_busy_sandboxes_then_destroys_everything() {
    let h = Harness::new().await;
    let code = h.code("sleepy", &[("main.py", SLEEPY_PY)]);
    let f = function("sleepy", Runtime::Python3, "main.handle");
    let g = function("idle", Runtime::Python3, "main.handle");
    assert!(h.run(&g, &code, json!({})).await.cold_start);

    let executor = h.executor.clone();
    let job = support::job(&f, &code, json!({"sleep": 0.3}));
    let busy = tokio::spawn(async move { executor.execute(job).await });
    let executor = h.executor.clone();
    assert!(
        h.eventually(Duration::from_secs(5), || executor.stats().busy == 1)
            .await
    );

    h.executor.shutdown(Duration::from_secs(5)).await;
    let out = busy.await.unwrap();
    assert_eq!(
        out.status,
        InvocationStatus::Succeeded,
        "in-flight work finished: {out:?}"
    );
    assert!(h.fake.live_ids().is_empty());
    assert_eq!(h.executor.stats().live, 0);

    let after = h.run(&g, &code, json!({})).await;
    assert_eq!(after.status, InvocationStatus::Failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_kills_sandboxes_still_busy_at_the_deadline() {
    let h = Harness::new().await;
    let code = h.code("sleepy", &[("main.py", SLEEPY_PY)]);
    let f = function("sleepy", Runtime::Python3, "main.handle");

    let executor = h.executor.clone();
    let job = support::job(&f, &code, json!({"sleep": 30}));
    let busy = tokio::spawn(async move { executor.execute(job).await });
    let executor = h.executor.clone();
    assert!(
        h.eventually(Duration::from_secs(5), || executor.stats().busy == 1)
            .await
    );
    let fake = h.fake.clone();
    assert!(
        h.eventually(Duration::from_secs(5), || !fake.live_ids().is_empty())
            .await
    );

    let started = Instant::now();
    h.executor.shutdown(Duration::from_millis(300)).await;
    assert!(started.elapsed() < Duration::from_secs(3));
    let out = tokio::time::timeout(Duration::from_secs(5), busy)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status, InvocationStatus::Failed, "{out:?}");
    let fake = h.fake.clone();
    assert!(
        h.eventually(Duration::from_secs(2), || fake.live_ids().is_empty())
            .await
    );
}
