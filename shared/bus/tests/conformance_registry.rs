//! The node registry conformance suite against the in-process registry. (The JetStream KV
//! registry runs the same suite against a harness nats-server in
//! `tests/tests/backends_nats_registry.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use fnmesh_bus::registry::conformance;
use fnmesh_bus::registry::memory::MemoryRegistry;
use fnmesh_bus::registry::NodeRegistry;

async fn memory() -> Arc<dyn NodeRegistry> {
    Arc::new(MemoryRegistry::new())
}

macro_rules! cases {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            conformance::$case(&memory).await;
        }
    )*};
}

fnmesh_bus::registry_conformance_cases!(cases);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_in_sequence() {
    conformance::run_all(memory).await;
}

/// Clones share one registry: `fnmesh up` hands one to the gateway and one to the node.
#[tokio::test]
async fn clones_share_entries() {
    let registry = MemoryRegistry::new();
    let other = registry.clone();
    let info = conformance::node_info("node-a", std::time::Duration::from_secs(30));
    registry.heartbeat(&info).await.unwrap();
    assert_eq!(other.list().await.unwrap(), vec![info]);
}
