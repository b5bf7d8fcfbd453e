//! Warm reuse: a second invocation takes the idle sandbox of its version, and never one of
//! another version or function.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "pool_support/mod.rs"]
mod support;

use fnmesh_core::{InvocationStatus, Runtime};
use serde_json::json;
use support::{function, Harness, COUNTER_PY};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_invocation_is_warm_and_keeps_module_state() {
    let h = Harness::new().await;
    let code = h.code("counter", &[("main.py", COUNTER_PY)]);
    let f = function("counter", Runtime::Python3, "main.handle");

    let first = h.run(&f, &code, json!({"n": 1})).await;
    assert_eq!(first.status, InvocationStatus::Succeeded, "{first:?}");
    assert!(first.cold_start);
    assert!(first.init_us > 0);
    assert_eq!(first.result, Some(json!({"count": 1, "event": {"n": 1}})));

    let second = h.run(&f, &code, json!({"n": 2})).await;
    assert_eq!(second.status, InvocationStatus::Succeeded, "{second:?}");
    assert!(!second.cold_start);
    assert_eq!(second.init_us, 0);
    assert_eq!(second.result, Some(json!({"count": 2, "event": {"n": 2}})));

    assert_eq!(h.fake.created(), 1);
    let stats = h.executor.stats();
    assert_eq!((stats.live, stats.idle, stats.busy), (1, 1, 0));
    assert_eq!(stats.memory_mb_reserved, 128);
    h.executor.shutdown(std::time::Duration::from_secs(5)).await;
    assert!(h.fake.live_ids().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_state_does_not_leak_across_versions_or_functions() {
    let h = Harness::new().await;
    let code = h.code("counter", &[("main.py", COUNTER_PY)]);
    let v1 = function("counter", Runtime::Python3, "main.handle");
    let mut v2 = v1.clone();
    v2.version = 2;
    let other = function("other", Runtime::Python3, "main.handle");

    for expected in 1..=3 {
        let out = h.run(&v1, &code, json!(null)).await;
        assert_eq!(out.result.unwrap()["count"], expected);
    }
    let out = h.run(&v2, &code, json!(null)).await;
    assert!(out.cold_start, "a new version gets a new sandbox");
    assert_eq!(out.result.unwrap()["count"], 1);

    let out = h.run(&other, &code, json!(null)).await;
    assert!(out.cold_start, "another function gets a new sandbox");
    assert_eq!(out.result.unwrap()["count"], 1);

    // The old version still has its own warm sandbox.
    let out = h.run(&v1, &code, json!(null)).await;
    assert!(!out.cold_start);
    assert_eq!(out.result.unwrap()["count"], 4);
    assert_eq!(h.fake.created(), 3);
    h.executor.shutdown(std::time::Duration::from_secs(5)).await;
}
