//! The conformance suite every [`NodeRegistry`] must pass (the in-process registry and the
//! JetStream KV one).
//!
//! Each case is a `pub async fn` taking a factory that builds a fresh, empty registry; a
//! backend on a shared server must isolate each registry the factory makes (its own region
//! prefix, so its own bucket). [`run_all`] runs every case. Expiry cases use nodes with a
//! 500 ms heartbeat interval (a 1.5 s time to live). Assertions panic with a message naming
//! the behaviour that broke.
//!
//! ```text
//! fnmesh_bus::registry::conformance::run_all(|| async {
//!     Arc::new(JetStreamRegistry::open(client.clone(), &fresh_prefix()).await?)
//!         as Arc<dyn NodeRegistry>
//! })
//! .await;
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;

use super::{NodeInfo, NodeRegistry, NodeState, MISSED_HEARTBEATS};
use fnmesh_core::ids::NodeId;

/// The heartbeat interval of the nodes of the expiry cases.
pub const SHORT_INTERVAL: Duration = Duration::from_millis(500);

/// Extra time a stale entry may take to drop out (polling, server round trips).
const SLACK: Duration = Duration::from_secs(1);

/// Every case of this suite, in the order [`run_all`] runs them. An engine's test file
/// generates one test per case from this one list (`fnmesh_bus::registry_conformance_cases!(cases);` with its own
/// `cases!` macro), so no engine can miss a case.
#[macro_export]
macro_rules! registry_conformance_cases {
    ($callback:ident) => {
        $callback!(
            heartbeat_then_list,
            heartbeat_replaces_the_entry,
            leave_removes_the_entry,
            stale_entry_disappears_within_three_heartbeats,
            entry_refreshed_in_time_stays_listed,
            entry_written_long_ago_is_not_listed,
            registries_are_isolated
        );
    };
}

/// Runs every case, one after the other, each on fresh registries from `make`.
pub async fn run_all<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn NodeRegistry>>,
{
    macro_rules! run {
        ($($case:ident),* $(,)?) => { $( $case(&make).await; )* };
    }
    crate::registry_conformance_cases!(run);
}

// ---- helpers ----

/// A fresh entry for node `id`, heartbeating every `interval`, written now.
pub fn node_info(id: &str, interval: Duration) -> NodeInfo {
    let now = Utc::now();
    NodeInfo {
        id: NodeId::parse(id).expect("node id"),
        region: "test".to_owned(),
        runtimes: vec!["python3".to_owned(), "nodejs".to_owned(), "exec".to_owned()],
        slots_total: 16,
        slots_free: 16,
        warm_sandboxes: 0,
        state: NodeState::Active,
        version: "0.0.0-test".to_owned(),
        started_at: now - chrono::Duration::seconds(5),
        last_heartbeat_at: now,
        uptime_secs: 5,
        heartbeat_interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
        signing_key: None,
        images: Vec::new(),
    }
}

async fn ids(registry: &dyn NodeRegistry) -> Vec<String> {
    registry
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|n| n.id.to_string())
        .collect()
}

// ---- cases ----

