//! The placements conformance suite against the in-process feed. (The JetStream catalog
//! reader runs the same suite against a harness nats-server in
//! `tests/tests/backends_nats_placements.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use fnmesh_bus::placements::conformance::{self, Fresh};
use fnmesh_bus::placements::memory::MemoryPlacements;

async fn memory() -> Fresh {
    let feed = MemoryPlacements::new();
    (Arc::new(feed.clone()), Arc::new(feed))
}

macro_rules! cases {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            conformance::$case(&memory).await;
        }
    )*};
}

fnmesh_bus::placements_conformance_cases!(cases);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_in_sequence() {
    conformance::run_all(memory).await;
}
