//! Per-function concurrency and the node-wide caps on sandboxes and memory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "pool_support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fnmesh_core::{InvocationStatus, Runtime};
use serde_json::json;
use support::{function, Harness, COUNTER_PY, SLEEPY_PY};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocations_beyond_max_concurrency_wait_for_a_sandbox() {
    let h = Harness::new().await;
    let code = h.code("sleepy", &[("main.py", SLEEPY_PY)]);
    let mut f = function("sleepy", Runtime::Python3, "main.handle");
    f.config.max_concurrency = 2;

    // Watch the pool while three invocations run at once.
    let peak = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (executor, peak, done) = (h.executor.clone(), peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(executor.stats().live, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let started = Instant::now();
    let runs = (0..3).map(|i| h.run(&f, &code, json!({"sleep": 0.4, "i": i})));
    let outcomes = futures::future::join_all(runs).await;
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    watcher.await.unwrap();

    for out in &outcomes {
        assert_eq!(out.status, InvocationStatus::Succeeded, "{out:?}");
    }
    assert_eq!(
        h.fake.created(),
        2,
        "never more than max_concurrency sandboxes"
    );
    assert!(peak.load(Ordering::Relaxed) <= 2);
    assert_eq!(outcomes.iter().filter(|o| o.cold_start).count(), 2);
    assert!(
        elapsed >= Duration::from_millis(800),
        "the third invocation waited for a free sandbox ({elapsed:?})"
    );
    h.executor.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_invocation_times_out_when_no_sandbox_frees_up() {
    let h = Harness::new().await;
    let code = h.code("sleepy", &[("main.py", SLEEPY_PY)]);
    let mut f = function("sleepy", Runtime::Python3, "main.handle");
    f.config.max_concurrency = 1;
    f.config.timeout_ms = 700;

    let (long, waiting) = tokio::join!(h.run(&f, &code, json!({"sleep": 0.5})), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut g = f.clone();
        g.config.timeout_ms = 200;
        h.run(&g, &code, json!({"sleep": 0})).await
    });
    assert_eq!(long.status, InvocationStatus::Succeeded, "{long:?}");
    assert_eq!(waiting.status, InvocationStatus::Timeout, "{waiting:?}");
    assert_eq!(h.fake.created(), 1);
    h.executor.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_wide_sandbox_cap_evicts_the_least_recently_used_idle_sandbox() {
    let h = Harness::with(|c| c.max_sandboxes = 2).await;
    let code = h.code("counter", &[("main.py", COUNTER_PY)]);
    let a = function("a", Runtime::Python3, "main.handle");
    let b = function("b", Runtime::Python3, "main.handle");
    let c = function("c", Runtime::Python3, "main.handle");

    assert!(h.run(&a, &code, json!(null)).await.cold_start);
    assert!(h.run(&b, &code, json!(null)).await.cold_start);
    assert_eq!(h.fake.live_ids().len(), 2);

    // `a` is the least recently used idle sandbox: `c` takes its place.
    let out = h.run(&c, &code, json!(null)).await;
    assert_eq!(out.status, InvocationStatus::Succeeded, "{out:?}");
    assert!(out.cold_start);
    assert_eq!(h.executor.stats().live, 2);
    assert_eq!(h.fake.live_ids().len(), 2);
    assert_eq!(h.fake.destroyed(), 1);

    let out = h.run(&b, &code, json!(null)).await;
    assert!(!out.cold_start, "b stayed warm");
    assert_eq!(out.result.unwrap()["count"], 2);
    let out = h.run(&a, &code, json!(null)).await;
    assert!(out.cold_start, "a was evicted");
    assert_eq!(out.result.unwrap()["count"], 1);
    h.executor.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_cap_evicts_idle_sandboxes_or_waits_for_busy_ones() {
    let h = Harness::with(|c| c.max_memory_mb = 256).await;
    let code = h.code("sleepy", &[("main.py", SLEEPY_PY)]);
    let small = function("small", Runtime::Python3, "main.handle");
    let mut big = function("big", Runtime::Python3, "main.handle");
    big.config.memory_mb = 256;
    let mut huge = function("huge", Runtime::Python3, "main.handle");
    huge.config.memory_mb = 512;

    assert!(h.run(&small, &code, json!({})).await.cold_start);
    assert_eq!(h.executor.stats().memory_mb_reserved, 128);

    // `big` needs all 256 MiB: the idle `small` sandbox is evicted.
    let out = h.run(&big, &code, json!({})).await;
    assert_eq!(out.status, InvocationStatus::Succeeded, "{out:?}");
    assert_eq!(h.executor.stats().memory_mb_reserved, 256);
    assert_eq!(h.fake.live_ids().len(), 1);

    // While `big` is busy, `small` waits for it, then evicts it.
    let started = Instant::now();
    let (busy, waiting) = tokio::join!(h.run(&big, &code, json!({"sleep": 0.4})), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        h.run(&small, &code, json!({})).await
    });
    assert_eq!(busy.status, InvocationStatus::Succeeded, "{busy:?}");
    assert!(!busy.cold_start);
    assert_eq!(waiting.status, InvocationStatus::Succeeded, "{waiting:?}");
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(h.executor.stats().memory_mb_reserved, 128);

    // A function larger than the whole cap fails at once.
    let out = h.run(&huge, &code, json!({})).await;
    assert_eq!(out.status, InvocationStatus::Failed);
    assert_eq!(out.error.unwrap().kind, fnmesh_core::ErrorKind::Crashed);
    h.executor.shutdown(Duration::from_secs(5)).await;
}
