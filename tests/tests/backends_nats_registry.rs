//! The JetStream KV node registry against a real `nats-server -js`: the whole registry
//! conformance suite (each registry the factory makes under its own region prefix, so its own
//! bucket), a second handle on the same region seeing the same nodes, and the bucket's
//! `max_age` growing (never shrinking) when a process with a longer time to live opens it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fnmesh_shared::registry::conformance::{self, node_info};
use fnmesh_shared::registry::jetstream::JetStreamRegistry;
use fnmesh_shared::registry::NodeRegistry;
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

async fn open(url: &str, prefix: &str, max_age: Duration) -> JetStreamRegistry {
    let client = async_nats::connect(url).await.expect("connecting to nats");
    JetStreamRegistry::open(client, prefix, max_age)
        .await
        .expect("opening the jetstream registry")
}

/// A `max_age` far above the cases' time to live, so the listing's own freshness check (not
/// the bucket's expiry) is what the expiry cases exercise.
const MAX_AGE: Duration = Duration::from_secs(60);

macro_rules! cases {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let nats = TestNats::start();
            let url = nats.url();
            let make = || {
                let url = url.clone();
                async move {
                    Arc::new(open(&url, &fresh_prefix(), MAX_AGE).await) as Arc<dyn NodeRegistry>
                }
            };
            conformance::$case(&make).await;
        }
    )*};
}

mod conformance_suite {
    use super::*;

    cases!(
        heartbeat_then_list,
        heartbeat_replaces_the_entry,
        leave_removes_the_entry,
        stale_entry_disappears_within_three_heartbeats,
        entry_refreshed_in_time_stays_listed,
        entry_written_long_ago_is_not_listed,
        registries_are_isolated,
    );
}

/// `run_all` (every case in sequence) on one server, each registry under its own prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_in_sequence() {
    let nats = TestNats::start();
    let url = nats.url();
    conformance::run_all(|| {
        let url = url.clone();
        async move { Arc::new(open(&url, &fresh_prefix(), MAX_AGE).await) as Arc<dyn NodeRegistry> }
    })
    .await;
}

/// The bucket's `max_age` is the backstop: an entry nobody refreshes is removed from the
/// bucket itself (not only hidden from listings) once `max_age` has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_removes_unrefreshed_entries_from_the_bucket() {
    let nats = TestNats::start();
    let url = nats.url();
    let prefix = fresh_prefix();
    let registry = open(&url, &prefix, Duration::from_secs(1)).await;
    let info = node_info("node-a", Duration::from_secs(30));
    registry.heartbeat(&info).await.unwrap();
    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let bucket = fnmesh_shared::subjects::node_registry_bucket(
        &fnmesh_shared::subjects::BusPrefix::parse(&prefix).unwrap(),
    );
    let store = js.get_key_value(&bucket).await.unwrap();
    let key = fnmesh_shared::subjects::node_registry_key(&info.id);
    assert!(store.get(key.as_str()).await.unwrap().is_some());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while store.get(key.as_str()).await.unwrap().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the entry outlived the bucket's max_age of 1 s by far"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A gateway and a node open the same region's bucket on their own connections: what the node
/// writes, the gateway lists; a later opener with a longer time to live raises `max_age`, one
/// with a shorter one leaves it alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_one_region() {
    let nats = TestNats::start();
    let url = nats.url();
    let prefix = fresh_prefix();
    let gateway = open(&url, &prefix, Duration::from_secs(6)).await;
    let node = open(&url, &prefix, Duration::from_secs(30)).await;
    let info = node_info("node-a", Duration::from_secs(10));
    node.heartbeat(&info).await.unwrap();
    assert_eq!(gateway.list().await.unwrap(), vec![info.clone()]);
    let _short = open(&url, &prefix, Duration::from_secs(3)).await;

    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let bucket = fnmesh_shared::subjects::node_registry_bucket(
        &fnmesh_shared::subjects::BusPrefix::parse(&prefix).unwrap(),
    );
    let store = js.get_key_value(&bucket).await.unwrap();
    let max_age = store.status().await.unwrap().info.config.max_age;
    assert_eq!(
        max_age,
        Duration::from_secs(30),
        "max_age grew, never shrank"
    );

    node.leave(&info.id).await.unwrap();
    assert!(
        gateway.list().await.unwrap().is_empty(),
        "left for everyone"
    );
}
