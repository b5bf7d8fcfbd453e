//! The JetStream KV node registry against a real `nats-server -js`: the whole registry
//! conformance suite (each registry the factory makes under its own region prefix, so its own
//! bucket), a second handle on the same region seeing the same nodes, entries removed from the
//! bucket by their own time to live, and a bucket of an earlier fnmesh (no per-entry TTLs)
//! upgraded when opened.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fnmesh_bus::registry::conformance::{self, node_info};
use fnmesh_bus::registry::jetstream::JetStreamRegistry;
use fnmesh_bus::registry::NodeRegistry;
use fnmesh_tests::servers::nats::TestNats;

/// A region prefix no other registry of this process uses.
fn fresh_prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "r{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

async fn open(url: &str, prefix: &str) -> JetStreamRegistry {
    let client = async_nats::connect(url).await.expect("connecting to nats");
    JetStreamRegistry::open(client, prefix)
        .await
        .expect("opening the jetstream registry")
}

/// The region's KV bucket, opened directly.
async fn bucket(url: &str, prefix: &str) -> async_nats::jetstream::kv::Store {
    let client = async_nats::connect(url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let bucket = fnmesh_core::subjects::node_registry_bucket(
        &fnmesh_core::subjects::BusPrefix::parse(prefix).unwrap(),
    );
    js.get_key_value(&bucket).await.unwrap()
}

macro_rules! cases {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let nats = TestNats::start();
            let url = nats.url();
            let make = || {
                let url = url.clone();
                async move {
                    Arc::new(open(&url, &fresh_prefix()).await) as Arc<dyn NodeRegistry>
                }
            };
            conformance::$case(&make).await;
        }
    )*};
}

mod conformance_suite {
    use super::*;

    fnmesh_bus::registry_conformance_cases!(cases);
}

/// `run_all` (every case in sequence) on one server, each registry under its own prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_in_sequence() {
    let nats = TestNats::start();
    let url = nats.url();
    conformance::run_all(|| {
        let url = url.clone();
        async move { Arc::new(open(&url, &fresh_prefix()).await) as Arc<dyn NodeRegistry> }
    })
    .await;
}

/// An entry nobody refreshes is removed from the bucket itself (not only hidden from
/// listings) once its own time to live (three heartbeat intervals) has passed, while a
/// neighbour with a longer interval stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrefreshed_entry_leaves_the_bucket_after_its_own_ttl() {
    let nats = TestNats::start();
    let url = nats.url();
    let prefix = fresh_prefix();
    let registry = open(&url, &prefix).await;
    // TTLs of 3 × 300 ms (1 s on the wire: whole seconds) and 3 × 30 s.
    let short = node_info("node-a", Duration::from_millis(300));
    let long = node_info("node-b", Duration::from_secs(30));
    registry.heartbeat(&short).await.unwrap();
    registry.heartbeat(&long).await.unwrap();
    let store = bucket(&url, &prefix).await;
    let short_key = fnmesh_core::subjects::node_registry_key(&short.id);
    let long_key = fnmesh_core::subjects::node_registry_key(&long.id);
    assert!(store.get(short_key.as_str()).await.unwrap().is_some());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.get(short_key.as_str()).await.unwrap().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the entry outlived its 1 s time to live by far"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        store.get(long_key.as_str()).await.unwrap().is_some(),
        "an entry with a longer time to live stays"
    );
    assert_eq!(registry.list().await.unwrap(), vec![long]);
}

/// A gateway and a node open the same region's bucket on their own connections: what the node
/// writes, the gateway lists, and what it leaves is gone for both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_one_region() {
    let nats = TestNats::start();
    let url = nats.url();
    let prefix = fresh_prefix();
    let gateway = open(&url, &prefix).await;
    let node = open(&url, &prefix).await;
    let info = node_info("node-a", Duration::from_secs(10));
    node.heartbeat(&info).await.unwrap();
    assert_eq!(gateway.list().await.unwrap(), vec![info.clone()]);
    node.leave(&info.id).await.unwrap();
    assert!(
        gateway.list().await.unwrap().is_empty(),
        "left for everyone"
    );
}

/// A bucket made by an earlier fnmesh (a plain KV bucket with a `max_age`, no per-entry TTLs)
/// is upgraded when opened, and heartbeats then expire on their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_without_per_entry_ttls_is_upgraded() {
    let nats = TestNats::start();
    let url = nats.url();
    let prefix = fresh_prefix();
    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.create_key_value(async_nats::jetstream::kv::Config {
        bucket: fnmesh_core::subjects::node_registry_bucket(
            &fnmesh_core::subjects::BusPrefix::parse(&prefix).unwrap(),
        ),
        history: 1,
        max_age: Duration::from_secs(60),
        ..Default::default()
    })
    .await
    .unwrap();
    let registry = open(&url, &prefix).await;
    let info = node_info("node-a", Duration::from_millis(300));
    registry.heartbeat(&info).await.unwrap();
    let store = bucket(&url, &prefix).await;
    let key = fnmesh_core::subjects::node_registry_key(&info.id);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.get(key.as_str()).await.unwrap().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the upgraded bucket keeps an entry past its time to live"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
