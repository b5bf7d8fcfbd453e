//! The node's code cache under its size cap with a real executor: code a warm sandbox mounts is
//! never evicted (the sandbox keeps serving from it), and goes once that sandbox is reaped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "pool_support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fnmesh_code::local::LocalCodeStore;
use fnmesh_code::CodeStore;
use fnmesh_core::archive::{self, ArchiveLimits};
use fnmesh_core::{Checksum, InvocationStatus, Runtime};
use fnmesh_nodes::code_cache::CodeCache;
use serde_json::json;
use support::{function, Harness};

/// A python handler returning `tag`, padded with a comment of `pad` bytes.
async fn deploy(store: &LocalCodeStore, tag: &str, pad: usize) -> Checksum {
    let source = format!(
        "# {}\ndef handle(event, context):\n    return {tag:?}\n",
        "x".repeat(pad)
    );
    let tar = archive::normalize(source.as_bytes(), "main.py", &ArchiveLimits::default()).unwrap();
    store.put(Bytes::from(tar)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_mounted_by_a_warm_sandbox_outlives_eviction_until_the_sandbox_goes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        LocalCodeStore::open(&dir.path().join("store"))
            .await
            .unwrap(),
    );
    let pad = 200 * 1024;
    let [a, b, c] = [
        deploy(&store, "a", pad).await,
        deploy(&store, "b", pad).await,
        deploy(&store, "c", pad).await,
    ];
    // Room for one tree and a half: every new tree evicts whatever is not held.
    let cache_dir = dir.path().join("cache");
    let probe = CodeCache::new(
        &dir.path().join("probe"),
        store.clone(),
        ArchiveLimits::default(),
        u64::MAX,
    )
    .unwrap();
    drop(probe.get(&a).await.unwrap());
    let tree = probe.bytes();
    let cache = CodeCache::new(
        &cache_dir,
        store.clone(),
        ArchiveLimits::default(),
        tree + tree / 2,
    )
    .unwrap();
    let pins = cache.pins();
    let h = Harness::with(move |c| {
        c.code_pins = Some(pins);
        c.keep_alive = Duration::from_millis(1500);
    })
    .await;

    // A runs and stays warm; its invocation's own lease is gone afterwards.
    let f = function("fa", Runtime::Python3, "main.handle");
    let lease = cache.get(&a).await.unwrap();
    let a_dir = lease.path().to_path_buf();
    let out = h.run(&f, &a_dir, json!(null)).await;
    assert_eq!(out.status, InvocationStatus::Succeeded, "{:?}", out.error);
    drop(lease);

    // B and C arrive: the cache is over its cap, but A is mounted by a live sandbox.
    drop(cache.get(&b).await.unwrap());
    drop(cache.get(&c).await.unwrap());
    assert!(a_dir.join("main.py").exists(), "mounted code was evicted");
    assert!(
        !cache_dir.join(b.as_str()).exists(),
        "unheld code is evicted over the cap"
    );
    let out = h.run(&f, &a_dir, json!(null)).await;
    assert_eq!(out.status, InvocationStatus::Succeeded, "{:?}", out.error);
    assert!(!out.cold_start, "the warm sandbox serves from its code");
    assert_eq!(out.result, Some(json!("a")));

    // Once the idle sandbox is reaped, A is just cold code: the next arrival evicts it.
    assert!(
        h.eventually(Duration::from_secs(10), || h.executor.stats().live == 0)
            .await,
        "the idle sandbox was not reaped"
    );
    // (The pool stops counting a reaped sandbox before its destruction ends, and the sandbox
    // holds its code until then.) Only an arrival evicts, and a tree already cached is no
    // arrival: B and C take turns, so each round brings in the one the last round evicted.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for next in [&b, &c].into_iter().cycle() {
        drop(cache.get(next).await.unwrap());
        if !a_dir.exists() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "code no sandbox holds any more is evicted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.executor.shutdown(Duration::from_secs(5)).await;
}
