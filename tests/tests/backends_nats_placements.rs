//! The JetStream placements feed (a region's catalog, read by its nodes) against a real
//! `nats-server -js`: the whole placements conformance suite, each feed on a region of its
//! own whose catalog bucket is written the way gateways write it; and the same feed reading
//! an edge's mirror of its hub's catalog.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use async_trait::async_trait;
use fnmesh_bus::placements::conformance::{self, Fresh, Publisher};
use fnmesh_bus::placements::jetstream::JetStreamPlacements;
use fnmesh_bus::placements::{Placement, Placements};
use fnmesh_core::ids::NodeId;
use fnmesh_core::subjects::{self, BusPrefix};
use fnmesh_tests::servers::nats::TestNats;
use futures::StreamExt as _;
use serde_json::json;

/// Writes catalog entries as `gateway::catalog::publisher` does: one KV entry per key, the
/// entry's JSON tagged by kind, a delete for a removal.
struct CatalogWriter {
    kv: kv::Store,
}

impl CatalogWriter {
    async fn create(client: async_nats::Client, region: &BusPrefix) -> Self {
        let js = jetstream::new(client);
        let kv = js
            .create_key_value(kv::Config {
                bucket: subjects::catalog_bucket(region),
                history: 1,
                ..Default::default()
            })
            .await
            .unwrap();
        Self { kv }
    }
}

#[async_trait]
impl Publisher for CatalogWriter {
    async fn publish(&self, placement: Placement) {
        let key = placement.key().key();
        let value = match placement {
            Placement::Function {
                latest: Some(f), ..
            } => json!({"kind": "function", "versions": [f]}),
            Placement::Registry {
                sealed: Some(sealed),
                ..
            } => json!({"kind": "registry", "sealed": sealed}),
            _ => {
                self.kv.delete(&key).await.unwrap();
                return;
            }
        };
        self.kv
            .put(&key, value.to_string().into_bytes().into())
            .await
            .unwrap();
    }
}

fn node() -> NodeId {
    NodeId::parse(&fnmesh_tests::unique("node")).unwrap()
}

fn fresh_region() -> BusPrefix {
    BusPrefix::parse(&fnmesh_tests::unique("pl")).unwrap()
}

async fn fresh(url: String) -> Fresh {
    let client = async_nats::connect(&url).await.unwrap();
    let region = fresh_region();
    let writer = CatalogWriter::create(client.clone(), &region).await;
    (
        Arc::new(JetStreamPlacements::new(client, region, node())),
        Arc::new(writer),
    )
}

macro_rules! cases {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let nats = TestNats::start();
            let url = nats.url();
            conformance::$case(&|| fresh(url.clone())).await;
        }
    )*};
}

fnmesh_bus::placements_conformance_cases!(cases);

/// At an edge, the catalog is the edge's mirror of its hub's bucket: the feed reads it there,
/// and says so when neither exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_reads_its_mirror_of_the_hub_catalog() {
    let nats = TestNats::start();
    let client = async_nats::connect(&nats.url()).await.unwrap();
    let (hub, edge) = (fresh_region(), fresh_region());
    let nowhere = JetStreamPlacements::new(client.clone(), edge.clone(), node());
    assert!(
        nowhere.watch().await.is_err(),
        "no catalog, no watch (the node tries again later)"
    );
    let writer = CatalogWriter::create(client.clone(), &hub).await;
    let js = jetstream::new(client.clone());
    js.create_stream(stream::Config {
        name: subjects::catalog_mirror_stream(&edge),
        mirror: Some(stream::Source {
            name: subjects::kv_stream(&subjects::catalog_bucket(&hub)),
            ..Default::default()
        }),
        max_messages_per_subject: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    let ns = fnmesh_core::Namespace::parse("team").unwrap();
    let f = conformance::image_function(&ns, "app", 3);
    let placed = Placement::Function {
        namespace: ns.clone(),
        name: f.name.clone(),
        latest: Some(Box::new(f)),
    };
    writer.publish(placed.clone()).await;
    let mut watch = JetStreamPlacements::new(client, edge, node())
        .watch()
        .await
        .expect("the mirror is read");
    let got = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("the hub's entry arrives through the mirror")
        .unwrap();
    assert_eq!(got, placed);
}
