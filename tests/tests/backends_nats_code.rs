//! The NATS code store against a real `nats-server -js`: the whole code store conformance
//! suite, corruption detection (an object replaced behind the store's back), repair by a
//! second put, the size cap on get, and a gateway and a node opening the same bucket.
//!
//! Each test starts its own server and takes its own region, so tests run in parallel.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use fnmesh_code::conformance::{self, random_bytes, Store};
use fnmesh_code::nats::NatsCodeStore;
use fnmesh_code::{CodeStore as _, CodeStoreError, MAX_BLOB_BYTES};
use fnmesh_core::checksum::Checksum;
use fnmesh_core::nats::NatsOptions;
use fnmesh_core::subjects;
use fnmesh_tests::servers::nats::TestNats;
use fnmesh_tests::unique;

async fn open(nats: &TestNats, region: &str) -> NatsCodeStore {
    let client = NatsOptions::url(nats.url())
        .connect("fnmesh-test-code")
        .await
        .expect("connecting to nats");
    NatsCodeStore::open(client, region)
        .await
        .expect("opening the nats code store")
}

/// A server and a store on a fresh region of it.
async fn nats_store() -> (TestNats, NatsCodeStore) {
    let nats = TestNats::start();
    let store = open(&nats, &unique("code")).await;
    (nats, store)
}

/// Replaces the object of `checksum` with other bytes, behind the store's back.
async fn tamper(store: &NatsCodeStore, checksum: &Checksum, with: &'static [u8]) {
    let mut reader: &[u8] = with;
    store
        .object_store()
        .put(subjects::code_key(checksum).as_str(), &mut reader)
        .await
        .expect("overwriting the object");
}

macro_rules! cases {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $case() {
            let (_nats, store) = nats_store().await;
            conformance::$case(Arc::new(store) as Store).await;
        }
    )*};
}

fnmesh_code::code_conformance_cases!(cases);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_all_on_one_bucket() {
    let (_nats, store) = nats_store().await;
    conformance::run_all(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corruption_is_detected() {
    let (_nats, store) = nats_store().await;
    let tamperer = store.clone();
    conformance::corruption_is_detected(Arc::new(store), |checksum| async move {
        tamper(&tamperer, &checksum, b"tampered").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_bucket_is_per_region_and_put_repairs_corruption() {
    let nats = TestNats::start();
    let region = unique("code");
    let store = open(&nats, &region).await;
    assert_eq!(store.bucket_name(), format!("fnmesh-{region}-code"));
    let bytes = random_bytes(1234);
    let checksum = store.put(bytes.clone()).await.expect("put");
    let info = store
        .object_store()
        .info(subjects::code_key(&checksum).as_str())
        .await
        .expect("the object is at code_key");
    assert_eq!(info.size, 1234);

    tamper(&store, &checksum, b"broken").await;
    assert!(matches!(
        store.get(&checksum).await,
        Err(CodeStoreError::Corrupt(c)) if c == checksum
    ));
    store.put(bytes.clone()).await.expect("put again");
    assert_eq!(
        store.get(&checksum).await.expect("get"),
        Some(bytes.clone())
    );

    // A node opening the same region (bucket already there) reads what the gateway stored;
    // another region does not see it.
    let node = open(&nats, &region).await;
    assert_eq!(node.get(&checksum).await.expect("node get"), Some(bytes));
    let other = open(&nats, &unique("code")).await;
    assert_eq!(other.get(&checksum).await.expect("other region"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blobs_over_the_cap_are_refused_on_put_and_get() {
    let (_nats, store) = nats_store().await;
    let oversized = random_bytes(MAX_BLOB_BYTES + 1);
    let err = store
        .put(oversized.clone())
        .await
        .expect_err("put over the cap");
    assert!(err.to_string().contains("exceeds the cap"), "{err}");
    // Written behind the store's back, it is still never read into memory.
    let checksum = Checksum::of(&oversized);
    let mut reader: &[u8] = &oversized;
    store
        .object_store()
        .put(subjects::code_key(&checksum).as_str(), &mut reader)
        .await
        .expect("writing an oversized object directly");
    match store.get(&checksum).await {
        Err(CodeStoreError::Backend(message)) => {
            assert!(message.contains("exceeds the cap"), "{message}")
        }
        other => panic!("an oversized object must be refused, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_server_is_a_backend_error() {
    let (mut nats, store) = nats_store().await;
    nats.stop();
    let err = store
        .get(&Checksum::of(b"anything"))
        .await
        .expect_err("get with the server down");
    assert!(matches!(err, CodeStoreError::Backend(_)), "{err:?}");
}