/// A heartbeat makes the node listed, with every field as written; listings are by id.
pub async fn heartbeat_then_list<F, Fut>(make: &F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn NodeRegistry>>,
{
    let registry = make().await;
    assert!(
        registry.list().await.expect("list").is_empty(),
        "a fresh registry lists no node"
    );
    let mut b = node_info("node-b", Duration::from_secs(30));
    b.slots_free = 3;
    b.warm_sandboxes = 2;
    let a = node_info("node-a", Duration::from_secs(30));
    registry.heartbeat(&b).await.expect("heartbeat b");
    registry.heartbeat(&a).await.expect("heartbeat a");
    let listed = registry.list().await.expect("list");
    assert_eq!(
        listed,
        vec![a, b],
        "listed entries equal what was written, ordered by id"
    );
}

/// A second heartbeat of a node replaces its entry (one entry per node, latest values).
pub async fn heartbeat_replaces_the_entry<F, Fut>(make: &F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn NodeRegistry>>,
{
    let registry = make().await;
    let mut a = node_info("node-a", Duration::from_secs(30));
    registry.heartbeat(&a).await.expect("heartbeat");
    a.slots_free = 7;
    a.warm_sandboxes = 4;
    a.state = NodeState::Draining;
    a.last_heartbeat_at = Utc::now();
    a.uptime_secs = 6;
    registry.heartbeat(&a).await.expect("second heartbeat");
    let listed = registry.list().await.expect("list");
    assert_eq!(listed, vec![a], "the second heartbeat replaced the first");
}

/// `leave` removes the node at once; leaving twice, or an unknown node, is not an error.
pub async fn leave_removes_the_entry<F, Fut>(make: &F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn NodeRegistry>>,
{
    let registry = make().await;
    let a = node_info("node-a", Duration::from_secs(30));
    let b = node_info("node-b", Duration::from_secs(30));
    registry.heartbeat(&a).await.expect("heartbeat a");
    registry.heartbeat(&b).await.expect("heartbeat b");
    registry.leave(&a.id).await.expect("leave");
    assert_eq!(
        ids(registry.as_ref()).await,
        ["node-b"],
        "a node that left is not listed"
    );
    registry.leave(&a.id).await.expect("leaving twice is fine");
    registry
        .leave(&NodeId::parse("never-seen").unwrap())
        .await
        .expect("leaving as an unknown node is fine");
    registry.heartbeat(&a).await.expect("heartbeat after leave");
    assert_eq!(
        ids(registry.as_ref()).await,
        ["node-a", "node-b"],
        "a node can come back after leaving"
    );
}

/// A node that stops heartbeating is listed while fresh and gone within three heartbeat
/// intervals (plus slack), while a node with a longer interval written at the same time stays.
pub async fn stale_entry_disappears_within_three_heartbeats<F, Fut>(make: &F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn NodeRegistry>>,
{
    let registry = make().await;
    let written = Instant::now();
    let short = node_info("short", SHORT_INTERVAL);
    let long = node_info("long", Duration::from_secs(30));
    registry.heartbeat(&short).await.expect("heartbeat short");
    registry.heartbeat(&long).await.expect("heartbeat long");
    let ttl = SHORT_INTERVAL * MISSED_HEARTBEATS;
    let listed = ids(registry.as_ref()).await;
    if written.elapsed() < ttl {
        assert_eq!(listed, ["long", "short"], "a fresh entry is listed");
    }
    loop {
        let listed = ids(registry.as_ref()).await;
        if !listed.iter().any(|id| id == "short") {
            assert!(
                written.elapsed() >= ttl.saturating_sub(Duration::from_millis(100)),
                "the entry dropped out after {:?}, before its time to live of {ttl:?}",
                written.elapsed()
            );
            assert_eq!(listed, ["long"], "the node with a long interval stays");
            return;
        }
        assert!(
            written.elapsed() < ttl + SLACK,
            "a node silent for {:?} (3 heartbeats = {ttl:?}) is still listed",
            written.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A node heartbeating on time stays listed well past one time to live.
pub async fn entry_refreshed_in_time_stays_listed<F, Fut>(make: &F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn NodeRegistry>>,
{
    let registry = make().await;
    let start = Instant::now();
    let ttl = SHORT_INTERVAL * MISSED_HEARTBEATS;
    while start.elapsed() < ttl * 2 {
        let mut info = node_info("steady", SHORT_INTERVAL);
        info.last_heartbeat_at = Utc::now();
        registry.heartbeat(&info).await.expect("heartbeat");
        let deadline = Instant::now() + SHORT_INTERVAL;
        while Instant::now() < deadline {
            assert_eq!(
                ids(registry.as_ref()).await,
                ["steady"],
                "a node heartbeating every interval is always listed"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// An entry whose last heartbeat is older than its time to live is never listed (the
/// listing checks freshness itself, whatever the backend's own expiry does).
pub async fn entry_written_long_ago_is_not_listed<F, Fut>(make: &F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn NodeRegistry>>,
{
    let registry = make().await;
    let mut old = node_info("old", Duration::from_secs(2));
    old.last_heartbeat_at = Utc::now() - chrono::Duration::seconds(7);
    let fresh = node_info("fresh", Duration::from_secs(2));
    registry.heartbeat(&old).await.expect("heartbeat old");
    registry.heartbeat(&fresh).await.expect("heartbeat fresh");
    assert_eq!(
        ids(registry.as_ref()).await,
        ["fresh"],
        "an entry 3.5 intervals old is not listed"
    );
}

/// Two registries (two regions) never see each other's nodes, nor remove them.
pub async fn registries_are_isolated<F, Fut>(make: &F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn NodeRegistry>>,
{
    let one = make().await;
    let two = make().await;
    let a = node_info("node-a", Duration::from_secs(30));
    let mut a2 = node_info("node-a", Duration::from_secs(30));
    a2.region = "other".to_owned();
    let b = node_info("node-b", Duration::from_secs(30));
    one.heartbeat(&a).await.expect("heartbeat one");
    two.heartbeat(&a2).await.expect("heartbeat two, same id");
    two.heartbeat(&b).await.expect("heartbeat two");
    assert_eq!(one.list().await.expect("list one"), vec![a.clone()]);
    assert_eq!(two.list().await.expect("list two"), vec![a2, b.clone()]);
    two.leave(&a.id).await.expect("leave in two");
    assert_eq!(
        one.list().await.expect("list one"),
        vec![a],
        "leaving in one registry leaves the other alone"
    );
    assert_eq!(two.list().await.expect("list two"), vec![b]);
}
